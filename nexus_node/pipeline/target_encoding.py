"""Out-of-fold target encoding of high-cardinality categorical columns.

A categorical column with more distinct training values than one-hot keeps
(:data:`~.profile.CATEGORY_LIMIT`) is one-hot on its most frequent values plus a count
feature (``COL__count``, a frequency encoding) by default. The searched choice
``category_encoding: "target"`` replaces its value columns (the kept values and
``__other__``; ``__missing__`` and ``__count`` stay) with a target encoding: per value, the
mean of the target over the rows holding it, smoothed toward the mean over all rows (an
m-estimate, :data:`SMOOTHING`): the positive-class rate for a binary target, one rate per
class for a multiclass one, the mean of the configuration's scaled target for regression.

The encoding is fitted on the rows a model trains on and on nothing else: in a trial on
its (fold's) training rows, in finalize on each fit's rows. Those rows' own features are
cross-fitted (:data:`INNER_FOLDS` folds: a row is encoded by a mapping fitted on the other
folds' rows, so its own target never encodes it, as scikit-learn's ``TargetEncoder(cv=5)``
does); every other row (validation, test, prediction) gets the mapping fitted on all of
them. A value the mapping has not seen, and a missing cell, gets the mean (the prior).

Values are carried as integer codes (prepare writes them: ``codes_*.npy``, an index into
the column's :func:`vocabulary` or -1) and the encoded features' place as a layout array
(``codes_layout.npy``, :func:`layout_of`), so trials need neither pandas nor the
preprocessing. numpy only.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from nexus_node.pipeline import target as target_scale

CHOICES = ("onehot", "target")
# m of the m-estimate: a value seen n times is encoded as (n * its mean + m * prior) /
# (n + m), so a value backed by a handful of rows stays near the prior.
SMOOTHING = 10.0
INNER_FOLDS = 5
# Where a model's config (each ensemble member's) holds the mappings it was trained with
# (:func:`to_json`); absent for the one-hot encoding and in artifacts from before the choice.
CONFIG_KEY = "target_encoding"
# The inner folds' shuffle: fixed, so every trial of a job encodes the same way (and the
# encoded arrays are built once per runner and reused).
INNER_SEED = 0


def choice(params: Mapping[str, Any] | None) -> str:
    """A configuration's ``category_encoding`` (``"onehot"`` when it makes no choice)."""
    value = (params or {}).get("category_encoding", "onehot")
    if value not in CHOICES:
        raise ValueError(f"category_encoding {value!r} is not one of {CHOICES}")
    return str(value)


def encoded_specs(prep: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The categorical columns a target encoding may apply to: those with a count feature
    (more distinct training values than one-hot keeps), in preprocessing order."""
    return [s for s in prep["columns"] if s["kind"] == "categorical" and s.get("counts")]


def vocabulary(spec: Mapping[str, Any]) -> list[str]:
    """The values a column's codes index: its counted training values, most frequent first
    (ties by value), so the order does not depend on how the JSON was written."""
    counts = spec["counts"]
    return sorted(counts, key=lambda v: (-counts[v], v))


def layout_of(prep: Mapping[str, Any]) -> np.ndarray:
    """``(h, 3)`` int64: per encoded column, the ``[start, stop)`` of the one-hot value
    features a target encoding replaces, and the size of its vocabulary."""
    rows = []
    for spec in encoded_specs(prep):
        start = int(spec["features"][0])
        rows.append([start, start + len(spec["categories"]) + int(bool(spec["other"])), len(spec["counts"])])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def target_columns(y: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """What is averaged per value, ``(n, k)`` float64: a regression target as given (the
    caller scales it), the positive class's indicator (binary), each class's (multiclass)."""
    y = np.asarray(y)
    if task == "regression":
        columns = y.astype(np.float64)[:, None]
    elif task == "binary" or n_classes == 2:
        columns = (y == 1)[:, None]
    else:
        columns = y.astype(np.int64)[:, None] == np.arange(n_classes)[None, :]
    return np.asarray(columns, dtype=np.float64)


def width(task: str, n_classes: int) -> int:
    """Features one encoded column becomes: one per class for multiclass, else one."""
    return n_classes if task == "multiclass" and n_classes > 2 else 1


def targets_for(y: np.ndarray, task: str, n_classes: int, transform: Mapping[str, Any] | None) -> np.ndarray:
    """:func:`target_columns` of ``y``, a regression target first scaled by ``transform``
    (the configuration's, :func:`.target.for_params`), as the model regresses it."""
    if task == "regression":
        assert transform is not None, "a regression target is encoded on the model's scale"
        y = target_scale.forward(y, transform)
    return target_columns(y, task, n_classes)


class Table(NamedTuple):
    """One column's fitted mapping: ``rows[code]`` is that value's encoding (``(n_values, k)``),
    ``prior`` the encoding of a value without rows (``(k,)``), ``counts`` the rows per value."""

    rows: np.ndarray
    prior: np.ndarray
    counts: np.ndarray


def fit_table(codes: np.ndarray, t: np.ndarray, n_values: int, m: float = SMOOTHING) -> Table:
    """The m-estimate of every value's mean of ``t`` over the rows given (codes below 0 do
    not count toward a value, only toward the prior)."""
    codes = np.asarray(codes, dtype=np.int64)
    prior = t.mean(axis=0) if t.shape[0] else np.zeros(t.shape[1])
    seen = codes >= 0
    counts = np.bincount(codes[seen], minlength=n_values).astype(np.float64)[:n_values]
    sums = np.stack([np.bincount(codes[seen], weights=t[seen, j], minlength=n_values)[:n_values]
                     for j in range(t.shape[1])], axis=1) if n_values else np.zeros((0, t.shape[1]))
    rows = (sums + m * prior[None, :]) / (counts[:, None] + m)
    return Table(rows, prior, counts)


def lookup(codes: np.ndarray, table: Table) -> np.ndarray:
    """Each row's encoding: its value's, the prior for a code below 0 or past the table."""
    codes = np.asarray(codes, dtype=np.int64)
    out = np.broadcast_to(table.prior, (codes.shape[0], table.prior.shape[0])).copy()
    known = (codes >= 0) & (codes < table.rows.shape[0])
    out[known] = table.rows[codes[known]]
    return out


def cross_fit(codes: np.ndarray, t: np.ndarray, n_values: int, folds: int = INNER_FOLDS,
              seed: int = INNER_SEED) -> np.ndarray:
    """Out-of-fold encodings of the rows a model trains on: each row's from a mapping
    fitted on the other folds' rows only."""
    n = codes.shape[0]
    out = np.empty((n, t.shape[1]), dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(n) % max(1, min(folds, n))
    for f in np.unique(fold):
        held = fold == f
        out[held] = lookup(codes[held], fit_table(codes[~held], t[~held], n_values))
    return out


def assemble(X: np.ndarray, layout: np.ndarray, encodings: Sequence[np.ndarray]) -> np.ndarray:
    """The model's inputs: ``X`` without the replaced one-hot features, then each encoded
    column's encodings (float32)."""
    drop = np.zeros(X.shape[1], dtype=bool)
    for start, stop, _ in layout:
        drop[start:stop] = True
    # float32 before joining: the same values as joining in float64 and converting after,
    # without a float64 copy of every row.
    return np.hstack([np.asarray(X, dtype=np.float32)[:, ~drop], *[np.asarray(e, dtype=np.float32) for e in encodings]])


def _fit(codes: np.ndarray, t: np.ndarray, layout: np.ndarray) -> tuple[list[np.ndarray], list[Table]]:
    """The training rows' cross-fitted encodings, and the mappings for any other rows."""
    tables = [fit_table(codes[:, j], t, int(n)) for j, (_, _, n) in enumerate(layout)]
    # float32, as the model reads them (assemble): half the memory of the rows' encodings.
    encoded = [cross_fit(codes[:, j], t, int(n)).astype(np.float32) for j, (_, _, n) in enumerate(layout)]
    return encoded, tables


def fit_rows(X: np.ndarray, codes: np.ndarray, t: np.ndarray, layout: np.ndarray) -> tuple[np.ndarray, list[Table]]:
    """The training rows' model inputs (cross-fitted) and the mappings for any other rows."""
    encoded, tables = _fit(codes, t, layout)
    return assemble(X, layout, encoded), tables


def apply(X: np.ndarray, codes: np.ndarray, tables: Sequence[Table], layout: np.ndarray) -> np.ndarray:
    """Other rows' model inputs, with the mappings :func:`fit_rows` fitted."""
    return assemble(X, layout, [lookup(codes[:, j], tab) for j, tab in enumerate(tables)])


def encode_split(arrays: Mapping[str, np.ndarray], layout: np.ndarray, task: str, n_classes: int,
                 transform: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], list[Table]]:
    """A split (``X_train, y_train, codes_train`` and optionally ``X_val, codes_val``) as a
    target-encoded configuration trains on it: ``X_train`` cross-fitted on the training
    rows, ``X_val`` mapped with the mappings fitted on all of them; and those mappings."""
    t = targets_for(np.asarray(arrays["y_train"]), task, n_classes, transform)
    out = dict(arrays)
    out["X_train"], tables = fit_rows(np.asarray(arrays["X_train"]), np.asarray(arrays["codes_train"]), t, layout)
    if arrays.get("X_val") is not None:
        out["X_val"] = apply(np.asarray(arrays["X_val"]), np.asarray(arrays["codes_val"]), tables, layout)
    return out, tables


def fit_block_transform(y_fit: np.ndarray, codes_fit: np.ndarray, layout: np.ndarray, task: str, n_classes: int,
                        transform: Mapping[str, Any] | None = None) -> tuple[Any, list[Table]]:
    """:func:`fit_rows` for rows read a block at a time: a transform of the fitted rows
    ``[a, b)`` (``(X_block, a, b) -> model inputs``, those rows of ``fit_rows``'s output),
    and the mappings for any other rows (:func:`apply_block_transform`). Only the
    encodings (one number per encoded column and target column, a row) are held, not the
    inputs."""
    encoded, tables = _fit(np.asarray(codes_fit), targets_for(np.asarray(y_fit), task, n_classes, transform), layout)

    def fit_rows(X: np.ndarray, a: int, b: int) -> np.ndarray:
        return assemble(X, layout, [e[a:b] for e in encoded])

    return fit_rows, tables


def apply_block_transform(codes: np.ndarray, tables: Sequence[Table], layout: np.ndarray) -> Any:
    """:func:`apply` for rows ``[a, b)`` read a block at a time (their codes are ``codes[a:b]``)."""
    def rows(X: np.ndarray, a: int, b: int) -> np.ndarray:
        block = np.asarray(codes[a:b])
        return assemble(X, layout, [lookup(block[:, j], tab) for j, tab in enumerate(tables)])

    return rows


def model_width(n_features: int, layout: np.ndarray, task: str, n_classes: int) -> int:
    """The width of :func:`assemble`'s output for prepared rows of ``n_features``."""
    replaced = sum(int(stop) - int(start) for start, stop, _ in layout)
    return n_features - replaced + width(task, n_classes) * int(layout.shape[0])


def model_columns(columns: np.ndarray, n_features: int, layout: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """Feature indices ``columns`` of ``X`` (the trees', :func:`.trees.tree_columns`) as
    indices of :func:`assemble`'s output, plus every encoded column's features."""
    drop = np.zeros(n_features, dtype=bool)
    for start, stop, _ in layout:
        drop[start:stop] = True
    position = np.cumsum(~drop) - 1
    cols = np.asarray(columns, dtype=np.int64)
    kept = position[cols[~drop[cols]]]
    n_kept = int((~drop).sum())
    return np.concatenate([kept, np.arange(n_kept, n_kept + int(sum(widths)))]).astype(np.int64)


def to_json(tables: Sequence[Table], prep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mappings as plain data for an artifact: per column its name, prior, and the
    values the fitted rows held with their encodings."""
    out = []
    for spec, table in zip(encoded_specs(prep), tables):
        values = vocabulary(spec)
        seen = np.flatnonzero(table.counts > 0)
        out.append({"name": spec["name"], "prior": [float(p) for p in table.prior],
                    "values": [values[i] for i in seen],
                    "encodings": [[float(x) for x in table.rows[i]] for i in seen]})
    return out


def from_json(doc: Sequence[Mapping[str, Any]], prep: Mapping[str, Any]) -> list[Table]:
    """:func:`to_json`'s mappings as tables indexed by the codes of ``prep``'s
    :func:`vocabulary` (the codes prepare writes and serving computes; a value the
    mapping lacks gets the prior).

    Raises:
        ValueError: The mappings do not name the preprocessing's encoded columns.
    """
    specs = encoded_specs(prep)
    if [c.get("name") for c in doc] != [s["name"] for s in specs]:
        raise ValueError(f"target encodings of {[c.get('name') for c in doc]} do not match the "
                         f"preprocessing's high-cardinality columns {[s['name'] for s in specs]}")
    tables = []
    for col, spec in zip(doc, specs):
        prior = np.asarray(col["prior"], dtype=np.float64)
        index = {v: i for i, v in enumerate(vocabulary(spec))}
        rows = np.tile(prior, (len(index), 1))
        counts = np.zeros(len(index))
        for value, encoding in zip(col["values"], col["encodings"]):
            if value in index:
                rows[index[value]] = encoding
                counts[index[value]] = 1.0
        tables.append(Table(rows, prior, counts))
    return tables

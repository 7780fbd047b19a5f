"""Fit preprocessing on the training rows, split, and write the arrays a trial trains on.

The fitted preprocessing is a plain JSON-able dict (never pickle): :func:`transform`
applies it to any frame of text cells and is the single code path for training,
evaluation and prediction, so a model sees the same encoding everywhere.

Every input column maps to a contiguous block of encoded features (``"features":
[start, stop]``), which is what lets permutation importance work per original column.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import csvio, target_encoding
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline.column_store import ColumnStore, LazyTable
from nexus_node.pipeline.folds import assign_folds
from nexus_node.pipeline.profile import (
    CATEGORY_LIMIT,
    ColumnInfo,
    TargetInfo,
    detect_target,
    parse_dates,
    parse_numbers,
    profile_columns,
    target_labels,
    target_summary,
)
from nexus_node.pipeline.row_stream import NpyWriter
from nexus_node.pipeline.tableformat import TableFormat
from nexus_node.pipeline.trees import tree_columns
from nexus_node.system import give_back_freed_memory

PREPROCESSING_VERSION = 1
MIN_ROWS = 10
# A numeric feature this skewed (and never negative) is log1p-scaled before
# standardising, so a few huge values (capital gains, fares) do not flatten the rest.
FEATURE_LOG_SKEW = 2.0
# Categories seen fewer times than this in training go to "__other__": a one-hot column
# backed by a single row only teaches the network that row.
MIN_CATEGORY_COUNT = 2
OTHER, MISSING = "__other__", "__missing__"
# A categorical column with more distinct training values than the one-hot keeps
# (CATEGORY_LIMIT) also gets a count feature: log1p of how many *other* training rows hold
# the row's value (a book challenged in other places, passengers on one ticket), which
# one-hot of 30 values loses for the rest. The counts of at most this many values are kept
# in the preprocessing (the most frequent; rarer values count 0, as unseen ones do); they
# are also the values a target encoding, a searched alternative to the one-hot, encodes
# (target_encoding.py).
COUNT_LIMIT = 10_000
# Quantile bins of the piecewise-linear encoding added to every numeric column (fewer
# when a column has fewer distinct values; 0 turns the encoding off).
PLE_BINS = 16
# Calendar parts of a date column, each scaled by its largest value into 0..1. Days since
# 1970 say "when"; these say "which season / weekday / hour", which a model cannot read
# off a day count (a weekday is that count modulo 7).
# Values: (pandas attribute, largest value).
DATE_PARTS = {"month": ("month", 12.0), "day": ("day", 31.0), "weekday": ("day_of_week", 6.0),
              "dayofyear": ("day_of_year", 366.0), "hour": ("hour", 23.0)}
ARRAY_NAMES = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")
#: Bytes of encoded rows (float32) pass two of preparation makes from one chunk at most.
ENCODED_CHUNK_BYTES = 8 << 20
#: Bytes of inputs (float32) in one row shard of a prepared array at most: a few tens of MB,
#: so a large table's arrays are many blobs, placed and fetched each on its own.
SHARD_BYTES = 32 << 20


#: At most this many distinct words a numeric column's training cells held in place of a
#: number are kept (serving reads them as missing).
MISSING_WORDS = 50


def fit_numeric(name: str, values: np.ndarray, date_format: str | None) -> dict[str, Any]:
    """Fit imputation, optional log1p and standardisation of one numeric column.

    Args:
        name: Column name.
        values: Training values as float64, NaN where missing.
        date_format: Set when the column holds dates (values are then days since 1970).
    """
    present = values[~np.isnan(values)]
    use_log = bool(
        date_format is None and present.size > 2 and present.min() >= 0
        and np.unique(present).size > 2 and target_scale.skewness(present) > FEATURE_LOG_SKEW
    )
    # The raw range, before any log: serving reports inputs outside it (input_checks.py).
    seen = [float(present.min()), float(present.max())] if present.size else None
    if use_log:
        present = np.log1p(present)
    median = float(np.median(present)) if present.size else 0.0
    filled = np.concatenate([present, np.full(values.size - present.size, median)])
    std = float(filled.std())
    parts = date_part_names(filled) if date_format else []
    edges: np.ndarray | list[float] = (np.unique(np.quantile(present, np.linspace(0, 1, PLE_BINS + 1)))
                                       if present.size and PLE_BINS else [])
    return {
        "name": name, "kind": "numeric", "date_format": date_format, "log": use_log,
        "median": median, "mean": float(filled.mean()), "std": std if std > 0 else 1.0,
        "indicator": bool(present.size < values.size), "parts": parts, "range": seen,
        # Fewer than two bins would only repeat the value itself.
        "bins": [float(e) for e in edges] if len(edges) > 2 else [],
    }


def date_parts(days: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    """Calendar parts (see :data:`DATE_PARTS`) of days since 1970, shape ``(n, len(parts))``."""
    t = pd.DatetimeIndex(pd.to_datetime(np.round(days * 86400.0), unit="s"))
    cols = [np.asarray(getattr(t, DATE_PARTS[p][0]), dtype=np.float64) / DATE_PARTS[p][1] for p in parts]
    return np.stack(cols, axis=1) if cols else np.zeros((days.size, 0))


def date_part_names(days: np.ndarray) -> list[str]:
    """The calendar parts that vary over the training days (a constant part says nothing)."""
    if days.size == 0:
        return []
    values = date_parts(days, list(DATE_PARTS))
    return [p for i, p in enumerate(DATE_PARTS) if np.unique(values[:, i]).size > 1]


def piecewise_linear(v: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Piecewise-linear encoding: per bin, how far ``v`` has climbed through it (0..1).

    Gives the network a ready-made basis for thresholds and kinks in one feature (such as
    a charge that jumps past some BMI), which a plain standardised input makes it learn
    from scratch; Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep
    Learning" (NeurIPS 2022), section 3.2.
    """
    e = np.asarray(edges, dtype=np.float64)
    lo, width = e[:-1], np.maximum(np.diff(e), 1e-12)
    return np.clip((v[:, None] - lo) / width, 0.0, 1.0)


def fit_categorical(name: str, s: pd.Series) -> dict[str, Any]:
    """Fit a bounded one-hot encoding of one text column on its training cells.

    Keeps the :data:`~.profile.CATEGORY_LIMIT` most frequent values seen at least
    :data:`MIN_CATEGORY_COUNT` times (ties broken by value so the result is deterministic);
    other values share an ``__other__`` column and missing cells a ``__missing__`` column,
    each present only when training needed it. With more distinct values than
    ``CATEGORY_LIMIT``, ``counts`` holds each value's training count (see :data:`COUNT_LIMIT`)
    for the ``__count`` feature; else it is empty.
    """
    counts = s.dropna().value_counts()
    ranked = sorted(((int(c), str(v)) for v, c in counts.items()), key=lambda t: (-t[0], t[1]))
    keep = [v for c, v in ranked if c >= MIN_CATEGORY_COUNT][:CATEGORY_LIMIT]
    return {
        "name": name, "kind": "categorical", "categories": keep,
        "other": len(keep) < len(ranked), "missing": bool(s.isna().any()),
        "counts": {v: c for c, v in ranked[:COUNT_LIMIT]} if len(ranked) > CATEGORY_LIMIT else {},
    }


def fit_preprocessing(train: pd.DataFrame, columns: Sequence[ColumnInfo], info: TargetInfo) -> dict[str, Any]:
    """Fit the whole preprocessing on the training rows.

    Args:
        train: Training rows as text cells.
        columns: Profiling decisions for every input column.
        info: The target's task and classes.

    Returns:
        The JSON-able preprocessing dict :func:`transform` applies.
    """
    specs: list[dict[str, Any]] = []
    names: list[str] = []
    for col in columns:
        if col.kind == "dropped":
            continue
        if col.kind == "numeric":
            raw = parse_dates(train[col.name], col.date_format) if col.date_format else parse_numbers(train[col.name])
            spec = fit_numeric(col.name, raw, col.date_format)
            # Words training read as missing ("unknown", "-"): serving reads them so too,
            # and refuses any other text (input_checks.py).
            cells = train[col.name]
            words = cells[np.isnan(raw) & cells.notna().to_numpy()].astype("str").unique()
            spec["missing_words"] = sorted(words.tolist())[:MISSING_WORDS]
            block = [col.name] + ([f"{col.name}__missing"] if spec["indicator"] else [])
            block += [f"{col.name}__{p}" for p in spec["parts"]]
            block += [f"{col.name}__bin{i}" for i in range(max(0, len(spec["bins"]) - 1))]
        else:
            spec = fit_categorical(col.name, train[col.name])
            block = [f"{col.name}={c}" for c in spec["categories"]]
            block += [f"{col.name}={OTHER}"] if spec["other"] else []
            block += [f"{col.name}={MISSING}"] if spec["missing"] else []
            block += [f"{col.name}__count"] if spec["counts"] else []
        spec["features"] = [len(names), len(names) + len(block)]
        names += block
        specs.append(spec)
    tgt: dict[str, Any] = {"name": info.name, "task": info.task, "numeric": info.numeric}
    if info.task == "regression":
        tgt["transform"] = target_scale.fit_target_transform(parse_numbers(train[info.name]))
    else:
        tgt["classes"] = list(info.classes)
    return {
        "version": PREPROCESSING_VERSION,
        "columns": specs,
        "dropped": [{"name": c.name, "reason": c.reason} for c in columns if c.kind == "dropped"],
        "feature_names": names,
        "input_columns": [s["name"] for s in specs],
        "target": tgt,
    }


def check_columns(df: pd.DataFrame, prep: Mapping[str, Any]) -> None:
    """Raise InvalidInput naming every training column ``df`` lacks."""
    missing = [c for c in prep["input_columns"] if c not in df.columns]
    if missing:
        raise InvalidInput(
            f"the input is missing column(s) {missing} that the model was trained on; "
            f"add them (empty cells are allowed). Required columns: {prep['input_columns']}"
        )


def category_cells(s: pd.Series) -> pd.Series:
    """A categorical column's cells as text, missing ones kept missing (a Parquet column
    may arrive typed)."""
    return s if pd.api.types.is_string_dtype(s) else s.astype("str").where(s.notna())


def transform(df: pd.DataFrame, prep: Mapping[str, Any], fitted_rows: bool = False) -> np.ndarray:
    """Encode a frame of text cells with fitted preprocessing.

    Columns not used in training are ignored. Unparseable numbers count as missing; unseen
    categories count as ``__other__`` (all zeros for the column if training had none).

    Args:
        df: Rows to encode; needs every column in ``prep["input_columns"]``.
        prep: The dict from :func:`fit_preprocessing` (or its JSON round trip).
        fitted_rows: ``df`` holds the rows the preprocessing was fitted on: a row's
            ``__count`` then leaves the row itself out, so that it means, for training rows
            as for any other, how many other training rows share the value.

    Returns:
        float32 array of shape ``(len(df), len(prep["feature_names"]))``.

    Raises:
        InvalidInput: A training column is missing from ``df``.
    """
    check_columns(df, prep)
    out = np.zeros((len(df), len(prep["feature_names"])), dtype=np.float32)
    for spec in prep["columns"]:
        start, stop = spec["features"]
        s = df[spec["name"]]
        if spec["kind"] == "numeric":
            v = parse_dates(s, spec["date_format"]) if spec["date_format"] else parse_numbers(s)
            if spec["log"]:
                # log1p was fitted on non-negative values; a negative one at prediction
                # time is treated as the smallest value seen rather than NaN.
                v = np.log1p(np.maximum(v, 0.0))
            nan = np.isnan(v)
            filled = np.where(nan, spec["median"], v)
            out[:, start] = (filled - spec["mean"]) / spec["std"]
            if spec["indicator"]:
                out[:, start + 1] = nan
            parts = spec.get("parts") or []
            if parts:
                first = start + 1 + int(spec["indicator"])
                out[:, first:first + len(parts)] = date_parts(filled, parts)
            if spec["bins"]:
                out[:, stop - len(spec["bins"]) + 1:stop] = piecewise_linear(filled, spec["bins"])
        else:
            text = category_cells(s)
            codes = value_codes(text, spec["categories"]).astype(np.int64)
            missing = text.isna().to_numpy()
            slot = codes.copy()
            k = len(spec["categories"])
            if spec["other"]:
                slot[(codes < 0) & ~missing] = k
            if spec["missing"]:
                slot[missing] = k + int(spec["other"])
            rows = np.flatnonzero(slot >= 0)
            out[rows, start + slot[rows]] = 1.0
            if spec.get("counts"):
                n = text.map(spec["counts"]).fillna(0).to_numpy(dtype=np.float64)
                if fitted_rows:
                    n = np.maximum(n - 1.0, 0.0)
                out[:, stop - 1] = np.log1p(n)
    return out


def value_codes(s: pd.Series, values: Sequence[str]) -> np.ndarray:
    """Each cell's position in ``values`` (int32), -1 for a missing cell or another value."""
    return np.asarray(pd.Index(list(values), dtype="str").get_indexer(category_cells(s)), dtype=np.int32)


def category_codes(df: pd.DataFrame, prep: Mapping[str, Any]) -> np.ndarray:
    """``(len(df), h)`` codes of the columns a target encoding may apply to
    (:func:`.target_encoding.encoded_specs`), each into its
    :func:`.target_encoding.vocabulary`."""
    specs = target_encoding.encoded_specs(prep)
    cols = [value_codes(df[spec["name"]], target_encoding.vocabulary(spec)) for spec in specs]
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0), dtype=np.int32)


def encode_target(s: pd.Series, prep: Mapping[str, Any]) -> np.ndarray:
    """Target cells as model targets: float64 original units (regression; the trainer
    scales them) or int64 class indices."""
    tgt = prep["target"]
    if tgt["task"] == "regression":
        return parse_numbers(s)
    info = TargetInfo(tgt["name"], tgt["task"], tgt["numeric"], tuple(tgt["classes"]))
    return target_labels(s, info)


def split_indices(
    n: int, seed: int, test_fraction: float, val_fraction: float, labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled train/val/test row positions; stratified by ``labels`` when given.

    Stratification splits each class on its own (rounded shares, at least one training
    row per class), so class proportions match across splits even for rare classes.

    Args:
        n: Row count.
        seed: Seed of the shuffle (recorded with the job).
        test_fraction: Share of all rows held out for the final test.
        val_fraction: Share of all rows for validation during search.
        labels: Class index per row for a stratified split.

    Returns:
        ``(train, val, test)`` sorted row positions.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for g in groups:
        g = rng.permutation(g)
        n_test = min(int(round(len(g) * test_fraction)), max(0, len(g) - 1))
        n_val = min(int(round(len(g) * val_fraction)), max(0, len(g) - 1 - n_test))
        parts[2].append(g[:n_test])
        parts[1].append(g[n_test:n_test + n_val])
        parts[0].append(g[n_test + n_val:])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def check_table_columns(columns: Sequence[str], target: str, drop_columns: Sequence[str]) -> None:
    """Refuse a table without the target or with an unknown drop column.

    Raises:
        InvalidInput: the target is absent or also dropped, or a drop column does not exist.
    """
    if target not in columns:
        shown = list(columns[:12]) + (["..."] if len(columns) > 12 else [])
        hint = (" (the file has a single column: no comma, semicolon, tab or pipe separates its header)"
                if len(columns) == 1 else "")
        raise InvalidInput(f"target column {target!r} is not in the CSV; available columns: {shown}{hint}")
    unknown = [c for c in drop_columns if c not in columns]
    if unknown:
        raise InvalidInput(f"columns to drop {unknown} are not in the CSV; available columns: {list(columns)}")
    if target in drop_columns:
        raise InvalidInput(f"target column {target!r} cannot also be dropped")


def rows_with_target(target_cells: pd.Series, target: str) -> np.ndarray:
    """Whether each row has a target value.

    Raises:
        InvalidInput: no row has one, or fewer than :data:`MIN_ROWS` do.
    """
    has_target: np.ndarray = np.asarray(target_cells.notna().to_numpy(), dtype=bool)
    if not has_target.any():
        raise InvalidInput(f"target column {target!r} has no values (every cell is empty); "
                           "choose a column with values to predict")
    if int(has_target.sum()) < MIN_ROWS:
        raise InvalidInput(f"only {int(has_target.sum())} row(s) have a value for {target!r}; at least {MIN_ROWS} "
                           "are needed to train and test a model")
    return has_target


def read_columns(csv_path: str, target: str, drop_columns: Sequence[str], fmt: TableFormat,
                 directory: str, chunk_rows: int) -> tuple[LazyTable, np.ndarray]:
    """Pass one of preparation: the upload read a chunk at a time into a column store in
    ``directory``; the rows with a target value as a table (numbered from 0) and which rows
    of the file those are."""
    store = ColumnStore(directory)
    for chunk in csvio.read_table_chunks(csv_path, fmt, chunk_rows):
        if store.rows == 0:
            check_table_columns([str(c) for c in chunk.columns], target, drop_columns)
        store.append(chunk)
    has_target = rows_with_target(store.column(target), target)
    return LazyTable(store, np.flatnonzero(has_target)), has_target


def shard_name(key: str, k: int) -> str:
    """The name of row shard ``k`` of array ``key`` in a prepare result's ``files`` (an array
    of one shard keeps its own name)."""
    return f"{key}#{k}"


class _SplitShards:
    """One split's arrays (X, y and maybe codes) written as row shards of at most
    ``per_shard`` rows, every array of the split cut at the same rows."""

    def __init__(self, out_dir: str, arrays: Sequence[tuple[str, type, tuple[int, ...]]], total: int,
                 per_shard: int) -> None:
        self.out_dir, self.arrays, self.total, self.per_shard = out_dir, list(arrays), total, max(1, per_shard)
        self.files: dict[str, str] = {}
        self.open: list[NpyWriter] = []
        self.done = 0          # rows in closed shards
        self.shard = -1

    def _next(self) -> None:
        for w in self.open:
            w.close()
        self.done += self.open[0].shape[0] if self.open else 0
        self.shard += 1
        rows = min(self.per_shard, self.total - self.done)
        self.open = []
        one = self.total <= self.per_shard
        for key, dtype, rest in self.arrays:
            name = key if one else shard_name(key, self.shard)
            self.files[name] = os.path.join(self.out_dir, f"{key}.npy" if one else f"{key}.{self.shard}.npy")
            self.open.append(NpyWriter(self.files[name], dtype, (rows, *rest)))

    def write(self, blocks: Sequence[np.ndarray]) -> None:
        """Appends rows: one block per array, of the same rows."""
        at, n = 0, len(blocks[0])
        while at < n:
            if not self.open or self.open[0].rows == self.open[0].shape[0]:
                self._next()
            take = min(n - at, self.open[0].shape[0] - self.open[0].rows)
            for w, b in zip(self.open, blocks):
                w.write(b[at:at + take])
            at += take

    def close(self) -> dict[str, str]:
        if not self.open:
            self._next()   # an empty split still has its (empty) arrays
        for w in self.open:
            w.close()
        return self.files

    def abandon(self) -> None:
        for w in self.open:
            w.abandon()


def write_arrays(csv_path: str, fmt: TableFormat, chunk_rows: int, has_target: np.ndarray,
                 splits: Sequence[np.ndarray], prep: Mapping[str, Any], out_dir: str,
                 shard_bytes: int = SHARD_BYTES) -> dict[str, str]:
    """Pass two of preparation: the upload read again a chunk at a time, each chunk's rows
    encoded (:func:`transform`, :func:`encode_target`, :func:`category_codes`) and appended
    to its split's arrays, in file order, as row shards of at most ``shard_bytes`` of
    inputs (each a blob of its own, placed and fetched on its own); the shards' paths by
    :func:`shard_name`. Encoding is row by row, so the arrays are those of encoding every
    row at once, bit for bit."""
    target = prep["target"]["name"]
    layout = target_encoding.layout_of(prep)
    width = len(prep["feature_names"])
    part = np.full(int(has_target.sum()), -1, dtype=np.int8)
    for p, idx in enumerate(splits):
        part[idx] = p
    y_type: type = np.float64 if prep["target"]["task"] == "regression" else np.int64
    writers: list[_SplitShards] = []
    for p, name in enumerate(("train", "val", "test")):
        arrays: list[tuple[str, type, tuple[int, ...]]] = [(f"X_{name}", np.float32, (width,)), (f"y_{name}", y_type, ())]
        if layout.shape[0]:
            arrays.append((f"codes_{name}", np.int32, (int(layout.shape[0]),)))
        writers.append(_SplitShards(out_dir, arrays, int(splits[p].size), shard_bytes // (4 * max(1, width))))
    read, kept = 0, 0
    # A chunk's encoded rows are several times its cells: bounded in bytes too.
    chunk_rows = max(256, min(chunk_rows, ENCODED_CHUNK_BYTES // (4 * max(1, width))))
    try:
        for chunk in csvio.read_table_chunks(csv_path, fmt, chunk_rows):
            mask = has_target[read:read + len(chunk)]
            read += len(chunk)
            chunk = chunk[mask].reset_index(drop=True)
            parts = part[kept:kept + len(chunk)]
            kept += len(chunk)
            y = encode_target(chunk[target], prep)
            for p, shards in enumerate(writers):
                sel = np.flatnonzero(parts == p)
                if sel.size:
                    rows = chunk.iloc[sel]
                    blocks = [transform(rows, prep, fitted_rows=p == 0), y[sel]]
                    if layout.shape[0]:
                        blocks.append(category_codes(rows, prep))
                    shards.write(blocks)
        files: dict[str, str] = {}
        for shards in writers:
            files.update(shards.close())
    except BaseException:
        for shards in writers:
            shards.abandon()
        raise
    return files


def prepare(
    csv_path: str, target: str, seed: int, out_dir: str, drop_columns: Sequence[str] = (),
    test_fraction: float = 0.2, val_fraction: float = 0.2, fmt: TableFormat | None = None,
    chunk_rows: int = csvio.CHUNK_ROWS, shard_bytes: int | None = None,
) -> dict[str, Any]:
    """The ``prepare`` task: profile, split, fit preprocessing, write arrays.

    Two passes over the upload, ``chunk_rows`` rows at a time, so that no more than a chunk
    of the table's cells, or one column of them, is held: the first keeps the cells on disk
    a column per file (:mod:`.column_store`), from which profiling and fitting read one
    column at a time; the second encodes each chunk's rows into its split's arrays
    (:func:`write_arrays`).

    Args:
        csv_path: The uploaded CSV.
        target: Column to predict.
        seed: Split seed.
        out_dir: Where the ``.npy`` arrays go (created if absent).
        drop_columns: Columns the user excludes.
        test_fraction: Share of rows for the final test.
        val_fraction: Share of rows for validation.
        fmt: How the node read the upload at submit; detected when ``None`` (a job from
            before formats were recorded: the file is then read whole once to learn it).
        chunk_rows: Rows read at a time.
        shard_bytes: The most bytes of inputs in one row shard (:data:`SHARD_BYTES` when None).

    Returns:
        The task result documented in :mod:`nexus_node.runner.tasks`.

    Raises:
        InvalidInput: The data cannot be used; the message says what to fix.
    """
    if not (0 < test_fraction < 0.5 and 0 < val_fraction < 0.5):
        raise InvalidInput("test and validation fractions must each be between 0 and 0.5")
    if fmt is None:
        _, fmt = csvio.read_table(csv_path)
    os.makedirs(out_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=out_dir, prefix=".columns-")
    try:
        return _prepare(csv_path, target, seed, out_dir, drop_columns, test_fraction, val_fraction, fmt,
                        chunk_rows, scratch, SHARD_BYTES if shard_bytes is None else shard_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prepare(csv_path: str, target: str, seed: int, out_dir: str, drop_columns: Sequence[str],
             test_fraction: float, val_fraction: float, fmt: TableFormat, chunk_rows: int,
             scratch: str, shard_bytes: int) -> dict[str, Any]:
    df, has_target = read_columns(csv_path, target, drop_columns, fmt, scratch, chunk_rows)
    give_back_freed_memory()   # the chunks of pass one, freed but kept by the allocator
    n_dropped = int(has_target.size - len(df))
    encoding = fmt.encoding
    info = detect_target(df[target], target)
    columns = profile_columns(df, target, drop_columns)
    if all(c.kind == "dropped" for c in columns):
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in columns) or "the CSV has only the target column"
        raise InvalidInput(f"no usable feature columns remain ({reasons}); add columns that describe each row")
    labels = None if info.task == "regression" else target_labels(df[target], info)
    train_idx, val_idx, test_idx = split_indices(len(df), seed, test_fraction, val_fraction, labels)
    prep = fit_preprocessing(df.take(train_idx), columns, info)
    summary = target_summary(df[target], info)
    df.forget()   # pass two holds a chunk of rows, not the columns read last
    give_back_freed_memory()
    # The values of the columns a target encoding may replace are written as codes too: a
    # trial fits the encoding on its own training rows (nexus_node.pipeline.target_encoding).
    files = write_arrays(csv_path, fmt, chunk_rows, has_target, (train_idx, val_idx, test_idx), prep, out_dir,
                         shard_bytes)
    layout = target_encoding.layout_of(prep)
    if layout.shape[0]:
        files["codes_layout"] = os.path.join(out_dir, "codes_layout.npy")
        np.save(files["codes_layout"], layout, allow_pickle=False)
    # Trees split on raw thresholds, so they train on the encoded features minus the
    # piecewise-linear bins; the indices travel with the arrays to every trial.
    files["tree_columns"] = os.path.join(out_dir, "tree_columns.npy")
    np.save(files["tree_columns"], tree_columns(prep["feature_names"]), allow_pickle=False)
    # A small table is cross-validated: every train+validation row's fold travels with the
    # arrays too (see nexus_node.pipeline.folds); a large one keeps the single split.
    folds = assign_folds(len(train_idx), len(val_idx), seed, None if labels is None else labels[train_idx],
                         None if labels is None else labels[val_idx])
    if folds is not None:
        files["folds"] = os.path.join(out_dir, "folds.npy")
        np.save(files["folds"], folds, allow_pickle=False)
    profile: dict[str, Any] = {
        "rows": len(df), "rows_dropped_missing_target": n_dropped,
        "n_features": len(prep["feature_names"]), "task": info.task, "target": target, "encoding": encoding,
        "format": fmt.describe(), "columns": [c.to_dict() for c in columns], "target_column": summary,
        # The columns whose encoding is a searched choice (study/constraints.py).
        "high_cardinality": [s["name"] for s in target_encoding.encoded_specs(prep)],
    }
    if info.task != "regression":
        profile["classes"] = list(info.classes)
    return {
        "profile": profile,
        "encoding": encoding,
        "format": fmt.to_dict(),
        "preprocessing": prep,
        "files": files,
        "feature_names": list(prep["feature_names"]),
        "input_columns": list(prep["input_columns"]),
        "split": {"seed": seed, "train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
                  "cv_folds": 1 if folds is None else int(folds.max()) + 1},
    }


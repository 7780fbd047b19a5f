"""The finalize task: the job's model, from its best trial or an ensemble of its trials.

``task_finalize`` takes the best trial's configuration and, when the search kept them, a
library of the best trials' validation predictions. Ensemble selection
(:mod:`nexus_node.pipeline.ensemble`) on those predictions decides between the best single
trial and a weighted average of a few; then every chosen member is fitted twice, as an
AutoML tool's user expects:

1. **Evaluated model**: the member's configuration refitted on train+val for its trial's
   epochs or boosting iterations (``epochs``; else ``params["epochs"]`` or
   ``params["max_iter"]``) and scored on the held-out test split: the members' weighted
   average gives the reported test metrics and the permutation importance. Should an MLP
   refit diverge, the model is trained as a trial is (train split, early stopping on
   validation) instead, so a job never fails here for a configuration that already worked.
2. **Final model**: the same configuration, for the same epoch or iteration count (no
   validation is left to stop on), refitted on every row: train+val+test. The artifact
   holds this one. Should it diverge, the artifact keeps the evaluated model and ``note``
   says so.

Across the mesh, the work comes in three tasks so that an ensemble's members refit in
parallel, each on whichever node has a slot: ``select`` (:func:`task_select`: ensemble
selection alone, on the library's predictions), one ``refit`` per member
(:func:`task_refit`: both fits of one member, written as a member file), and ``finalize``
with the ``chosen`` members' files, which assembles them: the test metrics and the
permutation importance come from the members' evaluated predictions on the shuffled test
inputs (:func:`nexus_node.pipeline.importance.permuted_inputs`), weighted, which is exactly
the ensemble's own prediction on them. ``finalize`` with a ``library`` still does all three
itself.

A member of an ensemble whose refit fails drops out; the rest are reweighted and the result
says which dropped and why. The feature preprocessing stays as prepare fitted it on the train
split (the configurations were searched on that encoding, and the test rows are already
encoded with it); a regression target's scaling is each member's own (a searched choice),
fitted on train+val, and serves both of its fits. So is a target encoding of the
high-cardinality columns (:class:`FitEncoder`): each fit encodes its own rows, cross-fitted,
and the rows it predicts with the mappings fitted on them; the artifact stores the final
fit's mappings.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from nexus_node.errors import FailedPrecondition, NexusError
from nexus_node.pipeline import ensemble, metrics, target_encoding
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline.importance import importance_of, permuted_inputs
from nexus_node.pipeline.result import scored_rows
from nexus_node.pipeline.row_stream import RowSource, sample_rows
from nexus_node.runner import memory
from nexus_node.runner.arrays import (
    MIN_SAMPLED_ROWS,
    STREAM_SHARE,
    TRAIN_ARRAYS,
    array_shape,
    encoding_of,
    fit_sources,
    load_array,
    load_arrays,
    model_tree_columns,
    rows_of,
    splits_for,
    streams_final,
    tree_row_bytes,
    window_bytes,
)
from nexus_node.runner.context import TaskContext, need
from nexus_node.system import give_back_freed_memory

log = logging.getLogger(__name__)


def task_finalize(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``{params, files, task_type, n_classes, metric, seed, threads, preprocessing,
    artifact_path, meta?, target?, epochs_hint?, library? | chosen?, selection?}`` to
    ``{test_metrics, feature_importance, input_columns, classes, epochs_trained, evaluated_on,
    test_rows, evaluated_model_rows, evaluated_model_splits, final_model_rows,
    final_model_splits, note, members, selection, dropped}``.

    ``library`` lists the candidates for an ensemble, the best trial first (its ``params``
    are the request's): ``[{trial, params, epochs, seconds, predictions_path}]``; with
    ``max_refit_seconds``, the members' trials may have taken that long together at most
    (the best trial's own time always fits). Without two of
    them, the best trial's configuration alone is fitted (``params``, ``epochs_hint``).
    ``chosen`` instead gives the members already (``[{candidate, weight}]``, as
    :func:`task_select` returns them, with ``selection``): a candidate with a
    ``member_path`` was refitted elsewhere (:func:`task_refit`), one with a ``refit_error``
    failed there, and any other is fitted here.
    ``members`` gives each chosen member's ``trial``, ``family``, ``weight``, epochs,
    ``params`` and ``node_id`` (where it was refitted, when the request said);
    ``selection`` says why these were chosen; ``dropped`` names the members whose refit
    failed. ``epochs_trained``, the row counts and ``note`` are the heaviest member's.
    ``csv_path``, ``encoding``, ``drop_columns`` and ``split_seed`` may be sent and are
    not needed: importance works on the encoded test split (see
    :mod:`nexus_node.pipeline.importance`).
    """
    need(req, "params", "files", "task_type", "metric", "seed", "preprocessing", "artifact_path")
    from nexus_node.pipeline.artifact import library_versions, write_artifact, write_ensemble_artifact

    task, metric, prep = req["task_type"], req["metric"], req["preprocessing"]
    metrics.check_metric(metric, task)
    seed = int(req["seed"])
    classes = list(prep["target"].get("classes") or [])
    arrays = load_arrays(req["files"])
    if req.get("chosen") is not None:
        chosen = [(dict(c["candidate"]), float(c["weight"])) for c in req["chosen"]]
        selection = str(req.get("selection") or "the best trial")
    else:
        chosen, selection = choose_members(req)

    def obtain(candidate: Mapping[str, Any], weight: float) -> Member:
        if candidate.get("refit_error"):
            raise NexusError(str(candidate["refit_error"]))
        if candidate.get("member_path"):
            return load_member(str(candidate["member_path"]), weight)
        return fit_member(req, arrays, len(classes), candidate, weight)

    fitted: list[Member] = []
    dropped: list[str] = []
    # The members' evaluated predictions, weighted and summed as each arrives: one member's
    # stack (the test split and every shuffle of it) is held at a time, not all of them.
    # Past IMPORTANCE_ROWS test rows the shuffles are of a sample, and every row's
    # predictions are summed apart (summed[1]).
    summed: list[np.ndarray] = []

    def keep(m: Member) -> None:
        parts = [m.evaluated_predictions] + ([] if m.test_predictions is None else [m.test_predictions])
        if summed and ([np.shape(p) for p in parts] != [s.shape for s in summed]):
            # Checked before anything is added: a member that does not fit drops out whole.
            raise FailedPrecondition(f"trial {m.trial}'s test predictions {[np.shape(p) for p in parts]} do not "
                                     f"match the other members' {[s.shape for s in summed]}")
        for i, p in enumerate(parts):
            part = m.weight * np.asarray(p, dtype=np.float64)
            if len(summed) > i:
                summed[i] += part
            else:
                summed.append(part)
        fitted.append(m._replace(evaluated_predictions=np.empty(0, dtype=np.float32), test_predictions=None))

    for candidate, weight in chosen:
        try:
            keep(obtain(candidate, weight))
        except Exception as e:  # noqa: BLE001 - one member's failure must not fail the job
            if len(chosen) == 1:
                raise
            dropped.append(f"trial {candidate.get('trial')}: {e if isinstance(e, NexusError) else repr(e)}")
    if dropped:
        selection = f"{selection}; dropped after a failed refit: {'; '.join(dropped)}"
        if req.get("trial") not in {c.get("trial") for c, _ in chosen}:
            # The rest were weighed beside the members that failed, not alone: the best trial
            # (the fallback when no ensemble is chosen) serves instead of a remainder nobody
            # scored. Its refit failing too fails the job, as it always has.
            best = {"trial": req.get("trial"), "params": dict(req["params"]), "epochs": req.get("epochs_hint")}
            fitted, summed[:] = [], []
            keep(fit_member(req, arrays, len(classes), best, 1.0))
            selection = f"{selection}; the best trial alone serves instead"
    if not fitted:
        raise FailedPrecondition(f"no member of the ensemble could be refitted: {'; '.join(dropped)}")
    total = sum(m.weight for m in fitted)
    fitted = [m._replace(weight=m.weight / total) for m in fitted]
    lead = fitted[0]

    # The ensemble's predictions on the test split and its shuffles: the weighted average of
    # its members' (a single model's own).
    evaluated = summed[0] / total
    y_test = np.asarray(arrays["y_test"])
    sampled = importance_rows(y_test.shape[0], seed)
    if (sampled is None) != (len(summed) == 1):
        raise FailedPrecondition("the ensemble's members scored different test rows; finalize the job again")
    test_metrics = metrics.all_metrics(task, y_test, evaluated[0] if sampled is None else summed[1] / total)
    importance = importance_of(list(evaluated), y_test if sampled is None else y_test[sampled], prep, metric)
    rows = {
        "evaluated_on": "test", "test_rows": int(y_test.shape[0]),
        "evaluated_model_rows": lead.evaluated.rows, "evaluated_model_splits": list(lead.evaluated.splits),
        "final_model_rows": lead.final.rows, "final_model_splits": list(lead.final.splits),
    }
    note = "; ".join(n for n in (m.final.note for m in fitted) if n)
    config = {
        "format": "nexus-model", "format_version": 1, "params": dict(lead.params), **lead.final.config,
        "task": task, "metric": metric, "classes": classes,
        "input_columns": list(prep["input_columns"]), "target": prep["target"]["name"],
        "epochs_trained": lead.final.epochs, "seed": seed, "note": note, "selection": selection,
        "versions": library_versions(), "meta": dict(req.get("meta") or {}),
    }
    artifact_metrics = {"test_metrics": test_metrics, "feature_importance": importance, **rows}
    lead_prep = {**prep, "target": {**prep["target"], "transform": lead.transform}}
    if len(fitted) > 1:
        # Each member carries its own category mappings (or none); the ensemble has none.
        config.pop(target_encoding.CONFIG_KEY, None)
    if len(fitted) == 1:
        write_artifact(req["artifact_path"], lead.final.weights, lead_prep, config, artifact_metrics)
    else:
        write_ensemble_artifact(req["artifact_path"], [
            (m.final.weights, {"weight": m.weight, "trial": m.trial, "params": dict(m.params), **m.final.config,
                               "transform": m.transform, "epochs_trained": m.final.epochs, "note": m.final.note})
            for m in fitted], lead_prep, config, artifact_metrics)
    where = {c.get("trial"): str(c.get("node_id") or "") for c, _ in chosen}
    members = [{"trial": m.trial, "family": str(m.params.get("family", "mlp")), "weight": m.weight,
                "epochs_trained": m.final.epochs, "params": dict(m.params), "node_id": where.get(m.trial, "")}
               for m in fitted]
    return {"test_metrics": test_metrics, "feature_importance": importance,
            "input_columns": list(prep["input_columns"]), "classes": classes, "epochs_trained": lead.final.epochs,
            **rows, "note": note, "members": members, "selection": selection, "dropped": dropped}


def task_select(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Ensemble selection alone: finalize's ``{params, trial?, epochs_hint?, files, metric,
    library, max_refit_seconds?}`` to ``{chosen: [{candidate, weight}], selection}``, what
    ``finalize`` takes as ``chosen`` (each candidate without its local predictions path)."""
    need(req, "params", "files", "metric")
    chosen, selection = choose_members(req)
    return {"chosen": [{"candidate": {k: v for k, v in c.items() if k != "predictions_path"}, "weight": w}
                       for c, w in chosen], "selection": selection}


def task_refit(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """One ensemble member's two fits: finalize's request with a ``candidate`` and its
    ``weight`` (one of :func:`task_select`'s ``chosen``) to ``{trial, family, weight,
    epochs_trained}``; the member is written to ``artifact_path`` (:func:`write_member`)
    for the ``finalize`` that assembles the ensemble."""
    need(req, "files", "task_type", "metric", "seed", "preprocessing", "artifact_path", "candidate")
    metrics.check_metric(req["metric"], req["task_type"])
    classes = list(req["preprocessing"]["target"].get("classes") or [])
    member = fit_member(req, load_arrays(req["files"]), len(classes), req["candidate"], float(req.get("weight", 1.0)))
    write_member(str(req["artifact_path"]), member)
    return {"trial": member.trial, "family": str(member.params.get("family", "mlp")), "weight": member.weight,
            "epochs_trained": member.final.epochs}


def choose_members(req: Mapping[str, Any]) -> tuple[list[tuple[dict[str, Any], float]], str]:
    """The candidates to fit with their weights, heaviest first, and why.

    With a library of at least two trials' predictions, ensemble selection decides; any
    other request fits the best trial's configuration alone."""
    best = {"trial": req.get("trial"), "params": dict(req["params"]), "epochs": req.get("epochs_hint")}
    library = [c for c in (req.get("library") or []) if c.get("predictions_path")]
    # The best trial leads the library, or there is no library: a node that could not fetch
    # its predictions sends the rest, and they are not enough to choose by.
    if len(library) < 2 or (best["trial"] is not None and library[0].get("trial") != best["trial"]):
        return [(best, 1.0)], "the best trial (no other trial's validation predictions to ensemble)"
    # A single split's scored rows are its validation targets: read them alone, not its inputs.
    files = req["files"]
    y = scored_rows(splits_for(files)) if "folds" in files else np.asarray(load_array(files["y_val"]))
    preds: list[np.ndarray] = []
    kept: list[dict[str, Any]] = []
    for c in library:
        try:
            p = np.load(c["predictions_path"], allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("trial %s's predictions are unreadable: %s", c.get("trial"), e)
            continue
        if p.shape[0] == y.shape[0] and (not preds or p.shape == preds[0].shape):
            preds.append(p)
            kept.append(c)
    if len(kept) < 2 or kept[0] is not library[0]:
        return [(best, 1.0)], "the best trial (too few trials' predictions cover the validation rows)"
    costs = [float(c.get("seconds") or 0.0) for c in kept]
    max_cost = req.get("max_refit_seconds")
    # kept[0] is the job's best trial, which the search ranked on its folds' mean: it leads
    # even where the pooled rows rank another first, unless the robust check overrules it.
    sel = ensemble.select(preds, y, req["metric"], costs=costs,
                          max_cost=None if max_cost is None else max(float(max_cost), costs[0]),
                          leader=0, labels=[f"trial {c.get('trial')}" for c in kept])
    if not sel.is_ensemble:
        if sel.single != 0:
            return [(kept[sel.single], 1.0)], sel.reason
        return [({**kept[0], "params": dict(req["params"])}, 1.0)], sel.reason
    return [(kept[i], w) for i, w in sel.weights.items()], sel.reason


class Member(NamedTuple):
    """A fitted member: its trial, weight, configuration, target transform, two fits, and
    the evaluated fit's predictions on :func:`permuted_inputs` of the test split (the
    unshuffled test rows first). A member read from a file has no ``predict`` on either
    fit, nor the evaluated fit's weights: assembling an ensemble needs neither."""

    trial: int | None
    weight: float
    params: dict[str, Any]
    transform: dict[str, Any] | None
    evaluated: Fit
    final: Fit
    evaluated_predictions: np.ndarray
    # The evaluated fit's predictions on every test row, when the shuffles were of a sample
    # of them (:func:`importance_rows`); None when evaluated_predictions[0] is every row's.
    test_predictions: np.ndarray | None = None


def fit_member(req: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_classes: int,
               candidate: Mapping[str, Any], weight: float) -> Member:
    """Both fits of one candidate's configuration (see the module docstring)."""
    params = dict(candidate["params"])
    prep = req["preprocessing"]
    transform = prep["target"].get("transform")
    if req["task_type"] == "regression":
        # The configuration's own target scale (a searched choice), fitted on the rows the
        # evaluated refit sees; the artifact records it, so serving inverts the same.
        y_fit = np.concatenate([arrays["y_train"], arrays["y_val"]])
        transform = target_scale.for_params(y_fit, params, transform)
    member_req = {**req, "params": params, "preprocessing": {**prep, "target": {**prep["target"], "transform": transform}}}
    gbt = params.get("family", "mlp") == "gbt"
    epochs = int(candidate.get("epochs") or params["max_iter" if gbt else "epochs"])
    if streams_final(req["files"], req["task_type"], n_classes, encoding_of(req["files"], params)):
        return _fit_member_streamed(member_req, n_classes, candidate, weight, gbt, epochs)
    fit = refit_gbt if gbt else refit_mlp
    encoder = FitEncoder.of(member_req, arrays, n_classes)
    evaluated_arrays, evaluated_tables = encoder.arrays(EVALUATED_SPLITS)
    evaluated = fit(member_req, evaluated_arrays, n_classes, EVALUATED_SPLITS, epochs, fallback=True)
    assert evaluated.predict is not None   # fallback=True: a diverged refit was replaced
    final_arrays, final_tables = encoder.arrays(FINAL_SPLITS)
    final = fit(member_req, final_arrays, n_classes, FINAL_SPLITS, evaluated.epochs, fallback=False)
    if final.weights is None:
        final = evaluated._replace(note="; ".join(n for n in (
            evaluated.note, f"{final.note}; kept the evaluated model") if n))
        final_tables = evaluated_tables
    final = final._replace(config={**final.config, **encoder.config(final_tables)})
    trial = candidate.get("trial")
    X_test = np.array(arrays["X_test"], dtype=np.float32)
    inputs, full = encoder.test_inputs(X_test), None
    rows = importance_rows(X_test.shape[0], int(req["seed"]))
    if rows is not None:
        full = _float32(evaluated.predict(encoder.model_inputs(inputs, evaluated_tables)))
        inputs = inputs[rows]
    predictions = _shuffled_predictions(evaluated, encoder, inputs, evaluated_tables, prep, int(req["seed"]))
    return Member(None if trial is None else int(trial), weight, params, transform, evaluated, final, predictions,
                  full)


def _float32(predictions: np.ndarray) -> np.ndarray:
    # float32: a member file holds one prediction per test row for every shuffle of every
    # column (and class), which float64 would double.
    return np.asarray(predictions, dtype=np.float32)


def _shuffled_predictions(evaluated: Fit, encoder: "FitEncoder", inputs: np.ndarray,
                          tables: list[target_encoding.Table], prep: Mapping[str, Any], seed: int) -> np.ndarray:
    """The evaluated fit's predictions on :func:`permuted_inputs` of ``inputs`` (test rows
    as :meth:`FitEncoder.test_inputs` gives them), the unshuffled rows first."""
    assert evaluated.predict is not None
    return np.stack([_float32(evaluated.predict(encoder.model_inputs(X, tables)))
                     for X in permuted_inputs(inputs, prep, seed, linked=encoder.linked)])


#: Test rows past this many are sampled (seeded, so every member of an ensemble shuffles the
#: same rows) for the permutation importance, which predicts every row once per shuffle of
#: every column; the test metrics still score every row.
IMPORTANCE_ROWS = 65_536


def importance_rows(n_test: int, seed: int) -> np.ndarray | None:
    """The test rows permutation importance shuffles: None for all of them."""
    return None if n_test <= IMPORTANCE_ROWS else sample_rows(n_test, IMPORTANCE_ROWS, seed)


def _fit_member_streamed(req: Mapping[str, Any], n_classes: int, candidate: Mapping[str, Any], weight: float,
                         gbt: bool, epochs: int) -> Member:
    """:func:`fit_member` for rows too many for the runner's budget: each fit reads its
    splits' rows from the prepared files as it trains (a network) or a sample of them that
    fits (trees), and the test rows are scored a chunk at a time."""
    files, task, prep, params = req["files"], req["task_type"], req["preprocessing"], req["params"]
    seed, transform = int(req["seed"]), prep["target"].get("transform")
    encoding = encoding_of(files, params)
    fit = refit_gbt_streamed if gbt else refit_mlp_streamed
    rows, other, evaluated_tables = fit_sources(files, EVALUATED_SPLITS, task, n_classes, transform, encoding)
    evaluated = fit(req, rows, n_classes, EVALUATED_SPLITS, epochs, fallback=True)
    assert evaluated.predict is not None   # fallback=True: a diverged refit was replaced
    rows, _, final_tables = fit_sources(files, FINAL_SPLITS, task, n_classes, transform, encoding)
    final = fit(req, rows, n_classes, FINAL_SPLITS, evaluated.epochs, fallback=False)
    del rows
    if final.weights is None:
        final = evaluated._replace(note="; ".join(n for n in (evaluated.note, f"{final.note}; kept the evaluated model")
                                                   if n))
        final_tables = evaluated_tables
    encoder = FitEncoder.of(req, {}, n_classes)
    final = final._replace(config={**final.config, **encoder.config(final_tables)})
    test = other("test")
    chunk = max(256, TEST_CHUNK_BYTES // test.row_bytes)
    full = np.concatenate([_float32(evaluated.predict(c)) for c in test.chunks(chunk)])
    sampled = importance_rows(len(test), seed)
    picked = np.arange(len(test)) if sampled is None else sampled
    X_test = RowSource(rows_of(files["X_test"]), test.y).take(picked)   # as prepared: the shuffles move blocks
    if encoder.layout is not None:
        encoder = encoder._replace(codes={**encoder.codes, "test": encoder.codes["test"][picked]})
    predictions = _shuffled_predictions(evaluated, encoder, encoder.test_inputs(X_test), evaluated_tables, prep, seed)
    trial = candidate.get("trial")
    return Member(None if trial is None else int(trial), weight, params, transform, evaluated, final, predictions,
                  None if sampled is None else full)


#: Bytes of test rows a streamed finalize scores at once.
TEST_CHUNK_BYTES = 8 << 20


class FitEncoder(NamedTuple):
    """A member's category encoding in finalize: for the one-hot encoding (``layout``
    None) the prepared arrays as they are; for a target encoding, each fit's rows encoded
    on themselves (cross-fitted) and the other rows with the mappings fitted on them, as a
    trial encodes its training and validation rows (:mod:`nexus_node.pipeline.target_encoding`)."""

    prep: Mapping[str, Any]
    arrays_in: Mapping[str, np.ndarray]
    layout: np.ndarray | None
    codes: Mapping[str, np.ndarray]
    task: str
    n_classes: int
    transform: Mapping[str, Any] | None

    @classmethod
    def of(cls, req: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_classes: int) -> "FitEncoder":
        files, prep = req["files"], req["preprocessing"]
        if encoding_of(files, req["params"]) == "onehot":
            return cls(prep, arrays, None, {}, req["task_type"], n_classes, None)
        codes = {s: np.asarray(load_array(files[f"codes_{s}"])) for s in FINAL_SPLITS}
        return cls(prep, arrays, np.asarray(load_array(files["codes_layout"])), codes, req["task_type"], n_classes,
                   prep["target"].get("transform"))

    def arrays(self, splits: tuple[str, ...]) -> tuple[Mapping[str, np.ndarray], list[target_encoding.Table]]:
        """The arrays a fit on ``splits`` trains (and, for other splits, predicts) on, and
        the mappings fitted on its rows."""
        if self.layout is None:
            return self.arrays_in, []
        X, y = stack(self.arrays_in, splits)
        t = target_encoding.targets_for(y, self.task, self.n_classes, self.transform)
        encoded, tables = target_encoding.fit_rows(X, np.concatenate([self.codes[s] for s in splits]), t, self.layout)
        out = dict(self.arrays_in)
        bounds = np.cumsum([0] + [self.arrays_in[f"y_{s}"].shape[0] for s in splits])
        for s, a, b in zip(splits, bounds[:-1], bounds[1:]):
            out[f"X_{s}"] = encoded[a:b]
        for s in FINAL_SPLITS:
            if s not in splits:
                out[f"X_{s}"] = target_encoding.apply(self.arrays_in[f"X_{s}"], self.codes[s], tables, self.layout)
        return out, tables

    @property
    def linked(self) -> dict[str, list[int]]:
        """The code columns :meth:`test_inputs` appends, by the column they belong to."""
        if self.layout is None:
            return {}
        n = len(self.prep["feature_names"])
        return {spec["name"]: [n + j] for j, spec in enumerate(target_encoding.encoded_specs(self.prep))}

    def test_inputs(self, X_test: np.ndarray) -> np.ndarray:
        """The test rows as permutation importance shuffles them: with their codes."""
        if self.layout is None:
            return X_test
        return np.hstack([X_test, self.codes["test"].astype(np.float32)])

    def model_inputs(self, X: np.ndarray, tables: list[target_encoding.Table]) -> np.ndarray:
        """:meth:`test_inputs` rows (maybe shuffled) as a model fitted with ``tables`` reads them."""
        if self.layout is None:
            return X
        n = len(self.prep["feature_names"])
        return target_encoding.apply(X[:, :n], X[:, n:].astype(np.int64), tables, self.layout)

    def config(self, tables: list[target_encoding.Table]) -> dict[str, Any]:
        """What the member's config records of its encoding: the mappings its final fit
        was trained with, as plain data (serving applies them)."""
        return {} if self.layout is None else {target_encoding.CONFIG_KEY: target_encoding.to_json(tables, self.prep)}


def write_member(path: str, m: Member) -> None:
    """``m`` as a member file (``pipeline.artifact.write_member``)."""
    from nexus_node.pipeline.artifact import write_member as write

    def fit_doc(f: Fit) -> dict[str, Any]:
        return {"epochs": f.epochs, "note": f.note, "splits": list(f.splits), "rows": f.rows}

    write(path, m.final.weights, {
        "trial": m.trial, "weight": m.weight, "params": dict(m.params), "transform": m.transform,
        "family": str(m.final.config.get("family", "mlp")),
        "final": {**fit_doc(m.final), "config": dict(m.final.config)}, "evaluated": fit_doc(m.evaluated),
    }, m.evaluated_predictions, m.test_predictions)


def load_member(path: str, weight: float) -> Member:
    """A member file as :func:`write_member` wrote it, with the ``weight`` selection gave it."""
    from nexus_node.pipeline.artifact import read_member

    weights, doc, predictions, test_predictions = read_member(path)

    def fit_of(d: Mapping[str, Any], w: Any, config: dict[str, Any]) -> Fit:
        return Fit(None, w, config, int(d["epochs"]), str(d.get("note", "")), tuple(d["splits"]), int(d["rows"]))

    trial = doc.get("trial")
    return Member(None if trial is None else int(trial), weight, dict(doc["params"]), doc.get("transform"),
                  fit_of(doc["evaluated"], None, {}), fit_of(doc["final"], weights, dict(doc["final"]["config"])),
                  predictions, test_predictions)


# Which splits each of finalize's two fits trains on.
EVALUATED_SPLITS = ("train", "val")
FINAL_SPLITS = ("train", "val", "test")


class Fit(NamedTuple):
    """One of finalize's fits. ``weights`` is None when the fit diverged (``note`` says
    why); ``epochs`` are the epochs or boosting iterations it ran; ``splits`` and ``rows``
    are the rows it saw."""

    predict: Callable[[np.ndarray], np.ndarray] | None
    weights: Any
    config: dict[str, Any]
    epochs: int
    note: str
    splits: tuple[str, ...]
    rows: int


def stack(arrays: Mapping[str, np.ndarray], splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of the named splits, in order."""
    return (np.concatenate([arrays[f"X_{s}"] for s in splits]),
            np.concatenate([arrays[f"y_{s}"] for s in splits]))


def refit_mlp(req: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_classes: int,
               splits: tuple[str, ...], epochs: int, fallback: bool) -> Fit:
    """The MLP on ``splits`` for ``epochs`` epochs. With ``fallback``, a diverging fit is
    replaced by the model trained as a trial is (train split, early stopping on val)."""
    from nexus_node.pipeline.train import DeviceData

    task = req["task_type"]
    transform = req["preprocessing"]["target"].get("transform")
    X, y = stack(arrays, splits)
    data = DeviceData.from_arrays({"X_train": X, "y_train": y}, task, n_classes, transform=transform)
    del X
    return _refit_mlp(req, data, lambda: DeviceData.from_arrays({k: arrays[k] for k in TRAIN_ARRAYS}, task, n_classes,
                                                                transform=transform),
                      n_classes, splits, epochs, fallback, int(arrays["y_train"].shape[0]))


def refit_mlp_streamed(req: Mapping[str, Any], rows: RowSource, n_classes: int, splits: tuple[str, ...],
                       epochs: int, fallback: bool) -> Fit:
    """:func:`refit_mlp` on rows read from the prepared files as it trains."""
    from nexus_node.pipeline.train import StreamedData

    files, task, params = req["files"], req["task_type"], req["params"]
    transform = req["preprocessing"]["target"].get("transform")
    window = window_bytes(memory.budget())
    data = StreamedData.from_sources(rows, None, task, n_classes, transform=transform, window_bytes=window)

    def split() -> Any:
        train, other, _ = fit_sources(files, ("train",), task, n_classes, transform, encoding_of(files, params))
        return StreamedData.from_sources(train, other("val"), task, n_classes, transform=transform, window_bytes=window)

    return _refit_mlp(req, data, split, n_classes, splits, epochs, fallback,
                      int(array_shape(files["y_train"])[0]))


def _refit_mlp(req: Mapping[str, Any], data: Any, train_split: Callable[[], Any], n_classes: int,
               splits: tuple[str, ...], epochs: int, fallback: bool, train_rows: int) -> Fit:
    """:func:`refit_mlp` on ``data`` (the rows of ``splits``); ``train_split`` gives the
    train/validation split a fallback trains on as a trial does."""
    import torch

    from nexus_node.pipeline.model import output_width
    from nexus_node.pipeline.train import fit_fixed, model_from_state, predict, train_and_score

    task, metric, params = req["task_type"], req["metric"], req["params"]
    seed, threads = int(req["seed"]), int(req.get("threads", 1))
    transform = req["preprocessing"]["target"].get("transform")
    n_in, rows = data.n_features, len(data.train) if hasattr(data, "train") else int(data.X_train.shape[0])
    model, why = fit_fixed(data, params, epochs, seed, threads)
    note = ""
    if model is None and not fallback:
        return Fit(None, None, {}, epochs, why, splits, rows)
    if model is None:
        res = train_and_score(train_split(), params, task, n_classes, metric, seed, threads)
        if res.state_dict is None:
            raise FailedPrecondition(f"the best configuration no longer trains: {why}; {res.message}")
        model = model_from_state(res.state_dict, n_in, output_width(task, n_classes), params)
        epochs, note = res.epochs, f"{why}; kept the model trained on the train split instead"
        splits, rows = ("train",), train_rows
    device = data.device
    del data   # the device copy of the rows is not needed past training

    def predict_np(X_enc: np.ndarray) -> np.ndarray:
        return predict(model, torch.as_tensor(X_enc, dtype=torch.float32, device=device), task, transform)

    config = {"family": "mlp", "n_in": int(n_in), "n_out": output_width(task, n_classes)}
    return Fit(predict_np, model.state_dict(), config, epochs, note, splits, rows)


def refit_gbt(req: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_classes: int,
               splits: tuple[str, ...], n_iter: int, fallback: bool) -> Fit:
    """Boosted trees on ``splits`` for ``n_iter`` iterations, exported to arrays. ``predict``
    is scikit-learn's own, which the exported trees equal (tests/pipeline/test_gbt.py): the
    permutation importance calls it dozens of times, and scikit-learn's compiled walk is
    about 40 times faster than the numpy one serving uses (16 s against 0.4 s on a
    3,500-row test split). (Trees do not diverge: ``fallback`` is unused.)"""

    cols = _tree_columns(req, n_classes, int(arrays["X_train"].shape[1]))
    X, y = stack(arrays, splits)
    return _refit_gbt(req, X[:, cols], y, cols, splits, n_iter, "")


def refit_gbt_streamed(req: Mapping[str, Any], rows: RowSource, n_classes: int, splits: tuple[str, ...],
                       n_iter: int, fallback: bool) -> Fit:
    """:func:`refit_gbt` on the largest seeded sample of the rows (stratified by class)
    that the room left in the runner's budget holds (:func:`.arrays.tree_row_bytes`). The
    evaluated fit (``fallback``) fails without room for :data:`MIN_SAMPLED_ROWS` rows; the
    final fit then returns no weights, and the artifact keeps the evaluated model."""
    from nexus_node.pipeline.gbt import load_library

    load_library()
    task = req["task_type"]
    cols = _tree_columns(req, n_classes, rows.n_features)
    per_row = tree_row_bytes(rows.n_features, len(cols), target_encoding.width(task, n_classes))
    give_back_freed_memory()   # what an earlier fit freed is room for this one
    keep = int(STREAM_SHARE * max(0, memory.room() or 0) // per_row)
    if keep < MIN_SAMPLED_ROWS and not fallback:
        # The final fit (every row): the artifact keeps the evaluated model instead.
        return Fit(None, None, {}, n_iter, f"no room left for a final refit of the trees ({keep} rows)", splits,
                   0)
    if keep < MIN_SAMPLED_ROWS:
        raise FailedPrecondition(
            f"the runner's memory budget of {memory.budget() >> 20} MB leaves room for {keep} of the {len(rows)} "
            f"rows to refit trees on; at least {MIN_SAMPLED_ROWS} are needed (give runners more with "
            "nexus-node --trial-memory-mb)")
    picked = sample_rows(len(rows), keep, int(req["seed"]), None if task == "regression" else np.asarray(rows.y))
    note = "" if picked.size == len(rows) else f"trees refitted on {picked.size} sampled rows of {len(rows)}"
    return _refit_gbt(req, rows.take(picked)[:, cols], np.asarray(rows.y)[picked], cols, splits, n_iter, note)


def _tree_columns(req: Mapping[str, Any], n_classes: int, width: int) -> np.ndarray:
    cols = model_tree_columns(req["files"], req["task_type"], n_classes, encoding_of(req["files"], req["params"]))
    return np.arange(width, dtype=np.int64) if cols is None else cols


def _refit_gbt(req: Mapping[str, Any], X: np.ndarray, y: np.ndarray, cols: np.ndarray, splits: tuple[str, ...],
               n_iter: int, note: str) -> Fit:
    """:func:`refit_gbt` on rows ``X`` (the tree columns ``cols`` of the model's inputs)."""
    from nexus_node.pipeline.gbt import export_trees, fit_gbt, predict_model

    task, params = req["task_type"], req["params"]
    transform = req["preprocessing"]["target"].get("transform")
    model = fit_gbt(X, y, params, task, n_iter, int(req["seed"]), int(req.get("threads", 1)), transform)
    weights, meta = export_trees(model)
    meta = {"family": "gbt", **meta, "columns": [int(c) for c in cols]}

    def predict_np(X_enc: np.ndarray) -> np.ndarray:
        return predict_model(model, np.asarray(X_enc)[:, cols], task, transform)

    return Fit(predict_np, weights, meta, n_iter, note, splits, int(y.shape[0]))



"""Tasks a runner process executes: JSON-able dict in, JSON-able dict out.

``run_task(req, ctx)`` dispatches on ``req["task"]``:

- ``ping``: ``{"pong", "torch", "device", "cuda_name", "warm_up_s"}`` (the first ping warms torch up;
  ``{"warm_up": false}`` leaves torch unloaded and answers None for its fields).
- ``prepare``: read, profile, split and encode a CSV (:func:`nexus_node.pipeline.prepare.prepare`).
- ``check``: the submit checks of an upload the node cannot read itself: Parquet
  (:func:`nexus_node.pipeline.csvio.check_table`).
- ``trial``: train one Optuna trial, reporting to the study through the node's storage
  proxy, and finish it there (``tell``).
- ``finalize``: refit the best configuration (or an ensemble's members) on train+val, test
  it, rank columns by permutation importance, then refit it on every row (train+val+test)
  for the model artifact; ``select`` and ``refit`` are its parts that run apart, so that an
  ensemble's members refit on several nodes at once (:mod:`nexus_node.runner.finalize`).
- ``predict``: predictions for a table file (CSV, gzip-compressed CSV or Parquet) from a model
  artifact.

Bad user data raises :class:`~nexus_node.errors.InvalidInput`; the runner sends its kind
and message to the node. Runners are long-lived and run tasks one at a time, so module
caches (arrays, device tensors, storage proxies, loaded models) carry over between tasks
without locks; each is bounded.

Only numpy and optuna load with this module. torch loads with the first task that trains or
serves a network, pandas with the first prepare, finalize or predict, scikit-learn with the
first tree: a runner holds only the libraries of the tasks it ran (see
:mod:`nexus_node.runner.families`, which the node uses to keep one family per runner when
memory is short).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import math
import queue
import sys
import threading
import time
from collections import UserDict
from typing import Any, Callable, Mapping

import numpy as np
import optuna

from nexus_node.errors import FailedPrecondition, InvalidInput
from nexus_node.net.tls import from_spec as tls_from_spec
from nexus_node.pipeline import metrics
from nexus_node.pipeline import target as target_scale
from nexus_node.runner.arrays import LRU, data_for, encoding_of, file_key, group_shards, model_tree_columns, tree_splits
from nexus_node.runner.context import TaskContext, need
from nexus_node.runner.finalize import task_finalize, task_refit, task_select
from nexus_node.study import pruning
from nexus_node.study.proxy import NexusStorageProxy
from nexus_node.study.studies import PREDICTIONS_ATTR

_storages = LRU(4)
_predictors = LRU(4)
_studies = LRU(8)
_warm_up_s: float | None = None


def run_task(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Execute one task request.

    Args:
        req: The request; ``req["task"]`` names the task, the other keys are its inputs
            (see each ``_task_*`` function).
        ctx: Cancellation and progress events.

    Returns:
        The task's JSON-able result.

    Raises:
        InvalidInput: Unknown task, a missing request key, or unusable user data.
        FailedPrecondition: A trial was already finished in the study by someone else.
    """
    handler = _TASKS.get(req.get("task", ""))
    if handler is None:
        raise InvalidInput(f"unknown task {req.get('task')!r}; known tasks: {sorted(_TASKS)}")
    if isinstance(req.get("files"), Mapping):
        req = {**req, "files": group_shards(req["files"])}   # an array's row shards, as one entry
    return handler(req, ctx)


def _task_ping(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Versions and device. The first ping in a process also trains a tiny network for
    two epochs: torch's one-time setup (about a second on a CPU) is then paid when the
    runner starts (it pings once to say it is ready), not by the first trial's clock."""
    global _warm_up_s
    if not req.get("warm_up", True) and "torch" not in sys.modules:
        return {"pong": True, "torch": None, "device": None, "cuda_name": None, "warm_up_s": None}
    import torch

    from nexus_node.pipeline.train import warm_up

    if _warm_up_s is None:
        started = time.perf_counter()
        warm_up()
        _warm_up_s = time.perf_counter() - started
    cuda = torch.cuda.is_available()
    return {"pong": True, "torch": torch.__version__, "device": "cuda" if cuda else "cpu",
            "cuda_name": torch.cuda.get_device_name(0) if cuda else None, "warm_up_s": _warm_up_s}


def _table_format(req: Mapping[str, Any], key: str) -> Any:
    """The :class:`~nexus_node.pipeline.tableformat.TableFormat` a request records under
    ``key`` (a job's ``input_format``), or None when it records none."""
    from nexus_node.pipeline.tableformat import TableFormat

    recorded = req.get(key)
    if not recorded:
        return None
    try:
        return TableFormat.from_dict(recorded)
    except ValueError as e:
        raise InvalidInput(f"the request's {key} is not a table format: {e}") from None


def _task_prepare(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``{csv_path, target, seed, out_dir, drop_columns?, test_fraction?, val_fraction?,
    format?, shard_bytes?}``; ``format``: how the node read the upload at submit (the job's
    ``input_format``), detected again when absent; ``shard_bytes``: the most bytes of inputs
    in a row shard of a prepared array (the coordinator's ``--shard-mb``)."""
    need(req, "csv_path", "target", "seed", "out_dir")
    from nexus_node.pipeline.prepare import SHARD_BYTES, prepare

    shard_bytes = int(req.get("shard_bytes") or SHARD_BYTES)
    if shard_bytes < 1:
        raise InvalidInput(f"shard_bytes must be positive, got {shard_bytes}")
    return prepare(
        req["csv_path"], req["target"], int(req["seed"]), req["out_dir"],
        drop_columns=list(req.get("drop_columns") or []),
        test_fraction=float(req.get("test_fraction", 0.2)), val_fraction=float(req.get("val_fraction", 0.2)),
        fmt=_table_format(req, "format"), shard_bytes=shard_bytes,
    )


def _task_check(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``{path, target, drop_columns?, max_bytes?, limit_flag?}`` to ``{format, encoding,
    columns, rows, target_present, task}``: the submit checks of an upload the node cannot
    read itself (Parquet), :func:`nexus_node.pipeline.csvio.check_table`."""
    need(req, "path", "target")
    from nexus_node.pipeline import csvio

    max_bytes = req.get("max_bytes")
    s = csvio.check_table(req["path"], str(req["target"]), list(req.get("drop_columns") or []),
                          None if max_bytes is None else int(max_bytes), str(req.get("limit_flag", "")))
    return {"format": s.format.to_dict(), "encoding": s.encoding, "columns": s.columns, "rows": s.rows,
            "target_present": s.target_present, "task": s.task}


def _storage(spec: Mapping[str, Any]) -> NexusStorageProxy:
    # One proxy per node address: its channel and trial cache survive across trials. That
    # assumes the storage behind an address stays the same, which holds for runners: they
    # are children of their node and the node's journal outlives the node's restarts.
    # With TLS on, the node's certificate is checked against the CA under a name it carries
    # (nexus_node/net/tls.py: it need not name the loopback address).
    tls = tls_from_spec(spec)
    key = (spec["host"], int(spec["port"]), spec.get("token"), tls)
    return _storages.get_or_make(key, lambda: NexusStorageProxy(host=key[0], port=key[1], token=key[2], tls=tls))


class _PipelinedReporter:
    """Reports intermediate values and asks the pruner off the training thread.

    Each ``should_prune`` and each write is a round trip to the node's storage (and a write,
    a consensus round behind it): about a millisecond on loopback, as long as an epoch of a
    small table. Waiting for them every epoch would add a large share to short trials, so the
    training thread hands each epoch's value to one background thread and polls for the
    pruning answer between batches. A "prune" that arrives during the next epoch abandons
    that epoch, so the trial stops at the same reported epoch as in-process Optuna would,
    having spent only the round trip's time on the abandoned epoch.

    Through a Nexus node the values are written in batches (``ReportSteps``: one journal
    append) at most once per ``write_interval`` seconds, and the pruner is asked at most once
    per ``ask_interval``. Pruners never need a running trial's values in the study: Optuna's
    pruners judge a trial by the copy its runner keeps (here, updated as values arrive)
    against other trials' finished values and rung attributes. The study's copy is for
    watchers (the trial list's epochs column), for which a second is fresh enough. A
    consensus round per epoch was most of a node's CPU per trial (42 log entries for a
    40-epoch trial), every entry stays in the log, and on a 2-core machine the nodes' CPU is
    taken from the trials (``scripts/bench scale``). Against plain Optuna storage (no
    ``ReportSteps``, found at the first write) values are reported one by one.

    The pruner is asked as ``Trial.should_prune`` asks it: with the trial as this reporter
    holds it (read once from the study, every reported value added at once) and its system
    attributes read from the study when the pruner first looks (the rung marks Hyperband
    writes), through Optuna's public ``BasePruner.prune``.

    Ordering: one thread reports values in epoch order, followed by one ``should_prune``;
    :meth:`close` writes what is held at once and waits (or, with ``write_held=False``, leaves
    it for the caller to write with the trial's end: ``FinishTrial``), so the study holds
    every reported epoch once the trial is told.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, trial_id: int, warmup: int,
                 write_steps: Callable[[int, list[tuple[int, float]]], bool] | None = None,
                 ask_interval: float = 0.2, write_interval: float = 1.0) -> None:
        self._study, self._store, self._tid, self._warmup = study, storage, trial_id, warmup
        self._trial = storage.get_trial(trial_id)   # the pruner's copy; values are added to it
        self._write_steps = write_steps
        self._ask_interval, self._write_interval = ask_interval, write_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = threading.Event()
        self._prune = False
        self._error: BaseException | None = None
        self._held: list[tuple[int, float]] = []   # (epoch, value) the study does not hold yet
        self._write_at_close = True
        self._thread = threading.Thread(target=self._run, name="nexus-trial-report", daemon=True)
        self._thread.start()

    def __call__(self, value: float, epoch: int) -> bool:
        """Queue one epoch's value; True once the pruner has said to stop."""
        if self._error is not None:
            raise self._error
        self._queue.put((value, epoch))
        return self._prune

    def pruned(self) -> bool:
        """True once the pruner said to stop (or reporting failed): polled between batches."""
        return self._prune or self._error is not None

    def close(self, write_held: bool = True) -> BaseException | None:
        """Take every queued report, write what is held unless ``write_held`` is False (see
        :meth:`take_held`), and wait; returns the error that stopped reporting, if any."""
        self._write_at_close = write_held
        self._closing.set()
        self._queue.put(None)
        self._thread.join()
        return self._error

    def take_held(self) -> list[tuple[int, float]]:
        """(after ``close(write_held=False)``) The ``(epoch, value)`` pairs the study does not
        hold yet, to be written with the trial's end; :meth:`write` writes them otherwise."""
        held, self._held = self._held, []
        return held

    def _run(self) -> None:
        done, last_round, last_write = False, -math.inf, time.monotonic()
        while not done:
            batch = [self._queue.get()]
            if self._write_steps is not None and batch[-1] is not None:
                # Let values gather until the interval since the last round is up.
                self._closing.wait(self._ask_interval - (time.monotonic() - last_round))
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            items = [b for b in batch if b is not None]
            if self._error is not None or not (items or done):
                continue
            try:
                self._take(items)
                if self._held and (self._write_at_close if done else
                                   time.monotonic() - last_write >= self._write_interval):
                    self.write(self.take_held())
                    last_write = time.monotonic()
                # Before the warm-up the pruner always says no; asking costs a trip.
                if items and items[-1][1] >= self._warmup and not self._prune and not done:
                    self._prune = self._should_prune()
            except BaseException as e:  # handed to the training thread, which re-raises it
                self._error = e
            last_round = time.monotonic()

    @property
    def number(self) -> int:
        """The trial's number in its study."""
        return self._trial.number

    @property
    def values(self) -> dict[int, float]:
        """The intermediate values the pruner judges the trial by (every one reported)."""
        return self._trial.intermediate_values

    def _should_prune(self) -> bool:
        latest = copy.copy(self._trial)
        latest.system_attrs = _StoredSystemAttrs(self._store, self._tid)
        return self._study.pruner.prune(self._study, latest)

    def _take(self, items: list[tuple[float, int]]) -> None:
        # A step kept once keeps its first value, as Trial.report does.
        kept = self._trial.intermediate_values
        for value, epoch in items:
            if epoch not in kept:
                kept[epoch] = float(value)
                if self._write_steps is None:   # step by step, as Trial.report writes it
                    self._store.set_trial_intermediate_value(self._tid, epoch, float(value))
                else:
                    self._held.append((epoch, float(value)))

    def write(self, held: list[tuple[int, float]]) -> None:
        """Writes ``held`` values (taken from the reporter) to the study."""
        if self._write_steps is not None and self._write_steps(self._tid, held):
            return
        # Not a Nexus node: step by step from now on.
        self._write_steps = None
        for epoch, value in held:
            self._store.set_trial_intermediate_value(self._tid, epoch, value)


class _StoredSystemAttrs(UserDict):
    """A trial's system attributes as the study holds them, read when first looked at (as
    ``Trial.should_prune`` hands them to the pruner: a median pruner never reads them)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        # UserDict.__init__ would set ``data``; it is read lazily instead.
        self._store, self._tid = storage, trial_id
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = dict(self._store.get_trial_system_attrs(self._tid))
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data = value


def _task_trial(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``{study_name, trial_id, params, files, task_type, n_classes, metric, seed, threads,
    storage: {host, port, token}, pruner?}`` to ``{state, value, epochs, message}``.

    ``epochs`` is the epoch count (boosting iterations for ``params["family"] == "gbt"``)
    that produced ``value`` (also the trial's user attribute ``epochs``; the epochs run
    are the trial's reported steps): pass it to finalize as ``epochs_hint``.
    ``params["category_encoding"] == "target"`` trains on the arrays target-encoded on each
    fold's training rows (:func:`nexus_node.runner.arrays.encoded_splits`). The study's direction must match the metric's own (``maximize`` in
    the request is checked against it).
    """
    need(req, "study_name", "trial_id", "params", "files", "task_type", "metric", "seed", "storage")
    task, metric = req["task_type"], req["metric"]
    metrics.check_metric(metric, task)
    if "maximize" in req and bool(req["maximize"]) != metrics.MAXIMIZE[metric]:
        raise InvalidInput(f"metric {metric!r} is {'maximized' if metrics.MAXIMIZE[metric] else 'minimized'}, "
                           f"but the request says maximize={req['maximize']}")
    n_classes = int(req.get("n_classes", 0))
    if task != "regression" and n_classes < 2:
        raise InvalidInput(f"a {task} trial needs n_classes >= 2, got {n_classes}")
    gbt = req["params"].get("family", "mlp") == "gbt"
    log = target_scale.log_choice(req["params"]) if task == "regression" else None
    try:
        encoding = encoding_of(req["files"], req["params"])
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    data = None if gbt else data_for(req["files"], task, n_classes, log, encoding)
    pruner, warmup = pruning.build(req.get("pruner"))
    # The node samples every parameter; the runner never asks the sampler for anything, so
    # the cheapest sampler avoids building TPE's state for nothing. The study object is
    # reused by the slot's next trials: loading it costs two round trips.
    store = req["storage"]
    key = (store["host"], int(store["port"]), store.get("token"), tls_from_spec(store), req["study_name"],
           tuple(sorted((req.get("pruner") or {}).items())))
    study = _studies.get_or_make(key, lambda: optuna.load_study(
        study_name=req["study_name"], storage=_storage(store), sampler=optuna.samplers.RandomSampler(), pruner=pruner))
    trial_id = int(req["trial_id"])
    reporter = _PipelinedReporter(study, _storage(store), trial_id, warmup, write_steps=_storage(store).report_steps)

    def report(value: float, epoch: int) -> bool:
        ctx.emit({"kind": "epoch", "epoch": epoch, "value": value})
        return reporter(value, epoch)

    try:
        try:
            if gbt:
                from nexus_node.pipeline.gbt import train_and_score_gbt

                splits, sampled = tree_splits(req["files"], task, n_classes, encoding, log)
                res = train_and_score_gbt(
                    splits, req["params"], task, metric, int(req["seed"]), int(req.get("threads", 1)),
                    columns=model_tree_columns(req["files"], task, n_classes, encoding),
                    report=report, cancelled=ctx.cancelled, pruned=reporter.pruned)
                if sampled is not None:
                    res = dataclasses.replace(res, message=f"{res.message}; trained on {sampled} sampled training rows, "
                                               "as many as the trial's memory budget holds")
            else:
                from nexus_node.pipeline.train import train_and_score

                assert data is not None   # loaded above for every MLP trial
                res = train_and_score(data, req["params"], task, n_classes, metric, int(req["seed"]),
                                      int(req.get("threads", 1)), report=report, cancelled=ctx.cancelled,
                                      pruned=reporter.pruned)
        except BaseException:
            reporter.close()   # what the trial reported up to its failure reaches the study
            raise
        # The values still held go with the trial's end, in the same write.
        error = reporter.close(write_held=False)
        if error is not None:
            raise error
        attrs: dict[str, Any] = {"epochs": res.epochs, **({"fail_reason": res.message} if res.state == "FAIL" else {})}
        if res.state == "COMPLETE" and res.predictions is not None and req.get("predictions_path"):
            attrs[PREDICTIONS_ATTR] = _write_predictions(req["predictions_path"], res.predictions)
        value = res.value if res.state == "COMPLETE" else None
        # The last values, the attributes and the state in one write (one consensus round).
        held = reporter.take_held()
        told = _storage(store).finish_trial(trial_id, held, attrs, res.state, value)
        if told is None:   # plain Optuna storage: the same, one write each
            reporter.write(held)
            for k, v in attrs.items():
                _storage(store).set_trial_user_attr(trial_id, k, v)
            frozen = study.tell(reporter.number, value, state=optuna.trial.TrialState[res.state],
                                skip_if_finished=True)
            told = (frozen.state.name, frozen.value)
    except optuna.exceptions.UpdateFinishedTrialError:
        told = None
    if told is None or told[0] != res.state:
        now = _storage(store).get_trial(trial_id).state.name
        raise FailedPrecondition(f"trial {trial_id} was already {now} in the study (finished elsewhere); "
                                 "this runner's result is discarded")
    return {"state": res.state, "value": res.value, "epochs": res.epochs, "message": res.message,
            **({"predictions_sha256": attrs[PREDICTIONS_ATTR]} if PREDICTIONS_ATTR in attrs else {})}


def _write_predictions(path: str, predictions: np.ndarray) -> str:
    """A trial's validation predictions as ``.npy`` (float32, no pickle) at ``path``; their
    sha256, the blob id the node ingests them under."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(predictions, dtype=np.float32), allow_pickle=False)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_predictor(path: str):
    """The artifact at ``path`` as a :class:`~nexus_node.pipeline.artifact.Predictor`,
    cached by path and file identity."""
    from nexus_node.pipeline.artifact import load_artifact

    return _predictors.get_or_make(file_key(path), lambda: load_artifact(path))


PREDICT_BATCH = 5000


def _task_predict(req: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``{artifact_path, csv_path, format_hint?, max_bytes?, limit_flag?}`` to ``{classes,
    count, warnings}``; the predictions themselves go out as events ``{"kind": "predictions",
    "start": i, "rows": [{label, value, probabilities, outside_range, unseen_categories,
    empty}, ...]}`` of at most :data:`PREDICT_BATCH` rows, in order, so neither a protocol
    line nor the node's memory grows with the input. ``warnings`` counts the rows with
    unseen categories and the empty ones (:func:`nexus_node.pipeline.input_checks.warning_counts`).

    The input is any table file training takes (:func:`nexus_node.pipeline.csvio.read_table`),
    its format detected; ``format_hint`` (the training upload's) decides its decimal mark
    where its own cells do not, and ``max_bytes`` bounds what a compressed input expands to.
    """
    need(req, "artifact_path", "csv_path")
    from nexus_node.pipeline import csvio

    predictor = load_predictor(req["artifact_path"])
    max_bytes = req.get("max_bytes")
    df, _ = csvio.read_table(req["csv_path"], hint=_table_format(req, "format_hint"),
                             max_bytes=None if max_bytes is None else int(max_bytes),
                             limit_flag=str(req.get("limit_flag", "")), source="the prediction input")
    out = predictor.predict(df)
    rows = out["predictions"]
    for start in range(0, len(rows), PREDICT_BATCH):
        ctx.emit({"kind": "predictions", "start": start, "rows": rows[start:start + PREDICT_BATCH]})
    return {"classes": out["classes"], "count": len(rows), "warnings": out["warnings"]}


_TASKS: dict[str, Callable[[Mapping[str, Any], TaskContext], dict[str, Any]]] = {
    "ping": _task_ping, "prepare": _task_prepare, "check": _task_check, "trial": _task_trial,
    "finalize": task_finalize, "select": task_select, "refit": task_refit, "predict": _task_predict,
}

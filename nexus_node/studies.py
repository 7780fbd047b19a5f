"""The node's Optuna studies: one ``JournalStorage`` per node holding every job's study.

The journal is the seam the mesh replaces: today a ``JournalFileBackend`` in the data dir;
with the mesh, a backend over the replicated log (the same two-method interface). The same
storage object is served to runners and users through Optuna's ``StorageService``.
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import TrialState

from nexus_node import pruning
from nexus_node.jobs.events import TrialView
from nexus_node.space import GBT_MAX_ITER

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

FAIL_REASON = "fail_reason"
NODE_ATTR = "node_id"
CONFIG_ATTR = "config"


class _ThreadLock(BaseJournalFileLock):
    """The journal has one writer process, the node (``Node`` holds an exclusive lock on the
    data dir), so a lock between threads is enough. Optuna's default lock is a file that a
    process killed mid-write leaves behind, and the next node would wait out its 30 s grace
    period before breaking it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


def open_storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path), lock_obj=_ThreadLock()))


def make_study(storage: JournalStorage, name: str, maximize: bool, seed: int, n_trials: int) -> optuna.Study:
    # constant_liar: trials running in parallel count as pessimistic results, so parallel
    # slots do not all sample the same promising region.
    sampler = optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=max(4, min(10, n_trials // 3))
    )
    return optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
        direction="maximize" if maximize else "minimize", pruner=make_pruner(),
    )


def pruner_spec(kind: str, constraints: Mapping[str, Any]) -> dict[str, Any]:
    """The pruner spec of a job under ``constraints`` (a ``Constraints.to_dict()``), sent
    with each of its trials (see :mod:`nexus_node.pruning`)."""
    return pruning.spec_for(kind, int(constraints.get("max_epochs", 100)), GBT_MAX_ITER[1])


def make_pruner(spec: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner of a study object. The node's own study objects only ask and tell (the
    runners prune, with the job's spec), so theirs matters only to code that loads the
    study elsewhere and does not pass a pruner."""
    return pruning.build(spec or pruning.spec_for(pruning.DEFAULT_KIND, 100, GBT_MAX_ITER[1]))[0]


def fail_trial(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Fail a trial that is still RUNNING, recording why. Returns False if it had finished."""
    storage = study._storage
    if storage.get_trial(trial_id).state.is_finished():
        return False
    storage.set_trial_system_attr(trial_id, FAIL_REASON, reason[:500])
    try:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:
        return False   # finished by its runner in the meantime
    return True


def trial_view(t: optuna.trial.FrozenTrial) -> TrialView:
    value = t.value if t.state == TrialState.COMPLETE and t.values else None
    if value is not None and not math.isfinite(value):
        value = None
    duration = t.duration.total_seconds() if t.duration is not None else 0.0
    params: dict[str, Any] = t.user_attrs.get(CONFIG_ATTR) or dict(t.params)
    return TrialView(
        number=t.number, state=t.state.name, value=value, params=params,
        duration_seconds=duration, node_id=str(t.user_attrs.get(NODE_ATTR, "")),
        message=str(t.system_attrs.get(FAIL_REASON, "")),
        last_step=max(t.intermediate_values) if t.intermediate_values else 0,
    )


def counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    out = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out

"""The node's Optuna studies: one ``JournalStorage`` per node holding every job's study.

The journal lives in the replicated log (``mesh/journal.py``): reads are this node's applied
copy, writes commit through consensus. The same storage object is served to runners and users
through Optuna's ``StorageService`` on the node's port.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from nexus_node import pruning
from nexus_node.jobs.events import TrialView
from nexus_node.space import GBT_MAX_ITER

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

FAIL_REASON = "fail_reason"
NODE_ATTR = "node_id"
CONFIG_ATTR = "config"


def make_study(storage: JournalStorage, name: str, maximize: bool, seed: int, n_trials: int) -> optuna.Study:
    sampler = _sampler(seed, n_trials)
    return optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
        direction="maximize" if maximize else "minimize", pruner=make_pruner(),
    )


def load_study(storage: JournalStorage, name: str, maximize: bool, seed: int, n_trials: int) -> optuna.Study:
    """An existing study, with the sampler :func:`make_study` gives it. Unlike
    ``create_study(load_if_exists=True)``, which appends a CREATE_STUDY log on every call,
    loading writes nothing, so a read of a study is not a replicated write.

    Raises:
        KeyError: no such study.
    """
    return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed, n_trials),
                             pruner=make_pruner())


def _sampler(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    # constant_liar: trials running in parallel count as pessimistic results, so parallel
    # slots do not all sample the same promising region.
    return optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=max(4, min(10, n_trials // 3))
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

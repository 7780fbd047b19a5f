"""The node's Optuna studies: one ``JournalStorage`` per node holding every job's study.

The journal lives in the replicated log (``study/journal.py``): reads are this node's applied
copy, writes commit through consensus. The same storage object is served to runners and users
through Optuna's ``StorageService`` on the node's port.
"""

from __future__ import annotations

import datetime
import json
import math
import warnings
from typing import Any, Callable, Mapping, TypeVar

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.study import pruning
from nexus_node.study.space import GBT_MAX_ITER, trial_params
from nexus_node.study.trials import TrialView

T = TypeVar("T")

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

FAIL_REASON = "fail_reason"
NODE_ATTR = "node_id"
CONFIG_ATTR = "config"
#: System attribute of a trial failed because its node died or left (not its configuration's
#: doing): such a trial does not use the job's budget and its parameters are run again.
LOST_ATTR = "nexus:lost"
#: User attribute of a re-run: the number of the trial whose parameters it runs again.
RETRY_OF = "retry_of"


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
    with each of its trials (see :mod:`nexus_node.study.pruning`)."""
    return pruning.spec_for(kind, int(constraints.get("max_epochs", 100)), GBT_MAX_ITER[1])


def make_pruner(spec: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner of a study object. The node's own study objects only ask and tell (the
    runners prune, with the job's spec), so theirs matters only to code that loads the
    study elsewhere and does not pass a pruner."""
    return pruning.build(spec or pruning.spec_for(pruning.DEFAULT_KIND, 100, GBT_MAX_ITER[1]))[0]


def fail_trial(study: optuna.Study, trial_id: int, reason: str, lost: bool = False) -> bool:
    """Fail a trial that is still RUNNING, recording why (``lost``: its node died, see
    :data:`LOST_ATTR`). Returns False if it had finished."""
    from optuna.storages.journal._storage import JournalOperation

    storage = study._storage
    if storage.get_trial(trial_id).state.is_finished():
        return False
    attrs = {FAIL_REASON: reason[:500], **({LOST_ATTR: True} if lost else {})}
    ops = [{"op_code": JournalOperation.SET_TRIAL_SYSTEM_ATTR, "trial_id": trial_id, "system_attr": {k: v}}
           for k, v in attrs.items()]
    ops.append({"op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "trial_id": trial_id,
                "state": int(TrialState.FAIL), "values": None, "datetime_complete": _now()})
    try:
        if isinstance(storage, JournalStorage):
            # One write: a trial its runner finishes meanwhile keeps none of it (no stray reason).
            _append(storage, ops)
        else:   # another storage (unit tests): one write each
            for key, value in attrs.items():
                storage.set_trial_system_attr(trial_id, key, value)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (FailedPrecondition, optuna.exceptions.UpdateFinishedTrialError):
        return False   # finished by its runner in the meantime
    return True


def _now() -> str:
    """A completion time as Optuna's own journal writes it."""
    return datetime.datetime.now(tz=datetime.timezone.utc).isoformat(timespec="microseconds")


def config_of(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The configuration a trial trains. A trial stopped before the node handed it out has no
    recorded configuration yet: then its enqueued parameters, else those sampled so far."""
    if t.user_attrs.get(CONFIG_ATTR):
        return dict(t.user_attrs[CONFIG_ATTR])
    params = t.system_attrs.get("fixed_params") or t.params   # Optuna's record of enqueue_trial
    if params.get("family") != "gbt":
        return dict(params)
    return {k.removeprefix("gbt_"): v for k, v in params.items()}


def config_key_of(config: Mapping[str, Any]) -> str:
    """Identifies a configuration (retries are counted per configuration)."""
    return json.dumps(config, sort_keys=True, default=str)


def config_key(t: optuna.trial.FrozenTrial) -> str:
    return config_key_of(config_of(t))


def is_lost(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and bool(t.system_attrs.get(LOST_ATTR))


def losses(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How often each configuration was lost with its node."""
    out: dict[str, int] = {}
    for t in trials:
        if is_lost(t):
            out[config_key(t)] = out.get(config_key(t), 0) + 1
    return out


def budget_used(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that count against a job's budget: started ones, except those lost with their
    node (their re-run counts instead)."""
    return sum(t.state != TrialState.WAITING and not is_lost(t) for t in trials)


def enqueue_retry(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Enqueues a re-run of ``t``'s parameters; ``ask()`` takes it before sampling anew."""
    study.enqueue_trial(trial_params(config_of(t)), user_attrs={RETRY_OF: t.number}, skip_if_exists=False)


def trial_view(t: optuna.trial.FrozenTrial) -> TrialView:
    value = t.value if t.state == TrialState.COMPLETE and t.values else None
    if value is not None and not math.isfinite(value):
        value = None
    duration = t.duration.total_seconds() if t.duration is not None else 0.0
    params = config_of(t)
    return TrialView(
        number=t.number, state=t.state.name, value=value, params=params,
        duration_seconds=duration, node_id=str(t.user_attrs.get(NODE_ATTR, "")),
        message=str(t.system_attrs.get(FAIL_REASON, "")),
        last_step=max(t.intermediate_values) if t.intermediate_values else 0,
        retry_of=t.user_attrs.get(RETRY_OF) if isinstance(t.user_attrs.get(RETRY_OF), int) else None,
    )


def counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    out = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def report_steps(storage: JournalStorage, trial_id: int, steps: list[tuple[int, float]]) -> int:
    """Writes a running trial's intermediate values as ONE journal append: what Optuna's
    ``Trial.report`` does once per step (the same log operations, and steps the trial
    already has are skipped as ``report`` skips them), in one consensus round instead of
    one per step. Returns how many steps were written.

    Uses JournalStorage's lock, backend and worker id (Optuna 5.0's private names; the
    version is pinned): the public API has no batch write (:func:`_append`).

    Raises:
        InvalidInput: a negative step.
        NotFound: no such trial.
        FailedPrecondition: the trial is finished.
    """
    ops = _step_ops(_running_trial(storage, trial_id, "its steps are not recorded"), steps)
    if ops:
        _append(storage, ops)
    return len(ops)


#: The states a runner may finish a trial in (Study.tell's, less RUNNING and WAITING).
FINISH_STATES = ("COMPLETE", "PRUNED", "FAIL")


def finish_trial(storage: JournalStorage, trial_id: int, steps: list[tuple[int, float]],
                 user_attrs: Mapping[str, Any], state: str, value: float | None) -> tuple[str, float | None]:
    """Writes the end of a running trial as one journal append: its last intermediate values
    (as :func:`report_steps`), its user attributes, then its state and value, which is what
    ``Trial.report``, ``Trial.set_user_attr`` and ``Study.tell`` write one consensus round
    each. As ``Study.tell``: a COMPLETE value may not be NaN, a PRUNED trial's value is its last
    intermediate value unless that is NaN, a FAIL trial has none, and only a RUNNING trial
    finishes. Returns ``(state, value)`` as recorded.

    Raises:
        InvalidInput: a negative step, another state, or a COMPLETE value that is NaN.
        NotFound: no such trial.
        FailedPrecondition: the trial is finished or WAITING (nothing of this is recorded).
    """
    from optuna.storages.journal._storage import JournalOperation

    if state not in FINISH_STATES:
        raise InvalidInput(f"a trial finishes as one of {', '.join(FINISH_STATES)}, not {state!r}")
    if state == "COMPLETE" and (value is None or math.isnan(value)):
        raise InvalidInput(f"a COMPLETE trial needs a value that is a number, got {value!r}")
    trial = _running_trial(storage, trial_id, "it is not finished again")
    if trial.state != TrialState.RUNNING:
        raise FailedPrecondition(f"trial {trial.number} is {trial.state.name}, not RUNNING; it cannot finish")
    ops = _step_ops(trial, steps)
    if state == "PRUNED":
        reported = {**trial.intermediate_values, **{op["step"]: op["intermediate_value"] for op in ops}}
        last = reported[max(reported)] if reported else None
        value = last if last is not None and not math.isnan(last) else None
    elif state == "FAIL":
        value = None
    ops += [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "trial_id": trial_id, "user_attr": {k: v}}
            for k, v in user_attrs.items()]
    ops.append({"op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "trial_id": trial_id,
                "state": int(TrialState[state]), "values": None if value is None else [float(value)],
                "datetime_complete": _now()})
    _append(storage, ops)
    return state, value


def _running_trial(storage: JournalStorage, trial_id: int, refused: str) -> optuna.trial.FrozenTrial:
    try:
        trial = storage.get_trial(trial_id)   # takes the storage's lock itself (not re-entrant)
    except KeyError:
        raise NotFound(f"no trial with id {trial_id} in this node's studies") from None
    if trial.state.is_finished():
        raise FailedPrecondition(f"trial {trial.number} is already {trial.state.name}; {refused}")
    return trial


def _step_ops(trial: optuna.trial.FrozenTrial, steps: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The journal ops of ``steps`` the trial does not have yet (a step keeps its first
    value, as ``Trial.report`` keeps it)."""
    from optuna.storages.journal._storage import JournalOperation

    if any(step < 0 for step, _ in steps):
        raise InvalidInput("steps must be non-negative")
    fresh: dict[int, float] = {}
    for step, value in steps:
        if step not in trial.intermediate_values and step not in fresh:
            fresh[int(step)] = float(value)
    return [{"op_code": JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE, "trial_id": trial._trial_id,
             "step": step, "intermediate_value": value} for step, value in fresh.items()]


def suggest_in_one_write(trial: optuna.Trial, suggest: Callable[[optuna.Trial], T],
                         user_attrs: Callable[[T], Mapping[str, Any]]) -> T:
    """Runs ``suggest(trial)`` holding back the storage writes of its ``suggest_*`` calls, then
    writes them with ``user_attrs(result)`` as one journal append (one consensus round for a
    trial's parameters and attributes, instead of one per parameter).

    The sampler reads other trials, and this trial's own values from the trial object, never
    this trial's parameters from storage, so what it draws is unchanged.
    """
    from optuna.distributions import distribution_to_json
    from optuna.storages.journal._storage import JournalOperation

    storage = trial.storage
    held: list[dict[str, Any]] = []

    class _HeldParams:
        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

        def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                            distribution: optuna.distributions.BaseDistribution) -> None:
            held.append({"op_code": JournalOperation.SET_TRIAL_PARAM, "trial_id": trial_id, "param_name": param_name,
                         "param_value_internal": param_value_internal,
                         "distribution": distribution_to_json(distribution)})

    trial.storage = _HeldParams()  # type: ignore[assignment]
    try:
        result = suggest(trial)
    finally:
        trial.storage = storage
    held += [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "trial_id": trial._trial_id, "user_attr": {k: v}}
             for k, v in user_attrs(result).items()]
    _append(storage, held)
    return result


def _append(storage: JournalStorage, ops: list[dict[str, Any]]) -> None:
    """Appends Optuna journal operations (without ``worker_id``: this storage's is added) as
    one write, and reads them back as JournalStorage's own writers do."""
    with storage._thread_lock:
        worker = storage._replay_result.worker_id
        storage._backend.append_logs([{**op, "worker_id": worker} for op in ops])
        # Replaying our own writes raises if the trial finished since the caller looked, as
        # the one-at-a-time writers would have. It raises at the first such op and stops
        # there: the replay goes on until it has read all of them, or each one left would
        # raise again later, in whatever call of this node's storage came next.
        refused: Exception | None = None
        while True:
            try:
                storage._sync_with_backend()
                break
            except optuna.exceptions.UpdateFinishedTrialError as exc:
                refused = refused or exc
        if refused is not None:
            raise FailedPrecondition(str(refused))

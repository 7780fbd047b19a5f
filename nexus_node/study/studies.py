"""The node's Optuna studies: one ``ReplicatedStorage`` (study/replicated_storage.py) per node holding every job's study.

The journal lives in the replicated log (``study/journal.py``): reads are this node's applied
tables, writes commit through consensus. The same storage object is served to runners and users
through Optuna's ``StorageService`` on the node's port.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from typing import Any, Callable, Mapping, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.study import pruning
from nexus_node.study.replicated_storage import ReplicatedStorage
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
#: A lost trial's system attribute: its node handed it back as it left (SIGTERM). The retry
#: rule does not count such a loss against the configuration (work/retries.py).
HANDED_BACK_ATTR = "nexus:handed_back"
#: User attribute of a completed trial: the sha256 of its validation predictions, a blob the
#: node that ran it holds (ensemble selection in finalize reads them; pipeline/ensemble.py).
PREDICTIONS_ATTR = "predictions"
#: User attribute of a trial: the term of the coordinator that asked for it (which coordinator
#: decided it; the writes of a coordinator are fenced to its term, see study/journal.py).
TERM_ATTR = "coordinator_term"
#: User attribute of a re-run: the number of the trial whose parameters it runs again.
RETRY_OF = "retry_of"


def make_study(storage: BaseStorage, name: str, maximize: bool, seed: int, n_trials: int) -> optuna.Study:
    sampler = _sampler(seed, n_trials)
    return optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
        direction="maximize" if maximize else "minimize", pruner=make_pruner(),
    )


def load_study(storage: BaseStorage, name: str, maximize: bool, seed: int, n_trials: int) -> optuna.Study:
    """An existing study, with the sampler :func:`make_study` gives it. Unlike
    ``create_study(load_if_exists=True)``, which appends a CREATE_STUDY log on every call,
    loading writes nothing, so a read of a study is not a replicated write.

    Raises:
        KeyError: no such study.
    """
    return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed, n_trials),
                             pruner=make_pruner())


def delete_study(storage: BaseStorage, name: str) -> bool:
    """Deletes study ``name`` (one journal write, which every node's storage replays); whether
    there was one to delete (blocking)."""
    try:
        storage.delete_study(storage.get_study_id_from_name(name))
    except KeyError:   # none, or deleted meanwhile by another writer
        return False
    return True


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


def fail_trial(storage: BaseStorage, trial_id: int, reason: str, lost: bool = False,
               handed_back: bool = False) -> bool:
    """Fail a trial that is still RUNNING, recording why (``lost``: its node died or left, see
    :data:`LOST_ATTR`; ``handed_back``: it left, :data:`HANDED_BACK_ATTR`). Returns False if it
    had finished."""
    if storage.get_trial(trial_id).state.is_finished():
        return False
    attrs: dict[str, str | bool] = {FAIL_REASON: reason[:500], **({LOST_ATTR: True} if lost else {}),
                                    **({HANDED_BACK_ATTR: True} if handed_back else {})}
    writes: list[Callable[[], object]] = [
        functools.partial(storage.set_trial_system_attr, trial_id, k, v) for k, v in attrs.items()]
    writes.append(functools.partial(storage.set_trial_state_values, trial_id, TrialState.FAIL))
    try:
        if isinstance(storage, ReplicatedStorage):
            # One write: a trial its runner finishes meanwhile keeps none of it (no stray reason).
            _write_batch(storage, writes)
        else:   # another storage (unit tests): one write each
            for write in writes:
                write()
    except (FailedPrecondition, optuna.exceptions.UpdateFinishedTrialError):
        return False   # finished by its runner in the meantime
    return True


def trial_id_of(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of a study (what the storage's calls take)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


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
    """Trials by state name, and ``LOST``: the failed ones lost with their node (their
    configurations run again and they do not use the job's trial budget)."""
    out = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "LOST")}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
        if is_lost(t):   # as the budget counts them (budget_used)
            out["LOST"] += 1
    return out


def report_steps(storage: ReplicatedStorage, trial_id: int, steps: list[tuple[int, float]]) -> int:
    """Writes a running trial's intermediate values as ONE journal append: what Optuna's
    ``Trial.report`` does once per step (the same storage calls, and steps the trial
    already has are skipped as ``report`` skips them), in one consensus round instead of
    one per step. Returns how many steps were written.

    Raises:
        InvalidInput: a negative step.
        NotFound: no such trial.
        FailedPrecondition: the trial is finished.
    """
    fresh = _fresh_steps(_running_trial(storage, trial_id, "its steps are not recorded"), steps)
    if fresh:
        _write_batch(storage, [functools.partial(storage.set_trial_intermediate_value, trial_id, step, value)
                                         for step, value in fresh.items()])
    return len(fresh)


#: The states a runner may finish a trial in (Study.tell's, less RUNNING and WAITING).
FINISH_STATES = ("COMPLETE", "PRUNED", "FAIL")


def finish_trial(storage: ReplicatedStorage, trial_id: int, steps: list[tuple[int, float]],
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
    if state not in FINISH_STATES:
        raise InvalidInput(f"a trial finishes as one of {', '.join(FINISH_STATES)}, not {state!r}")
    if state == "COMPLETE" and (value is None or math.isnan(value)):
        raise InvalidInput(f"a COMPLETE trial needs a value that is a number, got {value!r}")
    trial = _running_trial(storage, trial_id, "it is not finished again")
    if trial.state != TrialState.RUNNING:
        raise FailedPrecondition(f"trial {trial.number} is {trial.state.name}, not RUNNING; it cannot finish")
    fresh = _fresh_steps(trial, steps)
    if state == "PRUNED":
        reported = {**trial.intermediate_values, **fresh}
        last = reported[max(reported)] if reported else None
        value = last if last is not None and not math.isnan(last) else None
    elif state == "FAIL":
        value = None
    writes: list[Callable[[], object]] = [
        functools.partial(storage.set_trial_intermediate_value, trial_id, step, v) for step, v in fresh.items()]
    writes += [functools.partial(storage.set_trial_user_attr, trial_id, k, v) for k, v in user_attrs.items()]
    writes.append(functools.partial(storage.set_trial_state_values, trial_id, TrialState[state],
                                    None if value is None else [float(value)]))
    _write_batch(storage, writes)
    return state, value


def _running_trial(storage: BaseStorage, trial_id: int, refused: str) -> optuna.trial.FrozenTrial:
    try:
        trial = storage.get_trial(trial_id)
    except KeyError:
        raise NotFound(f"no trial with id {trial_id} in this node's studies") from None
    if trial.state.is_finished():
        raise FailedPrecondition(f"trial {trial.number} is already {trial.state.name}; {refused}")
    return trial


def _fresh_steps(trial: optuna.trial.FrozenTrial, steps: list[tuple[int, float]]) -> dict[int, float]:
    """The ``steps`` the trial does not have yet (a step keeps its first value, as
    ``Trial.report`` keeps it)."""
    if any(step < 0 for step, _ in steps):
        raise InvalidInput("steps must be non-negative")
    fresh: dict[int, float] = {}
    for step, value in steps:
        if step not in trial.intermediate_values and step not in fresh:
            fresh[int(step)] = float(value)
    return fresh


def suggest_in_one_write(storage: ReplicatedStorage, trial: optuna.Trial, suggest: Callable[[optuna.Trial], T],
                         user_attrs: Callable[[T], Mapping[str, Any]]) -> T:
    """Runs ``suggest(trial)`` holding back the storage writes of its ``suggest_*`` calls, then
    writes them with ``user_attrs(result)`` (at least one) as one journal append (one consensus
    round for a trial's parameters and attributes, instead of one per parameter).

    The sampler reads other trials, and this trial's own values from the trial object, never
    this trial's parameters from storage, so what it draws is unchanged.

    Raises:
        ValueError: ``user_attrs(result)`` is empty (the batch's last write is an attribute).
        FailedPrecondition: the trial is finished (nothing of this is recorded).
    """
    try:
        with storage.batch() as batch:
            result = suggest(trial)
            attrs = list(user_attrs(result).items())
            if not attrs:
                raise ValueError("suggest_in_one_write writes at least one user attribute")
            for key, value in attrs[:-1]:
                trial.set_user_attr(key, value)
            batch.last()
            trial.set_user_attr(*attrs[-1])
    except optuna.exceptions.UpdateFinishedTrialError as exc:
        raise FailedPrecondition(str(exc)) from None
    return result


def _write_batch(storage: ReplicatedStorage, writes: list[Callable[[], object]]) -> None:
    """Runs storage writes on one trial (a state last, if any) as one journal append (a batch
    of :class:`~nexus_node.study.replicated_storage.ReplicatedStorage`).

    Raises:
        FailedPrecondition: the trial finished since the caller looked (nothing of it is kept).
    """
    try:
        with storage.batch() as batch:
            for write in writes[:-1]:
                write()
            batch.last()
            writes[-1]()
    except optuna.exceptions.UpdateFinishedTrialError as exc:
        raise FailedPrecondition(str(exc)) from None

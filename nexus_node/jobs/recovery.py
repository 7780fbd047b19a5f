"""Trials nobody runs any more, found in a job's study and failed, then re-run or not.

A coordinator that starts (a restart, an election) or that finds a trial it did not ask for
(a deposed coordinator's write that landed late) has trials RUNNING with no lease: nobody
runs them. They are failed as lost (``studies.LOST_ATTR``: they do not use the budget) and
re-run with the same parameters as the retry rule (:func:`~nexus_node.work.retries.decide_retry`)
allows, counting the configuration's earlier losses from the study, so every coordinator counts
alike. Failing a trial and enqueuing its re-run are two writes: a coordinator stopped between
them left a lost trial without a re-run, which the next one decides again
(:func:`rerun_orphans`).

Every function here takes Optuna storage locks and may wait on consensus: call it in a thread.
"""

from __future__ import annotations

import logging
from typing import Collection

import optuna
from optuna.storages import BaseStorage

from nexus_node.jobs.context import RUNNING_LOST
from nexus_node.study import studies
from nexus_node.work.retries import Loss, decide_retry, is_handed_back

log = logging.getLogger(__name__)


def loss_of(t: optuna.trial.FrozenTrial) -> Loss:
    """A trial failed as lost, as the retry rule counts it: a hand-back by its mark, or, for a
    trial failed before the mark existed, by its recorded reason."""
    handed_back = bool(t.system_attrs.get(studies.HANDED_BACK_ATTR)) or \
        is_handed_back(str(t.system_attrs.get(studies.FAIL_REASON, "")))
    return Loss(studies.config_key(t), handed_back)


def rerun_if_allowed(study: optuna.Study, job_id: str, number: int, max_retries: int) -> bool:
    """Trial ``number`` was failed as lost: enqueues its re-run if the retry rule allows it,
    counting the losses of the trials before it. Returns whether it did."""
    trials = study.get_trials(deepcopy=False)
    t = next(x for x in trials if x.number == number)
    earlier = [loss_of(x) for x in trials if x.number < number and studies.is_lost(x)]
    decision = decide_retry(loss_of(t), earlier, max_retries)
    if decision.retry:
        studies.enqueue_retry(study, t)
    else:
        log.warning("job %s: trial %d is not run again: its configuration was %s", job_id, number, decision.reason)
    return decision.retry


def recover_running(storage: BaseStorage, study: optuna.Study, job_id: str, max_retries: int,
                    mine: Collection[int] = ()) -> None:
    """Fails the trials left RUNNING, except ``mine`` (the ones this coordinator asked for),
    as lost, and enqueues their re-runs as the retry rule allows."""
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "RUNNING" or t.number in mine:
            continue
        if not studies.fail_trial(storage, studies.trial_id_of(storage, study.study_name, t.number), RUNNING_LOST,
                                  lost=True):
            continue   # its runner finished it meanwhile
        log.info("job %s: trial %d was RUNNING with no lease of this coordinator; failed as lost", job_id, t.number)
        rerun_if_allowed(study, job_id, t.number, max_retries)


def rerun_orphans(study: optuna.Study, job_id: str, max_retries: int, skip: Collection[int] = ()) -> None:
    """(Before this coordinator asks for any trial of the job.) Decides again for each trial
    failed as lost whose re-run was never enqueued (see the module docstring), except those
    in ``skip`` (this coordinator's own, whose loss it settles itself)."""
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get(studies.RETRY_OF) for t in trials}
    for t in trials:
        if studies.is_lost(t) and t.number not in rerun and t.number not in skip:
            log.info("job %s: trial %d was lost without a re-run; deciding it now", job_id, t.number)
            rerun_if_allowed(study, job_id, t.number, max_retries)


def fail_running(storage: BaseStorage, study: optuna.Study, reason: str) -> None:
    """Fails every trial still RUNNING (not as lost: the job ended, nothing re-runs them)."""
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "RUNNING":
            studies.fail_trial(storage, studies.trial_id_of(storage, study.study_name, t.number), reason)

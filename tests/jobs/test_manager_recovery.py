"""The coordinator's search loop and trials it did not start. Found by
tests/cluster/test_chaos_netns.py, seed 6: a deposed coordinator's ``ask`` committed after the
failover, and the trial held a place in the budget while nobody ran it, so the job ended one
finished trial short. A coordinator's writes are fenced to its term now
(tests/consensus/test_fencing.py), but asking is two writes (the trial, then its parameters):
a coordinator deposed between them leaves a RUNNING trial nobody runs, handled as here."""

from __future__ import annotations

import optuna
import pytest

from nexus_node.jobs import recovery
from nexus_node.jobs.context import RUNNING_LOST, JobContext
from nexus_node.jobs.records import JobRecord, JobSpecRecord
from nexus_node.jobs.search import Search
from nexus_node.study import studies
from nexus_node.work.retries import handed_back_message


def _id(storage: optuna.storages.BaseStorage, study: optuna.Study, trial: optuna.Trial) -> int:
    return studies.trial_id_of(storage, study.study_name, trial.number)


def test_a_running_trial_this_coordinator_did_not_ask_for_is_lost_and_re_run_not_counted():
    storage = optuna.storages.InMemoryStorage()
    study = studies.make_study(storage, "nexus-job-x", True, 1, 4)
    search = Search(JobContext(db=None, blobs=None, storage=lambda: storage, node_id="n1"))  # type: ignore[arg-type]
    job = JobRecord(job_id="job-x", spec=JobSpecRecord(target="y"))

    mine = study.ask()                 # asked by this coordinator: it runs
    late = study.ask()                 # the deposed coordinator's, landed after the failover
    late.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 32})

    assert search._budget_used(job, study, {mine.number}) == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[mine.number].state.name == "RUNNING"
    assert trials[late.number].state.name == "FAIL" and studies.is_lost(trials[late.number])
    assert trials[late.number].system_attrs[studies.FAIL_REASON] == RUNNING_LOST
    (rerun,) = [t for t in trials if t.state.name == "WAITING"]
    assert rerun.user_attrs[studies.RETRY_OF] == late.number
    assert search._budget_used(job, study, {mine.number}) == 1   # nothing more to recover


def test_a_trial_lost_without_its_re_run_enqueued_is_re_run_once_by_the_next_coordinator():
    """Failing a lost trial and enqueuing its re-run are two writes: a coordinator stopped
    between them (SIGTERM of a one-node cluster, seen in CI) left a lost trial never re-run."""
    storage = optuna.storages.InMemoryStorage()
    study = studies.make_study(storage, "nexus-job-x", True, 1, 4)

    orphan = study.ask()
    orphan.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 32})
    assert studies.fail_trial(storage, _id(storage, study, orphan), RUNNING_LOST, lost=True)
    for _ in range(2):            # lost twice and re-run: its retries are used up
        lost = study.ask()
        lost.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 128})
        assert studies.fail_trial(storage, _id(storage, study, lost), RUNNING_LOST, lost=True)
        studies.enqueue_retry(study, study.get_trials(deepcopy=False)[lost.number])
    spent = study.ask()           # lost a third time (max_retries 2), its re-run never enqueued
    spent.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 128})
    assert studies.fail_trial(storage, _id(storage, study, spent), RUNNING_LOST, lost=True)
    rerun_already = study.ask()   # lost too, but its re-run was enqueued: nothing to do
    rerun_already.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 64})
    assert studies.fail_trial(storage, _id(storage, study, rerun_already), RUNNING_LOST, lost=True)
    studies.enqueue_retry(study, study.get_trials(deepcopy=False)[rerun_already.number])

    recovery.rerun_orphans(study, "job-x", max_retries=2)
    recovery.rerun_orphans(study, "job-x", max_retries=2)   # a second look enqueues nothing more
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    # (The two earlier re-runs were taken by the asks above.)
    assert sorted(t.user_attrs[studies.RETRY_OF] for t in waiting) == [orphan.number, rerun_already.number]
    assert studies.config_of(waiting[-1]) == {"family": "mlp", "width": 32}


@pytest.mark.parametrize("recorded", ["marked", "by its reason only"])
def test_a_trial_handed_back_by_a_leaving_node_runs_again_even_past_its_retries(recorded):
    """Leaving is the node's doing (SIGTERM), not the configuration's: work.retries does not
    count it, and the study's mark of it (or, for a trial failed before the mark existed, its
    recorded reason) is how a later count knows."""
    storage = optuna.storages.InMemoryStorage()
    study = studies.make_study(storage, "nexus-job-x", True, 1, 4)
    for _ in range(2):   # lost twice with a dead node: both retries used
        lost = study.ask()
        lost.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 32})
        assert studies.fail_trial(storage, _id(storage, study, lost), "node b missed heartbeats", lost=True)
    left = study.ask()
    left.set_user_attr(studies.CONFIG_ATTR, {"family": "mlp", "width": 32})
    if recorded == "marked":
        assert studies.fail_trial(storage, _id(storage, study, left), "node b stopped", lost=True, handed_back=True)
    else:
        assert studies.fail_trial(storage, _id(storage, study, left), handed_back_message("b"), lost=True)
    assert recovery.rerun_if_allowed(study, "job-x", left.number, max_retries=2)
    again = study.ask()   # the re-run; lost with a dead node now: a third counted loss
    assert studies.fail_trial(storage, _id(storage, study, again), "node c missed heartbeats", lost=True)
    assert not recovery.rerun_if_allowed(study, "job-x", again.number, max_retries=2)

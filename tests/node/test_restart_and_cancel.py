"""Restarting a node brings every job and model back; a running job resumes."""

from __future__ import annotations

import json
import re

import numpy as np

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.jobs.manager import RUNNING_LOST
from tests.conftest import dataset
from tests.node.helpers import stub, submit, watch_until, watch_until_end
from tests.node.trial_checks import assert_budget_kept


def test_killed_node_resumes_its_job_and_keeps_its_models(node_factory, insurance_csv):
    node = node_factory("n1", "--slots", "1").start()
    s = stub(node.address)
    first = submit(s, insurance_csv, "charges", max_trials=1)
    done, _ = watch_until_end(s, first.job_id)
    assert done.state == pb.COMPLETED, done.message

    job_id = submit(s, insurance_csv, "charges", max_trials=6).job_id
    watch_until(s, job_id, lambda ev: ev.kind == pb.TRIAL_FINISHED)
    node.kill()   # kill -9 mid-search: a trial is running or about to

    node.start()
    s = stub(node.address)
    assert s.GetModel(pb.GetModelRequest(model_id=done.model_id)).model_id == done.model_id
    job, _ = watch_until_end(s, job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = s.ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    # The trial that was running is failed with the reason and re-run with its parameters.
    assert_budget_kept(trials, 6)
    interrupted = [t for t in trials if t.state == "FAIL"]
    assert all(t.message == RUNNING_LOST for t in interrupted)
    assert {j.job_id for j in s.ListJobs(pb.ListJobsRequest()).jobs} == {first.job_id, job_id}


def test_cancel_stops_a_running_job_and_frees_its_slot(node_factory, insurance_csv):
    node = node_factory("n2", "--slots", "1").start()
    s = stub(node.address)
    slow = submit(s, insurance_csv, "charges", max_trials=200,
                  constraints_json='{"min_epochs": 150, "max_epochs": 150}').job_id
    watch_until(s, slow, lambda ev: ev.job.state == pb.SEARCHING)
    job = s.CancelJob(pb.CancelJobRequest(job_id=slow), timeout=60)
    assert job.state == pb.CANCELLED
    # The slot is free again: a small job runs to completion right after.
    quick = submit(s, insurance_csv, "charges", max_trials=1).job_id
    done, _ = watch_until_end(s, quick)
    assert done.state == pb.COMPLETED, done.message
    assert s.GetJob(pb.GetJobRequest(job_id=slow)).state == pb.CANCELLED


def test_sigterm_mid_search_fails_no_trial_with_a_connection_error(node_factory, insurance_csv):
    node = node_factory("n4", "--slots", "2").start()
    s = stub(node.address)
    job_id = submit(s, insurance_csv, "charges", max_trials=8,
                    constraints_json='{"min_epochs": 40, "max_epochs": 40}').job_id
    watch_until(s, job_id, lambda ev: ev.kind == pb.TRIAL_FINISHED)
    node.stop()   # SIGTERM: a graceful stop while trials run
    node.start()
    s = stub(node.address)
    job, _ = watch_until_end(s, job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = s.ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    assert_budget_kept(trials, 8)
    # A trial is failed only as lost with the node (handed back as it stopped, or found
    # RUNNING after the restart), and re-run; never with its runner's connection error.
    for t in trials:
        assert t.state != "FAIL" or t.message == RUNNING_LOST or t.message.endswith("left while running it"), \
            t.message


def test_cancel_while_preparing_returns_and_the_next_job_runs(node_factory, insurance_csv):
    node = node_factory("n5", "--slots", "1").start()
    s = stub(node.address)
    big = dataset("fertility.csv")   # 254k rows: preparing it takes a while
    job_id = submit(s, big, "morekids", max_trials=1).job_id
    watch_until(s, job_id, lambda ev: ev.job.state == pb.PREPARING)
    assert s.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=60).state == pb.CANCELLED
    quick = submit(s, insurance_csv, "charges", max_trials=1).job_id
    done, _ = watch_until_end(s, quick)
    assert done.state == pb.COMPLETED, done.message


def test_a_second_node_on_the_same_data_dir_is_refused(node_factory):
    first = node_factory("shared-dir").start()
    second = node_factory("shared-dir")
    try:
        second.start(timeout=30)
    except RuntimeError:
        assert "in use by nexus-node pid" in second.log.read_text()
        assert str(first.proc.pid) in second.log.read_text()
    else:
        raise AssertionError("a second node started on a data dir in use")
    assert stub(first.address).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []


def test_memory_bounds_the_space_and_a_job_no_node_can_hold_is_refused_with_the_sizes(
        node_factory, insurance_csv, tmp_path):
    """Issue 24, on a node whose trials get 24 MB each: a network asked wider than that holds
    is narrowed (and says so), and its trials run within it; a table whose trials would load
    more than that (thirty 30-level categoricals one-hot into 900 columns: 30 MB of floats from
    a 1 MB CSV) is refused with the sizes, and the node carries on. (A trial that goes past
    its budget anyway is stopped by its runner: tests/runner/test_memory_watch.py.)"""
    node = node_factory("n6", "--slots", "1", "--trial-memory-mb", "24").start()
    s = stub(node.address)
    asked_wide = submit(s, insurance_csv, "charges", max_trials=2,
                        constraints_json='{"families": ["mlp"], "widths": [1024], "min_layers": 3, "max_layers": 3,'
                                         ' "batch_sizes": [512], "max_epochs": 5}').job_id
    job, _ = watch_until_end(s, asked_wide)
    assert job.state == pb.COMPLETED, job.message
    constraints = json.loads(job.constraints_json)
    assert max(constraints["widths"]) < 1024 and any("widths clamped" in n for n in constraints["notes"]), constraints
    assert all(t.state == "COMPLETE" for t in s.ListTrials(pb.ListTrialsRequest(job_id=asked_wide)).trials)

    rng = np.random.default_rng(0)
    levels = rng.integers(0, 30, size=(10_000, 30))
    y = levels[:, :5].sum(axis=1) + rng.normal(size=10_000)
    wide_csv = tmp_path / "wide.csv"
    wide_csv.write_text(",".join(f"c{j}" for j in range(30)) + ",y\n" + "".join(
        ",".join(f"v{v}" for v in row) + f",{t:.3f}\n" for row, t in zip(levels, y)))
    heavy = submit(s, wide_csv, "y", max_trials=2).job_id
    job, _ = watch_until_end(s, heavy)
    assert job.state == pb.FAILED, job.message
    assert re.search(r"needs \d+ MB; the largest node has 24 MB", job.message), job.message
    # The node carries on: a narrow job completes on it.
    narrow = submit(s, insurance_csv, "charges", max_trials=2,
                    constraints_json='{"families": ["mlp"], "widths": [32], "max_layers": 1, "max_epochs": 5}').job_id
    done, _ = watch_until_end(s, narrow)
    assert done.state == pb.COMPLETED, done.message

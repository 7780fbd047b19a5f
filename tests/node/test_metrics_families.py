"""The metric families of a node's state (node/metrics.py, pure): what a follower leaves out, and
trials summed over every job."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nexus_node.jobs.records import JobRecord, JobSpecRecord
from nexus_node.node.metrics import NodeState, RaftState, families, job_counts


class _Fixed:
    def __init__(self, state: NodeState) -> None:
        self.state = state

    def collect(self):
        return families(self.state)


def _exposed(state: NodeState) -> dict[str, list]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(state))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _job(job_id: str, state: str, **trials: int) -> JobRecord:
    return JobRecord(job_id=job_id, spec=JobSpecRecord(target="y"), state=state, trials=trials)


def test_trials_add_up_over_every_job_and_lost_ones_are_told_apart():
    jobs, trials, lost = job_counts([
        _job("a", "COMPLETED", COMPLETE=3, PRUNED=1, FAIL=2, LOST=1),
        _job("b", "SEARCHING", COMPLETE=1, RUNNING=2, WAITING=1),
        _job("c", "PENDING"),
    ])
    assert trials == {"COMPLETE": 4, "PRUNED": 1, "FAIL": 2, "RUNNING": 2, "WAITING": 1}
    assert lost == 1   # one of the two failures, not a sixth state
    assert (jobs["COMPLETED"], jobs["SEARCHING"], jobs["PENDING"], jobs["FAILED"]) == (1, 1, 1, 0)


def test_a_follower_exports_no_coordinator_figures_and_no_raft_before_it_starts():
    jobs, trials, lost = job_counts([])
    state = NodeState(node_id="n2", cluster="lab", version="0.1.0", raft=None, coordinator=None, jobs=jobs,
                      trials=trials, trials_lost=lost, slots_total=4, slots_busy=1, blobs=0, blob_bytes=0,
                      blob_bound_bytes=0)
    exposed = _exposed(state)
    assert [s.value for s in exposed["nexus_coordinator"]] == [0]
    assert not {"nexus_queued_tasks", "nexus_heartbeat_age_seconds", "nexus_raft_term",
                "nexus_blob_bound_bytes"} & set(exposed)
    assert {s.labels["state"]: s.value for s in exposed["nexus_slots"]} == {"busy": 1, "free": 3}

    started = _exposed(dataclasses.replace(state, raft=RaftState(7, 40, 39, 3, 3, 1)))
    assert [s.value for s in started["nexus_raft_term"]] == [7]
    assert [(s.name, s.value) for s in started["nexus_raft_leader_changes"]] == [("nexus_raft_leader_changes_total", 3)]
    assert {s.labels["role"]: s.value for s in started["nexus_raft_members"]} == {"voter": 3, "non_voter": 1}

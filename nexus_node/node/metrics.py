"""What a node tells Prometheus: its state at one scrape, as metric families (pure).

:class:`NodeState` is read from the objects that hold the state (``node/metrics_http.py`` does
that at scrape time, on the node's event loop); :func:`families` turns it into Prometheus
metric families. Names follow Prometheus' conventions: a ``nexus_`` prefix, ``_total`` on
counters, base units (``_seconds``, ``_bytes``) in the name. States are label values, in
lower case as ``nexus show`` writes them; every state is present (0 included) so that a series
does not vanish while nothing is in that state.

Snapshots are not built yet (docs/architecture.md, *Not built yet*): no snapshot metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from nexus_node.jobs.records import JOB_STATES, TRIAL_STATES, JobRecord

#: Upper bounds of the proposal latency buckets, in seconds: a write on a LAN takes one or two
#: fsyncs and a round trip (milliseconds); seconds mean an election or a lost quorum.
PROPOSAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclasses.dataclass(frozen=True)
class RaftState:
    """The consensus driver's view (``RaftDriver.status`` and ``lead_changes``)."""

    term: int
    commit_index: int
    applied_index: int
    leader_changes: int
    voters: int
    non_voters: int
    first_index: int = 1            # the first log entry held (after compaction)
    snapshot_index: int = 0         # the latest snapshot's last entry (0: none)
    snapshot_bytes: int = 0         # its file's size
    snapshots_taken: int = 0        # since the node started
    snapshots_installed: int = 0    # leaders' snapshots installed since the node started
    snapshots_failed: int = 0       # snapshots that could not be written
    snapshot_bytes_sent: int = 0    # snapshot bytes sent to members


@dataclasses.dataclass(frozen=True)
class CoordinatorState:
    """What only the coordinator knows: its dispatcher's queue and the nodes' heartbeats."""

    queued_tasks: int
    heartbeat_ages: Mapping[str, float]   # node id -> seconds since its last heartbeat


@dataclasses.dataclass(frozen=True)
class NodeState:
    """One node at one scrape."""

    node_id: str
    cluster: str
    version: str
    raft: RaftState | None               # None until the mesh has started
    coordinator: CoordinatorState | None   # None unless this node coordinates
    jobs: Mapping[str, int]              # job state -> jobs (every job of the cluster)
    trials: Mapping[str, int]            # Optuna trial state -> trials of every job
    trials_lost: int                     # failed trials lost with their node (also in FAIL)
    slots_total: int
    slots_busy: int
    blobs: int
    blob_bytes: int
    blob_bound_bytes: int                # --blob-cache-mb in bytes; 0: no bound


def job_counts(jobs: Iterable[JobRecord]) -> tuple[dict[str, int], dict[str, int], int]:
    """Jobs by state, trials by state summed over the jobs, and the trials lost with a node,
    from the replicated job records (every node holds them all)."""
    by_state = {s: 0 for s in sorted(JOB_STATES)}
    trials = {s: 0 for s in TRIAL_STATES}
    lost = 0
    for job in jobs:
        by_state[job.state] = by_state.get(job.state, 0) + 1
        for state in TRIAL_STATES:
            trials[state] += job.trials.get(state, 0)
        lost += job.trials.get("LOST", 0)
    return by_state, trials, lost


def families(state: NodeState) -> list[Metric]:
    """The metric families of ``state`` (the proposal histogram is the collector's own)."""
    info = InfoMetricFamily("nexus_node", "This node's id, cluster and version.")
    info.add_metric([], {"node_id": state.node_id, "cluster": state.cluster, "version": state.version})
    out: list[Metric] = [info]
    if state.raft is not None:
        r = state.raft
        out += [
            _gauge("nexus_raft_term", "The Raft term this node is in.", r.term),
            _gauge("nexus_raft_commit_index", "The highest log index this node knows to be committed.",
                   r.commit_index),
            _gauge("nexus_raft_applied_index", "The highest log index applied to this node's state.",
                   r.applied_index),
            CounterMetricFamily("nexus_raft_leader_changes",
                                "Times the leader this node believes in changed (to none included) "
                                "since the node started.", value=r.leader_changes),
            _labelled("nexus_raft_members", "Members of the cluster's configuration by role.", "role",
                      {"voter": r.voters, "non_voter": r.non_voters}),
            _gauge("nexus_raft_first_index", "The first log entry this node holds: those before it "
                   "are in its snapshot.", r.first_index),
            _gauge("nexus_snapshot_index", "The last log entry of this node's latest snapshot (0: none).",
                   r.snapshot_index),
            _gauge("nexus_snapshot_bytes", "The size of this node's latest snapshot file.", r.snapshot_bytes),
            CounterMetricFamily("nexus_snapshots_taken", "Snapshots this node took of its state "
                                "since it started.", value=r.snapshots_taken),
            CounterMetricFamily("nexus_snapshots_installed", "Leaders' snapshots this node installed "
                                "since it started.", value=r.snapshots_installed),
            CounterMetricFamily("nexus_snapshots_failed", "Snapshots this node could not write (a full "
                                "disk) since it started.", value=r.snapshots_failed),
            CounterMetricFamily("nexus_snapshot_sent_bytes", "Snapshot bytes this node sent to members "
                                "since it started.", value=r.snapshot_bytes_sent),
        ]
    out.append(_gauge("nexus_coordinator", "1 while this node coordinates the cluster's jobs, else 0.",
                      int(state.coordinator is not None)))
    if state.coordinator is not None:
        c = state.coordinator
        out.append(_gauge("nexus_queued_tasks",
                          "Tasks (trials, preparations, refits) waiting for a free slot; coordinator only.",
                          c.queued_tasks))
        ages = GaugeMetricFamily("nexus_heartbeat_age_seconds",
                                 "Seconds since each node's last work heartbeat reached the coordinator; "
                                 "coordinator only.", labels=["node"])
        for node_id, age in sorted(c.heartbeat_ages.items()):
            ages.add_metric([node_id], age)
        out.append(ages)
    out += [
        _labelled("nexus_jobs", "Jobs of the cluster by state.", "state",
                  {s.lower(): n for s, n in state.jobs.items()}),
        _labelled("nexus_trials", "Trials of every job by Optuna state.", "state",
                  {s.lower(): n for s, n in state.trials.items()}),
        _gauge("nexus_trials_lost", "Failed trials that were lost with their node and run again "
                                    "(counted in state fail too).", state.trials_lost),
        _labelled("nexus_slots", "This node's trial slots by state.", "state",
                  {"busy": state.slots_busy, "free": max(0, state.slots_total - state.slots_busy)}),
        _gauge("nexus_blobs", "Blobs (datasets, shards, models) in this node's store.", state.blobs),
        _gauge("nexus_blob_bytes", "Bytes of the blobs in this node's store.", state.blob_bytes),
    ]
    if state.blob_bound_bytes:
        out.append(_gauge("nexus_blob_bound_bytes", "The size bound of this node's blob store "
                                                    "(--blob-cache-mb).", state.blob_bound_bytes))
    return out


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled(name: str, documentation: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family

"""Trial scheduling across the cluster, as pure functions of the cluster view and ``now``.

The coordinator keeps a :class:`Schedule` (leases it granted, nodes it declared dead) and asks these functions what to do; the work streams that carry the
decisions to nodes are I/O and live elsewhere. Nothing here reads a clock, a socket or a random
generator, so every rule is tested without a cluster (tests/work/test_scheduler.py).

Rules (issue 4):

* **Placement.** A trial goes to a node with a free slot whose free memory, less what the trials
  already placed there are expected to use, holds the trial's estimate; among those, the node
  with the most free slots, then the most memory left (spreads load, keeps room for big trials).
  A trial that fits no node *now* waits; one that fits no node even when idle is refused.
* **Fair sharing.** Free slots go round-robin to the jobs with pending trials, the job with the
  fewest running trials first (ties: the older job), so a small job submitted second is not stuck
  behind a long one. A cancelled job's leases are revoked at once, freeing their slots.
* **Heartbeat reassignment.** A node silent for longer than ``grace`` is dead: each of its
  leases is revoked and its task reported lost. Whether a lost task runs again is
  :func:`nexus_node.work.retries.decide_retry`'s decision, made by the job's driver.
* **Fencing.** Every lease carries the coordinator's term; a node refuses an assignment older
  than the newest term it has seen, and the coordinator refuses a result for a revoked lease or
  from a node it declared dead, so a trial is never counted twice.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class NodeView:
    """One node as its last heartbeat described it."""

    node_id: str
    slots: int
    trial_memory: int         # bytes the node offers to trials when idle (its budget)
    last_heartbeat: float     # the coordinator's clock when the heartbeat arrived


@dataclasses.dataclass(frozen=True)
class TrialRequest:
    """A task waiting for a slot."""

    job_id: str
    trial_number: int
    config_key: str           # identifies the parameters (e.g. their canonical JSON)
    memory: int               # estimated bytes the trial needs


@dataclasses.dataclass(frozen=True)
class Lease:
    lease_id: str
    request: TrialRequest
    node_id: str
    term: int
    granted_at: float


@dataclasses.dataclass
class Schedule:
    """The coordinator's bookkeeping (rebuilt from the records after a coordinator change)."""

    leases: dict[str, Lease] = dataclasses.field(default_factory=dict)
    revoked: set[str] = dataclasses.field(default_factory=set)
    dead: set[str] = dataclasses.field(default_factory=set)

    def running_on(self, node_id: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.node_id == node_id]

    def running_of(self, job_id: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.request.job_id == job_id]


@dataclasses.dataclass(frozen=True)
class Placement:
    request: TrialRequest
    node_id: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    request: TrialRequest
    reason: str


def place(schedule: Schedule, pending: Mapping[str, Sequence[TrialRequest]], job_order: Sequence[str],
          nodes: Iterable[NodeView]) -> tuple[list[Placement], list[Refusal]]:
    """Which pending trials start now, and where; and which can never start.

    Args:
        pending: Each job's waiting trials, in the order the job wants them run.
        job_order: Jobs by submission time (breaks ties of the fair share).
        nodes: Live nodes (dead ones must not be passed).
    """
    live = [n for n in nodes if n.node_id not in schedule.dead]
    free_slots = {n.node_id: n.slots - len(schedule.running_on(n.node_id)) for n in live}
    room = {n.node_id: n.trial_memory - sum(lease.request.memory for lease in schedule.running_on(n.node_id))
            for n in live}
    biggest = max((n.trial_memory for n in live), default=0)
    running = {job: len(schedule.running_of(job)) for job in job_order}
    queues = {job: list(pending.get(job, ())) for job in job_order}
    placements: list[Placement] = []
    refusals: list[Refusal] = []
    rank = {job: i for i, job in enumerate(job_order)}
    while True:
        waiting = [job for job in job_order if queues[job]]
        if not waiting or not any(free > 0 for free in free_slots.values()):
            break
        job = min(waiting, key=lambda j: (running[j], rank[j]))
        request = queues[job].pop(0)
        if request.memory > biggest:
            refusals.append(Refusal(request, f"needs {request.memory >> 20} MB; the largest node has "
                                             f"{biggest >> 20} MB free"))
            continue
        fits = [n for n in free_slots if free_slots[n] > 0 and room[n] >= request.memory]
        if not fits:
            # Waits for memory; the job keeps its turn order for the next round.
            queues[job] = []
            continue
        node = max(fits, key=lambda n: (free_slots[n], room[n], n))
        placements.append(Placement(request, node))
        free_slots[node] -= 1
        room[node] -= request.memory
        running[job] += 1
    return placements, refusals


#: What any task adds beyond its data (the runner's own imports are paid once, at start):
#: a small network's weights and optimiser state, a batch, tree histograms. A floor, not a
#: bound: the runner enforces the trial's real budget.
TASK_BASE_MEMORY = 8 << 20
#: Copies of its input a task holds at its peak: preparation parses text into frames and
#: arrays; training holds the arrays, tensors of them and a shuffled batch order; the final
#: retrain stacks splits on top of that.
_DATA_COPIES = {"prepare": 8, "trial": 3, "finalize": 5}


def smallest_trial_budget(nodes: Iterable[NodeView]) -> int | None:
    """The least memory any of ``nodes`` gives one trial (its budget per slot), or None when
    none has reported one: a search space bounded by it fits a trial on every node."""
    budgets = [n.trial_memory // n.slots for n in nodes if n.slots > 0 and n.trial_memory > 0]
    return min(budgets) if budgets else None


def task_memory(kind: str, data_bytes: int) -> int:
    """Estimated peak memory of a task of ``kind`` over ``data_bytes`` of input (the CSV for
    preparation, the prepared shards otherwise): what placement keeps free for it."""
    return TASK_BASE_MEMORY + _DATA_COPIES.get(kind, 4) * max(0, data_bytes)


def grant(schedule: Schedule, placement: Placement, lease_id: str, term: int, now: float) -> Lease:
    lease = Lease(lease_id, placement.request, placement.node_id, term, now)
    schedule.leases[lease_id] = lease
    return lease


@dataclasses.dataclass(frozen=True)
class Reassignment:
    """What a node's death means for one of its leases: revoked, its task lost."""

    lease: Lease
    reason: str


def declare_dead(schedule: Schedule, nodes: Iterable[NodeView], now: float, grace: float) -> list[Reassignment]:
    """Nodes silent past ``grace`` become dead; their leases are revoked. (Whether each lost
    task runs again is not decided here: see :mod:`nexus_node.work.retries`.)"""
    out: list[Reassignment] = []
    for node in nodes:
        if node.node_id in schedule.dead or now - node.last_heartbeat <= grace:
            continue
        schedule.dead.add(node.node_id)
        for lease in sorted(schedule.running_on(node.node_id), key=lambda x: x.lease_id):
            del schedule.leases[lease.lease_id]
            schedule.revoked.add(lease.lease_id)
            out.append(Reassignment(lease, f"node {node.node_id} missed heartbeats for "
                                           f"{now - node.last_heartbeat:.1f} s (grace {grace:g} s)"))
    return out


def cancel_job(schedule: Schedule, job_id: str) -> list[Lease]:
    """Revokes every lease of ``job_id`` (the job was cancelled): their slots are free at once."""
    gone = schedule.running_of(job_id)
    for lease in gone:
        del schedule.leases[lease.lease_id]
        schedule.revoked.add(lease.lease_id)
    return gone


def accept_result(schedule: Schedule, lease_id: str, node_id: str) -> bool:
    """Whether a finished trial reported under ``lease_id`` by ``node_id`` counts.

    Refused: a revoked lease, a lease of another node, a node declared dead, an unknown lease.
    An accepted result ends the lease.
    """
    lease = schedule.leases.get(lease_id)
    if lease is None or lease_id in schedule.revoked or lease.node_id != node_id or node_id in schedule.dead:
        return False
    del schedule.leases[lease_id]
    return True


def accept_assignment(newest_term_seen: int, assignment_term: int) -> bool:
    """Worker side: an assignment from a coordinator older than one already heard is stale."""
    return assignment_term >= newest_term_seen


def revive(schedule: Schedule, node_id: str) -> None:
    """A dead node that heartbeats again is a new member: it gets work, never its old leases."""
    schedule.dead.discard(node_id)

"""Voter-set shaping on real processes on loopback: a killed voter is replaced by a non-voter
and comes back as a non-voter; ``--voters 1`` keeps every other member non-voting.

The decisions are :func:`nexus_node.cluster.admission.next_change` (tested as a pure function in
test_admission.py); here the coordinator's ``_shape_forever`` loop applies them across real
``nexus-node`` processes. Waiting is on WatchCluster streams with deadlines, never on sleeps.
"""

from __future__ import annotations

import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.clusters import caught_up, cluster_until, coordinator, roles
from tests.conftest import free_port
from tests.node.helpers import stub, submit, watch_until_end

pytestmark = pytest.mark.timeout(400)

VOTING = (pb.COORDINATOR, pb.VOTER)


def start_nodes(node_factory, n: int, *extra: str):
    """``n`` nodes with the same seeds, one slot each, started one after another."""
    ports = [free_port() for _ in range(n)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)   # the same list on every node
    return [node_factory(f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns", *extra, port=p).start()
            for i, p in enumerate(ports)]


def shaped(expected: list[int]):
    """A predicate: the view's roles, sorted, are ``expected`` and there is a coordinator."""
    want = sorted(expected)
    return lambda v: bool(v.coordinator_id) and sorted(roles(v).values()) == want


def test_a_killed_voter_is_replaced_by_the_non_voter_and_rejoins_as_a_non_voter(node_factory, insurance_csv):
    nodes = start_nodes(node_factory, 4, "--voter-timeout", "3", "--grace", "2")
    settled = shaped([pb.COORDINATOR, pb.VOTER, pb.VOTER, pb.NON_VOTER])
    views = [cluster_until(n.address, settled) for n in nodes]
    assert len({v.coordinator_id for v in views}) == 1
    assert len({tuple(sorted(roles(v).items())) for v in views}) == 1, views
    view = views[0]
    lead = coordinator(nodes, view)
    learner = next(n for n in nodes if roles(view)[n.address] == pb.NON_VOTER)
    victim = next(n for n in nodes if roles(view)[n.address] == pb.VOTER)
    survivors = [n for n in nodes if n is not victim]
    assert lead is not victim and learner is not victim

    victim.kill()   # SIGKILL: it falls silent; past --voter-timeout the non-voter takes its seat

    def replaced(v: pb.Cluster) -> bool:
        r = roles(v)
        return (len(r) == 4 and bool(v.coordinator_id)
                and sum(role in VOTING for role in r.values()) == 3
                and r.get(learner.address) in VOTING      # promoted
                and r.get(victim.address) == pb.NON_VOTER)  # demoted, still a member

    after = [cluster_until(n.address, replaced) for n in survivors]
    assert len({v.coordinator_id for v in after}) == 1, after
    assert victim.address not in {n.address for n in after[0].nodes if n.role == pb.COORDINATOR}

    # The new voter set commits: a job written through one survivor completes, seen on another.
    job_id = submit(stub(survivors[1].address), insurance_csv, "charges", max_trials=1, seed=11).job_id
    job, _ = watch_until_end(stub(survivors[2].address), job_id)
    assert job.state == pb.COMPLETED, job.message

    # Back on its data dir: still a member, as a non-voter (three voters are seated already).
    victim.start()
    # Its reads are local and it catches up after it starts serving, so the job committed while
    # it was down may not be there yet. A write through it returns once applied there, and
    # everything committed before it is applied first: the first job is then there, ended.
    second = submit(stub(victim.address), insurance_csv, "charges", max_trials=1, seed=12).job_id
    back = stub(victim.address).GetJob(pb.GetJobRequest(job_id=job_id))
    assert back.state == pb.COMPLETED and back.model_id == job.model_id
    done, _ = watch_until_end(stub(victim.address), second)
    assert done.state == pb.COMPLETED, done.message

    def rejoined(v: pb.Cluster) -> bool:
        if not replaced(v):
            return False
        info = next(n for n in v.nodes if n.address == victim.address)
        return info.slots_total == 1   # described by the live node itself, not a stale entry

    for n in [*survivors, victim]:
        v = cluster_until(n.address, rejoined)
        assert v.coordinator_id == after[0].coordinator_id or v.term > after[0].term


def test_voters_1_keeps_the_other_members_non_voting(node_factory):
    nodes = start_nodes(node_factory, 3, "--voters", "1")
    settled = shaped([pb.COORDINATOR, pb.NON_VOTER, pb.NON_VOTER])
    views = [cluster_until(n.address, settled) for n in nodes]
    assert len({v.coordinator_id for v in views}) == 1
    assert len({tuple(sorted(roles(v).items())) for v in views}) == 1, views
    assert all(n.slots_total == 1 for n in views[0].nodes)   # every member is up and described


def test_a_non_voter_silent_past_remove_after_is_removed_and_joins_again_when_back(node_factory, insurance_csv):
    nodes = start_nodes(node_factory, 3, "--voters", "1", "--voter-timeout", "2", "--remove-after", "3")
    settled = shaped([pb.COORDINATOR, pb.NON_VOTER, pb.NON_VOTER])
    view = [cluster_until(n.address, settled) for n in nodes][0]
    lead = coordinator(nodes, view)
    gone = next(n for n in nodes if n is not lead)
    other = next(n for n in nodes if n is not lead and n is not gone)

    gone.kill()
    # Past --remove-after the coordinator takes it out of the cluster: no longer listed anywhere.
    for n in (lead, other):
        cluster_until(n.address, lambda v: gone.address not in roles(v) and len(roles(v)) == 2)
    job_id = submit(stub(other.address), insurance_csv, "charges", max_trials=1, seed=13).job_id
    job, _ = watch_until_end(stub(lead.address), job_id)
    assert job.state == pb.COMPLETED, job.message

    # Back on its data dir, it finds the cluster no longer lists it and asks to join again;
    # it then catches up with what was committed while it was away.
    gone.start()
    cluster_until(lead.address, lambda v: roles(v).get(gone.address) == pb.NON_VOTER)
    caught_up(gone.address)
    back, _ = watch_until_end(stub(gone.address), job_id)
    assert back.state == pb.COMPLETED and back.model_id == job.model_id
    assert "asking" in gone.log.read_text() and "to add it again" in gone.log.read_text()

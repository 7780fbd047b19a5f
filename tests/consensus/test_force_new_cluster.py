"""Disaster recovery of the Raft core: a survivor made the only voter after a majority is lost."""

from __future__ import annotations

import pytest

from nexus_node.consensus.raft import (
    EntryType,
    LogDiverged,
    Membership,
    MemoryStorage,
    MsgApp,
    NotLeader,
    RaftConfig,
    RawNode,
    Role,
    force_new_cluster,
)
from nexus_node.consensus.raft.core import DIVERGENCE_APPENDS

from .helpers import Cluster


def data(entries) -> list[bytes]:
    return [e.data for e in entries if e.type is EntryType.NORMAL]


def forced(cluster: Cluster, node_id: str) -> RawNode:
    """``node_id`` restarted from its storage after force_new_cluster, as nexus-node does."""
    st = cluster.storage[node_id]
    hard, entry = force_new_cluster(st, node_id)
    st.append([entry])
    st.set_hard_state(hard)
    node = cluster.nodes[node_id] = RawNode(RaftConfig(node_id), st)
    cluster.applied[node_id] = []    # a restarted node applies its log again from the start
    return node


def test_a_survivor_of_a_lost_majority_leads_alone_and_keeps_what_it_had():
    c = Cluster(["a", "b", "c"], ["d"])
    c.elect("a")
    for i in range(3):
        c.nodes["a"].propose(f"w{i}".encode())
    c.deliver()
    c.cut |= {"a", "b"}           # two of three voters gone for good
    c.tick(40, only=["c", "d"])   # c cannot win an election alone
    assert c.leader() is None
    with pytest.raises(NotLeader):
        c.nodes["c"].propose(b"stuck")

    c.cut -= {"a", "b"}           # (their messages are dropped from here on anyway)
    del c.nodes["a"], c.nodes["b"]
    c.cut = set()
    node = forced(c, "c")
    assert node.status().membership == Membership.of(["c"])
    node.campaign()
    c.deliver(drop=lambda m: m.dst in ("a", "b"))
    assert node.status().role is Role.LEADER
    node.propose(b"after")
    c.deliver(drop=lambda m: m.dst in ("a", "b"))
    # Everything c held is committed, in order, then the new write.
    assert data(c.applied["c"]) == [b"w0", b"w1", b"w2", b"after"]
    # d, still running, is added back when it asks (Mesh does that) and follows the same log.
    node.propose_membership(Membership.of(["c"], ["d"]))
    c.deliver(drop=lambda m: m.dst in ("a", "b"))
    assert data(c.applied["d"])[-4:] == [b"w0", b"w1", b"w2", b"after"]
    assert c.nodes["d"].status().membership == Membership.of(["c"], ["d"])


def test_a_member_holding_committed_entries_the_survivor_lacks_stops_instead_of_following():
    c = Cluster(["a", "b", "c"], ["d"])
    c.elect("a")
    c.nodes["a"].propose(b"seen by all")
    c.deliver()
    c.cut.add("c")                # c misses what a and b commit next; learner d gets it
    c.nodes["a"].propose(b"c never saw this")
    c.deliver()
    assert b"c never saw this" in data(c.applied["d"])
    del c.nodes["a"], c.nodes["b"]
    c.cut = set()
    node = forced(c, "c")         # the wrong survivor: it lags behind d
    node.campaign()
    c.deliver(drop=lambda m: m.dst in ("a", "b"))
    node.propose_membership(Membership.of(["c"], ["d"]))   # d asks to be added back
    # d drops the first contradicting appends (one could be forged); c sends the contradiction
    # again at each heartbeat answer, and d stops once it lasted an election timeout.
    c.deliver(drop=lambda m: m.dst in ("a", "b"))
    assert c.nodes["d"].raft.contradictions >= 1
    with pytest.raises(LogDiverged, match="committed"):
        c.tick(60)
    assert c.nodes["d"].raft.contradictions >= DIVERGENCE_APPENDS


def test_forcing_needs_a_log_and_a_member():
    with pytest.raises(ValueError, match="no Raft log"):
        force_new_cluster(MemoryStorage(), "a")
    c = Cluster(["a", "b", "c"])
    with pytest.raises(ValueError, match="not a member"):
        force_new_cluster(c.storage["a"], "z")
    hard, entry = force_new_cluster(c.storage["a"], "a")
    # Above every term this node has seen. Another survivor may have seen a later one: then
    # the forced leader steps down when that member answers and, as the only voter, wins the
    # next election at once.
    assert entry.index == c.storage["a"].last_index() + 1 and hard.term > c.storage["a"].hard_state().term
    assert (hard.vote, hard.commit) == ("a", entry.index)


def test_an_append_whose_previous_entry_contradicts_a_committed_one_is_divergence():
    c = Cluster(["a", "b"])
    c.elect("a")
    c.nodes["a"].propose(b"x")
    c.deliver()
    b = c.nodes["b"]
    committed = b.status().commit
    assert committed >= 3
    # An append from b's leader-of-this-term whose previous entry, below b's commit index,
    # has another term than b's: only a forced or copied log can send that.
    wrong = MsgApp("a", "b", b.status().term, prev_index=committed - 1, prev_term=1, entries=(),
                   commit=committed)
    # The same append with the right term is a stale duplicate, answered as usual.
    ok = MsgApp("a", "b", b.status().term, prev_index=committed - 1,
                prev_term=c.storage["b"].term(committed - 1), entries=(), commit=committed)

    def ticks(n: int) -> None:   # under an election timeout: b never campaigns here
        for _ in range(n):
            b.raft.tick()

    # One such append (forged, say) is dropped unanswered; so are a few, if a consistent one
    # comes between them or they do not last an election timeout.
    assert "contradicting" in b.step(wrong)
    assert not b.raft.msgs
    ticks(9)
    assert "contradicting" in b.step(wrong)
    ticks(9)
    assert b.step(ok) is None and b.raft.contradictions == 0
    for _ in range(DIVERGENCE_APPENDS + 2):
        assert "contradicting" in b.step(wrong)
    ticks(9)
    assert "contradicting" in b.step(wrong)
    # The leader of the term kept contradicting for an election timeout: the logs diverged.
    ticks(9)
    with pytest.raises(LogDiverged, match="committed"):
        b.step(wrong)

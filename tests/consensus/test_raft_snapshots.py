"""The snapshot rules of the pure Raft core (issue 23): compaction, InstallSnapshot, restarts.

Each test builds its situation by hand on :class:`MemoryStorage` (the seeded simulation runs the
same rules under crashes, partitions and reordering: ``test_raft_simulation.py``).
"""

from __future__ import annotations

import pytest

from nexus_node.consensus.raft import (
    Compacted,
    Entry,
    EntryType,
    HardState,
    Membership,
    MemoryStorage,
    Message,
    MsgApp,
    MsgAppResp,
    MsgSnap,
    RaftConfig,
    RawNode,
    Role,
    SnapshotMeta,
    message_from_dict,
    message_to_dict,
)
from nexus_node.consensus.raft.validate import InvalidMessage, check_message, decode_message, sender_refusal

from .helpers import node_with_log

ABC = ["a", "b", "c"]
CONFIG = Membership.of(ABC).encode().decode()


def _lead(node: RawNode, st: MemoryStorage, voters: list[str]) -> list[Message]:
    """Makes ``node`` the leader of a term above its own, by its voters' grants."""
    from nexus_node.consensus.raft import MsgPreVoteResp, MsgVoteResp
    node.campaign()
    out = _drain(node, st)
    term = node.raft.term + 1
    for v in voters:
        if v != node.raft.id:
            node.step(MsgPreVoteResp(v, node.raft.id, term, reject=False))
    out += _drain(node, st)
    for v in voters:
        if v != node.raft.id:
            node.step(MsgVoteResp(v, node.raft.id, node.raft.term, reject=False))
    out += _drain(node, st)
    assert node.raft.role is Role.LEADER
    return out


def _drain(node: RawNode, st: MemoryStorage, applied: list[Entry] | None = None,
           installed: list[SnapshotMeta] | None = None) -> list[Message]:
    out: list[Message] = []
    while (rd := node.ready()) is not None:
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            if installed is not None:
                installed.append(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        out.extend(rd.messages)
        if applied is not None:
            applied.extend(rd.committed_entries)
        node.advance(rd)
    return out


def _compacted_leader(entries: int, compact_to: int) -> tuple[RawNode, MemoryStorage]:
    """Leader a, term 3, whose log of ``entries`` entries is compacted up to ``compact_to``
    after a snapshot at its last applied index."""
    a, st = node_with_log("a", ABC, [2] * (entries - 1), HardState(term=2, commit=entries))
    _lead(a, st, ABC)
    # b acknowledges everything, c nothing: the no-op of term 3 commits and applies.
    last = a.raft.log.last_index()
    a.step(MsgAppResp("b", "a", a.raft.term, index=last))
    _drain(a, st)
    assert a.raft.log.applied == last
    st.create_snapshot(a.snapshot_meta(last))
    st.compact(compact_to)
    return a, st


def test_a_follower_behind_the_compacted_prefix_gets_the_snapshot() -> None:
    a, st = _compacted_leader(entries=10, compact_to=8)
    snap = st.snapshot()
    assert snap is not None and snap.index == 11 and snap.term == 3
    assert st.first_index() == 9
    # c answers a probe: it holds only entry 2. Its hint sends the leader below its first entry.
    a.step(MsgAppResp("c", "a", 3, index=10, reject=True, hint_index=2, hint_term=2))
    out = _drain(a, st)
    sent = [m for m in out if m.dst == "c"]
    assert sent == [MsgSnap("a", "c", 3, 11, 3, CONFIG)]
    # Nothing more goes to c while the snapshot is in flight, even on a heartbeat's answer.
    from nexus_node.consensus.raft import MsgHeartbeatResp
    a.step(MsgHeartbeatResp("c", "a", 3))
    assert not [m for m in _drain(a, st) if m.dst == "c"]
    # c installed it: the leader appends from there.
    a.step(MsgAppResp("c", "a", 3, index=11))
    assert a.raft.prs["c"].match == 11 and a.raft.prs["c"].pending_snapshot == 0


def test_a_failed_snapshot_is_sent_again_at_the_next_heartbeat_answer() -> None:
    from nexus_node.consensus.raft import MsgHeartbeatResp
    a, st = _compacted_leader(entries=6, compact_to=7)
    a.step(MsgAppResp("c", "a", 3, index=6, reject=True, hint_index=1, hint_term=1))
    assert [m for m in _drain(a, st) if isinstance(m, MsgSnap)]
    a.report_snapshot("c", ok=False)
    assert not [m for m in _drain(a, st) if m.dst == "c"]   # no hot loop
    a.step(MsgHeartbeatResp("c", "a", 3))
    assert [m.dst for m in _drain(a, st) if isinstance(m, MsgSnap)] == ["c"]


def test_a_follower_installs_a_snapshot_and_continues_from_the_log_after_it() -> None:
    c, st = node_with_log("c", ABC, [2], HardState(term=3, commit=2))   # entries 1, 2
    applied: list[Entry] = []
    installed: list[SnapshotMeta] = []
    dropped = c.step(MsgSnap("a", "c", 3, 11, 3, CONFIG))
    assert dropped is None
    out = _drain(c, st, applied, installed)
    assert installed == [SnapshotMeta(11, 3, CONFIG)]
    assert out == [MsgAppResp("c", "a", 3, index=11)]
    assert (st.first_index(), st.last_index(), st.term(11)) == (12, 11, 3)
    assert c.status().commit == 11 and c.status().applied == 11 and applied == []
    # The next append continues from the snapshot's last entry; its entry applies once committed.
    c.step(MsgApp("a", "c", 3, 11, 3, (Entry(12, 3, data=b"x"),), commit=12))
    out = _drain(c, st, applied)
    assert out == [MsgAppResp("c", "a", 3, index=12)]
    assert [e.index for e in applied] == [12]
    with pytest.raises(Compacted):
        st.term(5)


def test_a_stale_snapshot_changes_nothing_and_never_moves_the_commit_index_back() -> None:
    c, st = node_with_log("c", ABC, [2, 2, 3, 3], HardState(term=3, commit=5))
    before = st.entries(1, 6)
    for stale in (MsgSnap("a", "c", 3, 4, 3, CONFIG), MsgSnap("a", "c", 3, 5, 3, CONFIG)):
        assert c.step(stale) is None
        installed: list[SnapshotMeta] = []
        out = _drain(c, st, installed=installed)
        assert installed == []
        assert out == [MsgAppResp("c", "a", 3, index=5)]
        assert c.status().commit == 5 and st.entries(1, 6) == before


def test_a_lower_term_snapshot_is_refused_and_its_sender_told_the_term() -> None:
    c, st = node_with_log("c", ABC, [2, 2], HardState(term=5, commit=1))
    installed: list[SnapshotMeta] = []
    c.step(MsgSnap("a", "c", 4, 20, 4, CONFIG))
    out = _drain(c, st, installed=installed)
    assert installed == [] and c.status().commit == 1 and st.last_index() == 3
    assert out == [MsgAppResp("c", "a", 5, index=0, reject=True)]


def test_a_snapshot_whose_last_entry_the_log_holds_keeps_the_log_after_it() -> None:
    c, st = node_with_log("c", ABC, [2, 2, 3, 3], HardState(term=3, commit=2))   # entries 1..5
    installed: list[SnapshotMeta] = []
    c.step(MsgSnap("a", "c", 3, 4, 3, CONFIG))
    out = _drain(c, st, installed=installed)
    assert installed == []   # nothing to install: the entries are here
    assert c.status().commit == 4 and st.last_index() == 5
    assert out == [MsgAppResp("c", "a", 3, index=4)]


def test_a_snapshot_from_another_than_the_term_s_leader_is_dropped() -> None:
    c, st = node_with_log("c", ABC, [2], HardState(term=3, commit=2))
    c.step(MsgApp("a", "c", 3, 2, 2, (), commit=2))   # a leads term 3
    _drain(c, st)
    why = c.step(MsgSnap("b", "c", 3, 40, 3, CONFIG))
    assert why is not None and "whose leader is a" in why
    assert c.status().commit == 2


def test_a_restart_after_compaction_restores_from_storage_alone() -> None:
    a, st = _compacted_leader(entries=10, compact_to=9)
    a.raft.log  # noqa: B018 - the old node is dropped: a crash
    b = RawNode(RaftConfig("a"), st)
    s = b.status()
    assert (s.first_index, s.commit, s.applied, s.last_index) == (10, 11, 11, 11)
    assert s.membership == Membership.of(ABC)
    assert b.ready() is None or not b.ready().committed_entries   # nothing to apply again


def test_a_snapshot_carries_the_configuration_in_force_at_its_index() -> None:
    st = MemoryStorage()
    st.append([Entry(1, 1, EntryType.CONFIG, Membership.of(["a"]).encode()),
               Entry(2, 1, EntryType.CONFIG, Membership.of(["a"], ["d"]).encode()),
               Entry(3, 1, data=b"x")])
    st.set_hard_state(HardState(term=1, commit=3))
    a = RawNode(RaftConfig("a", applied=3), st)
    meta = a.snapshot_meta(3)
    assert Membership.decode(meta.config.encode()) == Membership.of(["a"], ["d"])
    st.create_snapshot(meta)
    st.compact(3)
    restarted = RawNode(RaftConfig("a"), st)
    assert restarted.status().membership == Membership.of(["a"], ["d"])
    with pytest.raises(ValueError):
        a.snapshot_meta(4)   # not applied


def test_storage_never_compacts_past_its_snapshot() -> None:
    st = MemoryStorage()
    st.append([Entry(i, 1) for i in range(1, 6)])
    with pytest.raises(ValueError, match="snapshot held stops at 0"):
        st.compact(2)
    st.create_snapshot(SnapshotMeta(3, 1, CONFIG))
    with pytest.raises(ValueError, match="stops at 3"):
        st.compact(4)
    st.compact(3)
    assert (st.first_index(), st.term(3)) == (4, 1)
    with pytest.raises(ValueError, match="not after"):
        st.create_snapshot(SnapshotMeta(2, 1, CONFIG))
    with pytest.raises(ValueError):
        st.append([Entry(3, 1)])   # replaces a compacted entry


def test_snapshot_messages_round_trip_and_bad_ones_are_refused() -> None:
    m = MsgSnap("a", "c", 3, 11, 3, CONFIG)
    assert message_from_dict(message_to_dict(m)) == m
    check_message(m)
    for bad, why in ((MsgSnap("a", "c", 3, 0, 0, CONFIG), "snap_index is 0"),
                     (MsgSnap("a", "c", 3, 11, 4, CONFIG), "above its term"),
                     (MsgSnap("a", "c", 3, 11, 3, "not json"), "config"),
                     (MsgSnap("a", "c", 3, 11, 3, '{"voters":[],"learners":[]}'), "no voter"),
                     (MsgSnap("a", "c", 3, 2**63, 3, CONFIG), "out of range")):
        with pytest.raises(InvalidMessage, match=why):
            check_message(bad)
    with pytest.raises(InvalidMessage):
        decode_message({**message_to_dict(m), "config": 5})
    # Only members (or the leader a node being added follows) may send one.
    assert sender_refusal("x", ABC, m) is not None
    assert sender_refusal("a", ABC, m) is None
    assert sender_refusal("x", (), m) is None   # a new node takes its leader's snapshot

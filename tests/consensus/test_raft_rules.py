"""Focused tests of single Raft rules, each on a hand-built situation."""

from __future__ import annotations

import json

import pytest

from nexus_node.consensus.raft import (
    Entry,
    EntryType,
    HardState,
    InvalidConfigChange,
    Membership,
    Message,
    MsgApp,
    MsgAppResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Role,
    message_from_dict,
    message_to_dict,
)

from .helpers import Cluster, drain, node_with_log

ABC = ["a", "b", "c"]


def test_vote_needs_an_up_to_date_log_and_is_given_once_per_term() -> None:
    # a's log: [1]t1 [2]t2 [3]t2 (§5.4.1 compares last term first, then length).
    a, st = node_with_log("a", ABC, [2, 2], HardState(term=2))
    a.step(MsgVote("b", "a", 3, last_index=9, last_term=1))  # longer but older
    a.step(MsgVote("b", "a", 3, last_index=2, last_term=2))  # same term, shorter
    assert [m.reject for m in drain(a, st)] == [True, True]
    a.step(MsgVote("b", "a", 3, last_index=3, last_term=2))  # as up to date: granted
    a.step(MsgVote("c", "a", 3, last_index=5, last_term=3))  # better, but a voted already
    a.step(MsgVote("b", "a", 3, last_index=3, last_term=2))  # b asking again: same answer
    out = drain(a, st)
    assert [(m.dst, m.reject) for m in out] == [("b", False), ("c", True), ("b", False)]
    # The vote is persisted before the grant is sent: a restarted a refuses c in term 3.
    assert st.hard_state() == HardState(term=3, vote="b", commit=0)
    again = RawNode(RaftConfig("a"), st)
    again.step(MsgVote("c", "a", 3, last_index=5, last_term=3))
    assert [m.reject for m in drain(again, st)] == [True]


def test_pre_vote_changes_no_term_and_a_returning_node_does_not_disrupt() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    term = cl.nodes["a"].status().term
    cl.cut = {"c"}
    cl.tick(100)  # c times out again and again, but only pre-votes
    c = cl.nodes["c"].status()
    assert c.term == term and c.role is Role.PRE_CANDIDATE
    # Its pre-vote reaches a follower that hears from a: ignored (leader lease, thesis §4.2.3).
    b_before = cl.nodes["b"].status()
    cl.nodes["b"].step(MsgPreVote("c", "b", term + 1, last_index=99, last_term=term))
    assert drain(cl.nodes["b"], cl.storage["b"]) == [] and cl.nodes["b"].status() == b_before
    cl.cut = set()
    cl.tick(30)
    assert cl.leader() == "a" and all(n.status().term == term for n in cl.nodes.values())
    assert cl.nodes["c"].status().lead == "a"


def test_pre_vote_grant_is_for_a_future_term_and_binds_nothing() -> None:
    a, st = node_with_log("a", ABC, [2], HardState(term=2))
    a.step(MsgPreVote("b", "a", 3, last_index=2, last_term=2))
    a.step(MsgPreVote("c", "a", 3, last_index=2, last_term=2))
    out = drain(a, st)
    assert out == [MsgPreVoteResp("a", "b", 3, reject=False), MsgPreVoteResp("a", "c", 3, reject=False)]
    assert a.status().term == 2 and a.status().vote is None
    a.step(MsgPreVote("b", "a", 1, last_index=5, last_term=1))  # stale term: told ours
    assert drain(a, st) == [MsgPreVoteResp("a", "b", 2, reject=True)]


def test_figure_8_old_term_entries_commit_only_under_a_current_term_entry() -> None:
    # Raft paper Figure 8 (c): s1 leads term 4; its term-2 entry at index 2 is on s1, s2, s3
    # (a majority of five) yet must not count as committed: s5, holding a term-3 entry at index
    # 2, can still be elected by s2, s3, s4 and overwrite it (d).
    five = ["s1", "s2", "s3", "s4", "s5"]
    s1, st = node_with_log("s1", five, [2], HardState(term=3, commit=1), pre_vote=False)
    s1.campaign()
    drain(s1, st)
    for v in ("s2", "s3"):
        s1.step(MsgVoteResp(v, "s1", 4, reject=False))
    assert drain(s1, st) and s1.status().role is Role.LEADER  # no-op [3]t4 appended, persisted
    for v in ("s2", "s3"):
        s1.step(MsgAppResp(v, "s1", 4, index=2))
    drain(s1, st)
    assert s1.status().commit == 1, "a previous-term entry was committed by counting (§5.4.2)"
    # Why: s5's log [1]t1 [2]t3 beats s2's [1]t1 [2]t2 at the ballot (§5.4.1).
    s2, st2 = node_with_log("s2", five, [2], HardState(term=4))
    s2.step(MsgVote("s5", "s2", 5, last_index=2, last_term=3))
    assert [m.reject for m in drain(s2, st2)] == [False]
    # Once the term-4 no-op is on a majority (s1, s2, s3), it commits, and index 2 with it.
    s1.step(MsgAppResp("s2", "s1", 4, index=3))
    drain(s1, st)
    assert s1.status().commit == 1
    s1.step(MsgAppResp("s3", "s1", 4, index=3))
    drain(s1, st)
    assert s1.status().commit == 3


def test_conflicting_suffix_is_truncated_and_stale_appends_truncate_nothing() -> None:
    f, st = node_with_log("f", ABC, [2, 2, 2], HardState(term=2))  # [1]t1 [2..4]t2
    f.step(MsgApp("l", "f", 3, prev_index=2, prev_term=2,
                  entries=(Entry(3, 3, data=b"new3"),), commit=0))
    out = drain(f, st)
    assert out == [MsgAppResp("f", "l", 3, index=3)]
    assert [(e.index, e.term) for e in st.entries(1, st.last_index() + 1)] == [
        (1, 1), (2, 2), (3, 3)]
    # A delayed duplicate of an older append must not cut entry 3 off again.
    f.step(MsgApp("l", "f", 3, prev_index=1, prev_term=1,
                  entries=(Entry(2, 2, data=b"e2"),), commit=0))
    drain(f, st)
    assert st.last_index() == 3 and st.term(3) == 3
    # A probe past our log is rejected with a hint: our last index <= 7 whose term is <= 3.
    f.step(MsgApp("l", "f", 3, prev_index=7, prev_term=3, entries=(), commit=0))
    assert drain(f, st) == [MsgAppResp("f", "l", 3, index=7, reject=True, hint_index=3, hint_term=3)]


def test_a_new_commit_index_goes_out_in_appends_that_are_answered_only_when_rejected() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    sent: list[Message] = []
    entry = cl.nodes["a"].propose(b"x")
    cl.deliver(drop=lambda m: sent.append(m) or False)
    # The entry to each follower and its answer, then the commit index alone, unanswered.
    assert [(type(m).__name__, m.dst, getattr(m, "commit_only", None)) for m in sent] == [
        ("MsgApp", "b", False), ("MsgApp", "c", False), ("MsgAppResp", "a", None),
        ("MsgAppResp", "a", None), ("MsgApp", "b", True), ("MsgApp", "c", True)]
    assert all(n.status().commit == entry.index for n in cl.nodes.values())
    assert cl.applied["c"][-1].data == b"x"
    # One that does not match (the entry before it was lost) is rejected, so the leader repairs.
    f, st = node_with_log("f", ABC, [2], HardState(term=2))
    f.step(MsgApp("l", "f", 2, prev_index=3, prev_term=2, entries=(), commit=3, commit_only=True))
    assert drain(f, st) == [MsgAppResp("f", "l", 2, index=3, reject=True, hint_index=2, hint_term=2)]
    f.step(MsgApp("l", "f", 2, prev_index=2, prev_term=2, entries=(), commit=2, commit_only=True))
    assert drain(f, st) == [] and f.status().commit == 2


def test_a_handed_over_write_commits_on_its_follower_untold_and_others_learn_it_later() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]

    def sent_by(action) -> list[Message]:
        sent: list[Message] = []
        action()
        cl.deliver(drop=lambda m: sent.append(m) or False)
        return sent

    def notices(sent: list[Message]) -> list[str]:
        return [m.dst for m in sent if isinstance(m, MsgApp) and m.commit_only]

    # b handed the write over. The leader writes it to its disk, then sends it to b saying that
    # b's copy makes a majority: b commits it as it stores it, and needs no commit notice.
    entry = None

    def from_b() -> None:
        nonlocal entry
        entry = a.propose(b"from-b", origin="b")

    sent = sent_by(from_b)
    assert entry is not None and notices(sent) == []
    to_b = [m for m in sent if isinstance(m, MsgApp) and m.dst == "b"]
    assert [m.stored_commit for m in to_b] == [entry.index]
    assert cl.nodes["b"].status().commit == entry.index and cl.applied["b"][-1].data == b"from-b"
    assert a.status().commit == entry.index          # b's answer still counts for the leader
    assert cl.nodes["c"].status().commit < entry.index
    # c learns it with the next append, which carries the leader's commit index.
    nxt = a.propose(b"from-c", origin="c")
    cl.deliver()
    assert cl.nodes["c"].status().commit == nxt.index and cl.applied["c"][-1].data == b"from-c"
    # The leader's own writes are announced to everyone.
    mine = a.propose(b"leader's")
    assert notices(sent_by(lambda: None)) == ["b", "c"]
    assert all(n.status().commit == mine.index for n in cl.nodes.values())
    # So is a commit that covers a handed-over entry and one of the leader's.
    a.propose(b"b's", origin="b")
    second = a.propose(b"leader's again")
    cl.deliver()
    assert all(n.status().commit == second.index for n in cl.nodes.values())
    # Without appends, the heartbeat brings an unannounced commit to the bystander.
    last = a.propose(b"last", origin="b")
    assert notices(sent_by(lambda: None)) == [] and cl.nodes["c"].status().commit < last.index
    cl.tick(4)
    assert all(n.status().commit == last.index for n in cl.nodes.values())
    assert [e.data for e in cl.applied["c"]][-1] == b"last"


def test_a_follower_commits_only_what_the_leader_s_disk_and_its_own_copy_make_a_quorum() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]
    # An append sent before the leader's own disk write (its own write, sent early) offers
    # nothing: the leader's copy is not yet on disk, so b's copy alone is no majority.
    entry = a.propose(b"x", origin="a")
    rd = a.ready()
    assert rd is not None and rd.entries == (entry,)
    early = [m for m in rd.messages_before_persist if isinstance(m, MsgApp)]
    assert early and all(m.stored_commit < entry.index for m in early)
    a.advance(rd)
    cl.deliver()
    # With five voters, a follower's write goes to it and one more voter; its copy with the
    # leader's is two of five, so the append offers nothing until another voter has answered.
    five = Cluster(["a", "b", "c", "d", "e"], election_tick=10, heartbeat_tick=2)
    five.elect("a")
    a5 = five.nodes["a"]
    w = a5.propose(b"from-b", origin="b")
    sent: list[Message] = []
    five.deliver(drop=lambda m: sent.append(m) or False)
    offers = [m.stored_commit for m in sent if isinstance(m, MsgApp) and m.dst == "b" and m.entries]
    assert offers and max(offers) < w.index
    assert all(five.nodes[i].status().commit == w.index for i in "ab")
    # A follower never commits past what a message vouches for, however much it is offered.
    f, st = node_with_log("f", ABC, [2, 2], HardState(term=2))
    f.step(MsgApp("l", "f", 2, prev_index=3, prev_term=2, entries=(), commit=1, stored_commit=9))
    assert f.status().commit == 3
    # A learner's copy counts for no quorum: it is offered nothing.
    learner = Cluster(["a", "b", "c"], learners=["d"], election_tick=10, heartbeat_tick=2)
    learner.elect("a")
    la = learner.nodes["a"]
    la.catch_up("d")
    assert all(m.stored_commit == 0 for m in la.ready().messages if isinstance(m, MsgApp))


def test_a_follower_paused_in_a_probe_hears_the_commit_it_missed_when_it_answers() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]
    a.raft.prs["b"].reset_probe()   # as after a heartbeat answer that showed b behind
    held: list[Message] = []
    entry = a.propose(b"x")
    # The probe to b is held back; c answers, so the entry commits while b is paused, and b
    # is told nothing (one probe at a time).
    cl.deliver(drop=lambda m: m.dst == "b" and (held.append(m) or True))
    assert [type(m).__name__ for m in held] == ["MsgApp"] and held[0].commit < entry.index
    assert a.status().commit == entry.index and cl.nodes["b"].status().commit < entry.index
    # The probe arrives and b answers: the leader tells it the commit index it missed.
    cl.nodes["b"].step(held[0])
    cl.deliver()
    assert cl.nodes["b"].status().commit == entry.index
    assert cl.applied["b"][-1].data == b"x"


def test_a_leader_s_appends_may_precede_its_disk_write_but_it_counts_itself_only_after() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]
    entry = a.propose(b"x")
    rd = a.ready()
    assert rd is not None and rd.entries == (entry,)
    assert [(type(m).__name__, m.dst) for m in rd.messages_before_persist] == [("MsgApp", "b"), ("MsgApp", "c")]
    assert rd.messages_after_persist == ()
    # b stores it and answers while a has not written it: one copy of three is no majority.
    cl.nodes["b"].step(rd.messages_before_persist[0])
    answer = drain(cl.nodes["b"], cl.storage["b"])
    a.step(answer[0])
    assert a.status().commit < entry.index
    # a's own write done (advance): two copies of three, committed.
    cl.storage["a"].append(rd.entries)
    a.advance(rd)
    assert a.status().commit == entry.index

    # A Ready that carries a new term or vote sends nothing before it is on disk: a lone
    # voter wins its election at once, and its first appends (to its learner) carry the term.
    solo = Cluster(["v"], learners=["l"], election_tick=10, heartbeat_tick=2)
    v = solo.nodes["v"]
    v.campaign()
    rd = v.ready()
    assert rd is not None and rd.hard_state is not None and rd.soft_state.role is Role.LEADER
    assert any(isinstance(m, MsgApp) for m in rd.messages)
    assert rd.messages_before_persist == () and rd.messages_after_persist == rd.messages


def test_a_heartbeat_round_skips_a_follower_that_will_answer_an_append_sent_since_the_last() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=1)
    cl.elect("a")
    cl.tick(1)   # the first round after the election's appends skips both followers

    def round_after(action) -> list[tuple[str, str]]:
        sent: list[Message] = []
        action()
        cl.deliver(drop=lambda m: sent.append(m) or False)
        cl.nodes["a"].tick()
        cl.deliver(drop=lambda m: sent.append(m) or False)
        return [(type(m).__name__, m.dst) for m in sent if m.src == "a"]

    # Nothing sent since the last round: both get a heartbeat.
    assert round_after(lambda: None) == [("MsgHeartbeat", "b"), ("MsgHeartbeat", "c")]
    # An entry went to both and will be answered: that round sends no heartbeat...
    sent = round_after(lambda: cl.nodes["a"].propose(b"x"))
    assert ("MsgHeartbeat", "b") not in sent and ("MsgHeartbeat", "c") not in sent
    # ...but only that one: the commit-only appends it was followed by are never answered.
    assert round_after(lambda: None) == [("MsgHeartbeat", "b"), ("MsgHeartbeat", "c")]
    # A follower that heard only appends keeps its leader, and the leader keeps its quorum.
    for _ in range(30):
        cl.nodes["a"].propose(b"y")
        cl.tick(1)
    assert cl.leader() == "a" and cl.nodes["a"].status().term == cl.nodes["b"].status().term
    assert [e.data for e in cl.applied["c"]][-1] == b"y"


def test_leader_backtracks_to_the_follower_hint_and_repairs_its_log() -> None:
    cl = Cluster(ABC)
    cl.elect("a")
    cl.cut = {"c"}
    for k in range(20):
        cl.nodes["a"].propose(f"x{k}".encode())
    cl.deliver()
    cl.cut = set()
    cl.tick(4)
    logs = {i: [(e.index, e.term) for e in st.entries(1, st.last_index() + 1)]
            for i, st in cl.storage.items()}
    assert logs["a"] == logs["b"] == logs["c"] and len(logs["a"]) == 22
    assert [e.data for e in cl.applied["c"]] == [e.data for e in cl.applied["a"]]


def test_learners_never_vote_campaign_or_count_for_quorum() -> None:
    cl = Cluster(["a", "b"], learners=["l"])
    cl.cut = {"a", "b"}
    cl.tick(200, only=["l"])  # a learner never times out into a campaign
    assert cl.nodes["l"].status().role is Role.FOLLOWER and cl.nodes["l"].status().term == 1
    assert cl.nodes["l"].ready() is None
    cl.cut = set()
    # a's pre-vote and vote go to b only; a learner's grant is not counted.
    a = cl.nodes["a"]
    a.campaign()
    out = drain(a, cl.storage["a"])
    assert {m.dst for m in out} == {"b"}
    a.step(MsgPreVoteResp("l", "a", 2, reject=False))
    assert a.status().role is Role.PRE_CANDIDATE
    cl.nodes["b"].step(out[0])
    cl.deliver()
    assert cl.leader() == "a"
    # The learner's acknowledgement alone never commits: b is down.
    cl.cut = {"b"}
    entry = a.propose(b"x")
    cl.deliver()
    assert a.status().commit < entry.index
    assert cl.storage["l"].last_index() >= entry.index  # but it does receive the log
    cl.cut = set()
    cl.tick(4)
    assert a.status().commit >= entry.index and cl.applied["l"][-1].data == b"x"


def test_leadership_transfer_catches_the_target_up_then_hands_over() -> None:
    cl = Cluster(ABC)
    cl.elect("a")
    term = cl.nodes["a"].status().term
    cl.cut = {"c"}
    cl.nodes["a"].propose(b"only on a and b")
    cl.deliver()
    cl.cut = set()
    cl.nodes["a"].transfer_leadership("c")  # c lags: it is sent the log first, then TimeoutNow
    with pytest.raises(ProposalDropped):
        cl.nodes["a"].propose(b"refused while transferring")
    sent: list[type] = []
    cl.deliver(drop=lambda m: sent.append(type(m)) and False)
    assert MsgTimeoutNow in sent
    assert cl.leader() == "c" and cl.nodes["c"].status().term == term + 1
    assert cl.nodes["a"].status().role is Role.FOLLOWER
    with pytest.raises(NotLeader) as info:
        cl.nodes["a"].propose(b"x")
    assert info.value.leader == "c"
    cl.nodes["c"].propose(b"after")
    cl.deliver()
    assert [e.data for e in cl.applied["a"] if e.type is EntryType.NORMAL] == [
        b"only on a and b", b"after"]


def test_transfer_is_abandoned_when_the_target_does_not_answer() -> None:
    cl = Cluster(ABC, election_tick=10)
    cl.elect("a")
    cl.cut = {"c"}
    cl.nodes["a"].transfer_leadership("c")
    cl.tick(10, only=["a", "b"])
    assert cl.leader() == "a"
    cl.nodes["a"].propose(b"accepted again")


def test_isolated_leader_steps_down_check_quorum() -> None:
    cl = Cluster(ABC, election_tick=10)
    cl.elect("a")
    cl.cut = {"a"}
    # The first check after the cut still counts what b and c said before it; the next one,
    # at most 2 * election_tick after the last contact, finds no quorum.
    cl.tick(10, only=["a"])
    assert cl.nodes["a"].status().role is Role.LEADER
    cl.tick(10, only=["a"])
    assert cl.nodes["a"].status().role is Role.FOLLOWER


def test_membership_changes_are_one_at_a_time_and_never_drop_the_leader() -> None:
    cl = Cluster(ABC)
    cl.elect("a")
    a = cl.nodes["a"]
    with pytest.raises(InvalidConfigChange):
        a.propose_membership(Membership.of(["a", "b", "c", "d", "e"]))
    with pytest.raises(InvalidConfigChange):
        a.propose_membership(Membership.of(["b", "c"]))  # the leader itself: transfer first
    a.propose_membership(Membership.of(["a", "b", "c"], ["d"]))
    with pytest.raises(InvalidConfigChange):  # the first is not committed yet
        a.propose_membership(Membership.of(["a", "b"], ["d"]))
    # In force as soon as appended (thesis §4.1): d already gets the log.
    assert a.status().membership == Membership.of(["a", "b", "c"], ["d"])
    with pytest.raises(NotLeader):
        cl.nodes["b"].propose_membership(Membership.of(["a", "b"]))


def test_messages_round_trip_through_json() -> None:
    msgs = [
        MsgApp("a", "b", 3, 4, 2, (Entry(5, 3, EntryType.NORMAL, b"\x00\xff", "p-1"),
                                   Entry(6, 3, EntryType.NOOP)), 4),
        MsgAppResp("b", "a", 3, 4, True, 2, 1),
        MsgVote("a", "b", 3, 4, 2, True),
        MsgPreVoteResp("b", "a", 3, False),
        MsgTimeoutNow("a", "b", 3),
    ]
    for m in msgs:
        assert message_from_dict(json.loads(json.dumps(message_to_dict(m)))) == m
    with pytest.raises(ValueError):
        message_from_dict({"type": "os.system"})


def _appends(sent: list[Message]) -> list[tuple[str, int]]:
    """(destination, entries carried) of each append with entries among ``sent``."""
    return [(m.dst, len(m.entries)) for m in sent if isinstance(m, MsgApp) and m.entries]


def _sent_by(cl: Cluster, action) -> list[Message]:
    sent: list[Message] = []
    action()
    cl.deliver(drop=lambda m: sent.append(m) or False)
    return sent


def test_a_private_write_goes_first_to_a_quorum_and_the_bystander_takes_it_later() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]
    # b handed the write over: with three voters, a and b are a majority, so only b is sent it.
    first = None

    def from_b() -> None:
        nonlocal first
        first = a.propose(b"from-b", origin="b")

    assert _appends(_sent_by(cl, from_b)) == [("b", 1)]
    assert first is not None and a.status().commit == first.index
    assert cl.nodes["b"].status().commit == first.index
    assert cl.storage["c"].last_index() < first.index
    # c's own write carries what c lacks in the same message.
    assert _appends(_sent_by(cl, lambda: a.propose(b"from-c", origin="c"))) == [("c", 2)]
    assert [e.data for e in cl.applied["c"]][-2:] == [b"from-b", b"from-c"]
    # The leader's private write goes to one follower (one that lacks nothing, in id order);
    # a write of the leader's that others act on goes to everyone, with what they lack.
    # (c, as b lacks c's write.)
    assert _appends(_sent_by(cl, lambda: a.propose(b"mine", origin="a"))) == [("c", 1)]
    assert _appends(_sent_by(cl, lambda: a.propose(b"public"))) == [("b", 3), ("c", 1)]
    assert all(n.status().commit == a.status().commit for n in cl.nodes.values())
    # With nothing else sent to it, the bystander takes its entries at its heartbeat's answer,
    # still replicating (not set back to one probe at a time).
    last = a.propose(b"again", origin="b")
    cl.deliver()
    assert cl.storage["c"].last_index() < last.index
    cl.tick(4)
    assert cl.applied["c"][-1].data == b"again"
    assert not a.raft.prs["c"].probing


def test_a_bystander_lags_at_most_half_a_message() -> None:
    cl = Cluster(ABC, election_tick=100, heartbeat_tick=50)
    cl.elect("a")
    a = cl.nodes["a"]
    half = a.raft.cfg.max_entries_per_msg // 2
    to_c = []
    for i in range(3 * half):
        sent = _sent_by(cl, lambda: a.propose(f"w{i}".encode(), origin="b"))
        to_c += [n for dst, n in _appends(sent) if dst == "c"]
        assert a.raft.log.last_index() - cl.storage["c"].last_index() <= half + 1
    # Every entry reached c, in a few messages of many entries.
    assert sum(to_c) >= 3 * half - half - 1 and max(to_c) > half


def test_a_write_from_a_probing_follower_goes_to_everyone() -> None:
    cl = Cluster(ABC, election_tick=10, heartbeat_tick=2)
    cl.elect("a")
    a = cl.nodes["a"]
    a.propose(b"settle")
    cl.deliver()
    a.raft.prs["b"].reset_probe()   # b's answer may never come: the fastest majority commits
    sent = _sent_by(cl, lambda: a.propose(b"from-b", origin="b"))
    assert ("c", 1) in _appends(sent)


def test_catch_up_sends_a_node_what_it_lacks_and_the_commit_index() -> None:
    cl = Cluster(ABC, election_tick=100, heartbeat_tick=50)
    cl.elect("a")
    a = cl.nodes["a"]
    for i in range(3):
        a.propose(f"w{i}".encode(), origin="b")
        cl.deliver()
    assert [e.data for e in cl.applied["c"]][-1:] != [b"w2"]
    a.catch_up("c")
    cl.deliver()
    assert [e.data for e in cl.applied["c"]][-3:] == [b"w0", b"w1", b"w2"]
    assert cl.nodes["c"].status().commit == a.status().commit
    # A follower cannot catch anyone up; neither can anyone catch itself up.
    cl.nodes["b"].catch_up("c")
    a.catch_up("a")
    assert drain(cl.nodes["b"], cl.storage["b"]) == [] and drain(a, cl.storage["a"]) == []

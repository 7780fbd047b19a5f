"""Checks on a peer's messages and commands before they touch the core or the disk (issue 18):
the pure functions the transport, the core and the simulation's adversary share."""

from __future__ import annotations

import json

import pytest

from nexus_node.consensus.addresses import AddressClaim, address_claim
from nexus_node.consensus.raft import (
    Entry,
    EntryType,
    HardState,
    Membership,
    MemoryStorage,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgTimeoutNow,
    MsgVote,
    RaftConfig,
    RawNode,
    Role,
    message_to_dict,
)
from nexus_node.consensus.raft.core import MAX_TERM_JUMP
from nexus_node.consensus.raft.messages import MAX_INDEX, MAX_TERM, MsgPreVote, MsgPreVoteResp, MsgVoteResp
from nexus_node.consensus.raft.validate import InvalidMessage, check_message, decode_message, sender_refusal
from nexus_node.consensus.state import ReplicatedState, encode_command
from nexus_node.jobs import registry as records
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.study import journal

from .helpers import Cluster, drain, node_with_log


def raw(m) -> dict:
    return message_to_dict(m)


def test_well_formed_messages_decode_and_every_field_is_in_range():
    m = MsgApp("a", "b", 3, 4, 2, (Entry(5, 3, EntryType.NORMAL, b"x", "p"), Entry(6, 3, EntryType.NOOP)), 4)
    assert decode_message(json.dumps(raw(m))) == m
    assert decode_message(raw(MsgHeartbeat("a", "b", MAX_TERM, MAX_INDEX))).term == MAX_TERM


@pytest.mark.parametrize("change, fragment", [
    ({"term": 2**63 - 1}, "out of range"),
    ({"term": 2**64}, "out of range"),
    ({"term": MAX_TERM + 1}, "out of range"),
    ({"commit": -1}, "out of range"),
    ({"term": "5"}, "must be an int"),
    ({"term": True}, "must be an int"),
    ({"term": 1.0}, "must be an int"),
    ({"src": ""}, "non-empty"),
    ({"src": "x" * 500}, "non-empty"),
    ({"src": "a\n"}, "printable"),
    ({"type": "os.system"}, "unknown raft message type"),
    ({"extra": 1}, "undecodable"),
])
def test_a_heartbeat_out_of_range_or_of_the_wrong_types_is_refused(change, fragment):
    with pytest.raises(InvalidMessage, match=fragment):
        decode_message(json.dumps(raw(MsgHeartbeat("a", "b", 2, 0)) | change))


@pytest.mark.parametrize("entry, fragment", [
    ({"index": 5, "term": 3, "type": "bogus", "data": ""}, "undecodable"),
    ({"index": 5, "term": 3, "type": "normal", "data": "", "proposal_id": 5}, "proposal_id"),
    ({"index": "5", "term": 3, "type": "normal", "data": ""}, "must be an int"),
    ({"index": 7, "term": 3, "type": "normal", "data": ""}, "not 5"),        # leaves a gap
    ({"index": 5, "term": 4, "type": "normal", "data": ""}, "outside"),      # above the message's term
    ({"index": 5, "term": 1, "type": "normal", "data": ""}, "outside"),      # below prev_term
    ({"index": 5, "term": 3, "type": "noop", "data": "eA=="}, "NOOP carrying data"),
    ({"index": 5, "term": 3, "type": "config", "data": "eA=="}, "bad membership"),
    ({"index": 5, "term": 3, "type": "normal", "data": "%%"}, "undecodable"),
])
def test_an_append_with_a_malformed_entry_is_refused(entry, fragment):
    m = raw(MsgApp("a", "b", 3, 4, 2, (), 4)) | {"entries": [entry]}
    with pytest.raises(InvalidMessage, match=fragment):
        decode_message(m)


def test_only_members_speak_consensus_but_a_node_being_added_or_lost_hears_its_leader():
    hb = MsgHeartbeat("x", "a", 2, 0)
    assert "not a member" in sender_refusal("x", {"a", "b"}, hb)
    assert sender_refusal("b", {"a", "b"}, hb) is None
    assert sender_refusal("x", set(), hb) is None                       # empty log: being added
    # A node that lost its leader takes a stranger's appends (a leader its configuration does
    # not know yet, thesis §4.1), and keeps taking them from the leader it then follows; never
    # its votes, its transfers or its writes.
    assert sender_refusal("x", {"a", "b"}, hb, orphaned=True) is None
    assert sender_refusal("x", {"a", "b"}, hb, leader="x") is None
    assert sender_refusal("x", {"a", "b"}, MsgTimeoutNow("x", "a", 2), leader="x")
    assert sender_refusal("x", {"a", "b"}, None, orphaned=True)
    assert sender_refusal("x", {"a", "b"}, MsgApp("x", "a", 2, 0, 0, (), 0))


def test_elections_are_open_to_non_members_but_a_transfer_s_vote_is_not():
    # Thesis 4.1: a voter answers a candidate its configuration does not know yet (the lease
    # in the core keeps a removed node from disrupting a leader it hears).
    for m in (MsgPreVote("x", "a", 3, 0, 0), MsgVote("x", "a", 3, 0, 0),
              MsgPreVoteResp("x", "a", 3, False), MsgVoteResp("x", "a", 3, True)):
        assert sender_refusal("x", {"a", "b"}, m) is None
        assert sender_refusal("x", {"a", "b"}, m, orphaned=True) is None
    # A transfer's vote request overrides the lease: only from a member, or to a lost node.
    forced = MsgVote("x", "a", 3, 0, 0, transfer=True)
    assert "transfer" in sender_refusal("x", {"a", "b"}, forced)
    assert sender_refusal("x", {"a", "b"}, forced, orphaned=True) is None
    assert sender_refusal("b", {"a", "b"}, forced) is None


def _run_screened(nodes: dict, ticks: int) -> str | None:
    """Ticks RawNodes (id -> (node, storage)) delivering every message at once, each through
    sender_refusal as the transport screens it; returns the first leader elected."""
    net: list = []
    for _ in range(ticks):
        for node, _st in nodes.values():
            node.tick()
        for _ in range(5):
            for node, st in nodes.values():
                net.extend(drain(node, st))
            pending, net = net, []
            for m in pending:
                if m.dst not in nodes:
                    continue
                r = nodes[m.dst][0].raft
                if sender_refusal(m.src, r.membership.members, m, r.orphaned, r.term_leader) is None:
                    nodes[m.dst][0].step(m)
        leaders = [i for i, (n, _) in nodes.items() if n.raft.role is Role.LEADER]
        if leaders:
            return leaders[0]
    return None


def test_a_voter_that_missed_a_promotion_still_votes_for_the_promoted_node():
    """Voters {A,B,C}; D added as a learner, then promoted (committed on A, B, D); C lags at
    {A,B,C}; D holds one more (uncommitted) entry; A is gone for good. Only D can win (its log
    is the longest) and it needs C's vote: refusing it as a non-member left B, C and D, a live
    quorum of every configuration, without a leader for ever (the reviewer's vote_deadlock)."""
    c1 = Membership.of(["A", "B", "C"]).encode()
    more = [Entry(2, 2, EntryType.CONFIG, Membership.of(["A", "B", "C"], ["D"]).encode()),
            Entry(3, 2, EntryType.CONFIG, Membership.of(["A", "B", "C", "D"]).encode())]
    base = [Entry(1, 1, EntryType.CONFIG, c1)]
    logs = {"B": base + more, "C": base, "D": base + more + [Entry(4, 2, EntryType.NORMAL, b"x")]}
    commits = {"B": 3, "C": 1, "D": 3}
    nodes = {}
    for i, entries in logs.items():
        st = MemoryStorage()
        st.append(entries)
        st.set_hard_state(HardState(term=2, vote="A", commit=commits[i]))
        nodes[i] = (RawNode(RaftConfig(i, election_tick=10, heartbeat_tick=2, seed=7), st), st)
    assert "D" not in nodes["C"][0].raft.membership.members
    assert _run_screened(nodes, 600) == "D"


def test_the_core_drops_what_no_honest_peer_sends_and_never_raises():
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    b, a = c.nodes["b"], c.nodes["a"]
    term = b.status().term
    # Past the range, or a huge jump: dropped before anything changes.
    assert "out of range" in b.step(MsgHeartbeat("a", "b", 2**63 - 1, 0))
    assert "above this node's" in b.step(MsgHeartbeat("c", "b", term + MAX_TERM_JUMP + 1, 0))
    assert b.step(MsgHeartbeat("a", "b", 1.5, 0))                       # type: ignore[arg-type]
    # Same term, from a member that is not the term's leader: an append, a heartbeat, a transfer.
    assert "whose leader is a" in b.step(MsgHeartbeat("c", "b", term, 0))
    assert "whose leader is a" in b.step(MsgApp("c", "b", term, 0, 0, (), 0))
    assert "not the leader" in b.step(MsgTimeoutNow("c", "b", term))
    # An answer claiming more log than the leader has.
    assert "past this leader's log" in a.step(MsgAppResp("b", "a", term, a.status().last_index + 5))
    assert b.status().term == term and b.status().lead == "a" and not b.raft.msgs
    c.deliver()
    a.propose(b"still works")
    c.deliver()
    assert b"still works" in [e.data for e in c.applied["c"]]


def test_a_node_that_lost_its_leader_is_orphaned_after_two_election_timeouts():
    node, _ = node_with_log("b", ["a", "b", "c"], [2], HardState(term=2), election_tick=10)
    node.step(MsgHeartbeat("a", "b", 2, 0))
    assert not node.raft.orphaned
    for _ in range(19):
        node.raft.leader_ticks += 1
    assert not node.raft.orphaned
    node.raft.leader_ticks += 1
    assert node.raft.orphaned


def test_an_address_claimed_for_a_member_moves_it_only_after_a_check():
    assert address_claim(None, "h:2", member=True) is AddressClaim.ADOPT
    assert address_claim("h:1", "h:2", member=False) is AddressClaim.ADOPT
    assert address_claim("h:1", "h:1", member=True) is AddressClaim.KEEP
    assert address_claim("h:1", "", member=True) is AddressClaim.KEEP
    assert address_claim("h:1", "h:2", member=True) is AddressClaim.VERIFY


# ---- commands -------------------------------------------------------------------------------


class _Driver:
    """What ReplicatedRecords and ReplicatedJournal need of a driver to register."""

    def __init__(self) -> None:
        self.state = ReplicatedState()
        self.node_id = "n1"

    def note_peer(self, node_id: str, address: str) -> None:
        pass

    def note_recorded(self, node_id: str, address: str) -> None:
        pass


def _state() -> tuple[ReplicatedState, records.ReplicatedRecords]:
    d = _Driver()
    recs = records.ReplicatedRecords(d, EventHub())  # type: ignore[arg-type]
    journal.ReplicatedJournal(d)  # type: ignore[arg-type]
    return d.state, recs


def job(**kw) -> dict:
    return JobRecord(job_id="job-1", spec=JobSpecRecord(target="y"), created_at=1.0, node_id="n2",
                     **kw).to_dict()


def test_a_command_must_be_of_a_registered_kind_with_a_body_its_validator_accepts():
    state, _ = _state()
    state.validate(encode_command("records", {"op": "put_job", "job": job()}))
    for data, fragment in [
        (b"not json", "not JSON"),
        (b'{"kind": "records"}', "kind"),
        (encode_command("nope", {}), "unknown command kind"),
        (encode_command("records", {"op": "drop_table"}), "unknown records op"),
        (encode_command("records", {"op": "put_job", "job": job() | {"created_at": "yesterday"}}),
         "created_at must be a number"),
        (encode_command("records", {"op": "put_job", "job": job() | {"created_at": float("inf")}}), "finite"),
        (encode_command("records", {"op": "put_job", "job": job(state="DONE")}), "not a job state"),
        (encode_command("records", {"op": "put_job", "job": job() | {"trials": {"COMPLETE": "2"}}}), "must be int"),
        (encode_command("records", {"op": "put_model", "model": {"model_id": "m"}}), "missing"),
        (encode_command("records", {"op": "put_blob", "sha256": "x", "size": 1, "kind": "k", "holder": "n"}), "hex"),
        (encode_command("records", {"op": "member", "node_id": 5, "address": "h:1"}), "node_id"),
        (encode_command("optuna_journal", {"name": "optuna", "logs": [{"op_code": 99, "worker_id": "w"}]}), "op_code"),
        (encode_command("optuna_journal", {"name": "optuna", "logs": [{"op_code": 4, "worker_id": "w",
                                                                      "study_id": "0"}]}), "study_id"),
        (encode_command("optuna_journal", {"name": "optuna", "logs": [{"op_code": 6, "worker_id": "w",
                                                                      "trial_id": 0, "state": 1,
                                                                      "values": ["0.99"]}]}), "values"),
        (encode_command("optuna_journal", {"name": "optuna", "logs": "x"}), "list of logs"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            state.validate(data)


def test_a_forged_record_with_a_string_time_never_loads():
    with pytest.raises(ValueError, match="created_at"):
        JobRecord.from_dict(job() | {"created_at": "yesterday"})
    model = ModelRecord("m", "job-1", "regression", "y", ["a"], [], {"r2": 0.9}, "0" * 64, 10, 2.0)
    assert ModelRecord.from_dict(model.to_dict()) == model
    # JSON from an older node may carry 3 for 3.0: still a number.
    assert JobRecord.from_dict(job() | {"created_at": 3}).created_at == 3


def test_a_follower_may_hand_over_only_its_own_writes():
    state, recs = _state()

    def forwarded(body: dict, origin: str = "n2") -> None:
        state.check_forwarded(encode_command("records", body), origin)

    forwarded({"op": "put_job", "job": job()})                               # a submit on n2
    forwarded({"op": "cancel_job", "job_id": "job-1"})
    forwarded({"op": "delete_job", "job_id": "job-1"})                      # a user's delete on n2
    forwarded({"op": "delete_model", "model_id": "model-1"})
    forwarded({"op": "put_blob", "sha256": "a" * 64, "size": 3, "kind": "dataset", "holder": "n2"})
    forwarded({"op": "put_blob", "sha256": "a" * 64, "size": 3, "kind": "dataset", "holder": "n2",
               "job_id": "job-1"})
    forwarded({"op": "member", "node_id": "n2", "address": "h:2"})
    for body, fragment in [
        ({"op": "put_job", "job": job(state="COMPLETED", best_value=0.9999)}, "PENDING"),
        ({"op": "put_job", "job": job() | {"node_id": "n3"}}, "submitter"),
        ({"op": "put_model", "model": ModelRecord("m", "j", "regression", "y", [], [], {}, "0" * 64, 1,
                                                  1.0).to_dict()}, "coordinator"),
        ({"op": "put_blob", "sha256": "a" * 64, "size": 3, "kind": "model", "holder": "n1"}, "own copies"),
        ({"op": "member", "node_id": "n1", "address": "evil:1"}, "own address"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            forwarded(body)
    recs.jobs["job-1"] = JobRecord.from_dict(job())
    with pytest.raises(ValueError, match="exists"):                          # rewriting a real job
        forwarded({"op": "put_job", "job": job()})


def test_a_config_entry_must_name_valid_members():
    bad = Entry(5, 3, EntryType.CONFIG, json.dumps({"voters": [""], "learners": []}).encode())
    with pytest.raises(InvalidMessage, match="member"):
        check_message(MsgApp("a", "b", 3, 4, 2, (bad,), 4))
    ok = Entry(5, 3, EntryType.CONFIG, Membership.of(["a", "b"]).encode())
    check_message(MsgApp("a", "b", 3, 4, 2, (ok,), 4))


# ---- the term jump limit ------------------------------------------------------------------------


def test_a_new_node_takes_the_term_of_a_cluster_that_passed_the_jump_limit():
    """A new node has term 0 and an empty log; an old cluster's term may be past 2**20 (and
    with pre-vote a new node never raises its own): it must still follow its leader."""
    st = MemoryStorage()
    node = RawNode(RaftConfig("d"), st)
    big = MAX_TERM_JUMP * 3
    c1 = Entry(1, 5, EntryType.CONFIG, Membership.of(["a", "b", "c"], ["d"]).encode())
    assert node.step(MsgHeartbeat("a", "d", big, 0)) is None
    assert node.status().term == big and node.status().lead == "a"
    assert node.step(MsgApp("a", "d", big, 0, 0, (c1,), 1)) is None
    drain(node, st)
    assert st.last_index() == 1 and node.status().commit == 1


def test_a_node_restored_from_an_old_backup_takes_its_leader_s_term_once_orphaned():
    node, _ = node_with_log("b", ["a", "b", "c"], [2], HardState(term=2), election_tick=10)
    big = 2 + MAX_TERM_JUMP * 5
    # While it hears a leader of its own term, a jump that large is refused.
    node.step(MsgHeartbeat("a", "b", 2, 0))
    assert "above this node's" in node.step(MsgHeartbeat("c", "b", big, 0))
    # The real cluster moved on long ago: the node hears no leader it can take...
    for _ in range(2 * 10 - 1):
        node.tick()
        assert "above this node's" in node.step(MsgHeartbeat("c", "b", big, 0))
    node.tick()
    # ...and once orphaned it takes that term and follows.
    assert node.raft.orphaned
    assert node.step(MsgHeartbeat("c", "b", big, 0)) is None
    assert node.status().term == big and node.status().lead == "c"


# ---- contradictions -------------------------------------------------------------------------


def test_forged_contradictions_spread_over_an_idle_leader_s_term_never_add_up():
    """An idle leader sends only heartbeats: those that carry a commit matching this node's
    reset the count, so three forged contradictions over its term are three single ones."""
    from nexus_node.consensus.raft.core import DIVERGENCE_APPENDS
    c = Cluster(["a", "b"], election_tick=10)
    c.elect("a")
    c.nodes["a"].propose(b"x")
    c.deliver()
    b = c.nodes["b"]
    term, committed = b.status().term, b.status().commit
    forged = MsgApp("a", "b", term, prev_index=committed - 1, prev_term=0,
                    entries=(), commit=committed)
    for _ in range(DIVERGENCE_APPENDS * 3):
        assert "contradicting" in b.step(forged)
        c.tick(4)      # the leader's heartbeats, commit = b's commit
        assert b.raft.contradictions == 0
    # The node still follows and applies.
    c.nodes["a"].propose(b"y")
    c.deliver()
    assert b"y" in [e.data for e in c.applied["b"]]


def test_a_heartbeat_of_a_leader_that_never_matched_this_node_does_not_reset_the_count():
    node, _ = node_with_log("b", ["a", "b"], [2, 2], HardState(term=2, commit=3), election_tick=10)
    node.step(MsgHeartbeat("a", "b", 2, 3))
    wrong = MsgApp("a", "b", 2, prev_index=2, prev_term=1, entries=(), commit=0)
    assert "contradicting" in node.step(wrong)
    assert node.step(MsgHeartbeat("a", "b", 2, 0)) is None          # commit 0: no match known
    assert node.raft.contradictions == 1


# ---- application data on followers -------------------------------------------------------------


def test_a_follower_takes_a_committed_entry_its_validators_refuse_and_skips_it_on_apply():
    """Application commands are checked where they are proposed (the leader). A follower takes
    whatever is replicated: the entry may be committed already (a joiner replays from index 1),
    and a command of a kind this node does not know (a newer node's, in a rolling upgrade) or
    that a stricter validator refuses must not block it. Apply skips it, the same everywhere."""
    state, recs = _state()
    unknown = encode_command("from_a_newer_version", {"x": 1})
    forged = encode_command("records", {"op": "put_job", "job": job() | {"created_at": "yesterday"}})
    for data in (unknown, forged):
        with pytest.raises(ValueError):
            state.validate(data)          # a leader refuses to propose it
    c = Cluster(["a", "b"])
    c.elect("a")
    b = c.nodes["b"]
    term, last = b.status().term, b.status().last_index
    entries = (Entry(last + 1, term, EntryType.NORMAL, unknown, "p1"),
               Entry(last + 2, term, EntryType.NORMAL, forged, "p2"))
    m = MsgApp("a", "b", term, last, c.storage["b"].term(last), entries, last + 2)
    check_message(m)                                        # structurally fine
    assert sender_refusal("a", b.raft.membership.members, m) is None
    assert b.step(m) is None
    c.deliver()
    applied = [e for e in c.applied["b"] if e.type is EntryType.NORMAL]
    assert [e.data for e in applied] == [unknown, forged]
    for i, e in enumerate(c.applied["b"], start=1):
        assert state.apply(e).index == i                    # skipped, not raised
    assert "job-1" not in recs.jobs

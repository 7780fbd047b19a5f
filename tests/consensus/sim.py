"""A seeded, deterministic simulation of a Raft cluster on an in-memory network.

One ``random.Random(seed)`` drives everything — faults, delays, proposals, and the nodes' own
election timeouts (each node's seed is derived from it) — so a seed replays exactly.

The network loses, duplicates and delays (hence reorders) messages, and partitions the nodes
into two groups. Nodes crash (between two Readies, or after persisting a Ready but before
sending its messages) and restart from their storage alone: hard state, snapshot and log. Their
state machine is in memory, so a restarted node restores its snapshot, if any, and applies the
committed log after it.

Nodes compact (:meth:`Sim.maybe_compact`): now and then a node snapshots its state machine at
its applied index and drops its log up to a small random tail before it, as the driver does
with ``--snapshot-entries``. A leader then sends a follower that lacks dropped entries its
snapshot (:class:`~nexus_node.consensus.raft.MsgSnap`), which the network carries with the
snapshot's data, loses, duplicates and delays like anything else; the sender's driver is told
whether it arrived (``report_snapshot``), as the real transport does.

Invariants are checked as the run goes (:class:`SafetyViolation` on the first breach):

* Election Safety: at most one leader per term.
* State Machine Safety: each node applies indexes 1, 2, 3... and every node's applied
  sequence is a prefix of one common sequence (no committed entry is ever lost or changed);
  a snapshot taken or installed holds exactly that sequence's prefix.
* Leader Completeness: a new leader's log holds every entry applied anywhere so far.
* Log Matching: two persisted logs with an entry of the same index and term are identical up
  to it (checked every few ticks and at the end).

After the chaotic phase the network heals and every node restarts; a leader must then be
elected and a fresh proposal applied on every node within a bounded number of ticks (liveness).
:meth:`Sim.run_minority_down` goes on from there: members are added and promoted under faults,
then the leader and up to a minority of the voters stay down for good, and the others must
elect a leader and commit (liveness without restarting every node).

Every message is delivered as a real node's transport delivers it: checked
(:func:`~nexus_node.consensus.raft.validate.check_message`, which no honest message may fail) and
refused when its sender is not a member of the receiver's configuration
(:func:`~nexus_node.consensus.raft.validate.sender_refusal`). An adversary (:meth:`Sim.attack`)
injects what a peer holding the cluster's credential could send, as JSON through
:func:`~nexus_node.consensus.raft.validate.decode_message`, the transport's own path: out-of-range
terms and indexes, wrong types, unknown entry types, messages from non-members, same-term
appends, heartbeats and transfers from a member that is not the term's leader (a non-member's
vote requests pass the screen, elections being open to all, and reach the core), answers claiming
more log than the leader has, and appends contradicting committed entries in the name of the
real leader (one or two at a time: a forger that keeps that up can stop the node, which is what
the peer secret is for). Each must be refused or dropped; no node may raise. Not injected, since
no check on the message alone can tell them from the real thing: votes and appends forged in a
member's name with plausible values (the peer secret keeps those out).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import random
from typing import Any

from nexus_node.consensus.raft import (
    Entry,
    EntryType,
    InvalidConfigChange,
    Membership,
    MemoryStorage,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgPreVote,
    MsgSnap,
    MsgTimeoutNow,
    MsgVote,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Role,
    SnapshotMeta,
    bootstrap,
    message_to_dict,
)
from nexus_node.consensus.raft.core import DIVERGENCE_APPENDS
from nexus_node.consensus.raft.messages import MAX_TERM
from nexus_node.consensus.raft.validate import InvalidMessage, check_message, decode_message, sender_refusal

#: In the network's queue: "tell the sender of this MsgSnap that it failed".
_FAILED = object()


class SafetyViolation(AssertionError):
    """An invariant broke; the message names it."""


@dataclasses.dataclass(frozen=True)
class SimParams:
    """Knobs of one run (defaults: the CI run)."""

    chaos_ticks: int = 200
    heal_ticks: int = 120  # liveness bound: leader + a committed proposal on every node
    election_tick: int = 10
    heartbeat_tick: int = 2
    drop: float = 0.05
    duplicate: float = 0.03
    max_delay: int = 3  # ticks; 1..max_delay at random, so messages reorder
    p_crash: float = 0.01  # per tick
    p_restart: float = 0.08  # per tick, per crashed node
    p_partition: float = 0.02
    p_heal: float = 0.06
    p_propose: float = 0.4
    p_transfer: float = 0.005
    p_member_change: float = 0.02
    p_catch_up: float = 0.02
    p_attack: float = 0.15   # per tick: one forged message to one node
    check_every: int = 20
    p_compact: float = 0.03   # per Ready of a node with at least compact_min entries applied since its last snapshot
    compact_min: int = 4
    max_tail: int = 6   # entries kept before the snapshot index
    minority_ticks: int = 150   # run_minority_down: the membership phase before a minority stays down
    minority_drop: float = 0.15  # its message loss: followers miss entries, logs end unevenly


class Sim:
    """One simulated cluster. Call :meth:`run`; it raises :class:`SafetyViolation` on a breach."""

    def __init__(self, seed: int, params: SimParams = SimParams()) -> None:
        self.seed = seed
        self.p = params
        self.rng = random.Random(seed)
        n_voters = self.rng.choice((1, 3, 3, 3, 5, 5))
        n_spare = self.rng.choice((0, 1, 2))
        self.ids = [f"n{i}" for i in range(n_voters + n_spare)]
        founders = self.ids[:n_voters]
        self.storage: dict[str, MemoryStorage] = {}
        for i in self.ids:
            self.storage[i] = MemoryStorage()
            if i in founders:
                bootstrap(self.storage[i], founders)
        self.nodes: dict[str, RawNode | None] = {}
        self.applied: dict[str, list[tuple[int, int]]] = {}
        # Each node's state machine: the items it applied, in order (what a snapshot holds).
        self.items: dict[str, list[tuple[int, str, str]]] = {}
        # Each node's snapshot on disk (survives crashes, like its storage), and the one a
        # MsgSnap just delivered carries (the driver holds the data before the core sees it).
        self.snap_data: dict[str, tuple[SnapshotMeta, tuple[tuple[int, str, str], ...]]] = {}
        self.incoming: dict[str, tuple[SnapshotMeta, tuple[tuple[int, str, str], ...]]] = {}
        self.restarts = collections.Counter[str]()
        for i in self.ids:
            self._start(i)
        self.now = 0
        self.net: list[tuple[int, int, Message]] = []  # heap of (deliver_at, seq, msg)
        self.seq = 0
        self.group: dict[str, int] = {i: 0 for i in self.ids}
        self.chosen: list[tuple[int, int, str]] = []  # the one applied sequence: (term, type, data)
        self.leaders: dict[int, str] = {}
        self.proposed = 0
        self.trace: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=80)
        self.faults = True
        self.stats = collections.Counter[str]()
        self.down: set[str] = set()   # down for good (run_minority_down): never restarted
        self.drop = params.drop

    # --- nodes ----------------------------------------------------------------------------------

    def _start(self, i: str) -> None:
        cfg = RaftConfig(i, election_tick=self.p.election_tick,
                         heartbeat_tick=self.p.heartbeat_tick,
                         seed=self.seed * 1000 + self.restarts[i])
        self.nodes[i] = RawNode(cfg, self.storage[i])
        self.items[i] = []
        self.applied[i] = []
        held = self.storage[i].snapshot()
        if held is not None:
            meta, data = self.snap_data[i]
            assert meta == held, (meta, held)
            self.restore(i, meta, data)

    def alive(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i] is not None]

    def crash(self, i: str) -> None:
        self.nodes[i] = None
        self.applied[i] = []
        self.items[i] = []
        self.incoming.pop(i, None)
        self.stats["crashes"] += 1
        self.event("crash", i)

    def restart(self, i: str) -> None:
        self.restarts[i] += 1
        self._start(i)
        self.event("restart", i, self.storage[i].hard_state(), self.storage[i].last_index())

    def event(self, *what: Any) -> None:
        self.trace.append((self.now, *what))

    # --- network --------------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if m.dst not in self.group or m.src not in self.group:
            return   # an answer to the adversary's non-member: no such node
        if self.group[m.src] != self.group[m.dst]:
            if isinstance(m, MsgSnap):
                self.snapshot_failed(m)
            return
        copies = 1
        if self.faults:
            if self.rng.random() < self.drop:
                if isinstance(m, MsgSnap):
                    self.snapshot_failed(m)
                return
            if self.rng.random() < self.p.duplicate:
                copies = 2
        payload = None
        if isinstance(m, MsgSnap):
            meta, payload = self.snap_data[m.src]
            if (meta.index, meta.term, meta.config) != (m.snap_index, m.snap_term, m.config):
                raise SafetyViolation(f"{m.src} sent snapshot {m} but holds {meta}")
            self.stats["snapshots_sent"] += 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.p.max_delay) if self.faults else 1
            self.seq += 1
            heapq.heappush(self.net, (self.now + delay, self.seq, m, payload))

    def snapshot_failed(self, m: MsgSnap) -> None:
        """The sender's transport learns, a tick later, that a snapshot did not arrive."""
        self.seq += 1
        heapq.heappush(self.net, (self.now + 1, self.seq, m, _FAILED))

    def report_snapshot(self, m: MsgSnap, ok: bool) -> None:
        """The sender's transport tells its core how the transfer went."""
        sender = self.nodes.get(m.src)
        if sender is not None:
            sender.report_snapshot(m.dst, ok)
            self.handle_ready(m.src)

    def deliver_due(self) -> None:
        while self.net and self.net[0][0] <= self.now:
            _, _, m, payload = heapq.heappop(self.net)
            if payload is _FAILED:
                self.report_snapshot(m, ok=False)
                continue
            node = self.nodes[m.dst]
            if node is None or self.group[m.src] != self.group[m.dst]:
                if isinstance(m, MsgSnap):
                    self.report_snapshot(m, ok=False)
                continue
            self.trace.append((self.now, "recv", m))
            try:
                check_message(m)
            except InvalidMessage as exc:
                raise SafetyViolation(f"an honest message was refused: {exc}: {m}") from None
            # As the real transport does: a non-member's message never reaches the core.
            if sender_refusal(m.src, node.raft.membership.members, m, node.raft.orphaned,
                              node.raft.term_leader) is not None:
                self.stats["refused_non_member"] += 1
                if isinstance(m, MsgSnap):
                    self.report_snapshot(m, ok=False)   # the transfer was refused
                continue
            if isinstance(m, MsgSnap):
                self.incoming[m.dst] = (SnapshotMeta(m.snap_index, m.snap_term, m.config), payload)
            dropped = node.step(m)
            if dropped is not None:
                self.stats["honest_dropped"] += 1
                if "contradict" in dropped or "whose leader is" in dropped:
                    raise SafetyViolation(f"an honest message was dropped as forged: {dropped}: {m}")
            self.handle_ready(m.dst)
            if isinstance(m, MsgSnap):
                self.incoming.pop(m.dst, None)
                self.report_snapshot(m, ok=True)

    # --- the driver loop, as a real driver would run it ------------------------------------------

    def handle_ready(self, i: str) -> None:
        node = self.nodes[i]
        while node is not None:
            rd = node.ready()
            if rd is None:
                return
            st = self.storage[i]
            if rd.snapshot is not None:
                # 0. install a leader's snapshot: storage, then the state machine
                meta, data = self.incoming[i]
                if meta != rd.snapshot:
                    raise SafetyViolation(f"{i} installs {rd.snapshot} but received {meta}")
                st.apply_snapshot(meta)
                self.snap_data[i] = (meta, data)
                self.restore(i, meta, data)
                self.stats["snapshots_installed"] += 1
                self.event("installed", i, meta.index, meta.term)
            # 0. a leader's appends may go before its disk write (and it may crash in between)
            early = rd.messages_before_persist
            for m in early:
                self.send(m)
            if self.faults and early and rd.entries and self.rng.random() < self.p.p_crash / 4:
                self.crash(i)  # sent, never persisted
                self.stats["crashes_before_persist"] += 1
                return
            # 1. persist
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            if self.faults and rd.messages_after_persist and self.rng.random() < self.p.p_crash / 4:
                self.crash(i)  # persisted, the rest never sent
                return
            # 2. send
            for m in rd.messages_after_persist:
                self.send(m)
            # 3. apply
            for e in rd.committed_entries:
                self.apply(i, e)
            # 4. advance
            node.advance(rd)
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                self.on_new_leader(i)
            self.maybe_compact(i)

    def apply(self, i: str, e: Entry) -> None:
        seq = self.applied[i]
        if e.index != len(seq) + 1:
            raise SafetyViolation(f"{i} applied index {e.index} after {len(seq)}")
        item = (e.term, e.type.value, e.data.decode() if e.type is EntryType.NORMAL else "")
        if e.index <= len(self.chosen):
            if self.chosen[e.index - 1] != item:
                raise SafetyViolation(
                    f"State Machine Safety: {i} applied {item} at {e.index}, "
                    f"another node applied {self.chosen[e.index - 1]}")
        else:
            self.chosen.append(item)
        seq.append((e.index, e.term))
        self.items[i].append(item)

    def restore(self, i: str, meta: SnapshotMeta, data: tuple[tuple[int, str, str], ...]) -> None:
        """Replaces node ``i``'s state machine by a snapshot's, which must hold exactly the
        prefix of the one applied sequence (State Machine Safety through snapshots)."""
        if len(data) != meta.index:
            raise SafetyViolation(f"snapshot {meta} holds {len(data)} items")
        for index, item in enumerate(data, start=1):
            if index <= len(self.chosen):
                if self.chosen[index - 1] != item:
                    raise SafetyViolation(f"State Machine Safety: {i}'s snapshot {meta} holds {item} at "
                                          f"{index}, another node applied {self.chosen[index - 1]}")
            else:
                self.chosen.append(item)
        if data and data[-1][0] != meta.term:
            raise SafetyViolation(f"snapshot {meta} ends with an entry of term {data[-1][0]}")
        self.items[i] = list(data)
        self.applied[i] = [(k, item[0]) for k, item in enumerate(data, start=1)]

    def maybe_compact(self, i: str) -> None:
        """Now and then, as ``--snapshot-entries`` does: snapshot node ``i``'s state machine at
        its applied index, then drop its log before it but for a random tail."""
        node = self.nodes[i]
        if node is None or not self.faults:
            return
        st = self.storage[i]
        applied = node.raft.log.applied
        held = st.snapshot()
        if applied - (held.index if held else 0) < self.p.compact_min or self.rng.random() >= self.p.p_compact:
            return
        if applied > st.last_index():
            return   # a leader applies what a quorum stored, maybe before its own disk has it
        meta = node.snapshot_meta(applied)
        assert len(self.items[i]) == applied
        st.create_snapshot(meta)
        self.snap_data[i] = (meta, tuple(self.items[i]))
        st.compact(max(st.first_index() - 1, applied - self.rng.randint(0, self.p.max_tail)))
        self.stats["compactions"] += 1
        self.event("compact", i, meta.index, st.first_index())
    def on_new_leader(self, i: str) -> None:
        node = self.nodes[i]
        assert node is not None
        term = node.raft.term
        other = self.leaders.setdefault(term, i)
        self.event("leader", i, term)
        if other != i:
            raise SafetyViolation(f"Election Safety: {other} and {i} both lead term {term}")
        log = node.raft.log
        for index, (t, _, _) in enumerate(self.chosen, start=1):
            if index < log.first_index() - 1:
                continue   # in its snapshot, which held the applied sequence's prefix
            if log.term(index) != t:
                raise SafetyViolation(
                    f"Leader Completeness: leader {i} of term {term} has term "
                    f"{log.term(index)} at applied index {index} (term {t})")

    # --- faults and load --------------------------------------------------------------------------

    def leader(self) -> RawNode | None:
        best = None
        for i in self.alive():
            node = self.nodes[i]
            assert node is not None
            if node.raft.role is Role.LEADER and (best is None or node.raft.term > best.raft.term):
                best = node
        return best

    def chaos(self) -> None:
        rng, p = self.rng, self.p
        alive = self.alive()
        if alive and rng.random() < p.p_crash:
            self.crash(rng.choice(alive))
        for i in self.ids:
            if self.nodes[i] is None and rng.random() < p.p_restart:
                self.restart(i)
        if rng.random() < p.p_partition:
            for i in self.ids:
                self.group[i] = rng.randrange(2)
            self.stats["partitions"] += 1
            self.event("partition", dict(self.group))
        elif rng.random() < p.p_heal:
            self.heal()
        leader = self.leader()
        if leader is not None:
            if rng.random() < p.p_transfer:
                voters = sorted(leader.raft.membership.voters - {leader.raft.id})
                if voters:
                    to = rng.choice(voters)
                    leader.transfer_leadership(to)
                    self.stats["transfers"] += 1
                    self.event("transfer", leader.raft.id, to)
                    self.handle_ready(leader.raft.id)
            if rng.random() < p.p_member_change:
                self.change_membership(leader)
            if rng.random() < p.p_catch_up:
                to = rng.choice(self.ids)
                leader.catch_up(to)
                self.stats["catch_ups"] += 1
                self.handle_ready(leader.raft.id)

    def change_membership(self, leader: RawNode) -> None:
        """One random single-server change: add a learner, promote, demote or remove."""
        cur = leader.raft.membership
        outsiders = [i for i in self.ids if i not in cur.members]
        choices = []
        if outsiders:
            choices.append(("add_learner", self.rng.choice(outsiders)))
        if cur.learners:
            choices.append(("promote", self.rng.choice(sorted(cur.learners))))
            choices.append(("remove", self.rng.choice(sorted(cur.learners))))
        if len(cur.voters) > 1:  # the leader itself included: it must refuse
            choices.append(("demote", self.rng.choice(sorted(cur.voters))))
        if not choices:
            return
        op, who = self.rng.choice(choices)
        voters, learners = set(cur.voters), set(cur.learners)
        if op == "add_learner":
            learners.add(who)
        elif op == "promote":
            learners.discard(who)
            voters.add(who)
        elif op == "remove":
            learners.discard(who)
        else:
            voters.discard(who)
            learners.add(who)
        try:
            leader.propose_membership(Membership.of(voters, learners))
        except (InvalidConfigChange, ProposalDropped):
            return
        self.stats["membership_changes"] += 1
        self.event("membership", leader.raft.id, op, who)
        self.handle_ready(leader.raft.id)

    def heal(self) -> None:
        for i in self.ids:
            self.group[i] = 0
        self.event("heal")

    def propose(self) -> None:
        alive = self.alive()
        if not alive:
            return
        node = self.nodes[self.rng.choice(alive)]
        assert node is not None
        # Half of a leader's own writes are private (only it waits for them), like a
        # node's Optuna writes: sent to a quorum first, the others take them later.
        private = self.rng.random() < 0.5
        try:
            node.propose(f"v{self.proposed}".encode(), proposal_id=f"p{self.proposed}",
                         origin=node.raft.id if private else None)
        except NotLeader as exc:
            # A real client retries at the hinted leader.
            hinted = self.nodes.get(exc.leader) if exc.leader else None
            if hinted is None:
                return
            try:
                # As a follower hands its writes over: the first node asked is the origin.
                hinted.propose(f"v{self.proposed}".encode(), proposal_id=f"p{self.proposed}",
                               origin=node.raft.id)
            except (NotLeader, ProposalDropped):
                return
            node = hinted
        except ProposalDropped:
            return
        self.proposed += 1
        self.handle_ready(node.raft.id)

    # --- the adversary ------------------------------------------------------------------------------

    def attack(self) -> None:
        """One forged message to one live node, through the transport's checks.

        ``refused`` forgeries must be refused by those checks (decoding, range, membership);
        ``dropped`` ones pass them (they are well-formed, from a member) and the core must
        drop them. Either way nothing may raise.
        """
        alive = self.alive()
        if not alive:
            return
        rng = self.rng
        dst = rng.choice(alive)
        node = self.nodes[dst]
        assert node is not None
        r = node.raft
        members = sorted(r.membership.members)
        others = [i for i in members if i != dst]
        kind = rng.choice(("range", "types", "non_member", "not_leader", "contradict",
                           "resp_past_log", "timeout_now"))
        expect = "refused"
        src = rng.choice(others) if others else "n0"
        if kind == "range":
            bad = rng.choice((2**63 - 1, 2**64, -1, MAX_TERM + 1, MAX_TERM + 1 + r.term, -(2**63)))
            raw = rng.choice((
                message_to_dict(MsgHeartbeat(src, dst, r.term, 0)) | {"term": bad},
                message_to_dict(MsgHeartbeat(src, dst, r.term, 0)) | {"commit": bad},
                message_to_dict(MsgVote(src, dst, r.term + 1, 0, 0)) | {"last_index": bad},
                message_to_dict(MsgAppResp(src, dst, r.term, 0)) | {"index": bad},
                message_to_dict(MsgApp(src, dst, r.term, r.log.last_index(), r.log.last_term(),
                                       (Entry(r.log.last_index() + 1, r.term, EntryType.NORMAL, b"x"),),
                                       0)),
            ))
            if "entries" in raw:
                raw["entries"][0][rng.choice(("index", "term"))] = bad
        elif kind == "types":
            base = message_to_dict(MsgApp(src, dst, r.term, 0, 0, (Entry(1, 1, EntryType.NORMAL, b"x"),), 0))
            field, value = rng.choice((("term", "5"), ("term", True), ("term", 1.5), ("commit", None),
                                       ("src", ""), ("src", 7), ("src", "n" * 500), ("entries", "abc"),
                                       ("entries", [{"index": 1}]), ("commit_only", 1),
                                       ("type", "os.system"), ("extra", 1)))
            raw = base | {field: value}
            if rng.random() < 0.3:
                entry = raw["entries"][0] if isinstance(raw["entries"], list) and raw["entries"] and \
                    isinstance(raw["entries"][0], dict) else None
                if entry is not None and "type" in entry:
                    entry.update(rng.choice(({"type": "bogus"}, {"proposal_id": 5}, {"data": "%%%"},
                                             {"type": "config", "data": "bm90IGpzb24="})))
        elif kind == "non_member":
            if not members or r.orphaned:
                return   # an empty log, or one that lost its leader, takes a stranger's appends
            src = "intruder"
            forged = rng.choice((
                MsgHeartbeat(src, dst, r.term + rng.randint(0, 3), r.log.last_index()),
                MsgVote(src, dst, r.term + 1, r.log.last_index() + 10, r.term + 1, transfer=True),
                MsgApp(src, dst, r.term + 1, r.log.last_index(), r.log.last_term(),
                       (Entry(r.log.last_index() + 1, r.term + 1, EntryType.NORMAL, b"forged"),),
                       r.log.last_index() + 1),
                MsgTimeoutNow(src, dst, r.term),
                MsgSnap(src, dst, r.term + 1, r.log.last_index() + 5, r.term + 1,
                        Membership.of([src]).encode().decode()),
                # Elections are open to non-members (thesis 4.1; see sender_refusal): these
                # reach the core, whose leader lease ignores them while a leader is heard.
                MsgVote(src, dst, r.term + 1, r.log.last_index() + 10, r.term + 1),
                MsgPreVote(src, dst, r.term + 1, r.log.last_index() + 10, r.term + 1),
            ))
            if isinstance(forged, (MsgVote, MsgPreVote)) and not (isinstance(forged, MsgVote) and forged.transfer):
                expect = "taken"
            raw = message_to_dict(forged)
        elif kind == "not_leader":
            leader = r.term_leader
            liars = [i for i in others if i != leader]
            if leader is None or r.role is not Role.FOLLOWER or not liars:
                return
            src, expect = rng.choice(liars), "dropped"
            raw = message_to_dict(rng.choice((
                MsgHeartbeat(src, dst, r.term, r.log.last_index()),
                MsgApp(src, dst, r.term, r.log.last_index(), r.log.last_term(),
                       (Entry(r.log.last_index() + 1, r.term, EntryType.NORMAL, b"forged"),),
                       r.log.last_index() + 1),
                MsgSnap(src, dst, r.term, r.log.last_index() + 5, r.term, r.membership.encode().decode()),
            )))
        elif kind == "contradict":
            leader, committed = r.term_leader, r.log.committed
            if leader is None or leader == dst or r.role is not Role.FOLLOWER or committed < 2 or \
                    r.contradictions >= DIVERGENCE_APPENDS - 1:
                return
            if committed < r.log.first_index():
                return
            prev = rng.randint(max(1, r.log.first_index() - 1), committed)
            held = r.log.term(prev)
            assert held is not None
            wrong = rng.choice([t for t in range(0, r.term + 1) if t != held])
            src, expect = leader, "dropped"
            raw = message_to_dict(MsgApp(src, dst, r.term, prev, wrong, (), committed))
        elif kind == "resp_past_log":
            if r.role is not Role.LEADER or not others:
                return
            expect = "dropped"
            raw = message_to_dict(MsgAppResp(src, dst, r.term, r.log.last_index() + rng.randint(1, 50)))
        else:   # timeout_now from a member that does not lead
            liars = [i for i in others if i != r.term_leader]
            if r.role is not Role.FOLLOWER or not liars:
                return
            src, expect = rng.choice(liars), "dropped"
            raw = message_to_dict(MsgTimeoutNow(src, dst, r.term))
        self.stats[f"attack_{kind}"] += 1
        self.event("attack", kind, raw)
        try:
            m = decode_message(json.dumps(raw))
            refused = sender_refusal(m.src, members, m, r.orphaned, r.term_leader) \
                if m.dst == dst else "not for this node"
        except InvalidMessage:
            refused = "invalid"
        if refused is not None:
            if expect != "refused":
                raise SafetyViolation(f"adversary: a well-formed {kind} message was refused: {refused}")
            return
        if expect == "refused":
            raise SafetyViolation(f"adversary: a {kind} forgery passed the transport's checks: {raw}")
        dropped = node.step(m)
        if dropped is None and expect == "dropped":
            raise SafetyViolation(f"adversary: the core took a {kind} forgery: {m}")
        self.handle_ready(dst)

    # --- checks -----------------------------------------------------------------------------------

    def check_logs(self) -> None:
        """Log Matching over every pair of persisted logs, where both still hold entries."""
        logs = {}
        for i in self.ids:
            st = self.storage[i]
            held = st.entries(st.first_index(), st.last_index() + 1)
            logs[i] = {e.index: e for e in held}
        ids = self.ids
        for a in range(len(ids)):
            la = logs[ids[a]]
            for b in range(a + 1, len(ids)):
                lb = logs[ids[b]]
                both = sorted(set(la) & set(lb))
                agree = [k for k in both if la[k].term == lb[k].term]
                if not agree:
                    continue
                k = agree[-1]
                for j in both:
                    if j <= k and la[j] != lb[j]:
                        raise SafetyViolation(
                            f"Log Matching: {ids[a]} and {ids[b]} agree on the term at {k} "
                            f"but differ at {j}")

    # --- the run ------------------------------------------------------------------------------

    def step_tick(self) -> None:
        self.now += 1
        for i in self.alive():
            node = self.nodes[i]
            assert node is not None
            node.tick()
            self.handle_ready(i)
        self.deliver_due()
        if self.now % self.p.check_every == 0:
            self.check_logs()

    def run(self) -> None:
        """Chaos, then heal and check liveness. Raises SafetyViolation or AssertionError."""
        p = self.p
        for _ in range(p.chaos_ticks):
            self.chaos()
            if self.rng.random() < p.p_propose:
                self.propose()
            if self.rng.random() < p.p_attack:
                self.attack()
            self.step_tick()
        self.check_liveness()

    def check_liveness(self) -> None:
        """Heal: everyone up but the nodes down for good, one network, no loss. A leader must
        appear and commit a proposal that every live member of its configuration applies."""
        p = self.p
        self.faults = False
        self.heal()
        for i in self.ids:
            if self.nodes[i] is None and i not in self.down:
                self.restart(i)
        markers: list[Entry] = []  # re-proposed if a leader change loses the latest one
        healed_at = self.now
        deadline = self.now + p.heal_ticks
        while self.now < deadline:
            self.step_tick()
            leader = self.leader()
            if leader is None:
                continue
            if any(self._applied_everywhere(m, leader) for m in markers):
                self.stats["recovery_ticks"] = self.now - healed_at
                break
            latest = markers[-1] if markers else None
            if latest is None or leader.raft.log.term(latest.index) != latest.term:
                try:
                    # Private: every node must still get it, by heartbeats if nothing else.
                    markers.append(leader.propose(b"marker", proposal_id="marker", origin=leader.raft.id))
                except ProposalDropped:
                    continue
                self.event("marker", leader.raft.id, markers[-1].index, markers[-1].term)
                self.handle_ready(leader.raft.id)
        else:
            leader = self.leader()
            raise AssertionError(
                f"liveness: within {p.heal_ticks} ticks of healing, "
                + ("no leader" if leader is None else f"markers {markers} not applied everywhere")
                + f"; {self.describe()}")
        self.check_logs()
        self.stats.update(terms=max(self.leaders, default=0), applied=len(self.chosen))

    def run_minority_down(self) -> None:
        """:meth:`run`, then a membership phase after which a minority of the voters stays down
        for good, then liveness among the others.

        The phase starts from a healed cluster whose voters are S. Under lossy, partitioned
        traffic and crash-restarts, the leader adds learners and promotes them (never demotes
        or removes a voter, so every configuration holds S and a minority of S stays a minority
        of each). At some point, often right after it proposed a change, the leader and up to
        (|S|-1)/2 - 1 other voters of S crash for good: the survivors may hold different
        configurations (a promotion on some, not others), which is where refusing a stranger's
        vote request left a live quorum without a leader. The survivors must then elect one and
        commit. Clusters of fewer than three voters have no minority to lose; they end after
        :meth:`run`.
        """
        self.run()
        leader = self.leader()
        assert leader is not None
        start = sorted(leader.raft.membership.voters)
        if len(start) < 3:
            self.stats["minority_skipped"] += 1
            return
        rng, p = self.rng, self.p
        k = rng.randint(1, (len(start) - 1) // 2)
        crash_at = rng.randint(10, p.minority_ticks - 10)
        self.faults = True
        self.drop = p.minority_drop
        # Often one voter of S is cut off until the minority goes down: it misses the changes
        # (the voter that refused the promoted node's vote request, in the review's case).
        laggard = rng.choice([i for i in start if i != leader.raft.id]) if rng.random() < 0.6 else None
        if laggard is not None:
            self.group[laggard] = 1
            self.event("laggard", laggard)
        for tick in range(p.minority_ticks):
            leader = self.leader()
            changed = False
            if leader is not None and rng.random() < (0.15 if laggard and not self.down else 0.05):
                changed = self.grow_membership(leader)
            if not self.down and (tick >= crash_at or (changed and rng.random() < 0.3)):
                self.take_down(k, start)
                if laggard is not None:
                    self.heal()
            if laggard is not None and not self.down:
                if rng.random() < p.p_restart and self.nodes[laggard] is None:
                    self.restart(laggard)
                self.propose()
                self.step_tick()
                continue
            alive = [i for i in self.alive()]
            if alive and rng.random() < p.p_crash:
                self.crash(rng.choice(alive))
            for i in self.ids:
                if self.nodes[i] is None and i not in self.down and rng.random() < p.p_restart:
                    self.restart(i)
            if rng.random() < p.p_partition:
                for i in self.ids:
                    self.group[i] = rng.randrange(2)
                self.stats["partitions"] += 1
                self.event("partition", dict(self.group))
            elif rng.random() < p.p_heal:
                self.heal()
            if rng.random() < p.p_propose:
                self.propose()
            if rng.random() < p.p_attack:
                self.attack()
            self.step_tick()
        if not self.down:
            self.take_down(k, start)
        self.stats["minority_down"] += len(self.down)
        self.drop = p.drop
        self.check_liveness()

    def grow_membership(self, leader: RawNode) -> bool:
        """Adds a learner or promotes one (never a change that shrinks the voters)."""
        cur = leader.raft.membership
        outsiders = [i for i in self.ids if i not in cur.members and i not in self.down]
        choices = [("add_learner", i) for i in outsiders] + [("promote", i) for i in sorted(cur.learners)]
        if not choices:
            return False
        op, who = self.rng.choice(choices)
        voters, learners = set(cur.voters), set(cur.learners)
        if op == "add_learner":
            learners.add(who)
        else:
            learners.discard(who)
            voters.add(who)
        try:
            leader.propose_membership(Membership.of(voters, learners))
        except (InvalidConfigChange, ProposalDropped):
            return False
        self.stats["membership_changes"] += 1
        self.event("membership", leader.raft.id, op, who)
        self.handle_ready(leader.raft.id)
        return True

    def take_down(self, k: int, start: list[str]) -> None:
        """Crashes the leader (a voter, of S or promoted since) and voters of S, k in all, for good."""
        leader = self.leader()
        doomed = [leader.raft.id] if leader is not None else []
        others = [i for i in start if i not in doomed]
        doomed += self.rng.sample(others, k - len(doomed))
        for i in doomed:
            if self.nodes[i] is not None:
                self.crash(i)
        self.down = set(doomed)
        self.event("down for good", sorted(self.down))

    def _applied_everywhere(self, marker: Entry, leader: RawNode) -> bool:
        """Whether every member of the leader's configuration applied ``marker``."""
        want = (marker.index, marker.term)
        for i in leader.raft.membership.members - self.down:
            seq = self.applied[i]
            if len(seq) < marker.index or seq[marker.index - 1] != want:
                return False
        return True

    def describe(self) -> str:
        lines = []
        for i in self.ids:
            node = self.nodes[i]
            if node is None:
                lines.append(f"  {i}: down")
            else:
                lines.append(f"  {i}: {node.status()}")
        return "nodes:\n" + "\n".join(lines)

    def format_trace(self) -> str:
        return "\n".join(f"  t={t} " + " ".join(map(str, rest)) for t, *rest in self.trace)


def run_seed(seed: int, params: SimParams = SimParams(), minority_down: bool = False) -> Sim:
    """Runs one seed (:meth:`Sim.run`, or :meth:`Sim.run_minority_down`); on failure raises
    AssertionError carrying the seed and a trace."""
    sim = Sim(seed, params)
    try:
        sim.run_minority_down() if minority_down else sim.run()
    except AssertionError as exc:
        raise AssertionError(
            f"raft simulation failed for seed {seed}: {exc}\n"
            f"rerun: NEXUS_RAFT_SEED={seed} .venv/bin/python -m pytest -q "
            f"tests/consensus/test_raft_simulation.py{' -k minority' if minority_down else ''}\n"
            f"last events:\n{sim.format_trace()}\n{sim.describe()}") from exc
    return sim

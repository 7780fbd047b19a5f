"""A seeded, deterministic simulation of a Raft cluster on an in-memory network.

One ``random.Random(seed)`` drives everything — faults, delays, proposals, and the nodes' own
election timeouts (each node's seed is derived from it) — so a seed replays exactly.

The network loses, duplicates and delays (hence reorders) messages, and partitions the nodes
into two groups. Nodes crash (between two Readies, or after persisting a Ready but before
sending its messages) and restart from their storage alone: hard state and log. Their state
machine is in memory, so a restarted node applies the committed log again from index 1.

Invariants are checked as the run goes (:class:`SafetyViolation` on the first breach):

* Election Safety: at most one leader per term.
* State Machine Safety: each node applies indexes 1, 2, 3... and every node's applied
  sequence is a prefix of one common sequence (no committed entry is ever lost or changed).
* Leader Completeness: a new leader's log holds every entry applied anywhere so far.
* Log Matching: two persisted logs with an entry of the same index and term are identical up
  to it (checked every few ticks and at the end).

After the chaotic phase the network heals and every node restarts; a leader must then be
elected and a fresh proposal applied on every node within a bounded number of ticks (liveness).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import random
from typing import Any

from nexus_node.mesh.raft import (
    Entry,
    EntryType,
    InvalidConfigChange,
    MemoryStorage,
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Role,
    bootstrap,
)


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
    check_every: int = 20


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

    # --- nodes ----------------------------------------------------------------------------------

    def _start(self, i: str) -> None:
        cfg = RaftConfig(i, election_tick=self.p.election_tick,
                         heartbeat_tick=self.p.heartbeat_tick,
                         seed=self.seed * 1000 + self.restarts[i])
        self.nodes[i] = RawNode(cfg, self.storage[i])
        self.applied[i] = []

    def alive(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i] is not None]

    def crash(self, i: str) -> None:
        self.nodes[i] = None
        self.applied[i] = []
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
        if self.group[m.src] != self.group[m.dst]:
            return
        copies = 1
        if self.faults:
            if self.rng.random() < self.p.drop:
                return
            if self.rng.random() < self.p.duplicate:
                copies = 2
        for _ in range(copies):
            delay = self.rng.randint(1, self.p.max_delay) if self.faults else 1
            self.seq += 1
            heapq.heappush(self.net, (self.now + delay, self.seq, m))

    def deliver_due(self) -> None:
        while self.net and self.net[0][0] <= self.now:
            _, _, m = heapq.heappop(self.net)
            node = self.nodes[m.dst]
            if node is None or self.group[m.src] != self.group[m.dst]:
                continue
            self.trace.append((self.now, "recv", m))
            node.step(m)
            self.handle_ready(m.dst)

    # --- the driver loop, as a real driver would run it ------------------------------------------

    def handle_ready(self, i: str) -> None:
        node = self.nodes[i]
        while node is not None:
            rd = node.ready()
            if rd is None:
                return
            st = self.storage[i]
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

    # --- checks -----------------------------------------------------------------------------------

    def check_logs(self) -> None:
        """Log Matching over every pair of persisted logs."""
        logs = {}
        for i in self.ids:
            st = self.storage[i]
            logs[i] = st.entries(1, st.last_index() + 1) if st.last_index() else []
        ids = self.ids
        for a in range(len(ids)):
            la = logs[ids[a]]
            for b in range(a + 1, len(ids)):
                lb = logs[ids[b]]
                k = min(len(la), len(lb))
                while k and la[k - 1].term != lb[k - 1].term:
                    k -= 1
                if la[:k] != lb[:k]:
                    raise SafetyViolation(
                        f"Log Matching: {ids[a]} and {ids[b]} agree on the term at {k} "
                        f"but differ before it")

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
            self.step_tick()
        # Heal: everyone up, one network, no loss. A leader must appear and commit a proposal.
        self.faults = False
        self.heal()
        for i in self.ids:
            if self.nodes[i] is None:
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

    def _applied_everywhere(self, marker: Entry, leader: RawNode) -> bool:
        """Whether every member of the leader's configuration applied ``marker``."""
        want = (marker.index, marker.term)
        for i in leader.raft.membership.members:
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


def run_seed(seed: int, params: SimParams = SimParams()) -> Sim:
    """Runs one seed; on failure raises AssertionError carrying the seed and a trace."""
    sim = Sim(seed, params)
    try:
        sim.run()
    except AssertionError as exc:
        raise AssertionError(
            f"raft simulation failed for seed {seed}: {exc}\n"
            f"rerun: NEXUS_RAFT_SEED={seed} .venv/bin/python -m pytest -q "
            f"tests/mesh/test_raft_simulation.py\n"
            f"last events:\n{sim.format_trace()}\n{sim.describe()}") from exc
    return sim

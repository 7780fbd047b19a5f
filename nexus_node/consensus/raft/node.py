"""RawNode: the Ready/advance API a driver uses to run one Raft node (after etcd's rawnode.go)."""

from __future__ import annotations

import dataclasses

from .core import Raft, RaftConfig, Role
from .log import RaftLog
from .membership import Membership
from .messages import EMPTY_HARD_STATE, Entry, EntryType, HardState, Message, MsgApp, NodeId, SnapshotMeta
from .storage import MemoryStorage, Storage


@dataclasses.dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state a driver may want to show or act on; never persisted."""

    lead: NodeId | None
    role: Role


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    """Everything the driver must do after the node changed: see :class:`RawNode` for the order.

    Attributes:
        hard_state: New hard state to persist, or None if unchanged.
        entries: Entries to persist (append to storage, replacing any held at or after
            ``entries[0].index``).
        messages: Messages to send once ``hard_state`` and ``entries`` are durable (all of
            them; :attr:`messages_before_persist` may go earlier).
        committed_entries: Entries to apply to the state machine, in order.
        soft_state: New leader/role, or None if unchanged.
        leader_appends_early: A leader's appends in ``messages`` may be sent before the
            persist step (see :attr:`messages_before_persist`).
        snapshot: A leader's snapshot to install before anything else: it replaces the whole
            log in storage and the whole state machine (``entries`` follow it), or None.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    soft_state: SoftState | None
    leader_appends_early: bool = False
    snapshot: SnapshotMeta | None = None

    @property
    def messages_before_persist(self) -> tuple[Message, ...]:
        """The messages that may be sent before ``entries`` are durable: a leader's appends,
        in a Ready that changes no term or vote (thesis §10.2.1). The leader counts its own
        copy toward a majority only once it is on disk (:meth:`RawNode.advance`), so sending
        early only overlaps its disk write with the followers' instead of following it."""
        if not self.leader_appends_early:
            return ()
        return tuple(m for m in self.messages if isinstance(m, MsgApp))

    @property
    def messages_after_persist(self) -> tuple[Message, ...]:
        """The rest of ``messages``: acknowledgements, votes and everything else."""
        if not self.leader_appends_early:
            return self.messages
        return tuple(m for m in self.messages if not isinstance(m, MsgApp))


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a node's state, for operators and tests."""

    id: NodeId
    role: Role
    term: int
    lead: NodeId | None
    vote: NodeId | None
    commit: int
    applied: int
    last_index: int
    membership: Membership
    first_index: int = 1


class RawNode:
    """One Raft node as a pure state machine: feed it ticks and messages, then drain its Ready.

    Handling a Ready — the order is what makes the node safe, so a driver must keep it:

    0. **Install** ``snapshot``, if any: the driver already holds its data (it steps a
       :class:`~.messages.MsgSnap` in only then). It replaces the log in storage and the
       state machine's whole state; ``entries`` and ``committed_entries`` come after it.
    1. **Persist** ``entries`` (append, replacing any conflicting suffix) and then ``hard_state``,
       durably (fsync). A vote, a term or an acknowledged entry that is sent
       but not on disk could be forgotten by a crash: a node could vote twice in one term (§5.2)
       or a leader could count an entry that is gone (§5.3).
    2. **Send** ``messages``, in any order, over any transport that may lose, duplicate or
       reorder them. A leader's appends (:attr:`Ready.messages_before_persist`) may go before
       step 1 instead, overlapping the leader's disk write with its followers' (thesis
       §10.2.1); everything else waits for the disk.
    3. **Apply** ``committed_entries`` to the state machine in order. NOOP entries carry
       nothing; CONFIG entries carry a :class:`~.membership.Membership` the driver may act on
       (the core already uses it: see the membership module for when).
    4. **Advance**: call :meth:`advance` with the same Ready. Only then may :meth:`ready` be
       called again.

    Between :meth:`ready` and :meth:`advance` the driver may keep calling :meth:`tick`,
    :meth:`step` and :meth:`propose`; what they produce lands in the next Ready.

    Args:
        config: Node parameters (id, timeouts, seed...).
        storage: The node's persisted state; a restarted node resumes from it alone.
    """

    def __init__(self, config: RaftConfig, storage: Storage) -> None:
        self.raft = Raft(config, storage)
        self._prev_hard = storage.hard_state()
        self._prev_soft = SoftState(self.raft.lead, self.raft.role)
        self._applying = self.raft.log.applied
        self._outstanding: Ready | None = None

    # --- input ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time (the driver calls it every ``tick`` of its real clock)."""
        self.raft.tick()

    def step(self, message: Message) -> str | None:
        """Handles a message received from a peer (addressed to this node).

        Returns:
            Why the core dropped it (out of range, forged, contradicting), or None; see
            :meth:`Raft.step`. It never raises for a peer's message, however malformed,
            but :class:`~.log.LogDiverged`.

        Raises:
            ValueError: the message is addressed to another node (the driver's mistake).
        """
        if getattr(message, "dst", None) != self.raft.id:
            raise ValueError(f"message for {getattr(message, 'dst', None)!r} stepped into {self.raft.id}")
        return self.raft.step(message)

    def campaign(self) -> None:
        """Starts an election now (pre-vote first), as if the election timeout had elapsed."""
        self.raft.campaign()

    def propose(self, data: bytes, proposal_id: str | None = None, origin: NodeId | None = None) -> Entry:
        """Proposes application data. See :meth:`Raft.propose` (raises NotLeader off the leader)."""
        return self.raft.propose(data, proposal_id, origin)

    def propose_membership(self, membership: Membership) -> Entry:
        """Proposes a one-node membership change. See :meth:`Raft.propose_membership`."""
        return self.raft.propose_membership(membership)

    def transfer_leadership(self, to: NodeId) -> None:
        """Hands leadership to voter ``to``. See :meth:`Raft.transfer_leadership`."""
        self.raft.transfer_leadership(to)

    def catch_up(self, to: NodeId) -> None:
        """Leader: sends ``to`` what it lacks now. See :meth:`Raft.catch_up`."""
        self.raft.catch_up(to)

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        """Leader: the snapshot sent to ``to`` arrived (``ok``) or failed. See :meth:`Raft.report_snapshot`."""
        self.raft.report_snapshot(to, ok)

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state machine at applied ``index`` stands for (its term and
        the configuration in force there), for the driver's ``create_snapshot``.

        Raises:
            ValueError: ``index`` is not applied yet, or before the log's start.
        """
        log = self.raft.log
        term = log.term(index)
        if not 0 < index <= log.applied or term is None:
            raise ValueError(f"no snapshot at {index}: applied up to {log.applied}, "
                             f"log from {log.first_index()}")
        return SnapshotMeta(index, term, log.membership_at(index).encode().decode())

    # --- output ---------------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        r = self.raft
        return HardState(r.term, r.vote, r.log.committed)

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would return something."""
        r = self.raft
        return bool(
            r.msgs
            or r.log.pending_snapshot is not None
            or r.log.unstable_entries()
            or r.log.committed > self._applying
            or self._hard_state() != self._prev_hard
            or SoftState(r.lead, r.role) != self._prev_soft
        )

    def ready(self) -> Ready | None:
        """Collects what the driver must persist, send and apply; None if nothing.

        Raises:
            RuntimeError: the previous Ready has not been advanced.
        """
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready before asking for another")
        if not self.has_ready():
            return None
        r = self.raft
        hard = self._hard_state()
        soft = SoftState(r.lead, r.role)
        snap = r.log.pending_snapshot
        if snap is not None:
            self._applying = max(self._applying, snap.index)
        ready = Ready(
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(r.log.unstable_entries()),
            messages=tuple(r.msgs),
            committed_entries=tuple(r.log.slice(self._applying + 1, r.log.committed + 1)),
            soft_state=soft if soft != self._prev_soft else None,
            # A term or vote must be on disk before any message that carries it goes out. So
            # must a configuration: a leader that sent a CONFIG entry (a demotion, say) and
            # crashed before writing it would restart under the old configuration, needing the
            # vote of a node whose longer log refuses it and which, demoted in its own log,
            # never campaigns: no leader ever again (simulation seed 1933 with the adversary).
            leader_appends_early=r.role is Role.LEADER and (hard.term, hard.vote) == (
                self._prev_hard.term, self._prev_hard.vote) and not any(
                    e.type is EntryType.CONFIG for e in r.log.unstable_entries()),
            snapshot=snap,
        )
        r.msgs = []
        self._prev_soft = soft
        if ready.committed_entries:
            self._applying = ready.committed_entries[-1].index
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Tells the node the driver has persisted, sent and applied ``ready``.

        Raises:
            RuntimeError: ``ready`` is not the outstanding Ready.
        """
        if ready is not self._outstanding:
            raise RuntimeError("advance() takes the Ready returned by the last ready()")
        self._outstanding = None
        if ready.snapshot is not None:
            self.raft.log.snapshot_installed(ready.snapshot)
        if ready.hard_state is not None:
            self._prev_hard = ready.hard_state
        if ready.entries:
            last = ready.entries[-1]
            self.raft.on_persisted(last.index, last.term)
        if ready.committed_entries:
            self.raft.log.applied = ready.committed_entries[-1].index

    def status(self) -> Status:
        """The node's current state."""
        r = self.raft
        return Status(r.id, r.role, r.term, r.lead, r.vote, r.log.committed, r.log.applied,
                      r.log.last_index(), r.membership, r.log.first_index())


def bootstrap(storage: MemoryStorage | Storage, voters: "list[NodeId] | set[NodeId]",
              learners: "list[NodeId] | set[NodeId] | tuple[NodeId, ...]" = ()) -> None:
    """Writes the first configuration of a brand-new cluster into an empty storage.

    Every founding node must be bootstrapped with the same members: each then holds the same
    committed CONFIG entry at index 1 (term 1), and the first election happens at term 2. A
    node that joins later starts with empty storage and is added by the leader
    (:meth:`RawNode.propose_membership`).

    Raises:
        ValueError: the storage is not empty or has no ``append``/``set_hard_state``.
    """
    if storage.last_index() != 0 or storage.hard_state() != EMPTY_HARD_STATE:
        raise ValueError("bootstrap needs an empty storage")
    membership = Membership.of(voters, learners)
    if not membership.voters:
        raise ValueError("bootstrap needs at least one voter")
    append = getattr(storage, "append", None)
    set_hard_state = getattr(storage, "set_hard_state", None)
    if append is None or set_hard_state is None:
        raise ValueError("this storage cannot be bootstrapped here; write the entry yourself")
    append([Entry(index=1, term=1, type=EntryType.CONFIG, data=membership.encode())])
    set_hard_state(HardState(term=1, vote=None, commit=1))


def force_new_cluster(storage: Storage, node_id: NodeId) -> tuple[HardState, Entry]:
    """What turns a surviving member's log into a one-voter cluster after a majority of the
    voters is lost for good (etcd's ``--force-new-cluster``). The caller persists the entry
    and the hard state before the node starts; nothing else changes in the log.

    The entry is a CONFIG entry after the last one held, in a term above any this node has
    seen, that makes ``node_id`` the only member, and the hard state commits it (and so
    everything before it). This breaks Raft's rules on purpose: entries the lost voters
    committed but this node never received are gone, and entries this node held uncommitted
    are now committed. Other members that are still running are added back one at a time as
    non-voters when they ask (a node that hears of no leader and finds that the cluster no
    longer lists it joins again); one whose log holds committed entries this node lacks
    cannot follow it (it stops with :class:`~.log.LogDiverged`) and must rejoin with an empty
    data dir. Use it on the most up-to-date survivor, once the lost voters are known never to
    come back as they were.

    Raises:
        ValueError: the log is empty, or ``node_id`` is not a member of its configuration.
    """
    last = storage.last_index()
    if last == 0:
        raise ValueError("this node has no Raft log: there is no cluster to recover")
    config = RaftLog(storage).membership()
    if node_id not in config.members:
        raise ValueError(f"node {node_id} is not a member of the configuration in its log "
                         f"(voters {sorted(config.voters)}, non-voters {sorted(config.learners)})")
    term = max(storage.hard_state().term, storage.term(last)) + 1
    forced = Membership.of([node_id])
    entry = Entry(index=last + 1, term=term, type=EntryType.CONFIG, data=forced.encode())
    return HardState(term=term, vote=node_id, commit=entry.index), entry

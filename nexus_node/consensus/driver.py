"""The asyncio driver: one task runs the pure Raft core against gRPC, a timer and SQLite.

:class:`RaftDriver` owns a :class:`~nexus_node.consensus.raft.RawNode`. Only its loop task touches
the core: ticks (from a timer task), messages (from ``PeerService.StepStream``) and local proposals
all arrive through one inbox queue, so the core never sees two callers at once.

Each Ready is handled in this order, which safety depends on (the core's RawNode docstring
says why):

1. **persist** — entries, then hard state, in one SQLite transaction, fsynced
   (:class:`~nexus_node.consensus.log_store.RaftLogStore`);
2. **send** — hand the messages to :class:`~nexus_node.consensus.transport.PeerTransport`, which
   queues them per peer and returns at once (a slow peer never stalls the loop);
3. **apply** — committed entries to :class:`~nexus_node.consensus.state.ReplicatedState`, in order,
   resolving the proposals that were waiting for them;
4. **advance**.

While the loop awaits the disk, new inputs wait in the inbox and are all fed to the core before
the next Ready, so concurrent proposals share one fsync and one round of messages.

Snapshots (Raft thesis ch. 5; issue 23): once ``snapshot_entries`` entries were applied since the
last snapshot, the loop captures the state machine (:meth:`ReplicatedState.capture`, between
two applies, so it is the state at one applied index) and a thread writes it to a file
(:mod:`~nexus_node.consensus.snapshot_file`); back on the loop, the store records it and drops
the log before it but for ``snapshot_tail`` entries, for followers that lag a little. A member
that lacks dropped entries is sent the file (:mod:`~nexus_node.consensus.snapshot_transfer`),
and a Ready that carries a leader's snapshot is installed before anything else in it: the store
first, then the state machine. A restarted node restores its snapshot, then replays the log
after it.

Proposals (:meth:`RaftDriver.propose`) carry a unique id. The leader proposes to its own core; a
follower hands them to the leader in its stream of Raft messages, unanswered. Either way the
call returns only once *this* node has applied the entry (read-your-writes). Lost answers and failovers are
handled by proposing again with the same id: the state machine applies an id once (Raft thesis
§6.3), so a retry can never apply a write twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Coroutine, Mapping, Sequence

import grpc

from nexus_node.consensus.addresses import AddressClaim, address_claim
from nexus_node.consensus.log_store import RaftLogStore
from nexus_node.consensus.raft import (
    InvalidConfigChange,
    LogDiverged,
    Membership,
    MemoryStorage,
    Message,
    MsgSnap,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Role,
    SnapshotMeta,
    Status,
    bootstrap,
)
from nexus_node.consensus.raft.validate import sender_refusal
from nexus_node.consensus.snapshot_file import SnapshotFile, read_snapshot, write_snapshot
from nexus_node.consensus.state import ReplicatedState
from nexus_node.consensus.transport import LogThrottle, PeerMismatch, PeerTransport
from nexus_node.net.tls import ClientTls

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """Timing of one node. Defaults suit a LAN (round trips well under 10 ms).

    With the defaults the leader sends heartbeats every 200 ms and a follower campaigns after
    1–2 s without one (five to ten missed heartbeats). A heartbeat round costs each node a
    message sent or received per peer on the event loop: at every tick an idle node of a
    2-node cluster used half as much CPU again, taken from the trials on a shared machine. On
    slow links (round trips near ``tick_interval``) raise ``tick_interval`` rather than the
    tick counts, so elections stay five to ten heartbeats apart.

    Attributes:
        tick_interval: Seconds per logical tick.
        heartbeat_tick: Ticks between leader heartbeats.
        election_tick: Minimum election timeout in ticks (the core randomizes in ``[e, 2e)``).
        rpc_timeout: Deadline of each peer call, in seconds.
        propose_timeout: How long :meth:`RaftDriver.propose` keeps trying by default.
        inbox_size: Peer messages held before new ones are dropped (Raft re-sends).
        seed: Seeds the core's election-timeout randomness; None draws one.
        snapshot_entries: Applied entries after which a node snapshots its state and compacts
            its log (``--snapshot-entries``; 0: never).
        snapshot_tail: Entries kept before a snapshot's index, so a follower that lags a little
            is sent entries rather than the whole snapshot.
    """

    tick_interval: float = 0.1
    heartbeat_tick: int = 2
    election_tick: int = 10
    rpc_timeout: float = 2.0
    propose_timeout: float = 30.0
    inbox_size: int = 10_000
    seed: int | None = None
    snapshot_entries: int = 10_000
    snapshot_tail: int = 5_000

    @property
    def retry_interval(self) -> float:
        """How long a proposal waits before proposing again: two maximal election timeouts."""
        return 4 * self.election_tick * self.tick_interval

    @property
    def forward_retry_interval(self) -> float:
        """How long a forwarded proposal waits before it is sent again: one maximal election
        timeout. Nothing says it arrived, so this also covers a loss on the way."""
        return 2 * self.election_tick * self.tick_interval


class MeshStopped(RuntimeError):
    """The driver stopped before the operation finished."""


_TICK = object()
_CAMPAIGN = object()


@dataclasses.dataclass
class _Change:
    """A membership change or a leadership transfer for the loop to hand to the core."""

    membership: Membership | None
    transfer_to: NodeId | None
    done: "asyncio.Future[int]"


@dataclasses.dataclass(frozen=True)
class _CatchUp:
    node_id: NodeId


@dataclasses.dataclass(frozen=True)
class _SnapIn:
    """A leader's snapshot, received whole and verified, for the core."""

    message: MsgSnap
    file: SnapshotFile


@dataclasses.dataclass(frozen=True)
class _SnapSent:
    """How the transfer of this node's snapshot to ``peer`` went."""

    peer: NodeId
    ok: bool


@dataclasses.dataclass(frozen=True)
class _SnapWritten:
    """This node's snapshot file, written by a thread (or why it could not be)."""

    file: SnapshotFile | None
    error: BaseException | None = None


@dataclasses.dataclass
class SnapshotStats:
    """What the node's snapshots did, for its metrics."""

    taken: int = 0
    installed: int = 0
    failed: int = 0
    last_index: int = 0
    last_bytes: int = 0
    last_seconds: float = 0.0


class RaftDriver:
    """Runs one Raft node: the core, its log on disk, its peers, its state machine.

    Not thread-safe: every method runs on the loop that called :meth:`start`. Other threads
    use ``asyncio.run_coroutine_threadsafe`` (as :mod:`nexus_node.study.journal` does).

    Args:
        node_id: This node's stable id (``data_dir/node_id``).
        cluster: Cluster name; peers of another name are refused.
        db_path: SQLite file of the Raft log.
        address: ``host:port`` where this node's ``PeerService`` is reachable.
        peers: Other nodes' ids and addresses (updated as peers say Hello).
        token: Cluster token for outgoing calls, or None.
        settings: Timing.
        state: The state machine to apply to; must be fresh (the log is replayed into it).
        tls: How peers' certificates are checked when the node has TLS on; None: plaintext.
    """

    def __init__(self, node_id: NodeId, cluster: str, db_path: Path, address: str,
                 peers: Mapping[NodeId, str], token: str | None = None,
                 settings: MeshSettings = MeshSettings(), state: ReplicatedState | None = None,
                 tls: ClientTls | None = None) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.address = address
        self.settings = settings
        self.state = state or ReplicatedState()
        self.ticks = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._db_path = db_path
        self._peers = {k: v for k, v in peers.items() if k != node_id}
        self._transport = PeerTransport(self, token, rpc_timeout=settings.rpc_timeout, tls=tls)
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._store: RaftLogStore | None = None
        self._raw: RawNode | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._lead: NodeId | None = None
        self._role = Role.FOLLOWER
        self._lead_changes = 0
        self._heard: dict[NodeId, float] = {}
        self._stopped = False
        self._dropped = LogThrottle(log)   # peer messages and writes refused, rate-limited
        self._verifying: set[NodeId] = set()   # members whose claimed move is being checked
        self._claimed: dict[NodeId, str] = {}   # the latest move claimed while one is checked
        self._first_hand: set[NodeId] = set()   # peers whose address came from the peer itself
        #: Index of the newest entry this node proposed as leader (0: none yet). A follower
        #: may get a private one late: call :meth:`catch_up` before it must act on it.
        self.last_local_index = 0
        #: Called with the (node id, address) pairs a peer's Hello named (the node lists them
        #: with the peers it found, so it can say Hello to them too).
        self.on_members_heard: Callable[[list[tuple[NodeId, str]]], None] = lambda members: None
        #: Called once with the error when the loop fails (a disk write, a diverged log): the
        #: node cannot go on without its consensus loop and stops (node_main exits).
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        #: Called with the seconds each :meth:`propose` took, call to apply here, for the
        #: proposals that were applied (the node's metrics observe it: a hook, so that this
        #: layer knows nothing of how they are exported).
        self.on_proposal_applied: Callable[[float], None] = lambda seconds: None
        self.snapshots = SnapshotStats()
        self._snapshotting = False   # a snapshot file is being written
        self._snapshot_after = 0     # no snapshot before this applied index (after a failure)
        self._received: dict[tuple[int, int], SnapshotFile] = {}   # leaders' snapshots for the core

    # --- life cycle -------------------------------------------------------------------------------

    async def has_log(self) -> bool:
        """Whether this node's data dir already holds a Raft log (it was a member before).
        The log stays open (and loaded) for :meth:`start`; :meth:`stop` closes it."""
        if self._store is None:
            self._store = await RaftLogStore.open(self._db_path)
        return not self._store.is_empty()

    async def start(self, voters: Sequence[NodeId] = ()) -> None:
        """Opens the log, bootstraps a brand-new cluster, and starts the loop and the timer.

        Args:
            voters: The founding voters, used only when the log is empty (every founding node
                must be given the same list). Empty: a node that will be added to an existing
                cluster by its leader (it waits, never campaigning, until the log reaches it).
                A restarted node resumes from its log.
        """
        self.loop = asyncio.get_running_loop()
        if self._store is None:
            self._store = await RaftLogStore.open(self._db_path)
        if self._store.is_empty() and voters:
            seed = MemoryStorage()
            bootstrap(seed, list(voters))
            await self._store.save(seed.hard_state(), seed.entries(1, seed.last_index() + 1))
        held = self._store.snapshot_file()
        if held is not None:
            await self._restore(held)
        s = self.settings
        config = RaftConfig(node_id=self.node_id, election_tick=s.election_tick,
                            heartbeat_tick=s.heartbeat_tick,
                            seed=s.seed if s.seed is not None else secrets.randbits(32))
        self._raw = RawNode(config, self._store)
        self._tasks = [asyncio.create_task(self._run(), name=f"raft-{self.node_id}"),
                       asyncio.create_task(self._tick_timer(), name=f"raft-tick-{self.node_id}")]
        # Say Hello first so that peers learn this node's (possibly new) address before they
        # next need to send to it; failures are fine, the next send greets again.
        for peer, address in self._peers.items():
            self._tasks.append(asyncio.create_task(self._greet(peer, address)))
        if self._raw.status().membership.voters == {self.node_id}:
            # The only voter needs no one's vote: lead now rather than after an election
            # timeout, so a lone node serves at once.
            self._inbox.put_nowait(_CAMPAIGN)

    async def stop(self) -> None:
        """Stops at once, like a crash that keeps the disk: nothing is handed over.

        Proposals still waiting fail with :class:`MeshStopped`.
        """
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._fail_waiters(MeshStopped(f"node {self.node_id} stopped"))
        await self._transport.close()
        if self._store is not None:
            await self._store.close()

    async def _greet(self, peer: NodeId, address: str) -> None:
        try:
            await self._transport.hello(self._transport.stub(address), peer)
        except Exception as exc:  # noqa: BLE001 - any failure just means "greet later"
            log.debug("hello %s at %s: %s", peer, address, exc)

    async def _tick_timer(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self.settings.tick_interval)
            self._inbox.put_nowait(_TICK)

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop_forever()
        except Exception as exc:
            # A failed disk write leaves the core ahead of the disk: carrying on could send a
            # vote or an acknowledgement that a restart forgets. Stop serving instead.
            if isinstance(exc, LogDiverged):
                log.error("node %s stops taking part in the cluster: %s. The cluster was forced into a "
                          "new configuration without what this node committed (or its data dir is an "
                          "old copy). Move its data dir away and start it empty to join again.",
                          self.node_id, exc)
            elif isinstance(exc, (OSError, sqlite3.Error)):
                # The disk (full, gone, read-only): the exit says it in one line; a traceback
                # would say nothing more.
                log.error("raft loop of %s failed on its disk: %s", self.node_id, exc)
            else:
                log.exception("raft loop of %s failed; the node stops taking part", self.node_id)
            self._stopped = True
            self._role, self._lead = Role.FOLLOWER, None
            self.on_failure(exc)
            self._fail_waiters(MeshStopped(f"node {self.node_id} failed: {exc}"))
            raise

    def _fail_waiters(self, exc: Exception) -> None:
        for _, fut in self._watchers:
            if not fut.done():
                fut.set_exception(exc)
        self._watchers.clear()
        while not self._inbox.empty():  # local proposals the loop will never see
            item = self._inbox.get_nowait()
            # (A write a follower handed over has no future here: its proposer retries.)
            if isinstance(item, tuple) and item[2] is not None and not item[2].done():
                item[2].set_exception(exc)
            elif isinstance(item, _Change) and not item.done.done():
                item.done.set_exception(exc)

    async def _loop_forever(self) -> None:
        assert self._raw is not None and self._store is not None
        raw, store = self._raw, self._store
        while True:
            while (rd := raw.ready()) is not None:
                if rd.snapshot is not None:                       # 0. install a leader's snapshot
                    await self._install(rd.snapshot)
                early = rd.messages_before_persist                # a leader's appends go
                self._transport.send(early)                       # while it writes its disk
                await store.save(rd.hard_state, rd.entries)       # 1. persist
                self._transport.send(rd.messages_after_persist)   # 2. send (never blocks)
                for entry in rd.committed_entries:                # 3. apply
                    self.state.apply(entry)
                raw.advance(rd)                                   # 4. advance
                if rd.soft_state is not None:
                    if rd.soft_state.lead != self._lead:
                        self._lead_changes += 1
                    self._lead, self._role = rd.soft_state.lead, rd.soft_state.role
            self._maybe_snapshot()
            self._notify()  # wakes proposals whose entries were just applied
            await self._handle_any(await self._inbox.get())
            while not self._inbox.empty():
                await self._handle_any(self._inbox.get_nowait())

    async def _handle_any(self, item: object) -> None:
        if isinstance(item, _SnapWritten):
            await self._snapshot_written(item)
        else:
            self._handle(item)

    # --- snapshots --------------------------------------------------------------------------------

    async def _restore(self, file: SnapshotFile) -> None:
        """Replaces the state machine by ``file``'s state (read and checked on a thread: the
        whole file is read before anything changes, so a damaged one changes nothing)."""
        # A kind whose own durable state is at or past the snapshot (the study tables of a
        # restarted node) keeps it: its items are not even parsed.
        held = self.state.held(file.meta.index)

        def load() -> list[tuple[str, object]]:
            _, items = read_snapshot(file.path, skip=held)
            return list(items)
        items = await asyncio.to_thread(load)
        self.state.restore(file.meta.index, items, held)

    async def _install(self, meta: SnapshotMeta) -> None:
        assert self._store is not None
        file = self._received.pop((meta.index, meta.term), None)
        if file is None or file.meta != meta:
            raise RuntimeError(f"the core installs snapshot {meta} that this node did not receive")
        started = time.monotonic()
        await self._store.install_snapshot(file)
        await self._restore(file)
        self.snapshots.installed += 1
        self.snapshots.last_index, self.snapshots.last_bytes = file.meta.index, file.size
        log.info("node %s installed the leader's snapshot at index %d (%d bytes) in %.2f s",
                 self.node_id, file.meta.index, file.size, time.monotonic() - started)
        for stale in self._received.values():
            self._discard(stale.path)
        self._received.clear()

    def _discard(self, path: Path) -> None:
        """Removes a snapshot file no one needs, off the loop (a file system call may block)."""
        self._spawn(asyncio.to_thread(path.unlink, missing_ok=True), f"raft-discard-{path.name}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Runs ``work`` beside the loop; :meth:`stop` cancels it."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _maybe_snapshot(self) -> None:
        """Starts a snapshot when enough entries were applied since the last one."""
        every = self.settings.snapshot_entries
        if every <= 0 or self._snapshotting or self._stopped:
            return
        assert self._raw is not None and self._store is not None
        applied = self.state.applied_index
        held = self._store.snapshot()
        if applied - (held.index if held else 0) < every or applied < self._snapshot_after:
            return
        if applied > self._store.last_index():
            return   # (a leader may apply what a quorum stored before its own disk has it)
        if not self.state.capturable():
            return   # a restarted node still replaying what its study tables already hold
        meta = self._raw.snapshot_meta(applied)
        items = self.state.capture()   # on the loop, between two applies: one applied index
        directory = self._store.snapshot_dir
        self._snapshotting = True
        started = time.monotonic()

        async def write() -> None:
            try:
                file = await asyncio.to_thread(write_snapshot, directory, meta, items())
            except Exception as exc:  # noqa: BLE001 - reported on the loop, which goes on
                self._inbox.put_nowait(_SnapWritten(None, exc))
            else:
                self.snapshots.last_seconds = time.monotonic() - started
                self._inbox.put_nowait(_SnapWritten(file))
        self._spawn(write(), f"raft-snapshot-{self.node_id}")

    async def _snapshot_written(self, written: _SnapWritten) -> None:
        assert self._store is not None
        self._snapshotting = False
        if written.file is None:
            # The disk (full, read-only): the previous snapshot and the whole log are kept, and
            # the node goes on; it tries again after another tenth of the interval.
            self.snapshots.failed += 1
            self._snapshot_after = self.state.applied_index + max(1, self.settings.snapshot_entries // 10)
            log.error("node %s: %s", self.node_id, written.error)
            return
        file = written.file
        held = self._store.snapshot()
        if held is not None and held.index >= file.meta.index:
            self._discard(file.path)   # a leader's snapshot was installed meanwhile
            return
        compact_to = max(0, file.meta.index - self.settings.snapshot_tail)
        await self._store.create_snapshot(file, compact_to)
        self.snapshots.taken += 1
        self.snapshots.last_index, self.snapshots.last_bytes = file.meta.index, file.size
        log.info("node %s snapshot at index %d: %d bytes in %.2f s; log kept from %d",
                 self.node_id, file.meta.index, file.size, self.snapshots.last_seconds,
                 self._store.first_index())

    def _handle(self, item: object) -> None:
        assert self._raw is not None
        if item is _TICK:
            self.ticks += 1
            self._raw.tick()
        elif item is _CAMPAIGN:
            self._raw.campaign()
        elif isinstance(item, _CatchUp):
            self._raw.catch_up(item.node_id)
        elif isinstance(item, _SnapSent):
            self._raw.report_snapshot(item.peer, item.ok)
        elif isinstance(item, _SnapIn):
            m = item.message
            key = (m.snap_index, m.snap_term)
            self._received[key] = item.file
            self._handle(m)
            if self._raw.raft.log.pending_snapshot is None or key != (
                    self._raw.raft.log.pending_snapshot.index, self._raw.raft.log.pending_snapshot.term):
                # The core did not take it (stale, or it held the entries): not needed.
                self._received.pop(key, None)
                if self._store is not None and self._store.snapshot_file() != item.file:
                    self._discard(item.file.path)
        elif isinstance(item, _Change):
            try:
                if item.membership is not None:
                    index = self._raw.propose_membership(item.membership).index
                else:
                    assert item.transfer_to is not None
                    self._raw.transfer_leadership(item.transfer_to)
                    index = 0
            except (NotLeader, ProposalDropped, InvalidConfigChange, ValueError) as exc:
                if not item.done.done():
                    item.done.set_exception(exc)
            else:
                if not item.done.done():
                    item.done.set_result(index)
        elif isinstance(item, tuple):
            # (data, proposal_id, future of the entry's index or None, the node that waits for
            # it alone, when private: a follower that handed it over, or this node; the term
            # the write is fenced to, or None)
            data, pid, accepted, origin, term = item
            try:
                if term is not None and self._raw.status().term != term:
                    # It would be appended in another term and skipped on apply: not at all.
                    raise NotLeader(self._lead)
                entry = self._raw.propose(data, pid, origin)
            except (NotLeader, ProposalDropped) as exc:
                if accepted is not None and not accepted.done():
                    accepted.set_exception(exc)
            else:
                if accepted is not None:
                    self.last_local_index = entry.index
                    if not accepted.done():
                        accepted.set_result(entry.index)
        else:
            try:
                dropped = self._raw.step(item)  # type: ignore[arg-type]
            except LogDiverged:
                raise
            except Exception:
                # Invalid messages are dropped by the checks before the core changes anything
                # (the transport's, then Raft.step's: a drop is a return value, never an
                # exception), and the simulation's adversary keeps proving it. An exception is
                # a bug in the core, which may have changed half of its state: going on could
                # vote twice or acknowledge what is not on disk. Crash-only: the loop ends (the
                # node exits) and a restart rebuilds the core from the log on disk.
                log.error("raft message %.300r from %s failed in the core, which may be left "
                          "half-changed: the consensus loop stops", item, getattr(item, "src", "?"))
                raise
            if dropped is not None:
                self._dropped.warn(f"core:{getattr(item, 'src', '?')}:{type(item).__name__}",
                                   "raft message from %s dropped: %s",
                                   getattr(item, "src", "?"), dropped)

    def _notify(self) -> None:
        keep = []
        for pred, fut in self._watchers:
            if fut.done():
                continue
            if pred():
                fut.set_result(None)
            else:
                keep.append((pred, fut))
        self._watchers = keep

    # --- queries ----------------------------------------------------------------------------------

    @property
    def leader(self) -> NodeId | None:
        """The leader this node believes in, or None."""
        return self._lead

    @property
    def is_leader(self) -> bool:
        """Whether this node leads."""
        return self._role is Role.LEADER

    @property
    def stopped(self) -> bool:
        """Whether the driver stopped (asked to, or its loop failed) and takes no more part."""
        return self._stopped

    @property
    def lead_changes(self) -> int:
        """How many times the leader this node believes in has changed (for watchers)."""
        return self._lead_changes

    def is_member(self) -> bool:
        """Whether this node is in its cluster's configuration (voter or learner)."""
        return self._raw is not None and self.node_id in self._raw.status().membership.members

    def note_contact(self, node_id: NodeId) -> None:
        """Counts a call from ``node_id`` outside the Raft stream (a Join) as hearing from it."""
        self._heard[node_id] = time.monotonic()

    def last_heard(self, node_id: NodeId) -> float | None:
        """``time.monotonic()`` of the last message received from ``node_id``, if any."""
        return self._heard.get(node_id)

    def match_index(self, node_id: NodeId) -> int:
        """The leader's view of how much of its log ``node_id`` holds (0 when not leading)."""
        if self._raw is None or not self.is_leader:
            return 0
        pr = self._raw.raft.prs.get(node_id)
        return pr.match if pr is not None else 0

    async def change_membership(self, membership: Membership, timeout: float = 10.0) -> int:
        """Proposes a one-node membership change (leader only) and waits until it is applied here.

        Raises:
            NotLeader, ProposalDropped, InvalidConfigChange: refused by the core.
            TimeoutError: not applied in time.
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Change(membership, None, done))
        index = await done
        await self.wait_for(lambda: self.state.applied_index >= index, timeout)
        return index

    def catch_up(self, node_id: NodeId) -> None:
        """Leader: sends ``node_id`` now what it lacks of the log and the commit index (it is
        about to act on the log, e.g. run a trial this node just created; see
        :meth:`Raft.catch_up`). Does nothing on a follower."""
        if not self._stopped and node_id != self.node_id:
            self._inbox.put_nowait(_CatchUp(node_id))

    async def transfer_leadership(self, to: NodeId, timeout: float = 3.0) -> bool:
        """Hands leadership to voter ``to``; returns whether ``to`` leads within ``timeout``."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Change(None, to, done))
        try:
            await done
            await self.wait_for(lambda: self._lead == to, timeout)
        except (NotLeader, ValueError, TimeoutError):
            return False
        return True

    def status(self) -> Status:
        """The core's state (term, commit, applied, membership...)."""
        if self._raw is None:
            raise MeshStopped("not started")
        return self._raw.status()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Waits until ``predicate()`` holds; it is checked after every turn of the loop.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
            MeshStopped: the driver stopped.
        """
        if predicate():
            return
        if self._stopped:
            raise MeshStopped(f"node {self.node_id} stopped")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append((predicate, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    # --- proposals --------------------------------------------------------------------------------

    async def propose(self, data: bytes, proposal_id: str | None = None,
                      timeout: float | None = None, private: bool = False) -> int:
        """Commits ``data`` and returns once this node has applied it.

        Args:
            data: A command (see :func:`nexus_node.consensus.state.encode_command`). A command
                fenced to a term (a coordinator's own writes) is proposed only while this node
                leads in that term, never forwarded, and takes effect only if this node still
                leads in that term when it appends it: a deposed coordinator's late writes are
                not committed by its successor on its behalf, nor by itself in a later term.
            proposal_id: Unique id of this write; pass the same id to retry a write whose answer
                was lost. Drawn at random if None.
            timeout: Seconds to keep trying (default ``settings.propose_timeout``).
            private: Only this node waits for the write: the leader tells the other followers
                of its commit with their next append or heartbeat instead of at once (fewer
                messages per write). For writes no other node acts on the moment they commit.

        Returns:
            The log index at which the write took effect (the first copy's, for a retry).

        Raises:
            ValueError: ``data`` is not a well-formed command of a registered kind
                (:meth:`ReplicatedState.validate`); nothing was proposed.
            TimeoutError: not applied in time (it may still be applied later: retry with the
                same id to find out).
            MeshStopped: the driver stopped.
            NotLeader: ``data`` is fenced to a term this node does not lead in (any more).
        """
        # Checked once, here, before anything is proposed: a write the followers would refuse
        # to store must never enter the leader's log (they would refuse it for ever).
        term = self.state.validate(data)
        pid = proposal_id or uuid.uuid4().hex
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else self.settings.propose_timeout)
        while (index := self.state.applied_at(pid)) is None:
            if self._raw is None or self._stopped:
                raise MeshStopped(f"node {self.node_id} is not running")
            if term is not None and not (self.is_leader and self._raw.status().term == term):
                raise NotLeader(self._lead)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"proposal {pid} not applied within the timeout")
            changes = self._lead_changes
            # Propose again when leadership moves (the entry may have been lost with the old
            # leader) or after the retry interval; a duplicate is harmless (thesis §6.3).
            wait = await self._submit(data, pid, private, term)
            try:
                await self.wait_for(
                    lambda: self.state.applied_at(pid) is not None or self._lead_changes != changes,
                    min(wait, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                pass
        self.on_proposal_applied(time.monotonic() - started)
        return index

    async def _submit(self, data: bytes, pid: str, private: bool = False, term: int | None = None) -> float:
        """One attempt to get the proposal to the leader. Returns how long to wait for it
        before proposing again."""
        s = self.settings
        leader = self._lead
        if leader is None:
            return s.tick_interval
        if leader == self.node_id:
            try:
                await self._propose_local(data, pid, private, term)
                return s.retry_interval
            except (NotLeader, ProposalDropped):
                return s.tick_interval
        if term is not None:   # fenced: never handed to another node (the loop sees NotLeader)
            return s.tick_interval
        if self._transport.forward(leader, data, pid, private):
            return s.forward_retry_interval
        log.debug("forwarding %s to %s: no address or queue full", pid, leader)
        return s.tick_interval

    async def _propose_local(self, data: bytes, pid: str, private: bool = False, term: int | None = None) -> int:
        if self._stopped:
            raise MeshStopped(f"node {self.node_id} stopped")
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((data, pid, accepted, self.node_id if private else None, term))
        return await accepted

    # --- PeerHost: what PeerService calls -----------------------------------------------------------

    def peer_address(self, node_id: NodeId) -> str | None:
        """The address a peer last announced (or was configured with)."""
        return self._peers.get(node_id)

    def note_peer(self, node_id: NodeId, address: str) -> None:
        """Records a peer's address from a source this node trusts (a test's wiring, a node
        this node dialled itself). A caller's claim goes through :meth:`note_hello`, the
        replicated records' through :meth:`note_recorded`."""
        if node_id != self.node_id:
            self._peers[node_id] = address
            self._first_hand.add(node_id)

    def note_hello(self, node_id: NodeId, address: str) -> None:
        """Records the address a caller's Hello claims for ``node_id``.

        A node id is bound to its first-hand address: a member's is moved only once its old
        address no longer answers as that node (a node restarted on a new port relies on the
        move; a caller claiming a member's id from elsewhere must not divert its messages).
        The check dials the old address in the background; until it answers, nothing moves.
        """
        if node_id == self.node_id:
            return
        known = self._peers.get(node_id)
        claim = address_claim(known, address, node_id in self._members())
        if claim is AddressClaim.ADOPT or (claim is AddressClaim.KEEP and address == known):
            # (Said by the node, or a claim of what this node knew already: a move of that
            # address is checked from now on, see note_recorded.)
            self._peers[node_id] = address
            self._first_hand.add(node_id)
        elif claim is AddressClaim.VERIFY:
            assert known is not None
            self._check_move(node_id, known, address)

    def note_recorded(self, node_id: NodeId, address: str) -> None:
        """Records the address a committed ``member`` record gives for ``node_id``.

        The record is the same on every node, but not proof: a follower hands over its own
        address, and "its own" is the sender id its batch claims. So an address this node has
        first hand (from the node itself: its Hello, its answer to ours) moves to a recorded
        one only as a Hello's claim does, once the old address no longer answers as that node
        (:meth:`note_hello`). One known only from the records or second hand is replaced.
        What the records hold is not changed: only this node's address book decides."""
        if node_id == self.node_id or not address:
            return
        known = self._peers.get(node_id)
        if known is None or node_id not in self._first_hand:
            self._peers[node_id] = address
        elif known != address:
            self._check_move(node_id, known, address)

    #: A member's old address no longer serves it when it refuses connections (UNAVAILABLE)
    #: this many times in a row, :attr:`MOVE_CHECK_INTERVAL` seconds apart, or another node
    #: answers there. A timeout (a partition, a busy node) is no answer: the address is kept.
    MOVE_CHECKS = 3
    MOVE_CHECK_INTERVAL = 1.5

    def _check_move(self, node_id: NodeId, old: str, new: str) -> None:
        if node_id in self._verifying:
            self._claimed[node_id] = new   # checked when the running check ends
            return
        if self._stopped:
            return
        self._verifying.add(node_id)
        self._spawn(self._verify_move(node_id, old, new), f"raft-move-{node_id}")

    async def _old_address_kept(self, node_id: NodeId, old: str) -> str | None:
        """Why ``old`` may still serve ``node_id``, or None when it definitely no longer does
        (see :attr:`MOVE_CHECKS`)."""
        for attempt in range(self.MOVE_CHECKS):
            if attempt:
                await asyncio.sleep(self.MOVE_CHECK_INTERVAL)
            try:
                await self._transport.hello(self._transport.stub(old), node_id)
            except PeerMismatch:
                return None   # another node answers there now: node_id moved
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    return f"no definite answer at {old} ({exc.code().name})"
                log.debug("%s at %s refused (%d of %d)", node_id, old, attempt + 1, self.MOVE_CHECKS)
            except Exception as exc:  # noqa: BLE001 - no definite answer: keep the address
                return f"no definite answer at {old} ({type(exc).__name__})"
            else:
                return f"it still answers at {old}"
        return None

    async def _verify_move(self, node_id: NodeId, old: str, new: str) -> None:
        try:
            kept = await self._old_address_kept(node_id, old)
            if kept is not None:
                self._dropped.warn(f"move:{node_id}", "member %s is claimed at %s, but %s: address kept",
                                   node_id, new, kept)
                return
            if self._peers.get(node_id) == old:
                log.info("member %s moved from %s to %s", node_id, old, new)
                self._peers[node_id] = new
                self._first_hand.add(node_id)
        finally:
            self._verifying.discard(node_id)
            later = self._claimed.pop(node_id, None)
            current = self._peers.get(node_id)
            if later is not None and current is not None and later != current and not self._stopped:
                self._check_move(node_id, current, later)

    def _members(self) -> frozenset[NodeId]:
        return self._raw.raft.membership.members if self._raw is not None else frozenset()

    def refusal(self, node_id: NodeId) -> str | None:
        """Why this node refuses Raft messages, forwarded writes or a work stream from
        ``node_id``, or None: only members speak consensus (see
        :func:`~nexus_node.consensus.raft.validate.sender_refusal`; a node with no configuration
        yet, being added, takes its leader's appends)."""
        return sender_refusal(node_id, self._members())

    @property
    def snapshot_bytes_sent(self) -> int:
        """Snapshot bytes this node sent to members since it started."""
        return self._transport.snapshot_bytes_sent

    def snapshot_dir(self) -> Path:
        """Where snapshot files are written and received."""
        assert self._store is not None
        return self._store.snapshot_dir

    def snapshot_file(self) -> SnapshotFile | None:
        """This node's latest snapshot, for a member that needs it."""
        return self._store.snapshot_file() if self._store is not None else None

    def receive_snapshot(self, message: MsgSnap, file: SnapshotFile) -> None:
        """A leader's snapshot arrived whole and verified: queued for the core."""
        if self._raw is None or self._stopped:
            return
        self._heard[message.src] = time.monotonic()
        self._inbox.put_nowait(_SnapIn(message, file))

    def snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        """The transport's word on a snapshot sent to ``peer`` (the core probes it again)."""
        if not self._stopped:
            self._inbox.put_nowait(_SnapSent(peer, ok))

    def screen(self, message: Message, with_file: bool = False) -> str | None:
        """Why a peer's decoded and checked message must not reach the core, or None: its
        sender is not a member (see :func:`~nexus_node.consensus.raft.validate.sender_refusal`).

        The commands an append carries are not judged here: the leader checked them when they
        were proposed, and they may be committed already (a joining node replays the log from
        index 1), so refusing one that this node's validators refuse (an old record, a stricter
        check since, a command kind a newer node added during a rolling upgrade) would block
        every joiner and lagging follower for good. ``ReplicatedState.apply`` skips what it
        cannot apply, the same way on every node."""
        if isinstance(message, MsgSnap) and not with_file:
            return "a snapshot comes with its file, on InstallSnapshot, never in a batch"
        raft = self._raw.raft if self._raw is not None else None
        reason = sender_refusal(message.src, self._members(), message, raft is not None and raft.orphaned,
                                raft.term_leader if raft is not None else None)
        if reason is not None:
            self._dropped.warn(f"screen:{message.src}", "raft message from %s refused: %s", message.src, reason)
        return reason

    def member_addresses(self) -> list[tuple[NodeId, str]]:
        """Every member of this node's configuration (itself included) with its address, ""
        where this node does not know it."""
        if self._raw is None:
            return []
        return [(n, self.address if n == self.node_id else self._peers.get(n, ""))
                for n in sorted(self._raw.status().membership.members)]

    def note_members(self, members: Sequence[tuple[NodeId, str]]) -> None:
        """Records the members another node told of in a Hello. Second hand: an address this
        node already has (from the peer itself, or the replicated records) is kept, since a
        node restarted on a new port tells its peers first."""
        for node_id, address in members:
            if node_id != self.node_id and address and node_id not in self._peers:
                self._peers[node_id] = address
        if members:
            self.on_members_heard(list(members))

    def receive(self, messages: Sequence[Message]) -> int:
        """Queues peer messages for the core; drops them when the inbox is full."""
        if self._raw is None or self._stopped:
            return 0
        room = max(0, self.settings.inbox_size - self._inbox.qsize())
        if messages:
            self._heard[messages[0].src] = time.monotonic()
        for m in messages[:room]:
            self._inbox.put_nowait(m)
        return min(room, len(messages))

    def receive_proposals(self, proposals: Sequence[tuple[bytes, str, bool]], origin: NodeId,
                          refused: list[str] | None = None) -> int:
        """Writes follower ``origin`` forwarded (data, proposal id, private): proposed here
        while this node leads, else dropped (their proposers send them again when they see the
        new leader). A write that is malformed, or that ``origin`` may not make
        (:meth:`ReplicatedState.check_forwarded`), or any from a non-member, is refused: not
        proposed, logged, and its reason added to ``refused``. Returns how many were queued
        for the core."""
        not_member = self.refusal(origin)
        if not_member is not None:
            self._dropped.warn(f"forward:{origin}", "writes handed over by %s refused: %s", origin, not_member)
            if refused is not None:
                refused.append(not_member)
            return 0
        if self._raw is None or self._stopped or not self.is_leader:
            return 0
        room = max(0, self.settings.inbox_size - self._inbox.qsize())
        queued = 0
        for data, pid, private in proposals[:room]:
            if self.state.applied_at(pid) is not None:
                continue
            try:
                # A write a follower hands over is checked like one proposed here, and for
                # what a follower may write at all (the coordinator's records are its own).
                self.state.check_forwarded(data, origin)
            except ValueError as exc:
                self._dropped.warn(f"forward:{origin}", "write %s handed over by %s refused: %s",
                                   pid[:40], origin, exc)
                if refused is not None:
                    refused.append(f"write {pid[:40]}: {exc}")
                continue
            self._inbox.put_nowait((data, pid, None, origin if private else None, None))
            queued += 1
        return queued

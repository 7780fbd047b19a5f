"""The peer protocol's senders, and what its server side needs from the driver.

The servicer itself (:mod:`nexus_node.api.peer_service`) only translates (STYLE.md §4):
protobuf in, the :class:`PeerHost` methods, protobuf out; a peer of another cluster or protocol
version gets FAILED_PRECONDITION. Every Raft message is
decoded and checked (:func:`~nexus_node.consensus.raft.validate.decode_message`: types, ranges,
entries) and screened by the driver (a member's, carrying well-formed commands) before it can
reach the core; what fails is dropped with a rate-limited warning, the rest of its batch is
delivered, and the caller gets INVALID_ARGUMENT (a malformed message) or PERMISSION_DENIED (a
sender that is not a member), with the reason. The service sits behind the node's
:class:`~nexus_node.net.auth.ServerAuthInterceptor`, which admits only the cluster's peer secret
here (never a client token), so a caller without it is refused before any of this runs.

Senders: :meth:`PeerTransport.send` never waits. Each peer has one task draining a bounded queue
into ``Step`` calls, one call in flight at a time; when the queue is full new messages are
dropped. Raft tolerates lost messages (the leader re-sends on the next heartbeat or probe), so
dropping is how a slow or dead peer is kept from stalling the driver or eating memory. A
follower's writes for the leader (:meth:`PeerTransport.forward`) ride in the same batches,
unanswered: a unary call per write cost both nodes several times a message on the stream.

A snapshot (:class:`~nexus_node.consensus.raft.MsgSnap`) never rides in a batch: it goes with
its file on ``InstallSnapshot`` (:mod:`nexus_node.consensus.snapshot_transfer`), one transfer per
peer at a time, and the driver is told how it went (``snapshot_sent``), as the core needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Protocol, Sequence

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.consensus.raft import Message, MsgSnap, NodeId, message_to_dict
from nexus_node.consensus.snapshot_file import SnapshotFile
from nexus_node.consensus.snapshot_transfer import send_snapshot
from nexus_node.net.auth import CHANNEL_OPTIONS, METADATA_KEY
from nexus_node.net.tls import ClientTls, aio_channel

log = logging.getLogger(__name__)

#: Bumped on any incompatible change to peer.proto, to the encoding of Raft messages, or to what
#: a snapshot holds (5: study tables, one record per trial; a version-4 node could not restore
#: one, though a version-5 node restores a version-4 snapshot).
PROTOCOL_VERSION = 5

# A LAN peer that comes back should be talked to again within about a second, not after gRPC's
# default reconnect backoff (which grows to two minutes).
_PEER_CHANNEL_OPTIONS = CHANNEL_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class PeerHost(Protocol):
    """What the transport needs from the node it serves (the driver implements it)."""

    node_id: NodeId
    cluster: str
    address: str

    def peer_address(self, node_id: NodeId) -> str | None: ...

    def note_peer(self, node_id: NodeId, address: str) -> None: ...

    def note_hello(self, node_id: NodeId, address: str) -> None: ...

    def refusal(self, node_id: NodeId) -> str | None: ...

    def screen(self, message: Message, with_file: bool = False) -> str | None: ...

    def snapshot_dir(self) -> Path: ...

    def receive_snapshot(self, message: MsgSnap, file: SnapshotFile) -> None: ...

    def member_addresses(self) -> list[tuple[NodeId, str]]: ...

    def note_members(self, members: Sequence[tuple[NodeId, str]]) -> None: ...

    def receive(self, messages: Sequence[Message]) -> int: ...

    def receive_proposals(self, proposals: Sequence[tuple[bytes, str, bool]], origin: NodeId,
                          refused: list[str] | None = None) -> int: ...

    def is_member(self) -> bool: ...

    def snapshot_file(self) -> SnapshotFile | None: ...

    def snapshot_sent(self, peer: NodeId, ok: bool) -> None: ...

    @property
    def leader(self) -> NodeId | None: ...


class LogThrottle:
    """Warnings about refused peer input, at most one per key every ``interval`` seconds (a
    peer sending garbage in a loop must not fill the log), each saying how many were held back.

    Args:
        logger: Where the warnings go.
        interval: Seconds between two warnings of one key.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}   # key -> (time of the last warning, held back)

    def warn(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[key] = (last, held + 1)
            return
        if len(self._last) > 1024:   # many keys (many forged ids): forget the old ones
            self._last.clear()
        self._last[key] = (now, 0)
        if held:
            msg += f" ({held} more like it in the last {self._interval:.0f} s)"
        self._log.warning(msg, *args)


@dataclasses.dataclass(frozen=True, slots=True)
class _Forward:
    """A write handed to the leader (see :meth:`PeerTransport.forward`)."""

    data: bytes
    proposal_id: str
    private: bool = False


class _Link:
    """The sending side towards one peer: a bounded queue and the task draining it."""

    def __init__(self, transport: "PeerTransport", peer: NodeId) -> None:
        self.peer = peer
        self.queue: asyncio.Queue[Message | _Forward] = asyncio.Queue(transport.queue_size)
        self._t = transport
        self._greeted_at: str | None = None  # the address our Hello last reached
        self._stream: grpc.aio.StreamUnaryCall | None = None   # open StepStream to _greeted_at
        self._stalled = False   # the current write outlasted the RPC timeout
        self.writing_since: float | None = None   # loop time the pending write began
        self.task = asyncio.create_task(self._run(), name=f"raft-send-{peer}")

    async def _run(self) -> None:
        t = self._t
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < t.max_batch:
                batch.append(self.queue.get_nowait())
            address = t.host.peer_address(self.peer)
            if address is None:
                continue  # no known address yet: drop, Raft re-sends
            try:
                stub = t.stub(address)
                if self._greeted_at != address or self._stream is None or self._stream.done():
                    self._close_stream()
                    await t.hello(stub, self.peer)
                    self._greeted_at = address
                    self._stream = stub.StepStream(metadata=t.metadata)
                request = pb.RaftBatch(
                    cluster=t.host.cluster, from_node=t.host.node_id,
                    messages=[json.dumps(message_to_dict(m), separators=(",", ":")).encode()
                              for m in batch if not isinstance(m, _Forward)],
                    proposals=[pb.Proposal(proposal_id=m.proposal_id, data=m.data, private=m.private)
                               for m in batch if isinstance(m, _Forward)])
                # Not wait_for: cancelling a write that the transport holds can block until
                # the call ends. A write that takes too long ends the call instead (the
                # transport's watchdog, rather than a timer per write: this runs for every
                # batch to every peer), which fails the write.
                self._stalled = False
                self.writing_since = asyncio.get_running_loop().time()
                try:
                    await self._stream.write(request)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not self._stalled or (task is not None and task.cancelling()):
                        raise
                    raise TimeoutError(f"write to {self.peer} took over {t.rpc_timeout} s") from None
                finally:
                    self.writing_since = None
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError,
                    TimeoutError, PeerMismatch) as exc:
                # Greet again and open a new stream next time: the peer may come back on
                # another address or as another process; until then its messages are dropped
                # like any lost ones.
                self._greeted_at = None
                self._close_stream()
                log.debug("%s -> %s: %d raft messages dropped: %s", t.host.node_id, self.peer,
                          len(batch), exc)

    def end_stalled(self) -> None:
        """Ends the call of a write the peer has not taken within the RPC timeout: the
        pending write raises CancelledError, which _run turns into a TimeoutError."""
        self._stalled = True
        self.writing_since = None
        if self._stream is not None:
            self._stream.cancel()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None


class PeerMismatch(Exception):
    """The node at a peer's address is not the node we expected."""


class PeerTransport:
    """Sends Raft messages and forwarded proposals to peers; never blocks the caller.

    Args:
        host: The node's driver (id, cluster, address book).
        token: Cluster token sent with every call, or None for an open loopback cluster.
        rpc_timeout: Deadline of each ``Step`` and ``Hello`` call, in seconds.
        queue_size: Messages held per peer before new ones are dropped.
        max_batch: Messages per ``Step`` call at most.
        tls: How peers' certificates are checked when the node has TLS on; None: plaintext.
    """

    def __init__(self, host: PeerHost, token: str | None, rpc_timeout: float = 2.0,
                 queue_size: int = 1024, max_batch: int = 256, tls: ClientTls | None = None) -> None:
        self.host = host
        self.tls = tls
        self.metadata = ((METADATA_KEY, f"Bearer {token}"),) if token else ()
        self.rpc_timeout = rpc_timeout
        self.queue_size = queue_size
        self.max_batch = max_batch
        self._links: dict[NodeId, _Link] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self._channels: dict[str, tuple[grpc.aio.Channel, peer_pb2_grpc.PeerServiceStub]] = {}
        self._snapshots: dict[NodeId, asyncio.Task[None]] = {}
        #: Bytes of snapshot files sent, for the metrics.
        self.snapshot_bytes_sent = 0

    def stub(self, address: str) -> peer_pb2_grpc.PeerServiceStub:
        """The stub for ``address``, on a channel kept open across calls.

        Raises:
            RuntimeError: the transport is closed.
        """
        if self._closed:
            raise RuntimeError("peer transport closed")
        got = self._channels.get(address)
        if got is None:
            channel = aio_channel(address, self.tls, _PEER_CHANNEL_OPTIONS)
            got = self._channels[address] = (channel, peer_pb2_grpc.PeerServiceStub(channel))
        return got[1]

    async def hello(self, stub: peer_pb2_grpc.PeerServiceStub, expected: NodeId | None) -> pb.HelloReply:
        """Introduces this node to the peer behind ``stub``.

        Raises:
            grpc.aio.AioRpcError: the call failed (unreachable, refused, other cluster).
            PeerMismatch: the peer is not ``expected``.
        """
        h = self.host
        reply: pb.HelloReply = await stub.Hello(
            pb.HelloRequest(node_id=h.node_id, cluster=h.cluster, address=h.address,
                            protocol_version=PROTOCOL_VERSION,
                            members=peer_addresses(h.member_addresses())),
            timeout=self.rpc_timeout, metadata=self.metadata)
        if expected is not None and reply.node_id != expected:
            raise PeerMismatch(f"expected {expected}, found {reply.node_id}")
        if reply.cluster == h.cluster:
            h.note_members([(m.node_id, m.address) for m in reply.members])
        return reply

    def send(self, messages: Sequence[Message]) -> None:
        """Queues ``messages`` for their destinations; drops what does not fit."""
        for m in messages:
            if isinstance(m, MsgSnap):
                self._send_snapshot(m)
            else:
                self._queue(m.dst, m)

    def _send_snapshot(self, m: MsgSnap) -> None:
        running = self._snapshots.get(m.dst)
        if self._closed:
            return
        if running is not None and not running.done():
            # One transfer per peer. The core asked again (a new term since it began): it
            # hears this one failed, and asks again at the peer's next heartbeat answer.
            self.host.snapshot_sent(m.dst, False)
            return
        self._snapshots[m.dst] = asyncio.get_running_loop().create_task(
            self._transfer(m), name=f"raft-snapshot-{m.dst}")

    async def _transfer(self, m: MsgSnap) -> None:
        ok = False
        try:
            file = self.host.snapshot_file()
            address = self.host.peer_address(m.dst)
            if file is None or address is None:
                raise ValueError("no snapshot file" if file is None else "no address")
            stub = self.stub(address)
            await self.hello(stub, m.dst)
            sent = await send_snapshot(stub, self.metadata, self.host.cluster, self.host.node_id, m,
                                       file, self.rpc_timeout)
            self.snapshot_bytes_sent += sent
            ok = True
            log.info("%s -> %s: snapshot at index %d sent (%d bytes of %d; the rest it held)",
                     self.host.node_id, m.dst, m.snap_index, sent, file.size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: the core sends it again later
            log.warning("%s -> %s: snapshot at index %d not sent: %s", self.host.node_id, m.dst,
                        m.snap_index, exc)
        finally:
            if not self._closed:
                self.host.snapshot_sent(m.dst, ok)

    def forward(self, leader: NodeId, data: bytes, proposal_id: str, private: bool = False) -> bool:
        """Queues a write for ``leader``, in the batches of Raft messages; never waits.

        Args:
            private: Only this node waits for the write (see ``Proposal.private``).

        Returns:
            Whether it was queued (False: no address known for ``leader``, queue full, closed).
            Queued is not delivered: the caller proposes again, with the same id, when its
            write is not applied in time.
        """
        if self._closed or self.host.peer_address(leader) is None:
            return False
        return self._queue(leader, _Forward(data, proposal_id, private))

    def _queue(self, dst: NodeId, item: Message | _Forward) -> bool:
        if self._closed:
            return False
        link = self._links.get(dst)
        if link is None:
            link = self._links[dst] = _Link(self, dst)
            if self._watchdog is None:
                self._watchdog = asyncio.create_task(self._watch(), name="raft-send-watchdog")
        try:
            link.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.debug("queue to %s full: dropping %s", dst, type(item).__name__)
            return False
        return True

    async def _watch(self) -> None:
        # Ends writes that outlast the RPC timeout, checked at half the timeout: a write is
        # given between one and one and a half timeouts.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rpc_timeout / 2)
            now = loop.time()
            for link in list(self._links.values()):
                since = link.writing_since
                if since is not None and now - since > self.rpc_timeout:
                    try:
                        link.end_stalled()
                    except Exception:  # noqa: BLE001 - one link's failure must not end the watch
                        log.exception("ending the stalled write to %s", link.peer)

    async def close(self) -> None:
        """Stops every sender and closes every channel."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        for link in self._links.values():
            link._close_stream()
            link.task.cancel()
        for task in self._snapshots.values():
            task.cancel()
        tasks = [link.task for link in self._links.values()] + list(self._snapshots.values())
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._links.clear()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()


def peer_addresses(members: Sequence[tuple[NodeId, str]]) -> list[pb.PeerAddress]:
    return [pb.PeerAddress(node_id=n, address=a) for n, a in members]

"""``nexus.v1.PeerService``: the Raft RPCs (Hello, Step, StepStream), joining, blobs, the node's
description and work streams, translated to the driver (:class:`~nexus_node.consensus.transport.PeerHost`)
and the node (:class:`NodeHooks`). No rule lives here: the driver screens every message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator, Protocol

import grpc

from nexus_node._generated.nexus.v1 import nexus_pb2 as nexus_pb
from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.api import convert
from nexus_node.blobs import files
from nexus_node.cluster.mesh import JoinAnswer
from nexus_node.cluster.view import MemberInfo
from nexus_node.consensus.raft import Message, MsgSnap, NodeId
from nexus_node.consensus.raft.validate import InvalidMessage, check_node_id, decode_message
from nexus_node.consensus.snapshot_file import SnapshotDamaged
from nexus_node.consensus.snapshot_transfer import ChunkRefused, IncomingSnapshot, NoRoom
from nexus_node.consensus.transport import PROTOCOL_VERSION, LogThrottle, PeerHost, peer_addresses
from nexus_node.work import wire
from nexus_node.work.dispatcher import Dispatcher

log = logging.getLogger(__name__)

_JOIN_STATUS = {JoinAnswer.OK: pb.ProposeReply.OK, JoinAnswer.NOT_LEADER: pb.ProposeReply.NOT_LEADER,
                JoinAnswer.RETRY: pb.ProposeReply.RETRY}

#: Bytes per FetchBlob message: well under gRPC's message limit, large enough to stream fast.
BLOB_CHUNK = 1 << 20


class NodeHooks(Protocol):
    """What the node adds to the peer protocol beyond consensus (joins, blobs, its own view)."""

    async def join(self, node_id: NodeId, address: str) -> JoinAnswer: ...

    def blob_file(self, sha256: str) -> Path | None: ...

    def describe(self) -> MemberInfo: ...

    def dispatcher(self) -> "Dispatcher | None":
        """The work dispatcher while this node coordinates, else None."""


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """``nexus.v1.PeerService`` for one node.

    Args:
        host: The node's driver.
    """

    def __init__(self, host: PeerHost, hooks: NodeHooks | None = None) -> None:
        self._host = host
        self._hooks = hooks
        self._streams: set[asyncio.Task[object]] = set()   # the open StepStream calls
        self._dropped = LogThrottle(log)

    async def _check_cluster(self, cluster: str, context: grpc.aio.ServicerContext) -> None:
        if cluster != self._host.cluster:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this node belongs to cluster {self._host.cluster!r}, not {cluster!r}")

    async def Hello(self, request: pb.HelloRequest, context: grpc.aio.ServicerContext) -> pb.HelloReply:
        await self._check_cluster(request.cluster, context)
        if request.protocol_version != PROTOCOL_VERSION:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"peer protocol {request.protocol_version} != {PROTOCOL_VERSION}")
        if not request.node_id or not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id and address are required")
        try:
            check_node_id("HelloRequest", "node_id", request.node_id)
        except InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # A caller's claim, not first-hand knowledge: a member is not moved by it at once.
        self._host.note_hello(request.node_id, request.address)
        h = self._host
        h.note_members([(m.node_id, m.address) for m in request.members])
        lead = h.leader or ""
        lead_address = (h.address if lead == h.node_id else h.peer_address(lead) or "") if lead else ""
        return pb.HelloReply(node_id=h.node_id, cluster=h.cluster, address=h.address,
                             protocol_version=PROTOCOL_VERSION, member=h.is_member(),
                             leader_id=lead, leader_address=lead_address,
                             members=peer_addresses(h.member_addresses()))

    def _screened(self, request: pb.RaftBatch) -> tuple[list[Message], str | None, bool]:
        """The batch's messages that may reach the core, why any other was refused, and
        whether that was for the sender not being a member (PERMISSION_DENIED)."""
        host = self._host
        # (Each message is screened for its sender's membership, below: a node that lost its
        # leader takes a non-member's appends, whose leader may be new to it.)
        not_member = host.refusal(request.from_node) is not None
        messages: list[Message] = []
        problem: str | None = None
        for raw in request.messages:
            try:
                m = decode_message(raw)
                # A node speaks only for itself, and only to us: anything else is a confused
                # (or lying) peer.
                if m.src != request.from_node or m.dst != host.node_id:
                    raise InvalidMessage(f"message {m.src}->{m.dst} in a batch from "
                                         f"{request.from_node} to {host.node_id}")
            except InvalidMessage as exc:
                problem = problem or str(exc)
                self._dropped.warn(f"decode:{request.from_node:.40}", "raft message from %s dropped: %s",
                                   request.from_node[:40], exc)
                continue
            reason = host.screen(m)
            if reason is not None:
                problem = problem or reason
                continue
            messages.append(m)
        return messages, problem, not_member

    async def _received(self, request: pb.RaftBatch, context: grpc.aio.ServicerContext) -> int:
        await self._check_cluster(request.cluster, context)
        messages, problem, not_member = self._screened(request)
        accepted = self._host.receive(messages)
        proposals = [(p.data, p.proposal_id, p.private) for p in request.proposals
                     if p.proposal_id and len(p.proposal_id) <= 128]
        if len(proposals) != len(request.proposals):
            problem = problem or "a proposal needs a proposal_id of at most 128 characters"
        if proposals:
            # (A non-member's writes are refused there too, with the reason.)
            refused: list[str] = []
            self._host.receive_proposals(proposals, request.from_node, refused)
            problem = problem or (refused[0] if refused else None)
        if problem is not None:
            # The valid messages of the batch went on; the sender hears why the rest did not.
            code = grpc.StatusCode.PERMISSION_DENIED if not_member else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, problem)
        return accepted

    async def StepStream(self, request_iterator: AsyncIterator[pb.RaftBatch],
                         context: grpc.aio.ServicerContext) -> pb.StepAck:
        accepted = 0
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            async for request in request_iterator:
                accepted += await self._received(request, context)
        except asyncio.CancelledError:
            # end_streams() (or the server's grace period running out) ended the call. A
            # cancellation escaping here is logged by grpc as an unhandled error with a
            # traceback, on every node, at every clean stop.
            pass
        finally:
            if task is not None:
                self._streams.discard(task)
        return pb.StepAck(accepted=accepted)

    async def InstallSnapshot(self, request_iterator: AsyncIterator[pb.SnapshotChunk],
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SnapshotProgress]:
        host = self._host
        header = await anext(request_iterator, None)
        if header is None:
            return
        await self._check_cluster(header.cluster, context)
        try:
            m = decode_message(header.message)
            if not isinstance(m, MsgSnap):
                raise InvalidMessage(f"InstallSnapshot carries a MsgSnap, not a {type(m).__name__}")
            if m.src != header.from_node or m.dst != host.node_id:
                raise InvalidMessage(f"snapshot {m.src}->{m.dst} sent by {header.from_node} to {host.node_id}")
        except InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        reason = host.screen(m, with_file=True)
        if reason is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            return
        try:
            incoming = IncomingSnapshot(host.snapshot_dir(), m, header.size, header.sha256)
        except NoRoom as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        try:
            yield pb.SnapshotProgress(have=incoming.have)
            async for chunk in request_iterator:
                incoming.write(chunk.offset, chunk.data, chunk.chunk_sha256)
            file = await asyncio.to_thread(incoming.finish)
        except ChunkRefused as exc:
            incoming.close()
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
            return
        except SnapshotDamaged as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        finally:
            incoming.close()
        host.receive_snapshot(m, file)
        yield pb.SnapshotProgress(have=file.size, done=True)

    def end_streams(self) -> None:
        """Ends every peer's open StepStream into this node (a stopping node calls it before
        its server stops: the peers' streams never end on their own)."""
        for task in list(self._streams):
            task.cancel()

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.ProposeReply:
        await self._check_cluster(request.cluster, context)
        if not request.node_id or not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id and address are required")
        if self._hooks is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node does not admit members")
        assert self._hooks is not None   # context.abort raised (grpc is untyped: no NoReturn)
        answer = await self._hooks.join(request.node_id, request.address)
        return pb.ProposeReply(status=_JOIN_STATUS[answer.status], leader_id=answer.leader_id,
                               leader_address=answer.leader_address)

    async def FetchBlob(self, request: pb.FetchBlobRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BlobChunk]:
        await self._check_cluster(request.cluster, context)
        hooks = self._hooks
        path = await asyncio.to_thread(hooks.blob_file, request.sha256) if hooks is not None else None
        if path is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"blob {request.sha256} is not on this node")
        assert path is not None   # context.abort raised (grpc is untyped: no NoReturn)
        size = (await asyncio.to_thread(path.stat)).st_size
        if request.offset > size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} is past the end of blob {request.sha256} ({size} bytes)")
        async for chunk in files.read_chunks(path, BLOB_CHUNK, request.offset):
            yield pb.BlobChunk(data=chunk)

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> nexus_pb.NodeInfo:
        await self._check_cluster(request.cluster, context)
        if self._hooks is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no node view")
        assert self._hooks is not None   # context.abort raised (grpc is untyped: no NoReturn)
        return convert.member_to_pb(self._hooks.describe())

    async def Work(self, request_iterator: AsyncIterator[pb.WorkUp],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WorkDown]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        await self._check_cluster(first.cluster, context)
        if not first.node_id or first.WhichOneof("body") != "heartbeat":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a work stream opens with a heartbeat from a node")
        refused = self._host.refusal(first.node_id)
        if refused is not None:
            # Only members run the cluster's work (issue 18: a fake worker took leases). A node
            # being added is a member as soon as the leader appends its configuration; its
            # worker retries until then.
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"no work for a non-member: {refused}")
        dispatcher = self._hooks.dispatcher() if self._hooks is not None else None
        if dispatcher is None:
            lead = self._host.leader
            where = f"node {lead} at {self._host.peer_address(lead) or '?'}" if lead else "no node yet"
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {self._host.node_id} does not coordinate; {where} does")
        assert dispatcher is not None   # context.abort raised (grpc is untyped: no NoReturn)
        async for msg in dispatcher.serve(wire.up_from_pb(first), wire.ups_from_pb(request_iterator)):
            yield wire.down_to_pb(msg)


def add_peer_service(server: grpc.aio.Server, host: PeerHost, hooks: NodeHooks | None = None) -> PeerServicer:
    """Adds ``PeerService`` for ``host`` to ``server`` (before the server starts)."""
    servicer = PeerServicer(host, hooks)
    peer_pb2_grpc.add_PeerServiceServicer_to_server(servicer, server)
    return servicer

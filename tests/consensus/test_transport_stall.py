"""A peer that stops reading its stream does not hold the sender: the write that outlasts the
RPC timeout ends the call, the batch is dropped (Raft re-sends) and the next batch greets the
peer again on a new stream."""

from __future__ import annotations

import asyncio

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.consensus.transport import PROTOCOL_VERSION, PeerTransport


class _StuckPeer(peer_pb2_grpc.PeerServiceServicer):
    """Answers Hello, then never reads what its streams are sent."""

    def __init__(self) -> None:
        self.hellos = 0
        self.streams = 0

    async def Hello(self, request, context):  # noqa: N802
        self.hellos += 1
        return pb.HelloReply(node_id="b", cluster="test", address="x", protocol_version=PROTOCOL_VERSION)

    async def StepStream(self, request_iterator, context):  # noqa: N802
        self.streams += 1
        await asyncio.sleep(3600)


class _Host:
    node_id, cluster, address, leader = "a", "test", "127.0.0.1:1", None

    def __init__(self, peer_address: str) -> None:
        self._peer = peer_address

    def peer_address(self, node_id):
        return self._peer

    def member_addresses(self):
        return []

    def note_members(self, members):
        pass


async def test_a_write_the_peer_never_takes_ends_the_stream_and_the_link_greets_again():
    peer = _StuckPeer()
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServiceServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    transport = PeerTransport(_Host(f"127.0.0.1:{port}"), token=None, rpc_timeout=0.5)
    try:
        # Forwarded writes of 1 MiB fill the stream's flow-control window within a few batches.
        for i in range(64):
            assert transport.forward("b", b"x" * (1 << 20), f"p{i}")
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while peer.streams < 2 and loop.time() < deadline:
            transport.forward("b", b"y", "again")
            await asyncio.sleep(0.1)
        assert peer.streams >= 2 and peer.hellos >= 2, (peer.streams, peer.hellos)
    finally:
        await transport.close()
        await server.stop(None)

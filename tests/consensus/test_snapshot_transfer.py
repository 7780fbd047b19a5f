"""InstallSnapshot on a real gRPC server on loopback: chunked, checksummed, resumable (issue 23).

The receiving side is the real ``PeerServicer``; its host is a small stand-in that records what
a driver would be handed (the driver's own part, stepping the message into the core, is covered
by the real-process tests in ``tests/cluster/test_snapshots.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.api.peer_service import add_peer_service
from nexus_node.consensus.raft import Membership, MsgSnap, SnapshotMeta, message_to_dict
from nexus_node.consensus.raft.validate import sender_refusal
from nexus_node.consensus.snapshot_file import SnapshotFile, read_snapshot, write_snapshot
from nexus_node.consensus.snapshot_transfer import CHUNK_BYTES, send_snapshot

CONFIG = Membership.of(["a", "b"]).encode().decode()


class Receiver:
    """What PeerService needs from a driver to take a snapshot."""

    node_id = "b"
    cluster = "c1"
    address = "127.0.0.1:0"
    leader = "a"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.received: list[tuple[MsgSnap, SnapshotFile]] = []

    def screen(self, message, with_file: bool = False):
        return sender_refusal(message.src, {"a", "b"}, message, False, "a")

    def snapshot_dir(self) -> Path:
        return self.directory

    def receive_snapshot(self, message, file) -> None:
        self.received.append((message, file))


@pytest.fixture
async def peer(tmp_path: Path):
    receiver = Receiver(tmp_path / "b")
    server = grpc.aio.server()
    add_peer_service(server, receiver)   # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield receiver, peer_pb2_grpc.PeerServiceStub(channel)
    await channel.close()
    await server.stop(None)


def _snapshot(directory: Path, items: int) -> SnapshotFile:
    directory.mkdir(parents=True, exist_ok=True)
    meta = SnapshotMeta(500, 4, CONFIG)
    # Incompressible-ish text, several chunks long.
    rows = (("journal", {"n": i, "pad": hashlib.sha256(str(i).encode()).hexdigest() * 8}) for i in range(items))
    return write_snapshot(directory, meta, rows)


def _message(file: SnapshotFile, src: str = "a") -> MsgSnap:
    return MsgSnap(src, "b", 5, file.meta.index, file.meta.term, file.meta.config)


async def test_a_snapshot_arrives_whole_and_its_message_goes_to_the_core(peer, tmp_path: Path) -> None:
    receiver, stub = peer
    file = _snapshot(tmp_path / "a", 4000)
    assert file.size > 2 * CHUNK_BYTES
    sent = await send_snapshot(stub, (), "c1", "a", _message(file), file, rpc_timeout=5)
    assert sent == file.size
    [(message, got)] = receiver.received
    assert message == _message(file)
    assert got.sha256 == file.sha256 and got.path.parent == receiver.directory
    meta, items = read_snapshot(got.path)
    assert meta == file.meta and sum(1 for _ in items) == 4000


async def test_a_corrupt_chunk_is_refused_and_the_transfer_resumes_after_the_last_good_one(peer, tmp_path: Path) -> None:
    receiver, stub = peer
    file = _snapshot(tmp_path / "a", 4000)
    data = file.path.read_bytes()
    call = stub.InstallSnapshot()
    await call.write(pb.SnapshotChunk(cluster="c1", from_node="a", size=file.size, sha256=file.sha256,
                                      message=json.dumps(message_to_dict(_message(file))).encode()))
    assert (await call.read()).have == 0
    good = data[:CHUNK_BYTES]
    await call.write(pb.SnapshotChunk(offset=0, data=good, chunk_sha256=hashlib.sha256(good).hexdigest()))
    bad = bytearray(data[CHUNK_BYTES:2 * CHUNK_BYTES])
    bad[100] ^= 0xFF   # flipped on the way: its checksum is the original's
    await call.write(pb.SnapshotChunk(offset=CHUNK_BYTES, data=bytes(bad),
                                      chunk_sha256=hashlib.sha256(data[CHUNK_BYTES:2 * CHUNK_BYTES]).hexdigest()))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.DATA_LOSS
    assert f"chunk at offset {CHUNK_BYTES} does not match its SHA-256" in info.value.details()
    assert receiver.received == []
    # The sender tries again: it is told to go on after the good chunk, and the file arrives whole.
    sent = await send_snapshot(stub, (), "c1", "a", _message(file), file, rpc_timeout=5)
    assert sent == file.size - CHUNK_BYTES
    [(_, got)] = receiver.received
    assert got.path.read_bytes() == data


async def test_a_snapshot_from_a_node_outside_the_cluster_is_refused(peer, tmp_path: Path) -> None:
    receiver, stub = peer
    file = _snapshot(tmp_path / "a", 10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send_snapshot(stub, (), "c1", "intruder", _message(file, src="intruder"), file, rpc_timeout=5)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "not a member" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send_snapshot(stub, (), "other-cluster", "a", _message(file), file, rpc_timeout=5)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert receiver.received == [] and not list(receiver.directory.glob("snap-*"))


async def test_a_file_that_is_not_the_snapshot_its_message_names_is_refused(peer, tmp_path: Path) -> None:
    receiver, stub = peer
    file = _snapshot(tmp_path / "a", 10)
    other = MsgSnap("a", "b", 5, 501, 4, CONFIG)
    with pytest.raises(ValueError, match="is not the one of"):
        await send_snapshot(stub, (), "c1", "a", other, file, rpc_timeout=5)
    # A sender that lies about it anyway: the file's header is checked on arrival.
    call = stub.InstallSnapshot()
    await call.write(pb.SnapshotChunk(cluster="c1", from_node="a", size=file.size, sha256=file.sha256,
                                      message=json.dumps(message_to_dict(other)).encode()))
    assert (await call.read()).have == 0
    data = file.path.read_bytes()
    await call.write(pb.SnapshotChunk(offset=0, data=data, chunk_sha256=hashlib.sha256(data).hexdigest()))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert receiver.received == []

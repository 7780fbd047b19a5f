"""A blob fetch over real gRPC on loopback, from holders that misbehave: one that goes away
mid-stream (its server stops) and one that sends bytes that do not match the hash. The fetch
resumes from the next holder where the first stopped, and refuses bad bytes and fetches the
blob again from a holder that sent none of them (issue 24: shards fetched from a swarm)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import grpc
import pytest

from nexus_node._generated.nexus.v1 import peer_pb2, peer_pb2_grpc
from nexus_node.blobs.replication import BlobSync
from nexus_node.blobs.store import BlobStore
from nexus_node.errors import FailedPrecondition
from tests.blobs.helpers import one_voter
from tests.blocking import allow_blocking

DATA = bytes(range(256)) * 4096          # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()
CHUNK = 64 << 10


class _Holder(peer_pb2_grpc.PeerServiceServicer):
    """A holder serving ``data`` from the offset asked, ``CHUNK`` bytes a message. With
    ``die_after`` chunks sent, its server stops mid-stream (the holder goes away)."""

    def __init__(self, data: bytes, die_after: int | None = None, fail_at_end: bool = False) -> None:
        self.data, self.die_after, self.fail_at_end = data, die_after, fail_at_end
        self.offsets: list[int] = []
        self.server: grpc.aio.Server | None = None

    async def FetchBlob(self, request, context):  # noqa: N802
        self.offsets.append(request.offset)
        for n, at in enumerate(range(request.offset, len(self.data), CHUNK)):
            if self.die_after is not None and n == self.die_after:
                assert self.server is not None
                asyncio.get_running_loop().create_task(self.server.stop(None))
                await asyncio.sleep(60)   # cut off by the stop
            yield peer_pb2.BlobChunk(data=self.data[at:at + CHUNK])
        if self.fail_at_end:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


async def _serve(holder: _Holder) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServiceServicer_to_server(holder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    holder.server = server
    return server, f"127.0.0.1:{port}"


async def _fetch_from(tmp_path, first: _Holder, second: _Holder) -> tuple[BlobSync, BlobStore, list]:
    """n1 fetching SHA, which n2 and n3 hold: ``first`` serves as the holder n1 tries first."""
    servers = [await _serve(first), await _serve(second)]
    driver, records, store = await one_voter(tmp_path)
    # n1 is not among the keepers (the members it places by), so only the test makes it fetch.
    sync = BlobSync("n1", "test", store, records, driver._transport, lambda: {"n2", "n3"}, replicas=1,
                    wait_for=driver.wait_for)
    for holder in ("n2", "n3"):
        await records._commit({"op": "put_blob", "sha256": SHA, "size": len(DATA), "kind": "dataset",
                               "holder": holder})
    await driver.wait_for(lambda: records.holders(SHA) >= {"n2", "n3"}, 10)
    order = sync.fetch_order(SHA)
    assert sorted(order) == ["n2", "n3"]
    for node, (_, address) in zip(order, servers):
        driver.note_peer(node, address)
    return sync, store, [driver, *[s for s, _ in servers]]


async def _close(sync: BlobSync, parts: list) -> None:
    await sync.close()
    await parts[0].stop()
    for server in parts[1:]:
        await server.stop(None)


async def test_a_holder_that_goes_away_mid_stream_is_resumed_from_by_another(tmp_path):
    dying, serving = _Holder(DATA, die_after=5), _Holder(DATA)
    sync, store, parts = await _fetch_from(tmp_path, dying, serving)
    try:
        path = await sync.ensure(SHA)
        with allow_blocking():
            assert path.read_bytes() == DATA
            assert list(store.tmp.iterdir()) == []
        assert dying.offsets == [0]
        # From where this node's copy stopped (what reached it of the five chunks sent), not
        # from the start.
        assert len(serving.offsets) == 1 and 0 < serving.offsets[0] <= 5 * CHUNK, serving.offsets
    finally:
        await _close(sync, parts)


async def test_bytes_that_do_not_match_the_hash_are_refused_and_fetched_again(tmp_path):
    bad = bytearray(DATA)
    bad[700_000] ^= 1
    lying, serving = _Holder(bytes(bad)), _Holder(DATA)
    sync, store, parts = await _fetch_from(tmp_path, lying, serving)
    try:
        path = await sync.ensure(SHA)
        with allow_blocking():
            assert path.read_bytes() == DATA
        assert lying.offsets == [0] and serving.offsets == [0]   # again from the start, from the other
    finally:
        await _close(sync, parts)


async def test_a_blob_no_holder_sends_whole_and_right_is_refused_with_what_each_did(tmp_path):
    bad = bytearray(DATA)
    bad[900_000] ^= 1                     # past what the first holder sends before it goes
    dying, lying = _Holder(DATA, die_after=3), _Holder(bytes(bad))
    sync, store, parts = await _fetch_from(tmp_path, dying, lying)
    try:
        with pytest.raises(FailedPrecondition) as err:
            await sync.ensure(SHA)
        first, second = sync.fetch_order(SHA)
        assert re.search(rf"{first}: \w+ .* after byte \d+", str(err.value)), str(err.value)
        assert f"{first}, {second}: content does not match its hash" in str(err.value)
        assert len(lying.offsets) == 1 and 0 < lying.offsets[0] <= 3 * CHUNK
        with allow_blocking():
            assert not store.has(SHA) and list(store.tmp.iterdir()) == []
    finally:
        await _close(sync, parts)


async def test_a_stream_that_fails_after_its_last_byte_has_the_blob_and_one_too_long_is_refused(tmp_path):
    with allow_blocking():   # the test's own setup
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
    # The first holder sends every byte, then its stream fails: the blob is whole, and kept.
    whole_then_fails, never_asked = _Holder(DATA, fail_at_end=True), _Holder(DATA)
    sync, store, parts = await _fetch_from(tmp_path / "a", whole_then_fails, never_asked)
    try:
        with allow_blocking():
            assert (await sync.ensure(SHA)).read_bytes() == DATA
        assert never_asked.offsets == []
    finally:
        await _close(sync, parts)
    # The first holder sends more than the blob holds: refused, fetched again from the other.
    too_long, serving = _Holder(DATA + b"x" * CHUNK * 4), _Holder(DATA)
    sync, store, parts = await _fetch_from(tmp_path / "b", too_long, serving)
    try:
        with allow_blocking():
            assert (await sync.ensure(SHA)).read_bytes() == DATA
        assert serving.offsets == [0]
    finally:
        await _close(sync, parts)

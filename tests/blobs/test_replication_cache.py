"""A node over its blob-store bound drops cached copies, recording the drop first, and keeps
what it holds for the cluster (real records on a one-voter driver, real files)."""

from __future__ import annotations

import hashlib

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2, peer_pb2_grpc
from nexus_node.blobs.replication import BlobSync, keepers
from nexus_node.blobs.store import BlobStore
from tests.blobs.helpers import one_voter, stored_blob
from tests.blocking import allow_blocking

MEMBERS = {"n1", "n2"}


def _kept_by(node: str, store: BlobStore, prefix: bytes, age: float) -> str:
    """A blob whose one keeper (replicas 1) among MEMBERS is ``node``."""
    for i in range(1000):
        data = prefix + str(i).encode() * 1000
        sha = hashlib.sha256(data).hexdigest()
        if keepers(sha, MEMBERS, 1) == [node]:
            return stored_blob(store, data, age)
    raise AssertionError("no such blob")


async def test_cached_copies_go_and_kept_ones_stay(tmp_path):
    driver, records, store = await one_voter(tmp_path)
    sync = BlobSync("n1", "test", store, records, None, lambda: set(MEMBERS), replicas=1,  # type: ignore[arg-type]
                    bound_bytes=1, min_idle=60, wait_for=driver.wait_for)
    try:
        mine = _kept_by("n1", store, b"mine", age=600)          # n1 keeps it: never dropped
        cached = _kept_by("n2", store, b"cached", age=600)      # n2 keeps it and holds it: droppable
        waiting = _kept_by("n2", store, b"waiting", age=600)    # n2 keeps it but has not fetched it
        fresh = _kept_by("n2", store, b"fresh", age=0)          # just used
        for sha in (mine, cached, waiting, fresh):
            await records.put_blob(sha, store.path(sha).stat().st_size, "dataset")
        for sha in (cached, fresh):   # n2's copies, as n2's own put_blob would record them
            await records._commit({"op": "put_blob", "sha256": sha, "size": 1, "kind": "dataset", "holder": "n2"})

        # n2's copy landing is what makes n1's droppable: the node trims on its own.
        await driver.wait_for(lambda: records.holders(cached) == {"n2"}, 10)
        await sync.trim()   # waits for the background trim (one at a time)
        assert not store.has(cached)
        assert all(store.has(s) and "n1" in records.holders(s) for s in (mine, waiting, fresh))
        assert await sync.trim() == []   # still over the bound, but nothing else may go
    finally:
        await sync.close()
        await driver.stop()


class _Holder(peer_pb2_grpc.PeerServiceServicer):
    """n2: serves the blobs it holds, as a node's PeerService does."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    async def FetchBlob(self, request, context):  # noqa: N802
        yield peer_pb2.BlobChunk(data=self.blobs[request.sha256])


async def test_a_member_that_becomes_a_keeper_when_another_is_removed_fetches_its_blobs(tmp_path):
    # A blob kept by n3 among {n1, n2, n3}, and by n1 once n3 is gone (rendezvous order n3, n1, n2).
    for i in range(1000):
        data = b"model" + str(i).encode() * 100
        sha = hashlib.sha256(data).hexdigest()
        if keepers(sha, {"n1", "n2", "n3"}, 1) == ["n3"] and keepers(sha, {"n1", "n2"}, 1) == ["n1"]:
            break
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServiceServicer_to_server(_Holder({sha: data}), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    driver, records, store = await one_voter(tmp_path, {"n2": f"127.0.0.1:{port}"})
    members = {"n1", "n2", "n3"}
    sync = BlobSync("n1", "test", store, records, driver._transport, lambda: set(members), replicas=1,
                    wait_for=driver.wait_for)
    try:
        # n2 holds it (its copy, recorded as its own put_blob would); n3 keeps it: n1 does not fetch.
        await records._commit({"op": "put_blob", "sha256": sha, "size": len(data), "kind": "model", "holder": "n2"})
        await driver.wait_for(lambda: records.holders(sha) == {"n2"}, 10)
        sync.rebalance()
        assert not store.has(sha) and not sync._fetching

        # A trial's predictions stay with the node that made them, keeper or not.
        await records._commit({"op": "put_blob", "sha256": sha, "size": len(data), "kind": "predictions",
                               "holder": "n2"})
        members.discard("n3")   # n3 removed: n1 is the keeper now
        sync.rebalance()
        assert not store.has(sha) and not sync._fetching
        await records._commit({"op": "put_blob", "sha256": sha, "size": len(data), "kind": "model", "holder": "n2"})
        sync.rebalance()
        await driver.wait_for(lambda: records.holders(sha) == {"n1", "n2"}, 10)
        with allow_blocking():
            assert store.path(sha).read_bytes() == data
    finally:
        await sync.close()
        await driver.stop()
        await server.stop(None)

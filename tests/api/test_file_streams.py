"""Uploads, exports and blob fetches stream through real gRPC on loopback with their file work
in threads: the autouse guard (tests/blocking.py) fails these tests if the servicers open,
write or remove a file on the event loop, as they did before."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc, peer_pb2, peer_pb2_grpc
from nexus_node.api.nexus_service import NexusServicer
from nexus_node.api.peer_service import PeerServicer
from nexus_node.blobs.store import BlobStore
from nexus_node.jobs.records import JobRecord
from tests.blocking import allow_blocking

pytestmark = pytest.mark.usefixtures("no_blocking_io")   # see the module docstring

DATA = b"".join(b"%d,%d\n" % (i, i * i) for i in range(300_000))   # ~3.6 MB: several 1-MiB chunks


class Manager:
    """The job manager as far as these streams use it."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.uploaded = b""

    async def submit(self, spec, upload: Path, max_bytes: int | None = None, limit_flag: str = "") -> JobRecord:
        self.uploaded = await asyncio.to_thread(upload.read_bytes)
        return JobRecord(job_id="job-1", spec=spec)

    async def model(self, model_id: str) -> SimpleNamespace:
        sha = hashlib.sha256(DATA).hexdigest()
        return SimpleNamespace(artifact_sha256=sha, artifact_bytes=len(DATA))

    async def fetch_blob(self, sha256: str) -> Path:
        return self.blobs.path(sha256)


async def _serve(add) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_an_upload_and_an_export_stream_their_files_off_the_loop(tmp_path):
    with allow_blocking():
        store = BlobStore(tmp_path / "blobs")
        sha, _ = store.ingest(_write(tmp_path / "artifact", DATA))
    manager = Manager(store)
    servicer = NexusServicer(manager, cluster=None, temp_file=store.new_temp,  # type: ignore[arg-type]
                             max_upload_bytes=64 << 20, max_predict_bytes=64 << 20)
    servicer.ready = True
    server, channel = await _serve(lambda s: nexus_pb2_grpc.add_NexusServiceServicer_to_server(servicer, s))
    try:
        stub = nexus_pb2_grpc.NexusServiceStub(channel)

        async def requests():
            yield pb.SubmitJobRequest(spec=pb.JobSpec(target="y"))
            for i in range(0, len(DATA), 1 << 20):
                yield pb.SubmitJobRequest(chunk=DATA[i:i + (1 << 20)])

        reply = await stub.SubmitJob(requests())
        assert reply.job_id == "job-1" and manager.uploaded == DATA
        chunks = [c async for c in stub.ExportModel(pb.ExportModelRequest(model_id="m"))]
        assert chunks[0].sha256 == sha and b"".join(c.data for c in chunks) == DATA and len(chunks) > 1
        assert await asyncio.to_thread(lambda: list(store.tmp.iterdir())) == []   # the upload's temp file went
    finally:
        await channel.close()
        await server.stop(None)


async def test_fetch_blob_streams_the_file_off_the_loop(tmp_path):
    with allow_blocking():
        path = _write(tmp_path / "blob", DATA)
    hooks = SimpleNamespace(blob_file=lambda sha: path if sha == "ab" * 32 else None)
    servicer = PeerServicer(SimpleNamespace(cluster="c"), hooks)  # type: ignore[arg-type]
    server, channel = await _serve(lambda s: peer_pb2_grpc.add_PeerServiceServicer_to_server(servicer, s))
    try:
        stub = peer_pb2_grpc.PeerServiceStub(channel)
        chunks = [c.data async for c in stub.FetchBlob(peer_pb2.FetchBlobRequest(cluster="c", sha256="ab" * 32))]
        assert b"".join(chunks) == DATA and len(chunks) > 1
        # A fetch cut short resumes where it stopped; an offset past the end says so.
        tail = [c.data async for c in stub.FetchBlob(peer_pb2.FetchBlobRequest(
            cluster="c", sha256="ab" * 32, offset=len(DATA) - 1000))]
        assert b"".join(tail) == DATA[-1000:]
        assert [c async for c in stub.FetchBlob(peer_pb2.FetchBlobRequest(
            cluster="c", sha256="ab" * 32, offset=len(DATA)))] == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [c async for c in stub.FetchBlob(peer_pb2.FetchBlobRequest(
                cluster="c", sha256="ab" * 32, offset=len(DATA) + 1))]
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "past the end" in err.value.details()
    finally:
        await channel.close()
        await server.stop(None)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

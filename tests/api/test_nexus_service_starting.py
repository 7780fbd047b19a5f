"""Before the node's mesh has started, every NexusService call answers UNAVAILABLE ("the
node is starting") instead of reaching the mesh: the servicer is called directly here, with a
view that is not ready, so the window is not raced."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.api.nexus_service import NexusServicer
from tests.blocking import allow_blocking

# The servicer runs on the test's loop: blocking file work there fails a test (tests/blocking.py).
pytestmark = pytest.mark.usefixtures("no_blocking_io")


class Aborted(Exception):
    pass


class Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses."""

    code: grpc.StatusCode | None = None
    details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


class NoMesh:
    """Any use of the manager or the mesh fails the test: nothing may reach them."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the servicer used the manager ({name}) while the node was starting")


async def _no_view() -> pb.Cluster:
    raise AssertionError("the cluster view was asked for while the node was starting")


def servicer(tmp_path: Path) -> NexusServicer:
    return NexusServicer(NoMesh(), _no_view, lambda suffix: tmp_path / f"upload{suffix}",  # type: ignore[arg-type]
                         max_upload_bytes=1 << 20, max_predict_bytes=1 << 20)


async def _requests():
    yield pb.SubmitJobRequest(spec=pb.JobSpec(target="y"))


@pytest.mark.parametrize("call, request_", [
    ("GetCluster", pb.GetClusterRequest()),
    ("ListJobs", pb.ListJobsRequest()),
    ("GetJob", pb.GetJobRequest(job_id="job-x")),
    ("CancelJob", pb.CancelJobRequest(job_id="job-x")),
    ("ListModels", pb.ListModelsRequest()),
])
async def test_unary_calls_answer_unavailable_while_starting(tmp_path, call, request_):
    ctx = Context()
    with pytest.raises(Aborted):
        await getattr(servicer(tmp_path), call)(request_, ctx)
    assert ctx.code == grpc.StatusCode.UNAVAILABLE and "the node is starting" in ctx.details


@pytest.mark.parametrize("call, request_", [
    ("WatchCluster", pb.WatchClusterRequest()),
    ("WatchJob", pb.WatchJobRequest(job_id="job-x")),
    ("ExportModel", pb.ExportModelRequest(model_id="model-x")),
])
async def test_streaming_calls_answer_unavailable_while_starting(tmp_path, call, request_):
    ctx = Context()
    with pytest.raises(Aborted):
        async for _ in getattr(servicer(tmp_path), call)(request_, ctx):
            pass
    assert ctx.code == grpc.StatusCode.UNAVAILABLE and "starting" in ctx.details


async def test_an_upload_while_starting_is_refused_before_it_is_read(tmp_path):
    ctx = Context()
    with pytest.raises(Aborted):
        await servicer(tmp_path).SubmitJob(_requests(), ctx)
    assert ctx.code == grpc.StatusCode.UNAVAILABLE
    with allow_blocking():   # the test's own look at the directory
        assert list(tmp_path.iterdir()) == []   # no temp file was made


async def test_once_ready_the_calls_reach_the_node(tmp_path):
    async def view() -> pb.Cluster:
        return pb.Cluster(cluster_name="c")

    s = NexusServicer(NoMesh(), view, lambda suffix: tmp_path / suffix,  # type: ignore[arg-type]
                      max_upload_bytes=1, max_predict_bytes=1)
    s.ready = True
    assert (await s.GetCluster(pb.GetClusterRequest(), Context())).cluster_name == "c"
    assert NexusServicer.GetCluster.__name__ == "GetCluster"   # gRPC registers methods by name

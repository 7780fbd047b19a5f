"""With a token configured, every RPC but health needs it — Optuna's StorageService too."""

from __future__ import annotations

import subprocess
import sys

import grpc
import optuna
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study_proxy import NexusStorageProxy
from tests.conftest import free_port
from tests.node.helpers import rpc_error, stub


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from tests.conftest import NodeProcess

    base = tmp_path_factory.mktemp("auth")
    (base / "token").write_text("s3cret-token\n")
    node = NodeProcess(base / "node", "--token-file", str(base / "token")).start()
    yield node
    node.stop()


def test_calls_without_the_token_are_refused(secured):
    for token in (None, "wrong"):
        e = rpc_error(stub(secured.address, token).ListJobs, pb.ListJobsRequest(), timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in e.details()
        e = rpc_error(stub(secured.address, token).WatchJob, pb.WatchJobRequest(job_id="x"), timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        # Trial code's batched reports are study writes: refused the same way.
        e = rpc_error(stub(secured.address, token).ReportSteps, pb.ReportStepsRequest(
            trial_id=0, steps=[pb.TrialStep(step=0, value=1.0)]), timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        e = rpc_error(stub(secured.address, token).FinishTrial, pb.FinishTrialRequest(
            trial_id=0, state="COMPLETE", value=1.0), timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def test_optuna_storage_service_needs_the_token_too(secured):
    host, port = secured.address.split(":")
    with pytest.raises(grpc.RpcError) as info:
        optuna.get_all_study_summaries(NexusStorageProxy(host=host, port=int(port)))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    summaries = optuna.get_all_study_summaries(NexusStorageProxy(host=host, port=int(port), token="s3cret-token"))
    assert summaries == []


def test_with_the_token_calls_succeed_and_health_needs_none(secured):
    assert stub(secured.address, "s3cret-token").ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
    channel = grpc.insecure_channel(secured.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_node_on_all_interfaces_creates_a_token(tmp_path):
    # Bound to every interface; the test still only talks to it over loopback.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_node.node_main", "--host", "0.0.0.0", "--port", str(port),
         "--data-dir", str(tmp_path / "open")], stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        token_path = tmp_path / "open" / "token"
        assert "created a token" in line and str(token_path) in line
        assert oct(token_path.stat().st_mode & 0o777) == "0o600"
        token = token_path.read_text().strip()
        addr = f"127.0.0.1:{port}"
        assert rpc_error(stub(addr).ListJobs, pb.ListJobsRequest(), timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub(addr, token).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
    finally:
        proc.terminate()
        proc.wait(30)


def test_reflection_lists_the_services_to_token_holders(secured):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from nexus_node.auth import secure_channel

    def services(token):
        stub = reflection_pb2_grpc.ServerReflectionStub(secure_channel(secured.address, token))
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        return {s.name for r in replies for s in r.list_services_response.service}

    assert {"nexus.v1.NexusService", "optuna.StorageService", "grpc.health.v1.Health"} <= services("s3cret-token")
    with pytest.raises(grpc.RpcError) as info:
        services(None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

"""With a token configured, every RPC but health needs it — Optuna's StorageService too."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import grpc
import optuna
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from optuna.storages._grpc.auto_generated import api_pb2

import nexus_node._generated.nexus.v1 as generated
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study_proxy import NexusStorageProxy
from tests.conftest import free_port
from tests.node.helpers import rpc_error, stub

TOKEN = "s3cret-token"
DENIED = "missing or wrong cluster token"   # the interceptor's words (auth._DENIED), no servicer's


def _services(*modules):
    return [s for m in modules for s in m.DESCRIPTOR.services_by_name.values()]


# Every service the node serves, read from the descriptors: a new RPC (or a new service in a new
# nexus/v1 proto file) is covered without touching this file.
_NEXUS_MODULES = [importlib.import_module(f"{generated.__name__}.{m.name}")
                  for m in pkgutil.iter_modules(generated.__path__) if m.name.endswith("_pb2")]
GUARDED = _services(*_NEXUS_MODULES, api_pb2, reflection_pb2)
OPEN = _services(health_pb2)   # health checks are deliberately open (auth.OPEN_METHOD_PREFIXES)
GUARDED_METHODS = [m for s in GUARDED for m in s.methods]
OPEN_METHODS = [m for s in OPEN for m in s.methods]
BAD_TOKENS = {"no-token": (), "wrong-token": (("authorization", "Bearer wrong"),)}


def _id(method) -> str:
    return f"{method.containing_service.name}/{method.name}"


def _call(channel: grpc.Channel, method, metadata) -> object:
    """Calls ``method`` with an empty request; returns the RpcError, or what came back instead."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = message_factory.GetMessageClass(method.input_type)()
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kind[(method.client_streaming, method.server_streaming)](
        path, request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=message_factory.GetMessageClass(method.output_type).FromString)
    arg = iter([request]) if method.client_streaming else request
    try:
        if not method.server_streaming:
            return call(arg, timeout=10, metadata=metadata)
        responses = call(arg, timeout=10, metadata=metadata)
        try:
            return next(responses)   # the first message is enough: watch streams never end
        except StopIteration:
            return "an empty stream"
        finally:
            responses.cancel()
    except grpc.RpcError as e:
        return e


@pytest.fixture(scope="module")
def channel(secured):
    with grpc.insecure_channel(secured.address) as ch:
        yield ch


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


def test_every_rpc_is_covered():
    names = {s.full_name for s in GUARDED}
    assert {"nexus.v1.NexusService", "nexus.v1.PeerService", "optuna.StorageService",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert len(GUARDED_METHODS) >= 14 + 7 + 19 + 1


def test_every_listed_service_is_checked(channel):
    """What reflection advertises is all guarded here or open on purpose (PeerService is unlisted)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10,
        metadata=(("authorization", f"Bearer {TOKEN}"),))
    listed = {s.name for r in replies for s in r.list_services_response.service}
    assert listed and listed <= {s.full_name for s in GUARDED + OPEN}


@pytest.mark.parametrize("metadata", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
@pytest.mark.parametrize("method", GUARDED_METHODS, ids=_id)
def test_every_rpc_refuses_a_call_without_the_token(channel, method, metadata):
    # A call the interceptor let through would reach the servicer: OK, a first stream message,
    # or that servicer's own error (INVALID_ARGUMENT, NOT_FOUND, a deadline...), never this.
    outcome = _call(channel, method, metadata)
    assert isinstance(outcome, grpc.RpcError), f"{_id(method)} answered {outcome!r}"
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED, (outcome.code(), outcome.details())
    assert DENIED in outcome.details()


@pytest.mark.parametrize("metadata", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
@pytest.mark.parametrize("method", OPEN_METHODS, ids=_id)
def test_health_needs_no_token(channel, method, metadata):
    outcome = _call(channel, method, metadata)
    if method.name in ("Check", "Watch"):   # the empty request asks about the whole server
        assert isinstance(outcome, health_pb2.HealthCheckResponse), f"{_id(method)}: {outcome}"
        assert outcome.status == health_pb2.HealthCheckResponse.SERVING
    elif isinstance(outcome, grpc.RpcError):
        # Past the interceptor, the servicer may still not implement it (the aio servicer has
        # no List), but it must not be the token that stopped the call.
        assert outcome.code() != grpc.StatusCode.UNAUTHENTICATED and DENIED not in outcome.details()


def test_the_right_token_gets_through(channel):
    """Positive control: the same calls, with the token, reach a live node's servicer."""
    get_cluster = pb.DESCRIPTOR.services_by_name["NexusService"].methods_by_name["GetCluster"]
    reply = _call(channel, get_cluster, (("authorization", f"Bearer {TOKEN}"),))
    assert isinstance(reply, pb.Cluster), reply
    assert reply.ListFields()

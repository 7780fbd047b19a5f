"""Who may call what, on a real node: every RPC of every service, read from the descriptors, with
each credential (client tokens of each role, the admin token, the peer secret, none, a wrong one).

The expected policy is written out here, from the issue's words, not read from the code's table:
a test that asked ``roles.required_role`` what to expect could not fail."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import grpc
import optuna
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

import nexus_node._generated.nexus.v1 as generated
from nexus_node._generated import api_pb2
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.api.reflection import V1, register_v1
from nexus_node.study.proxy import NexusStorageProxy
from tests.conftest import free_port
from tests.node.helpers import rpc_error, stub

TOKEN = "s3cret-token"          # the node's --token-file: its admin token
PEER_SECRET = "p33r-secret"     # --peer-secret-file: members and runners only
DENIED = "missing, unknown or revoked token"   # the interceptor's words (auth._DENIED), no servicer's


def _services(*modules):
    return [s for m in modules for s in m.DESCRIPTOR.services_by_name.values()]


# Every service the node serves, read from the descriptors: a new RPC (or a new service in a new
# nexus/v1 proto file) is covered without touching this file.
_NEXUS_MODULES = [importlib.import_module(f"{generated.__name__}.{m.name}")
                  for m in pkgutil.iter_modules(generated.__path__) if m.name.endswith("_pb2")]
# Reflection v1 has no generated module: the node registers its descriptor (api/reflection.py).
register_v1(descriptor_pool.Default())
GUARDED = [*_services(*_NEXUS_MODULES, api_pb2, reflection_pb2), descriptor_pool.Default().FindServiceByName(V1)]
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


# What each role may call (issue 18, "Client tokens with roles"); the peer secret may call all.
READS = {"GetJob", "ListJobs", "WatchJob", "ListTrials", "ListModels", "GetModel", "Predict",
         "ExportModel", "GetCluster", "WatchCluster"}
SUBMITS = {"SubmitJob", "CancelJob", "DeleteJob", "DeleteModel"}   # issue 23: deleting is cancelling's role
ADMINS = {"CreateToken", "ListTokens", "RevokeToken"}
PEER_ONLY_SERVICES = {"nexus.v1.PeerService", "nexus.v1.RunnerService"}
ORDER = ["read", "submit", "admin", "peer"]


def expected_role(method) -> str:
    service = method.containing_service.full_name
    if service in PEER_ONLY_SERVICES:
        return "peer"
    if service == "nexus.v1.NexusService":
        for role, names in (("read", READS), ("submit", SUBMITS), ("admin", ADMINS)):
            if method.name in names:
                return role
        raise AssertionError(f"{_id(method)} is new: decide which role it needs, here and in net/roles.py")
    if service == "optuna.StorageService":   # Optuna reads are Get*; everything else writes
        return "read" if method.name.startswith("Get") else "submit"
    if service in ("grpc.reflection.v1alpha.ServerReflection", V1):
        return "read"
    raise AssertionError(f"{_id(method)}: a service this test does not know")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from tests.conftest import NodeProcess

    base = tmp_path_factory.mktemp("auth")
    (base / "token").write_text(TOKEN + "\n")
    (base / "peer").write_text(PEER_SECRET + "\n")
    node = NodeProcess(base / "node", "--token-file", str(base / "token"),
                       "--peer-secret-file", str(base / "peer")).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def credentials(secured):
    """Bearer metadata per credential: one client token of each role, made by the admin."""
    admin = stub(secured.address, TOKEN)
    out = {"admin-token": (("authorization", f"Bearer {TOKEN}"),),
           "peer-secret": (("authorization", f"Bearer {PEER_SECRET}"),)}
    for role in ("read", "submit", "admin"):
        reply = admin.CreateToken(pb.CreateTokenRequest(name=f"matrix-{role}", role=pb.TokenRole.Value(role.upper())),
                                  timeout=10)
        out[role] = (("authorization", f"Bearer {reply.secret}"),)
    return out


# The credential behind each name, and its role (the node's admin token is an admin client).
CREDENTIAL_ROLES = {"read": "read", "submit": "submit", "admin": "admin", "admin-token": "admin",
                    "peer-secret": "peer"}


@pytest.fixture(scope="module")
def channel(secured):
    with grpc.insecure_channel(secured.address) as ch:
        yield ch


def test_calls_without_a_token_are_refused(secured):
    for token in (None, "wrong"):
        e = rpc_error(stub(secured.address, token).ListJobs, pb.ListJobsRequest(), timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in e.details()


def test_optuna_storage_service_needs_a_token_too(secured):
    host, port = secured.address.split(":")
    with pytest.raises(grpc.RpcError) as info:
        optuna.get_all_study_summaries(NexusStorageProxy(host=host, port=int(port)))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    summaries = optuna.get_all_study_summaries(NexusStorageProxy(host=host, port=int(port), token=TOKEN))
    assert summaries == []


def test_with_the_token_calls_succeed_and_health_needs_none(secured):
    assert stub(secured.address, TOKEN).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
    channel = grpc.insecure_channel(secured.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Each service by its own name too, as a supervisor checking the one it uses asks.
    for name in ("nexus.v1.NexusService", "optuna.StorageService", "nexus.v1.PeerService", "nexus.v1.RunnerService"):
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


def test_a_read_token_reads_the_study_but_cannot_write_it(secured, credentials):
    host, port = secured.address.split(":")
    secret = credentials["read"][0][1].split(" ", 1)[1]
    storage = NexusStorageProxy(host=host, port=int(port), token=secret)
    assert optuna.get_all_study_summaries(storage) == []
    with pytest.raises(grpc.RpcError) as info:
        optuna.create_study(study_name="forged", storage=storage)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'submit' role" in info.value.details()
    assert optuna.get_all_study_summaries(storage) == []


def test_a_node_on_all_interfaces_creates_a_token(tmp_path):
    # Bound to every interface; the test still only talks to it over loopback.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_node.node.main", "--host", "0.0.0.0", "--port", str(port),
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

    from nexus_node.net.auth import secure_channel

    def services(token):
        stub = reflection_pb2_grpc.ServerReflectionStub(secure_channel(secured.address, token))
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        return {s.name for r in replies for s in r.list_services_response.service}

    assert {"nexus.v1.NexusService", "optuna.StorageService", "grpc.health.v1.Health"} <= services(TOKEN)
    with pytest.raises(grpc.RpcError) as info:
        services(None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_rpc_is_covered():
    names = {s.full_name for s in GUARDED}
    assert {"nexus.v1.NexusService", "nexus.v1.PeerService", "nexus.v1.RunnerService", "optuna.StorageService",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"} <= names
    # NexusService 15, PeerService 6 (Hello, StepStream, Join, FetchBlob, Describe, Work),
    # RunnerService 2, Optuna's StorageService 19, reflection 1 in each version.
    assert len(GUARDED_METHODS) >= 15 + 6 + 2 + 19 + 2
    for method in GUARDED_METHODS:
        expected_role(method)   # every method has a decided role


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
def test_every_rpc_refuses_a_call_without_a_valid_token(channel, method, metadata):
    # A call the interceptor let through would reach the servicer: OK, a first stream message,
    # or that servicer's own error (INVALID_ARGUMENT, NOT_FOUND, a deadline...), never this.
    outcome = _call(channel, method, metadata)
    assert isinstance(outcome, grpc.RpcError), f"{_id(method)} answered {outcome!r}"
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED, (outcome.code(), outcome.details())
    assert DENIED in outcome.details()
    # What to fix, for a client in any language, not only the CLI's flags.
    assert "`authorization: Bearer <token>`" in outcome.details()


@pytest.mark.parametrize("credential", CREDENTIAL_ROLES, ids=str)
@pytest.mark.parametrize("method", GUARDED_METHODS, ids=_id)
def test_each_role_reaches_exactly_its_rpcs(channel, credentials, method, credential):
    role, need = CREDENTIAL_ROLES[credential], expected_role(method)
    outcome = _call(channel, method, credentials[credential])
    refused = isinstance(outcome, grpc.RpcError) and outcome.code() in (
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    if ORDER.index(role) >= ORDER.index(need):
        assert not refused, f"{credential} was refused {_id(method)}: {outcome.details()}"
    else:
        assert isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.PERMISSION_DENIED, \
            f"{credential} reached {_id(method)}: {outcome!r}"
        # The refusal says which role the call needs.
        assert (f"'{need}' role" in outcome.details() if need != "peer" else "peer secret" in outcome.details())


@pytest.mark.parametrize("metadata", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_an_unknown_method_is_unauthenticated_without_a_token(channel, metadata):
    """The API cannot be probed: a method the node lacks answers like any other without a token."""
    call = channel.unary_unary("/nexus.v1.NexusService/NoSuchMethod", request_serializer=bytes,
                               response_deserializer=bytes)
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=10, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


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


def test_tokens_are_listed_without_secrets_and_revocation_applies_to_the_next_call(secured, credentials):
    admin = stub(secured.address, TOKEN)
    reply = admin.CreateToken(pb.CreateTokenRequest(name="short-lived", role=pb.READ), timeout=10)
    listed = {t.name: t for t in admin.ListTokens(pb.ListTokensRequest(), timeout=10).tokens}
    assert listed["short-lived"].role == pb.READ and reply.secret not in str(listed["short-lived"])
    reader = stub(secured.address, reply.secret)
    assert reader.ListJobs(pb.ListJobsRequest(), timeout=10) is not None
    admin.RevokeToken(pb.RevokeTokenRequest(name="short-lived"), timeout=10)
    # RevokeToken returns once this node applied it: the very next call is refused.
    assert rpc_error(reader.ListJobs, pb.ListJobsRequest(), timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
    assert "short-lived" not in {t.name for t in admin.ListTokens(pb.ListTokensRequest(), timeout=10).tokens}
    for bad, code in ((pb.CreateTokenRequest(name="short lived", role=pb.READ), grpc.StatusCode.INVALID_ARGUMENT),
                      (pb.CreateTokenRequest(name="norole"), grpc.StatusCode.INVALID_ARGUMENT),
                      (pb.CreateTokenRequest(name="matrix-read", role=pb.READ), grpc.StatusCode.ALREADY_EXISTS)):
        e = rpc_error(admin.CreateToken, bad, timeout=10)
        assert e.code() == code, (bad, e.code(), e.details())
    e = rpc_error(admin.RevokeToken, pb.RevokeTokenRequest(name="never-was"), timeout=10)
    assert e.code() == grpc.StatusCode.NOT_FOUND and "never-was" in e.details()


def test_a_loopback_node_with_a_peer_secret_and_no_token_is_open_to_clients_only(tmp_path):
    """No token: clients need none (as before roles), but the peer and runner services still
    need the peer secret, and client tokens, which would restrict nothing, are refused."""
    from nexus_node._generated.nexus.v1 import peer_pb2, peer_pb2_grpc, runner_pb2_grpc
    from nexus_node.net.auth import secure_channel
    from tests.conftest import NodeProcess

    (tmp_path / "peer").write_text("rotated-new\n" + PEER_SECRET + "\n")   # the first is sent, both accepted
    node = NodeProcess(tmp_path / "node", "--peer-secret-file", str(tmp_path / "peer")).start()
    try:
        assert stub(node.address).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
        for secret in (None, "wrong"):
            peer = peer_pb2_grpc.PeerServiceStub(secure_channel(node.address, secret))
            e = rpc_error(peer.Describe, peer_pb2.DescribeRequest(cluster="nexus"), timeout=10)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.details()
            runner = runner_pb2_grpc.RunnerServiceStub(secure_channel(node.address, secret))
            e = rpc_error(runner.FinishTrial, pb.FinishTrialRequest(trial_id=0, state="COMPLETE", value=1.0),
                          timeout=10)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.details()
        for secret in ("rotated-new", PEER_SECRET):
            peer = peer_pb2_grpc.PeerServiceStub(secure_channel(node.address, secret))
            assert peer.Describe(peer_pb2.DescribeRequest(cluster="nexus"), timeout=10).node_id
        e = rpc_error(stub(node.address).CreateToken, pb.CreateTokenRequest(name="x", role=pb.READ), timeout=10)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "--token-file" in e.details()
    finally:
        node.stop()

"""Server reflection as generic clients use it (grpcurl, Postman, grpc_cli): v1 and v1alpha,
and a method described by its name (grpc/grpc#34743: grpcio-reflection's own lookup misses
methods, so ``grpcurl describe nexus.v1.NexusService.GetJob`` failed)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from nexus_node.api.reflection import V1, V1ALPHA


def ask(channel: grpc.Channel, service: str, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
    call = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                 request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=rpb.ServerReflectionResponse.FromString)
    (reply,) = list(call(iter([request]), timeout=10))
    return reply


@pytest.fixture
def channel(node_address):
    with grpc.insecure_channel(node_address) as ch:
        yield ch


@pytest.mark.parametrize("service", [V1, V1ALPHA])
def test_both_versions_list_the_services_and_describe_a_method(channel, service):
    listed = {s.name for s in ask(channel, service, rpb.ServerReflectionRequest(list_services="*"))
              .list_services_response.service}
    assert {"nexus.v1.NexusService", "optuna.StorageService", "grpc.health.v1.Health", V1, V1ALPHA} <= listed

    reply = ask(channel, service, rpb.ServerReflectionRequest(file_containing_symbol="nexus.v1.NexusService.GetJob"))
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply.error_response
    first = descriptor_pb2.FileDescriptorProto.FromString(reply.file_descriptor_response.file_descriptor_proto[0])
    (svc,) = [s for s in first.service if s.name == "NexusService"]
    (get_job,) = [m for m in svc.method if m.name == "GetJob"]
    assert (get_job.input_type, get_job.output_type) == (".nexus.v1.GetJobRequest", ".nexus.v1.Job")

    missing = ask(channel, service, rpb.ServerReflectionRequest(file_containing_symbol="nexus.v1.NexusService.Nope"))
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "nexus.v1.NexusService.Nope" in missing.error_response.error_message


def test_v1_describes_itself_as_v1(channel):
    """A client that describes the reflection service it talks to finds v1's own types."""
    db = ProtoReflectionDescriptorDatabase(channel)   # (the library's client speaks v1alpha)
    v1 = db.FindFileContainingSymbol(V1)
    (svc,) = v1.service
    assert v1.package == "grpc.reflection.v1" and svc.method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert {m.name for m in v1.message_type} >= {"ServerReflectionRequest", "ServerReflectionResponse"}

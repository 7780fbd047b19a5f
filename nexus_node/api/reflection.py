"""gRPC server reflection, ``grpc.reflection.v1`` and ``v1alpha``, for grpcurl and other generic clients.

grpcio-reflection serves only v1alpha (grpcurl, Postman and newer clients ask v1 first), and its
symbol lookup misses method names, so ``grpcurl describe nexus.v1.NexusService.GetJob`` fails
(grpc/grpc#34743). The two protocols are the same messages under two package names (v1 is
v1alpha promoted, field for field), so one handler answers both: v1alpha's generated message
classes, a public module of grpcio-reflection, read and write v1's wire bytes alike. For v1 to be
described like any other service, its file is registered in the descriptor pool, made from
v1alpha's with the package renamed.

:func:`answer` is the protocol (pure: a request and a descriptor pool in, a response out);
:func:`add_reflection` serves it.
"""

from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as rpb

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def answer(request: rpb.ServerReflectionRequest, services: Iterable[str],
           pool: descriptor_pool.DescriptorPool) -> rpb.ServerReflectionResponse:
    """The response to one reflection request about ``services`` and the types in ``pool``."""
    which = request.WhichOneof("message_request")
    try:
        if which == "list_services":
            return rpb.ServerReflectionResponse(original_request=request, list_services_response=rpb.ListServiceResponse(
                service=[rpb.ServiceResponse(name=name) for name in sorted(services)]))
        if which == "file_by_filename":
            return _files(request, pool.FindFileByName(request.file_by_filename))
        if which == "file_containing_symbol":
            return _files(request, _file_of_symbol(pool, request.file_containing_symbol))
        if which == "file_containing_extension":
            ext = request.file_containing_extension
            message = pool.FindMessageTypeByName(ext.containing_type)
            return _files(request, pool.FindExtensionByNumber(message, ext.extension_number).file)
        if which == "all_extension_numbers_of_type":
            message = pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
            return rpb.ServerReflectionResponse(
                original_request=request, all_extension_numbers_response=rpb.ExtensionNumberResponse(
                    base_type_name=message.full_name,
                    extension_number=sorted(e.number for e in pool.FindAllExtensions(message))))
    except KeyError:
        return _error(request, grpc.StatusCode.NOT_FOUND, f"{which}: {getattr(request, which)!s:.200} is not known here")
    return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "the request asks nothing this server knows of")


def _file_of_symbol(pool: descriptor_pool.DescriptorPool, name: str) -> FileDescriptor:
    """The file defining ``name``: a message, enum, service, field... or a method, which
    protobuf's pool does not look up by name (the grpcio-reflection bug)."""
    try:
        return pool.FindFileContainingSymbol(name)
    except KeyError:
        service, _, method = name.rpartition(".")
        found = pool.FindServiceByName(service) if service else None   # KeyError if none
        if found is None or method not in found.methods_by_name:
            raise
        return found.file


def _files(request: rpb.ServerReflectionRequest, file: FileDescriptor) -> rpb.ServerReflectionResponse:
    """``file`` first, then every file it depends on, each once (a client needs them all to
    build its types)."""
    ordered: dict[str, FileDescriptor] = {}
    todo = [file]
    while todo:
        f = todo.pop(0)
        if f.name not in ordered:
            ordered[f.name] = f
            todo.extend(f.dependencies)
    protos = []
    for f in ordered.values():
        proto = descriptor_pb2.FileDescriptorProto()
        f.CopyToProto(proto)
        protos.append(proto.SerializeToString())
    return rpb.ServerReflectionResponse(
        original_request=request, file_descriptor_response=rpb.FileDescriptorResponse(file_descriptor_proto=protos))


def _error(request: rpb.ServerReflectionRequest, code: grpc.StatusCode, message: str) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(original_request=request, error_response=rpb.ErrorResponse(
        error_code=code.value[0], error_message=message))


def register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds the v1 protocol's file to ``pool`` (once): v1alpha's, renamed."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    rpb.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = _V1_FILE, new
    proto.options.Clear()   # v1alpha's language options name v1alpha's packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old}."):
                field.type_name = f".{new}." + field.type_name[len(old) + 2:]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{new}." + method.input_type[len(old) + 2:]
            method.output_type = f".{new}." + method.output_type[len(old) + 2:]
    pool.Add(proto)


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str],
                   pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Serves reflection (v1 and v1alpha) about ``service_names`` on ``server``."""
    pool = pool or descriptor_pool.Default()
    register_v1(pool)
    names = tuple(sorted({*service_names, V1, V1ALPHA}))

    async def info(requests: AsyncIterator[rpb.ServerReflectionRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            yield answer(request, names, pool)

    handler = grpc.stream_stream_rpc_method_handler(
        info, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}) for service in (V1, V1ALPHA)))

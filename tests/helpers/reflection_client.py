"""What grpcurl does, over server reflection v1, for tests (grpcurl itself is a Go binary that is not
on PyPI, npm or Debian, the only registries this project may install from).

``grpcurl -plaintext HOST list`` -> :func:`list_services`;
``grpcurl -plaintext -d '{...}' HOST pkg.Service/Method`` -> :func:`call_json`: it asks the server
for the file that defines the service (``file_containing_symbol``), then for every file that one
imports (``file_by_filename``), builds the message types from those descriptors alone (no generated
code of ours), encodes the JSON request, calls the method and returns the answer as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2  # v1 and v1alpha messages are the same on the wire

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _ask(channel: grpc.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(V1, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (reply,) = list(call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=30))
    if reply.HasField("error_response"):
        raise LookupError(f"reflection: {reply.error_response.error_message} ({request})")
    return reply


def list_services(channel: grpc.Channel) -> list[str]:
    return sorted(s.name for s in _ask(channel, list_services="").list_services_response.service)


def _pool_for(channel: grpc.Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def take(reply: reflection_pb2.ServerReflectionResponse) -> None:
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(fd.name, fd)

    take(_ask(channel, file_containing_symbol=symbol))
    while missing := [d for fd in list(files.values()) for d in fd.dependency if d not in files]:
        take(_ask(channel, file_by_filename=missing[0]))
    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(name: str) -> None:  # dependencies first
        if name not in added:
            for dep in files[name].dependency:
                add(dep)
            pool.Add(files[name])
            added.add(name)

    for name in files:
        add(name)
    return pool


def call_json(channel: grpc.Channel, method: str, body: dict[str, Any], metadata: tuple = ()) -> dict[str, Any]:
    """``method`` as grpcurl writes it: ``parrot.v1.Responder/Respond``."""
    service_name, method_name = method.split("/")
    pool = _pool_for(channel, service_name)
    m = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    request_cls = message_factory.GetMessageClass(m.input_type)
    response_cls = message_factory.GetMessageClass(m.output_type)
    request = json_format.Parse(json.dumps(body), request_cls())
    rpc = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=request_cls.SerializeToString,
                              response_deserializer=response_cls.FromString)
    return json_format.MessageToDict(rpc(request, timeout=60, metadata=metadata))

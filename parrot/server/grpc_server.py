"""Builds the grpc.aio server every Parrot service runs on: health, reflection, limits, auth, error mapping."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from parrot.errors import ConfigError
from parrot.server.interceptors import AuthInterceptor, ErrorTranslator, MappedRegistrar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTls:
    """PEM key and certificate (chain) every port of a process serves TLS with (gRPC and HTTP), and
    optionally the CA whose client certificates it requires (mutual TLS)."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)
    files: tuple[str, str, str | None] = ("", "", None)  # cert, key, client CA paths (for the HTTP server)

    @classmethod
    def from_files(cls, cert_file: str | None, key_file: str | None, client_ca_file: str | None = None) -> "ServerTls | None":
        """Both files, or neither (plain text). A missing or unreadable one is a ConfigError naming the setting."""
        from pathlib import Path

        if not cert_file and not key_file:
            if client_ca_file:
                raise ConfigError("--tls-client-ca / PARROT_TLS_CLIENT_CA needs --tls-cert and --tls-key")
            return None
        if not cert_file or not key_file:
            raise ConfigError("--tls-cert / PARROT_TLS_CERT and --tls-key / PARROT_TLS_KEY must be given together")
        parts = []
        for flag, path in (("--tls-cert / PARROT_TLS_CERT", cert_file), ("--tls-key / PARROT_TLS_KEY", key_file),
                           ("--tls-client-ca / PARROT_TLS_CLIENT_CA", client_ca_file)):
            if path is None:
                parts.append(None)
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise ConfigError(f"{flag}: cannot read {path}: {e.strerror}") from e
            if b"-----BEGIN" not in data:
                raise ConfigError(f"{flag}: {path} is not a PEM file")
            parts.append(data)
        return cls(cert=parts[0], key=parts[1], client_ca=parts[2], files=(cert_file, key_file, client_ca_file))


@dataclass
class GrpcService:
    """One parrot.v1 service to mount: its servicer and the generated add_*_to_server function."""

    full_name: str  # e.g. "parrot.v1.Responder"
    servicer: Any
    add_to_server: Callable[[Any, Any], None]
    translate_errors: ErrorTranslator | None = None  # a third-party servicer's errors -> ParrotErrors


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, auth: bool) -> str | None:
    """What to say at start-up when a server is reachable from other machines with no token."""
    if auth or is_loopback(host):
        return None
    return (f"serving on {host or 'all interfaces'} WITHOUT authentication: anyone who can reach this port can use "
            "it. Set --auth-token-file (or PARROT_AUTH_TOKEN), or bind --host 127.0.0.1 for local use only")


class GrpcServer:
    """A grpc.aio server with the standard health service and reflection.

    Health: the overall status ("") is SERVING as soon as the server runs (liveness); each
    service's own name is NOT_SERVING until ``set_serving`` is called (readiness).
    """

    def __init__(
        self,
        services: Sequence[GrpcService],
        *,
        host: str,
        port: int,
        auth_token: str | None,
        max_message_bytes: int,
        tls: "ServerTls | None" = None,
    ) -> None:
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if auth_token:
            interceptors.append(AuthInterceptor(auth_token))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME,
                 REFLECTION_V1]
        for s in services:  # each method wrapped with the error mapping as it is registered
            registrar = MappedRegistrar(self.server, s.translate_errors)
            s.add_to_server(s.servicer, registrar)
            if s.full_name not in registrar.registered:
                raise RuntimeError(f"{s.full_name}: its add_*_to_server registered no methods "
                                   "(generated code older than grpcio-tools 1.62?)")
            names.append(s.full_name)
        reflection.enable_server_reflection(names, self.server)
        _serve_reflection_v1(self.server, names)
        self.services = list(services)
        self.address = f"{host}:{port}"
        if tls is not None:
            creds = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                                require_client_auth=tls.client_ca is not None)
            self.port = self.server.add_secure_port(self.address, creds)
        else:
            self.port = self.server.add_insecure_port(self.address)
        self.tls = tls is not None
        self.host, self.auth = host, bool(auth_token)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {self.address}")

    async def start(self) -> None:
        await self.server.start()
        await self._set("", health_pb2.HealthCheckResponse.SERVING)
        for s in self.services:
            await self._set(s.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("grpc server listening", extra={"address": self.address, "port": self.port, "tls": self.tls,
                                                  "auth": "on" if self.auth else "off",
                                                  "services": [s.full_name for s in self.services]})
        warning = exposure_warning(self.host, self.auth)
        if warning:
            log.warning(warning, extra={"address": self.address})

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for s in self.services:
            await self._set(s.full_name, status)

    async def stop(self, grace_s: float) -> None:
        """Marks everything NOT_SERVING, then stops accepting and waits up to grace_s for calls in flight."""
        await self._set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.set_serving(False)
        await self.server.stop(grace_s)

    async def _set(self, name: str, status: Any) -> None:
        await self.health.set(name, status)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _serve_reflection_v1(server: grpc.aio.Server, names: list[str]) -> None:
    """``grpc.reflection.v1`` beside ``v1alpha`` (grpcio-reflection ships only v1alpha; grpcurl and
    newer tools ask v1 first). The two protocols are the same messages under another package, so
    v1 is the v1alpha servicer registered under the v1 name, and v1's file descriptor (v1alpha's,
    renamed) is added to the pool so that reflection can describe itself."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2

    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
        fdp.name, fdp.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
        fdp.options.Clear()
        for message in fdp.message_type:
            for f in (f for f in message.field if f.type_name):
                f.type_name = f.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
        for method in fdp.service[0].method:
            method.input_type = method.input_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
            method.output_type = method.output_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
        pool.Add(fdp)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1,
                                                                         {"ServerReflectionInfo": handler}),))

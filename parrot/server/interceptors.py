"""What wraps every parrot.v1 RPC on the server: bearer-token auth (an interceptor, present only
when a token is configured), and one mapping of domain errors to status codes (``error_mapping``,
wrapped around each method handler once, at registration).

Domain errors (parrot.errors.ParrotError) become their own status code with their message;
anything else becomes INTERNAL with a generic message (details go to the log only).
Both also record Prometheus metrics, and the error mapping a structured log line per call.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Awaitable, Callable

import grpc

from parrot.errors import InvalidArgument, LimitExceeded, ParrotError
from parrot.metrics import AUTH_FAILURES, RPC_LATENCY, RPC_REQUESTS, child

log = logging.getLogger(__name__)

#: Trailing metadata on RESOURCE_EXHAUSTED from a configured limit (value: the setting that raises it).
LIMIT_TRAILER = "parrot-limit"

# Always open: probes and service discovery must work without a token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/", "/inference.GRPCInferenceService/ServerLive",
                 "/inference.GRPCInferenceService/ServerReady", "/inference.GRPCInferenceService/ModelReady")

#: Turns an error a third-party servicer raises into a ParrotError (None: not one it knows).
ErrorTranslator = Callable[[BaseException], "ParrotError | None"]


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", method, "")
    return service, name


class Undecodable:
    """Stands in for a request whose bytes are not a valid message (say, invalid UTF-8 in a string
    field). grpc would answer UNKNOWN if the deserializer raised; the servicer wrapper answers
    INVALID_ARGUMENT instead."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None or getattr(deserializer, "_parrot_safe", False):
        return deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, and anything else a broken payload provokes
            return Undecodable(e)

    deserialize._parrot_safe = True  # type: ignore[attr-defined]
    return deserialize


def _check_decoded(request: Any, service: str, name: str) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument("request", f"is not a valid {service}.{name} request message "
                              f"(a protobuf that fails to parse, or a string field that is not UTF-8): {request.error}")


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap_unary: Callable, wrap_stream: Callable) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary), _safe(handler.request_deserializer), handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), _safe(handler.request_deserializer), handler.response_serializer)
    return handler  # client/bidi streaming: none in parrot.v1 today


def auth_failed(transport: str, reason: str, where: str, peer: str) -> None:
    """Counts and logs a refused request (never the token it carried)."""
    AUTH_FAILURES.labels(transport, reason).inc()
    log.warning("authentication failed", extra={"transport": transport, "reason": reason, "method": where, "peer": peer})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection.

    A refused call is answered before its request message is read: the refusing handler is
    request-streaming and never reads, so an unauthenticated caller cannot make the server
    receive and parse a large message. Refusals are logged and counted (parrot_auth_failures_total).
    """

    def __init__(self, token: str):
        self._token = token.encode()

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        supplied = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                v = value.decode() if isinstance(value, bytes) else value
                supplied = v[len("Bearer "):].encode() if v.startswith("Bearer ") else b""
        if supplied is not None and hmac.compare_digest(supplied, self._token):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        service, name = _split(details.method)
        reason = "missing" if supplied is None else "invalid"

        async def deny(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            RPC_REQUESTS.labels(service, name, "UNAUTHENTICATED").inc()
            auth_failed("grpc", reason, details.method, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")

        async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await deny(request_iterator, context)
            yield  # pragma: no cover - makes this an async generator

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream, None, handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(deny, None, handler.response_serializer)


def error_mapping(handler: grpc.RpcMethodHandler, method: str,
                  translate: ErrorTranslator | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with ParrotError subclasses mapped to their status code (anything else to a
    bare INTERNAL), undecodable requests answered INVALID_ARGUMENT, and metrics and a log line
    per call. Applied once per method when a service is registered (``MappedRegistrar``): an
    interceptor does the same lookup work again on every RPC, a measurable share of a fast
    backend's cost (bench/coordinator.py --part echo). ``translate`` maps a third-party
    servicer's own errors (KServe's) to ParrotErrors first.
    """
    service, name = _split(method)

    def wrap_unary(behavior: Callable) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.monotonic()
            status: list[str] = ["OK"]
            try:
                with _ErrorMapper(context, service, name, status, translate) as abort:
                    _check_decoded(request, service, name)
                    return await behavior(request, context)
                await abort()
            finally:
                _observe(service, name, status[0], t0)
        return call

    def wrap_stream(behavior: Callable) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.monotonic()
            status: list[str] = ["OK"]
            try:
                with _ErrorMapper(context, service, name, status, translate) as abort:
                    _check_decoded(request, service, name)
                    async for item in behavior(request, context):
                        yield item
                await abort()
            finally:
                _observe(service, name, status[0], t0)
        return call

    return _wrap_handler(handler, wrap_unary, wrap_stream)


class MappedRegistrar:
    """Stands in for the server while a parrot.v1 servicer is added (``add_*Servicer_to_server``):
    each method handler is wrapped with ``error_mapping`` once, then registered on the server.

    Generated code registers a service twice, as a generic handler and as registered methods
    (the fast path); both get the wrapped handlers.
    """

    def __init__(self, server: grpc.aio.Server, translate: ErrorTranslator | None = None) -> None:
        self._server = server
        self._translate = translate
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same methods arrive in ``add_registered_method_handlers``, where they are wrapped."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: error_mapping(h, f"/{service}/{name}", self._translate) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)
        self.registered.append(service)


def _observe(service: str, name: str, code: str, t0: float) -> None:
    elapsed = time.monotonic() - t0
    child(RPC_REQUESTS, service, name, code).inc()
    child(RPC_LATENCY, service, name).observe(elapsed)
    if log.isEnabledFor(logging.INFO):
        log.info("rpc", extra={"service": service, "method": name, "code": code, "ms": round(elapsed * 1000, 1)})


class _ErrorMapper:
    """Context manager: swallows the servicer's exception and remembers which status to abort with."""

    def __init__(self, context: grpc.aio.ServicerContext, service: str, name: str, status: list[str],
                 translate: ErrorTranslator | None = None):
        self._context, self._service, self._name, self._status = context, service, name, status
        self._translate = translate
        self._abort: tuple[grpc.StatusCode, str] | None = None
        self._limit: str | None = None

    def __enter__(self) -> Callable[[], Awaitable[None]]:
        return self._do_abort

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted itself
            code = self._context.code()
            self._status[0] = code.name if code is not None else "UNKNOWN"
            return False
        if isinstance(exc, (GeneratorExit, KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):  # CancelledError
            self._status[0] = "CANCELLED"
            return False
        if not isinstance(exc, ParrotError) and self._translate is not None:
            exc = self._translate(exc) or exc
        if isinstance(exc, ParrotError):
            self._abort = (exc.code, str(exc))
            if isinstance(exc, LimitExceeded):
                self._limit = exc.setting
        else:
            log.error("unhandled error in %s/%s", self._service, self._name, exc_info=exc)
            self._abort = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
        self._status[0] = self._abort[0].name
        return True

    async def _do_abort(self) -> None:
        if self._abort is not None:
            if self._limit is not None:  # a configured limit: clients must not retry it
                self._context.set_trailing_metadata(((LIMIT_TRAILER, self._limit),))
            await self._context.abort(*self._abort)


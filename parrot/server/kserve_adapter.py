"""KServe integration: each service's unary RPCs through KServe's REST v1 and v2 (Open Inference Protocol).

KServe's ModelServer offers no hook for extra gRPC servicers, so the parrot.v1 API runs on our
own grpc.aio server (parrot.server.grpc_server) and only KServe's REST server is used here:
``/v1/models/<name>:predict``, ``/v2/models/<name>/infer``, readiness, metadata and ``/metrics``.

Request bodies are the JSON form of the parrot.v1 request messages (protobuf JSON mapping):
- v1: ``{"instances": [<request>...], "method": "Respond"}``  -> ``{"predictions": [<response>...]}``
- v2: one BYTES input named ``request`` holding JSON strings; ``parameters.method`` picks the RPC;
  one BYTES output named ``response``.
``method`` defaults to the service's main RPC (Ask, Respond, GradeSingle).

The same models answer the Open Inference Protocol over gRPC (``inference.GRPCInferenceService``,
KServe's own servicer) on the parrot.v1 gRPC port. Errors are ParrotErrors, mapped in one place per
surface (``parrot.server.http_surface`` for HTTP, ``parrot.server.interceptors`` for gRPC);
``as_parrot_error`` translates the few KServe raises itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from parrot.errors import InvalidArgument, NotFound, NotReady, ParrotError, Unsupported


def import_kserve() -> Any:
    """Imports kserve without letting it parse our command line (it parses sys.argv at import)."""
    os.environ.setdefault("KSERVE_OPENAI_ROUTE_PREFIX", "")
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401  (argument parsing happens here)
    finally:
        sys.argv = saved
    return kserve


kserve = import_kserve()
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from parrot.server.http_surface import not_found

RpcTable = dict[str, tuple[type[ProtoMessage], Callable[[ProtoMessage, Any], Any]]]


def unary_rpcs(servicer: Any, service_descriptor: Any, pb2_module: Any) -> RpcTable:
    """Finds the unary-unary methods of a service: name -> (request class, bound servicer method)."""
    table: RpcTable = {}
    for method in service_descriptor.methods:
        if method.server_streaming or method.client_streaming:
            continue
        request_cls = getattr(pb2_module, method.input_type.name)
        table[method.name] = (request_cls, getattr(servicer, method.name))
    return table


class ParrotKServeModel(kserve.Model):
    """A KServe model whose predict() calls a parrot.v1 service's RPCs."""

    def __init__(self, name: str, rpcs: RpcTable, default_method: str):
        super().__init__(name)
        self.rpcs = rpcs
        self.default_method = default_method
        self.ready = False

    def load(self) -> bool:  # the runner loads the shared backend and flips ``ready``
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [{"name": "request", "datatype": "BYTES", "shape": [-1],
                 "parameters": {"content_type": {"string_param": "application/json"}}}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "response", "datatype": "BYTES", "shape": [-1],
                 "parameters": {"content_type": {"string_param": "application/json"}}}]

    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None) -> Any:
        if isinstance(payload, InferRequest):
            method = str((payload.parameters or {}).get("method", self.default_method))
            if not payload.inputs:
                raise InvalidArgument("inputs", "expected one BYTES input named 'request' holding JSON request messages")
            items = [_json_item(x, i) for i, x in enumerate(payload.inputs[0].data or [])]
            results = await self._call_all(method, items)
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=[InferOutput(name="response", shape=[len(results)], datatype="BYTES",
                                           data=[json.dumps(r) for r in results])],
            )
        if isinstance(payload, (bytes, bytearray, str)):  # a JSON body sent without a JSON content type
            try:
                payload = json.loads(payload)
            except ValueError as e:
                raise InvalidArgument("body", f"not valid JSON: {e}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidArgument("body", 'expected {"instances": [<request JSON>...], "method": "<RPC name>"}')
        method = str(payload.get("method", self.default_method))
        return {"predictions": await self._call_all(method, payload["instances"])}

    async def _call_all(self, method: str, items: list[Any]) -> list[dict]:
        if method not in self.rpcs:
            raise InvalidArgument("method", f"unknown RPC {method!r}; allowed: {', '.join(sorted(self.rpcs))}")
        request_cls, call = self.rpcs[method]
        requests = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidArgument(f"instances[{i}]", f"expected a JSON object ({request_cls.DESCRIPTOR.full_name})")
            try:
                requests.append(json_format.ParseDict(item, request_cls()))
            except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
                raise InvalidArgument(f"instances[{i}]", f"not a valid {request_cls.DESCRIPTOR.full_name}: {e}") from None
        # ParrotErrors pass through: each surface maps them to its own status (400, 429, 503, ...)
        responses = await asyncio.gather(*(call(r, None) for r in requests))
        return [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in responses]


def _json_item(x: Any, i: int) -> Any:
    """One element of the v2 ``request`` tensor: a JSON request message as text (or bytes)."""
    if not isinstance(x, (str, bytes, bytearray)):
        return x
    try:
        return json.loads(x)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"inputs[0].data[{i}]", f"not a JSON request message: {e}") from None


def as_parrot_error(exc: BaseException) -> ParrotError | None:
    """The ParrotError for an error KServe's own code raised (its data plane, its gRPC servicer)."""
    if isinstance(exc, InvalidInput):
        return InvalidArgument("request", str(exc.reason))
    if isinstance(exc, ModelNotFound):
        return NotFound(str(exc.reason))
    if isinstance(exc, ModelNotReady):
        return NotReady(str(exc.reason) if hasattr(exc, "reason") else str(exc))
    if isinstance(exc, NotImplementedError):
        return Unsupported(str(exc) or "not implemented")
    return None


class ParrotDataPlane(DataPlane):
    """KServe's data plane, with server readiness that is true only when every model is ready
    (KServe's answers true as soon as the port is open, while the model may still be loading)."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all([await m.healthy() for m in models])


def build_rest_server(models: list[Any], host: str, port: int, grace_s: float, tls: Any = None) -> Any:
    """KServe's REST server (uvicorn + FastAPI) with our models registered. Signals stay ours.

    ``tls`` (parrot.server.grpc_server.ServerTls): HTTPS with the gRPC port's certificate, and
    client certificates required when it has a client CA. KServe's model repository extension
    (``/v2/repository/models/<name>/load|unload``) is not served: unloading is an admin act, and
    with it anyone holding the inference token could take the model away for good.
    """
    import ssl

    from kserve.model_repository import ModelRepository
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, ModelServer
    from kserve.protocol.rest.server import RESTServer

    import kserve.model_server as kserve_model_server

    # A fresh app per process (KServe keeps one at module level: a second server in the same
    # process, a test's, could not add its middleware to an app that has already served).
    kserve_model_server.app = _new_app(kserve_model_server.app)
    repo = ModelRepository()
    server = ModelServer(http_port=port, enable_grpc=False, registered_models=repo, grace_period=int(grace_s))
    server.dataplane = ParrotDataPlane(model_registry=server.registered_models)
    for m in models:
        server.register_model(m)
    cert, key, client_ca = tls.files if tls is not None else (None, None, None)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port,
        grace_period=int(grace_s), event_loop="asyncio", ssl_certfile=cert, ssl_keyfile=key,
    )
    if client_ca:
        rest.config.ssl_ca_certs, rest.config.ssl_cert_reqs = client_ca, ssl.CERT_REQUIRED
    _hide_repository_extension(fastapi_app())
    rest.config.host = host
    # The runner owns SIGTERM/SIGINT; uvicorn must not install its own handlers.
    rest._server.capture_signals = _no_signal_capture
    rest.parrot_dataplane = server.dataplane
    return rest


def _hide_repository_extension(app: Any) -> None:
    """KServe mounts its repository routes unconditionally; answer them 404, as if absent."""
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def no_repository(request: Any, call_next: Any) -> Any:
        if request.url.path.startswith("/v2/repository/"):
            return JSONResponse(status_code=404, content={"error": "the model repository extension is not served "
                                                                   "(loading and unloading models is not an inference route)"})
        return await call_next(request)


def _new_app(like: Any) -> Any:
    from fastapi import FastAPI

    return FastAPI(title=like.title, version=like.version, docs_url=like.docs_url, redoc_url=None)


def refuse_model_versions(app: Any) -> None:
    """``/v2/models/<name>/versions/<v>/...``: a 404 naming the unversioned route (KServe answers 501,
    a server error, for a request that simply names something this server does not have)."""

    async def versioned(model_name: str, model_version: str, rest: str = "") -> Any:
        raise not_found("model version", f"{model_name}/versions/{model_version}",
                        [f"/v2/models/{model_name}{rest} (models here have no versions)"])

    app.add_api_route("/v2/models/{model_name}/versions/{model_version}{rest:path}", versioned, methods=["GET", "POST"])


def inference_grpc_servicer(rest: Any) -> Any:
    """KServe's Open Inference Protocol servicer (``inference.GRPCInferenceService``) over the same
    models and data plane as the REST server, for the parrot.v1 gRPC server to mount."""
    from kserve.protocol.grpc.servicer import InferenceServicer

    class WithoutRepository(InferenceServicer):  # as over REST: loading and unloading is not an inference RPC
        async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
            raise Unsupported("the model repository extension (RepositoryModelLoad/Unload) is not served")

        RepositoryModelUnload = RepositoryModelLoad

    return WithoutRepository(rest.parrot_dataplane, rest.model_repository_extension)


class _NoCapture:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return False


def _no_signal_capture() -> _NoCapture:
    return _NoCapture()


def fastapi_app() -> Any:
    """The FastAPI app KServe's REST server serves (routes may be added before it starts)."""
    from kserve.model_server import app

    return app

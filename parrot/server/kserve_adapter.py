"""KServe integration: each service's unary RPCs through KServe's REST v1 and v2 (Open Inference Protocol).

KServe's ModelServer offers no hook for extra gRPC servicers, so the parrot.v1 API runs on our
own grpc.aio server (parrot.server.grpc_server) and only KServe's REST server is used here:
``/v1/models/<name>:predict``, ``/v2/models/<name>/infer``, readiness, metadata and ``/metrics``.

Request bodies are the JSON form of the parrot.v1 request messages (protobuf JSON mapping):
- v1: ``{"instances": [<request>...], "method": "Respond"}``  -> ``{"predictions": [<response>...]}``
- v2: one BYTES input named ``request`` holding JSON strings; ``parameters.method`` picks the RPC;
  one BYTES output named ``response``.
``method`` defaults to the service's main RPC (Ask, Respond, GradeSingle).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from parrot.errors import InvalidArgument, NotReady, ParrotError


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
from kserve.errors import InferenceError, InvalidInput, ModelNotReady  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

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

    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None) -> Any:
        if isinstance(payload, InferRequest):
            method = str((payload.parameters or {}).get("method", self.default_method))
            if not payload.inputs:
                raise InvalidInput("inputs: expected one BYTES input named 'request' holding JSON request messages")
            raw = payload.inputs[0].data
            items = [json.loads(x.decode() if isinstance(x, (bytes, bytearray)) else x) if isinstance(x, (str, bytes, bytearray)) else x
                     for x in raw]
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
                raise InvalidInput(f"body: not valid JSON: {e}") from e
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('body: expected {"instances": [<request JSON>...], "method": "<RPC name>"}')
        method = str(payload.get("method", self.default_method))
        return {"predictions": await self._call_all(method, payload["instances"])}

    async def _call_all(self, method: str, items: list[Any]) -> list[dict]:
        if method not in self.rpcs:
            raise InvalidInput(f"method: unknown RPC {method!r}; allowed: {', '.join(sorted(self.rpcs))}")
        request_cls, call = self.rpcs[method]
        requests = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidInput(f"instances[{i}]: expected a JSON object ({request_cls.DESCRIPTOR.full_name})")
            try:
                requests.append(json_format.ParseDict(item, request_cls()))
            except json_format.ParseError as e:
                raise InvalidInput(f"instances[{i}]: not a valid {request_cls.DESCRIPTOR.full_name}: {e}") from e
        try:
            responses = await asyncio.gather(*(call(r, None) for r in requests))
        except InvalidArgument as e:
            raise InvalidInput(str(e)) from e
        except NotReady as e:
            raise ModelNotReady(self.name, str(e)) from e
        except ParrotError as e:
            raise InferenceError(str(e)) from e
        return [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in responses]


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

    repo = ModelRepository()
    server = ModelServer(http_port=port, enable_grpc=False, registered_models=repo, grace_period=int(grace_s))
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

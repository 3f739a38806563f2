"""Runs model services in one process: a shared backend, the parrot.v1 gRPC server and KServe REST.

Lifecycle: bind both ports -> serve immediately (RPCs answer UNAVAILABLE, KServe readiness is
false, gRPC health NOT_SERVING) -> load the model in the background -> mark ready. SIGTERM or
SIGINT -> NOT_SERVING, stop accepting, finish calls in flight (up to grace_s), release the model.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from parrot.conversation import InputLimits
from parrot.errors import ConfigError
from parrot.metrics import MODEL_READY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    services: tuple[str, ...] = field(default=("responder",), metadata={"help": "asker, responder and/or judge."})
    host: str = field(default="0.0.0.0", metadata={"help": "Interface both servers bind (127.0.0.1 for local only)."})
    grpc_port: int = field(default=50051, metadata={"help": "parrot.v1 gRPC port (PARROT_GRPC_PORT)."})
    http_port: int = field(default=8080, metadata={"help": "KServe REST port: v1/v2, readiness, /metrics (PARROT_HTTP_PORT)."})
    backend: str = field(default="transformers", metadata={"help": "transformers, tgi, openai or echo (PARROT_BACKEND)."})
    backend_config: Any = field(default=None, metadata={"help": "The backend's config dataclass (None = defaults)."})
    auth_token_file: str | None = field(default=None, metadata={"help": "File holding the bearer token (a mounted Secret)."})
    auth_token_env: str = field(default="PARROT_AUTH_TOKEN", metadata={"help": "Env var holding the bearer token, if no file."})
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "gRPC message size limit, both directions."})
    grace_s: float = field(default=10.0, metadata={"help": "Seconds to finish calls in flight on SIGTERM."})
    limits: InputLimits = field(default_factory=InputLimits)
    judge_prompts_file: str | None = field(default=None, metadata={"help": "Extra judge prompts (ours or FastChat's format)."})
    tls_cert_file: str | None = field(default=None, metadata={"help": "PEM certificate: serve gRPC over TLS (PARROT_TLS_CERT)."})
    tls_key_file: str | None = field(default=None, metadata={"help": "PEM private key for --tls-cert (PARROT_TLS_KEY)."})
    tls_client_ca_file: str | None = field(default=None, metadata={
        "help": "PEM CA whose client certificates both ports require (PARROT_TLS_CLIENT_CA)."})

    def auth_token(self) -> str | None:
        return read_auth_token(self.auth_token_file, self.auth_token_env)


def read_auth_token(token_file: str | None, env_name: str = "PARROT_AUTH_TOKEN") -> str | None:
    """The bearer token a server requires: from a file (a mounted Secret), else the env var, else none."""
    from parrot.tokens import token_from

    return token_from(token_file, env_name, "--auth-token-file / PARROT_AUTH_TOKEN_FILE")


class ModelServiceProcess:
    """Everything one `parrot serve` process runs."""

    def __init__(self, config: ServeConfig) -> None:
        from parrot.backends import create_backend
        from parrot.server.grpc_server import GrpcServer, GrpcService, ServerTls
        from parrot.server.http_surface import install as install_http_surface
        from parrot.server.kserve_adapter import (ParrotKServeModel, as_parrot_error, build_rest_server, fastapi_app,
                                                  inference_grpc_servicer, refuse_model_versions, unary_rpcs)
        from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc  # after kserve_adapter's import
        from services.registry import SERVICES

        unknown = [s for s in config.services if s not in SERVICES]
        if unknown or not config.services:
            raise ConfigError(f"services: unknown {unknown}; allowed: {', '.join(SERVICES)}")
        self.config = config
        self.backend = create_backend(config.backend, config.backend_config)
        token = config.auth_token()
        grpc_services, self.kserve_models = [], []
        self.servicers: dict[str, Any] = {}
        for name in config.services:
            spec = SERVICES[name]
            pb2, pb2_grpc = spec.pb2()
            servicer = spec.build(self.backend, config)
            self.servicers[name] = servicer
            descriptor = pb2.DESCRIPTOR.services_by_name[spec.service_name]
            grpc_services.append(GrpcService(descriptor.full_name, servicer,
                                             getattr(pb2_grpc, f"add_{spec.service_name}Servicer_to_server")))
            self.kserve_models.append(ParrotKServeModel(name, unary_rpcs(servicer, descriptor, pb2), spec.default_method))
        tls = ServerTls.from_files(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        self.rest = build_rest_server(self.kserve_models, config.host, config.http_port, config.grace_s, tls=tls)
        # KServe's Open Inference Protocol over gRPC, on the parrot.v1 port, over the same models.
        grpc_services.append(GrpcService(
            grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            inference_grpc_servicer(self.rest), grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            translate_errors=as_parrot_error))
        self.grpc = GrpcServer(grpc_services, host=config.host, port=config.grpc_port, auth_token=token,
                               max_message_bytes=config.max_message_bytes, tls=tls)
        app = fastapi_app()
        install_http_surface(app, token)  # error map, auth on POSTs, cancel on hang-up, HTTP metrics
        refuse_model_versions(app)
        if "responder" in self.servicers:
            from services.responder.openai_api import mount_openai_routes

            mount_openai_routes(app, self.servicers["responder"], "responder",
                                lambda: {m.name: m.ready for m in self.kserve_models})
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self.grpc.start()
        rest_task = asyncio.create_task(self.rest.start(), name="kserve-rest")
        load_task = asyncio.create_task(self._load(), name="model-load")
        stop_task = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({rest_task, load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        rc = 0
        if load_task in done and load_task.exception() is None:
            done, _ = await asyncio.wait({rest_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done() and load_task.exception() is not None:
            log.error("model failed to load", exc_info=load_task.exception())
            rc = 1
        elif rest_task in done:
            log.error("REST server exited", exc_info=rest_task.exception())
            rc = 1
        await self._shutdown(rest_task, load_task)
        stop_task.cancel()
        return rc

    def _on_signal(self, sig: int) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(sig).name})
        self._stop.set()

    async def _load(self) -> None:
        t0 = time.monotonic()
        loading_name = self.backend.model_name
        for name in self.config.services:
            MODEL_READY.labels(loading_name, name).set(0)
        self.backend.needs_scoring = "judge" in self.config.services
        await self.backend.load()
        for m in self.kserve_models:
            m.ready = True
        for name in self.config.services:
            if loading_name != self.backend.model_name:  # the name is known only once loaded (llamacpp)
                MODEL_READY.remove(loading_name, name)
            MODEL_READY.labels(self.backend.model_name, name).set(1)
        await self.grpc.set_serving(True)
        log.info("ready", extra={"services": list(self.config.services), "model": self.backend.model_name,
                                 "backend": self.config.backend, "grpc_port": self.grpc.port,
                                 "http_port": self.config.http_port, "auth": "on" if self.grpc.auth else "off",
                                 "tls": self.grpc.tls, "load_s": round(time.monotonic() - t0, 2)})

    async def _shutdown(self, rest_task: asyncio.Task, load_task: asyncio.Task) -> None:
        for m in self.kserve_models:
            m.ready = False
        await self.grpc.stop(self.config.grace_s)
        self.rest._server.should_exit = True
        try:
            await asyncio.wait_for(rest_task, timeout=self.config.grace_s + 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
            rest_task.cancel()
        if not load_task.done():
            load_task.cancel()
        await self.backend.close()
        log.info("stopped")


def serve(config: ServeConfig) -> int:
    """Blocking entry point used by `parrot serve`."""

    async def main() -> int:
        return await ModelServiceProcess(config).run()

    return asyncio.run(main())

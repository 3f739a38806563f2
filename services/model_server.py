"""Runs model services in one process: a shared backend, the parrot.v1 gRPC server and KServe REST.

Lifecycle (``parrot.server.process``): bind both ports -> serve immediately (RPCs answer UNAVAILABLE,
KServe readiness is false, gRPC health NOT_SERVING) -> load the model in the background -> mark ready.
SIGTERM or SIGINT -> readiness false, NOT_SERVING, stop accepting, finish calls in flight (up to
grace_s), release the model.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from parrot.asking.rerank import RerankSettings
from parrot.conversation import InputLimits
from parrot.errors import ConfigError
from parrot.metrics import MODEL_READY
from parrot.server.process import ServerProcess, ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig(ServerSettings):
    """A model-service process: the settings every server has (``ServerSettings``) and its own."""

    services: tuple[str, ...] = field(default=("responder",), metadata={"help": "asker, responder and/or judge."})
    backend: str = field(default="transformers", metadata={"help": "A backend name (parrot.backends.registry)."})
    backend_config: Any = field(default=None, metadata={"help": "The backend's config dataclass (None = defaults)."})
    limits: InputLimits = field(default_factory=InputLimits)
    judge_prompts_file: str | None = field(default=None, metadata={"help": "Extra judge prompts (ours or FastChat's format)."})
    asker_rerank: RerankSettings = field(default_factory=RerankSettings, metadata={"help": "The asker's reranking."})


class ModelServiceProcess(ServerProcess):
    """Everything one `parrot serve asker|responder|judge|all` process runs."""

    def __init__(self, config: ServeConfig) -> None:
        from parrot.backends import create_backend
        from parrot.server.grpc_server import GrpcServer, GrpcService
        from parrot.server.http_surface import install as install_http_surface
        from parrot.server.kserve_adapter import (ParrotKServeModel, as_parrot_error, build_rest_server, fastapi_app,
                                                  inference_grpc_servicer, refuse_model_versions, unary_rpcs)
        from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc  # after kserve_adapter's import
        from services.registry import SERVICES

        unknown = [s for s in config.services if s not in SERVICES]
        if unknown or not config.services:
            raise ConfigError(f"services: unknown {unknown}; allowed: {', '.join(SERVICES)}")
        self.config = self.settings = config
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
        tls = config.tls()
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

    async def serve_http(self) -> None:
        await self.rest.start()

    async def stop_http(self) -> None:
        self.rest._server.should_exit = True

    async def load(self) -> dict[str, Any]:
        loading_name = self.backend.model_name
        for name in self.config.services:
            MODEL_READY.labels(loading_name, name).set(0)
        # a judge scores its ratings; a reranking asker scores its samples (one with an end threshold, the
        # marker): an engine must give log-probabilities
        self.backend.needs_scoring = "judge" in self.config.services or (
            "asker" in self.config.services and self.config.asker_rerank.needs_scoring)
        await self.backend.load()
        for m in self.kserve_models:
            m.ready = True
        for name in self.config.services:
            if loading_name != self.backend.model_name:  # the name is known only once loaded (llamacpp)
                MODEL_READY.remove(loading_name, name)
            MODEL_READY.labels(self.backend.model_name, name).set(1)
        return {"services": list(self.config.services), "model": self.backend.model_name, "backend": self.config.backend}

    async def draining(self) -> None:
        for m in self.kserve_models:
            m.ready = False

    async def release(self) -> None:
        await self.backend.close()


def serve(config: ServeConfig) -> int:
    """Blocking entry point used by `parrot serve`."""

    async def main() -> int:
        return await ModelServiceProcess(config).run()

    return asyncio.run(main())

"""The model services by name. Each entry builds a servicer around a shared backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from parrot.backends.base import Backend


@dataclass
class ServiceSpec:
    name: str           # CLI and KServe model name: asker | responder | judge
    service_name: str   # proto service name within parrot.v1
    default_method: str  # the RPC KServe REST calls when the body names none
    build: Callable[[Backend, Any], Any]  # (backend, services.model_server.ServeConfig) -> servicer
    pb2: Callable[[], tuple[Any, Any]]  # (pb2 module, pb2_grpc module), imported lazily


def _asker(backend: Backend, config: Any) -> Any:
    from parrot.modelstore import BUNDLED_NAME, is_model_url, resolve_model
    from services.asker.service import AskerConfig, AskerService

    # A trained asker checkpoint is a folder (its parrot_model.json says so); the bundled model is not.
    # A checkpoint given by URL is fetched into the cache here (the backend's load then reuses the copy).
    # The model the backend serves as the user named it (llamacpp keeps it beside its engine client's config).
    model = getattr(backend, "model_spec", None) or getattr(getattr(backend, "config", None), "model", None)
    model_dir = None if model in (None, "", BUNDLED_NAME) else model
    if model_dir and is_model_url(model_dir):
        model_dir = str(resolve_model(model_dir))
    return AskerService(backend, AskerConfig(limits=config.limits, model_dir=model_dir, rerank=config.asker_rerank))


def _responder(backend: Backend, config: Any) -> Any:
    from services.responder.service import ResponderConfig, ResponderService

    return ResponderService(backend, ResponderConfig(limits=config.limits))


def _judge(backend: Backend, config: Any) -> Any:
    from services.judge.service import JudgeConfig, JudgeService

    return JudgeService(backend, JudgeConfig(limits=config.limits, prompts_file=config.judge_prompts_file))


def _pb2(name: str) -> Callable[[], tuple[Any, Any]]:
    def load() -> tuple[Any, Any]:
        import importlib

        return importlib.import_module(f"parrot.v1.{name}_pb2"), importlib.import_module(f"parrot.v1.{name}_pb2_grpc")

    return load


SERVICES: dict[str, ServiceSpec] = {
    "asker": ServiceSpec("asker", "Asker", "Ask", _asker, _pb2("asker")),
    "responder": ServiceSpec("responder", "Responder", "Respond", _responder, _pb2("responder")),
    "judge": ServiceSpec("judge", "Judge", "GradeSingle", _judge, _pb2("judge")),
}

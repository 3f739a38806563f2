"""Generation backends, chosen by name (``registry.BUILTIN``): llamacpp and engine (an OpenAI-compatible
engine), transformers (in-process), tgi, openai, echo (instant, for load tests)."""

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent
from parrot.backends.registry import backend_config_class, backend_names, create_backend, register_backend

__all__ = [
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "StreamEvent",
    "backend_config_class",
    "backend_names",
    "create_backend",
    "register_backend",
]

"""Generation backends: transformers (in-process, default), tgi, openai, echo (instant, for load tests)."""

from parrot.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    StreamEvent,
    backend_config_class,
    backend_names,
    create_backend,
    register_backend,
)

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

"""The backends by name: a static table (name -> module, class, config class), imported on use.

Nothing here imports a backend until it is asked for, so ``parrot --help`` does not import torch and
``base.py`` imports no backend. Adding a backend: write its module (a ``Backend`` subclass with a
``name`` and a config dataclass) and add one line to ``BUILTIN``. Tests and plug-ins may add their
own at run time with ``@register_backend(name, ConfigClass)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from parrot.backends.base import Backend
from parrot.errors import InvalidArgument

# name -> (module, backend class, config dataclass)
BUILTIN: dict[str, tuple[str, str, str]] = {
    "echo": ("parrot.backends.echo_backend", "EchoBackend", "EchoBackendConfig"),
    "engine": ("parrot.backends.http.engine_backend", "EngineBackend", "EngineBackendConfig"),
    "llamacpp": ("parrot.backends.http.engine_backend", "LlamaCppBackend", "LlamaCppBackendConfig"),
    "openai": ("parrot.backends.http.openai_backend", "OpenAIBackend", "OpenAIBackendConfig"),
    "tgi": ("parrot.backends.http.tgi_backend", "TGIBackend", "TGIBackendConfig"),
    "transformers": ("parrot.backends.transformers.backend", "TransformersBackend", "TransformersBackendConfig"),
}
_ADDED: dict[str, tuple[type[Backend], type]] = {}


def register_backend(name: str, config_cls: type) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator for a backend defined outside ``BUILTIN`` (tests, plug-ins)."""

    def wrap(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _ADDED[name] = (cls, config_cls)
        return cls

    return wrap


def backend_names() -> list[str]:
    return sorted({*BUILTIN, *_ADDED})


def _classes(name: str) -> tuple[type[Backend], type]:
    if name in _ADDED:
        return _ADDED[name]
    if name not in BUILTIN:
        raise InvalidArgument("backend", f"unknown backend {name!r}; allowed: {', '.join(backend_names())}")
    module, cls, cfg = BUILTIN[name]
    m = importlib.import_module(module)
    return getattr(m, cls), getattr(m, cfg)


def backend_config_class(name: str) -> type:
    return _classes(name)[1]


def create_backend(name: str, config: Any = None, **overrides: Any) -> Backend:
    """Builds a backend by name. ``config`` is its config dataclass (or None for defaults)."""
    cls, cfg_cls = _classes(name)
    cfg = config if config is not None else cfg_cls()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cls(cfg)

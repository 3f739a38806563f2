"""The backends' settings as command-line flags, generated from their config dataclasses.

Each field of a backend's config (and of a nested settings dataclass such as llama.cpp's
``LlamaServerSettings``) is a flag: ``--<field-name>`` and ``PARROT_<FIELD_NAME>``, or the name its
metadata gives (``metadata={"flag": "engine-parallel"}``: kept names users already type). Backends
that share a flag share one option (``--model``, ``--base-url``, ``--timeout-s``); an unset flag leaves
each backend its own default. So a setting is written once, in its dataclass, and `parrot serve`
offers every one of them. A service's own settings that are flags (the asker's ``RerankSettings``)
go through the same machinery (``settings_flags``, ``settings_from_flags``), named by the service.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from parrot.backends.registry import BUILTIN, backend_config_class
from parrot.errors import ConfigError


@dataclass
class BackendFlag:
    name: str  # without the dashes: "engine-parallel"
    type: Any  # str, int, float or bool
    helps: dict[str, str] = field(default_factory=dict)  # backend -> its field's help
    paths: dict[str, str] = field(default_factory=dict)  # backend -> dotted field path in its config
    defaults: dict[str, Any] = field(default_factory=dict)  # backend -> its default

    @property
    def env(self) -> str:
        return "PARROT_" + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def help(self) -> str:
        """One line per backend that has the setting, with its default."""
        parts = []
        for backend, text in self.helps.items():
            default = self.defaults[backend]
            shown = f" (default: {default})" if default not in ("", None, ()) else ""
            parts.append(f"{backend}: {text.rstrip('.')}{shown}.")
        return " ".join(parts)


_SCALARS = (str, int, float, bool)


def _walk(cls: type, prefix: str = "") -> list[tuple[str, str, Any, Any, str]]:
    """(flag name, dotted path, type, default, help) of every scalar field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if dataclasses.is_dataclass(tp):
            out += _walk(tp, f"{prefix}{f.name}.")
            continue
        if tp not in _SCALARS:
            continue  # tuples and the like: set in code or by a config file, not by a flag
        name = f.metadata.get("flag") or f.name.replace("_", "-")
        out.append((name, prefix + f.name, tp, default, f.metadata.get("help", "")))
    return out


def backend_flags() -> list[BackendFlag]:
    """Every backend setting as one flag, in a stable order (first seen, by backend name)."""
    flags: dict[str, BackendFlag] = {}
    for backend in sorted(BUILTIN):
        for name, path, tp, default, help_text in _walk(backend_config_class(backend)):
            flag = flags.setdefault(name, BackendFlag(name, tp))
            if flag.type is not tp:
                raise TypeError(f"--{name}: {backend} says {tp.__name__}, another backend {flag.type.__name__}")
            flag.helps[backend], flag.paths[backend], flag.defaults[backend] = help_text, path, default
    return list(flags.values())


def settings_flags(owner: str, cls: type) -> list[BackendFlag]:
    """A service's settings dataclass as flags, built like the backends' (``owner`` names it in the help)."""
    return [BackendFlag(name, tp, {owner: text}, {owner: path}, {owner: default})
            for name, path, tp, default, text in _walk(cls)]


def settings_from_flags(owner: str, cls: type, values: dict[str, Any], flags: list[BackendFlag]) -> Any:
    """``cls`` from the values of ``settings_flags(owner, cls)`` (by ``BackendFlag.dest``; None = not set)."""
    return _build(cls, {f.paths[owner]: values[f.dest] for f in flags if values.get(f.dest) is not None})


def backend_config(backend: str, values: dict[str, Any],
                   flags: list[BackendFlag] | None = None) -> tuple[Any, list[str]]:
    """(the config dataclass of ``backend``, the flags set that it ignores) from flag values (by
    ``BackendFlag.dest``; None = not set). Flags of other backends are ignored, not refused: a
    deployment sets one list of PARROT_* variables whatever the backend; the caller says so."""
    cls = backend_config_class(backend)
    nested: dict[str, Any] = {}
    ignored = []
    for flag in flags or backend_flags():
        value = values.get(flag.dest)
        if value is None:
            continue
        if backend not in flag.paths:
            ignored.append(f"--{flag.name} / {flag.env} (for {', '.join(flag.paths)})")
            continue
        nested[flag.paths[backend]] = value
    try:
        return _build(cls, nested), ignored
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{backend} backend settings: {e}") from None


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
            if inner:
                kwargs[f.name] = _build(hints[f.name], inner)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)

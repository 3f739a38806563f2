"""`parrot train sft|asker|capo`: the flags are made from the config dataclasses (training.config).

Precedence: defaults < ``--config`` YAML (or the ``PARROT_TRAIN_CONFIG`` JSON a Kubernetes Job
passes) < flags. Kubernetes settings are ``--kubernetes-<field>`` flags or a ``kubernetes:``
mapping in the YAML. ``--dry-run`` prints what would run (the manifests for
``--launcher kubernetes``, the resolved config for local) and exits.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, Optional

import typer

from parrot.cli._common import fail
from parrot.logs import setup_logging

train_app = typer.Typer(help="Train models: SFT, the asker (Parrot-Ask) and CaPO, with DeepSpeed; locally or as Kubernetes Jobs.",
                        no_args_is_help=True)

CONFIG_ENV = "PARROT_TRAIN_CONFIG"  # training.launch.kubernetes.CONFIG_ENV (kept import-free here)
# Fields set by their own option, not generated.
_SKIP = {"kubernetes", "dry_run"}


def _option_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp in (str, int, float, bool):
        return Optional[tp]
    if origin in (dict, list):
        return Optional[str]  # parsed from "k=v,k2=v2" / "a,b"
    return Optional[str]


def _parse_value(tp: Any, raw: Any, flag: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict:
        out = {}
        for item in filter(None, (x.strip() for x in raw.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key:
                fail(f"{flag}: {item!r} is not key=value")
            out[key] = value
        return out
    if origin is list:
        return [x.strip() for x in raw.split(",") if x.strip()]
    return raw


def _field_params(cls: type, prefix: str = "") -> list[tuple[inspect.Parameter, str, Any]]:
    """(typer parameter, config key, field type) per dataclass field."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in _SKIP:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        tp = hints[f.name]
        help_text = f.metadata.get("help", "")
        if default not in (None, "", {}, []):
            help_text += f" (default: {default})"
        decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
        opt = typer.Option(None, *decls, help=help_text, show_default=False)
        param = inspect.Parameter(f"{prefix}{f.name}".replace(".", "_"), inspect.Parameter.KEYWORD_ONLY,
                                  default=opt, annotation=_option_type(tp))
        out.append((param, (f"kubernetes.{f.name}" if prefix else f.name), tp))
    return out


def _make_command(method: str) -> Callable[..., None]:
    from training.config import METHODS, KubernetesConfig

    cls = METHODS[method]
    generated = _field_params(cls) + _field_params(KubernetesConfig, "kubernetes_")
    fixed = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--config", "-c",
                                               help=f"YAML file of {cls.__name__} fields (flags override it; "
                                                    f"default: the {CONFIG_ENV} JSON if set).")),
        inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--dry-run",
                                               help="Print the Kubernetes manifests (or, locally, the resolved config) and exit.")),
    ]

    def command(**kwargs: Any) -> None:
        setup_logging()
        from parrot.errors import ConfigError
        from training.config import load_config

        overrides = {}
        for param, key, tp in generated:
            value = kwargs.get(param.name)
            if value is not None:
                overrides[key] = _parse_value(tp, value, "--" + param.name.replace("_", "-"))
        base = None
        if not kwargs["config"] and os.environ.get(CONFIG_ENV):
            try:
                base = json.loads(os.environ[CONFIG_ENV])
            except ValueError as e:
                fail(f"{CONFIG_ENV} is not valid JSON: {e}")
        try:
            cfg = load_config(cls, kwargs["config"], overrides, base=base)
            _run(cfg, kwargs["dry_run"])
        except ConfigError as e:
            fail(str(e))

    command.__signature__ = inspect.Signature([*fixed, *(p for p, _, _ in generated)])  # type: ignore[attr-defined]
    command.__doc__ = inspect.getdoc(cls)
    return command


def _run(cfg: Any, dry_run: bool) -> None:
    import yaml

    if cfg.launcher == "kubernetes":
        from training.launch import kubernetes as kube

        cfg.validate_for_run()
        objects = kube.build_manifests(cfg)
        if dry_run or cfg.kubernetes.dry_run:
            typer.echo(kube.to_yaml(objects), nl=False)
            return
        for name in kube.submit(objects):
            typer.echo(f"created {name}")
        return
    if dry_run:
        typer.echo(yaml.safe_dump({"method": cfg.method, **cfg.to_dict()}, sort_keys=False), nl=False)
        return
    from training.launch.local import launch

    result = launch(cfg)
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        typer.echo(result.model_url)


def register(app: typer.Typer) -> None:
    for method, help_text in (
        ("sft", "Multi-turn SFT (loss on the assistant turns) on ShareGPT / collection conversations."),
        ("asker", "Parrot-Ask: SFT on role-swapped chats (loss on the user turns); the checkpoint serves as the asker."),
        ("capo", "CaPO: DPO on context-perturbed preference pairs, from an SFT checkpoint; per-strategy reward accuracy."),
    ):
        train_app.command(method, help=help_text)(_make_command(method))
    app.add_typer(train_app, name="train")

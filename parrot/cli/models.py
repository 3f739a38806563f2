"""`parrot model prepare`, `parrot engine build|info`: the bundled model and the llama.cpp engine."""

from __future__ import annotations

import typer

from parrot.cli._common import fail
from parrot.logs import setup_logging

model_app = typer.Typer(help="Model files: prepare the bundled model.", no_args_is_help=True)
engine_app = typer.Typer(help="Inference engines: build and inspect llama.cpp's llama-server.", no_args_is_help=True)


@model_app.command("prepare")
def model_prepare(force: bool = typer.Option(False, help="Convert again even if the cache is complete.")) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF once into a bf16 safetensors folder (cached)."""
    setup_logging()
    from parrot.errors import ConfigError
    from parrot.modelstore import prepare_bundled_model

    try:
        path = prepare_bundled_model(force=force)
    except ConfigError as e:
        fail(str(e))
    typer.echo(str(path))


@engine_app.command("build")
def engine_build(force: bool = typer.Option(False, help="Build again even if the cached binary is complete.")) -> None:
    """Build llama-server once from the pinned llama-cpp-python sdist (MIT) into the engine cache."""
    setup_logging()
    from parrot.engines.llamacpp import build_server
    from parrot.errors import ConfigError

    try:
        path = build_server(force=force)
    except ConfigError as e:
        fail(str(e))
    typer.echo(str(path))


@engine_app.command("info")
def engine_info() -> None:
    """Where llama-server is (or why not), its source, the cache, and the default GGUF type."""
    import json

    from parrot.engines.llamacpp import describe

    typer.echo(json.dumps(describe(), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.add_typer(engine_app, name="engine")

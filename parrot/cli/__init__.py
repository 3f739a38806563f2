"""The `parrot` command: one module per command group, registered here in the order `--help` lists them.

``_common`` holds what the groups share (how a command fails, the token option, the gRPC call wrapper).
"""

from __future__ import annotations

import typer

from parrot.cli import bench, call, data, models, negatives, report, runs, serve, train

app = typer.Typer(help="Parrot: multi-turn instruction following for LLMs, as a platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models.register(app)
serve.register(app)
call.register(app)
runs.register(app)
train.register(app)
data.register(app)
negatives.register(app)
bench.register(app)
report.register(app)


def main() -> None:
    app()

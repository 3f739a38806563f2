"""CLI: `parrot report RUN [RUN...]`: one report comparing evaluation runs side by side."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import typer

from parrot.cli._common import COORDINATOR, TOKEN_ENV, coordinator_stub, fail, rpc


def _write(out: Path, files: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)


def _print_runs(files: dict[str, bytes]) -> None:
    import json

    data = json.loads(files["report.json"])
    for i, r in enumerate(data["runs"], 1):
        scores = (r["summary"].get("scores") or {})
        per_turn = scores.get("per_turn") or {}
        cells = " ".join(f"{(per_turn.get(str(t)) or {}).get('mean') or 0:.2f}" if (per_turn.get(str(t)) or {}).get("mean")
                         is not None else "  -  " for t in data["turns"])
        typer.echo(f"  #{i} {r['model_id'] or '-':<20} {r['run_id']:<30} per turn: {cells}")


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        runs: list[str] = typer.Argument(..., help="Evaluation run ids (or local folders of their output files); "
                                                   "the first is the reference for regressions."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the report files into this folder "
                                                                    "(default: ./<report id>/)."),
        title: str = typer.Option("", help="Report title."),
        store: Optional[str] = typer.Option(None, help="Read the runs from this object store directly (file:///dir or "
                                                       "s3://bucket/prefix) instead of asking the coordinator."),
        asker_cards: list[str] = typer.Option([], "--asker-card", help="Also show this asker scorecard (the JSON of "
                                                                       "`parrot bench asker --json`; repeat for more): "
                                                                       "with local folders or --store."),
        capo_heldout: list[str] = typer.Option([], "--capo-heldout", help="Also show this CaPO held-out report (the "
                                                                          "heldout_preferences.json of a `parrot train capo "
                                                                          "--eval-fraction` run folder; repeat for more): "
                                                                          "with local folders or --store."),
        coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV,
    ) -> None:
        """Compare evaluation runs: Markdown + self-contained HTML + per-turn PNG, stored with each run."""
        from parrot.errors import ParrotError
        from parrot.reports import (create_report, load_asker_card, load_heldout, load_run_folder, render_report,
                                    report_id_for)

        try:
            extras = [*(load_asker_card(c) for c in asker_cards), *(load_heldout(h) for h in capo_heldout)]
        except ParrotError as e:
            fail(str(e))

        local = [Path(r).is_dir() for r in runs]
        if any(local) and not all(local):
            fail("give either run ids or local output folders, not both")
        if all(local):
            try:
                loaded = [load_run_folder(r) for r in runs]
                files = render_report(loaded, title, extras)
            except ParrotError as e:
                fail(str(e))
            rid = report_id_for([r.run_id for r in loaded])
            target = Path(out or rid)
            _write(target, files)
            typer.echo(f"report {rid} (local folders; not stored): {target}/report.html, report.md, per_turn.png")
            _print_runs(files)
            return
        if store:
            from parrot.storage import open_store

            async def direct() -> tuple[str, dict[str, bytes], list[str], Any]:
                s = open_store(store)
                try:
                    rid, files, folders = await create_report(s, runs, title, extras)
                    return rid, files, folders, [s.url(f) for f in folders]
                finally:
                    await s.close()

            try:
                rid, files, _, urls = asyncio.run(direct())
                urls = [f"{u}/report.html" for u in urls]
            except ParrotError as e:
                fail(str(e))
        else:
            if extras:
                fail("--asker-card and --capo-heldout need local run folders or --store (the coordinator renders its "
                     "reports itself)")
            from parrot.v1 import report_pb2

            async def fn(stub: Any, md: Any) -> Any:
                return await stub.CreateReport(report_pb2.CreateReportRequest(run_ids=runs, title=title,
                                                                              include_content=True), metadata=md)

            resp = asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))
            rid, files = resp.report_id, {f.name: f.content for f in resp.files}
            first = [f.url for f in resp.files if f.name == "report.html"]
            urls = first + [f"{key}/ (store key)" for key in resp.stored_under[1:]]
        target = Path(out or rid)
        _write(target, files)
        typer.echo(f"report {rid}: {target}/report.html, report.md, per_turn.png")
        for u in urls:
            typer.echo(f"  stored: {u}")
        _print_runs(files)

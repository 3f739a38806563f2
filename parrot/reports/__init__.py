"""Reports comparing evaluation runs: Markdown, self-contained HTML and a per-turn PNG plot.

``create_report(store, run_ids)`` reads the runs from the object store, renders the report and
stores it with every run (``runs/<id>/reports/<report_id>/``); the coordinator's CreateReport
RPC and ``parrot report`` call it. ``render_report(runs)`` does the rendering alone (for runs
read from local folders). Asker scorecards (``load_asker_card``: `parrot bench asker --json`
files, `parrot report --asker-card`) and CaPO held-out reports (``load_heldout``: a CaPO run's
``heldout_preferences.json``, `parrot report --capo-heldout`) add a section each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any, Sequence

from parrot.errors import InvalidArgument
from parrot.reports.asker_card import AskerCard, load_asker_card
from parrot.reports.build import build_report
from parrot.reports.capo import CapoHeldout, load_heldout
from parrot.reports.data import RunData, load_run, load_run_folder, run_from_files
from parrot.reports.render import to_html, to_markdown
from parrot.storage.layout import report_prefix
from parrot.v1 import report_pb2

MAX_RUNS = 16
IMAGE = "per_turn.png"
_render_lock = threading.Lock()
Extra = AskerCard | CapoHeldout  # a section added to a report: .section(), .as_dict(), .key in report.json  # one figure at a time: matplotlib is not documented as thread-safe

__all__ = ["MAX_RUNS", "AskerCard", "CapoHeldout", "Extra", "RunData", "create_report", "create_report_rpc", "load_asker_card", "load_heldout", "load_run",
           "load_run_folder", "render_report",
           "report_id_for", "run_from_files"]


def render_report(runs: Sequence[RunData], title: str = "", extras: Sequence[Extra] = ()) -> dict[str, bytes]:
    """report.md, report.html, per_turn.png and report.json for the runs (the first is the reference),
    with a section per asker scorecard or CaPO held-out report in ``extras``."""
    from parrot.reports.plot import figure_png, per_turn_figure  # lazy: matplotlib

    report = build_report(runs, title, IMAGE)
    report.sections += [e.section() for e in extras]
    for e in extras:
        report.data.setdefault(e.key, []).append(e.as_dict())
    turns = len(report.data["turns"])
    with _render_lock:
        png = figure_png(per_turn_figure(runs, report.title), turns, report.title)
    return {"report.md": to_markdown(report).encode(), "report.html": to_html(report, {IMAGE: png}).encode(),
            IMAGE: png, "report.json": json.dumps(report.data, indent=2, default=str).encode()}


def report_id_for(run_ids: Sequence[str]) -> str:
    """The same runs in the same order give the same report id (a new report replaces the old)."""
    return "report-" + hashlib.sha256("\n".join(run_ids).encode()).hexdigest()[:12]


async def create_report(store: Any, run_ids: Sequence[str], title: str = "",
                        extras: Sequence[Extra] = ()) -> tuple[str, dict[str, bytes], list[str]]:
    """(report id, files, store folders written) for finished evaluation runs in ``store`` (and ``extras``)."""

    if not run_ids:
        raise InvalidArgument("run_ids", "give at least one run id")
    if len(run_ids) > MAX_RUNS:
        raise InvalidArgument("run_ids", f"{len(run_ids)} runs; at most {MAX_RUNS} in one report")
    if len(set(run_ids)) != len(run_ids):
        raise InvalidArgument("run_ids", "a run is listed twice")
    runs = [await load_run(store, r) for r in run_ids]
    files = await asyncio.to_thread(render_report, runs, title, extras)  # keeps the coordinator's event loop free
    rid = report_id_for(run_ids)
    folders = []
    types = {"report.md": "text/markdown", "report.html": "text/html", IMAGE: "image/png", "report.json": "application/json"}
    for run_id in run_ids:
        folder = report_prefix(run_id, rid)
        for name, data in files.items():
            await store.put(f"{folder}/{name}", data, types.get(name, "application/octet-stream"))
        folders.append(folder)
    return rid, files, folders


async def create_report_rpc(store: Any, request: Any) -> Any:
    """The CreateReport RPC body: a CreateReportResponse."""

    rid, files, folders = await create_report(store, list(request.run_ids), request.title)
    resp = report_pb2.CreateReportResponse(report_id=rid, stored_under=folders)
    for name, data in files.items():
        f = resp.files.add(name=name, url=store.url(f"{folders[0]}/{name}"), size_bytes=len(data))
        if request.include_content:
            f.content = data
    return resp

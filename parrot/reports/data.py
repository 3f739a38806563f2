"""What a report reads from one evaluation run: its summary and per-turn scores.

A run is read from the object store (``runs/<id>/run.json`` and ``runs/<id>/outputs/*``) or from
a local folder holding the output files (as ``parrot eval --out DIR`` downloads them). Per-turn
scores come from ``scores.jsonl`` (question, category, turn, score); runs written before that
file existed fall back to ``judgments.jsonl`` (category unknown there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parrot.errors import FailedPrecondition, InvalidArgument, NotFound
from parrot.storage.layout import output_key, run_prefix, run_record

OUTPUT_FILES = ("summary.json", "scores.jsonl", "judgments.jsonl", "instructions.jsonl")


@dataclass
class RunData:
    run_id: str
    name: str
    model_id: str
    summary: dict[str, Any]
    # {"question_id", "category", "turn", "score"} per graded turn (score None = judge failure).
    scores: list[dict[str, Any]] = field(default_factory=list)
    # Per-turn instruction check records (instructions.jsonl), if the sessions carried instructions.
    instruction_checks: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def label(self) -> str:
        return f"{self.model_id} · {self.run_id}" if self.model_id else self.run_id

    @property
    def judge_model(self) -> str | None:
        return self.summary.get("judge_model")

    @property
    def max_turn(self) -> int:
        turns = [int(t) for t in (self.summary.get("scores") or {}).get("per_turn", {})]
        turns += [int(t) for t in ((self.summary.get("instructions") or {}).get("per_turn") or {})]
        return max(turns, default=0)


def _jsonl(name: str, data: bytes | None) -> list[dict[str, Any]]:
    if not data:
        return []
    out = []
    for i, line in enumerate(data.decode().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise InvalidArgument(name, f"line {i} is not valid JSON ({e})") from e
    return out


def run_from_files(run_id: str, files: dict[str, bytes], name: str = "", source: str = "") -> RunData:
    """A run from its output files (file name -> bytes)."""
    if "summary.json" not in files:
        raise FailedPrecondition(f"run {run_id} has no outputs/summary.json yet (is it finished?)")
    try:
        summary = json.loads(files["summary.json"])
    except ValueError as e:
        raise InvalidArgument(f"{run_id}/summary.json", f"is not valid JSON ({e})") from e
    if summary.get("kind", "evaluation") != "evaluation":
        raise FailedPrecondition(f"run {run_id} is a {summary.get('kind')} run; reports compare evaluation runs")
    scores = _jsonl(f"{run_id}/scores.jsonl", files.get("scores.jsonl"))
    if not scores:
        for j in _jsonl(f"{run_id}/judgments.jsonl", files.get("judgments.jsonl")):
            score = j.get("score")
            scores.append({"question_id": j.get("question_id"), "category": "-", "turn": j.get("turn"),
                           "score": None if score is None or score < 0 else score})
    return RunData(run_id=run_id, name=name, model_id=summary.get("model_id") or "", summary=summary, scores=scores,
                   instruction_checks=_jsonl(f"{run_id}/instructions.jsonl", files.get("instructions.jsonl")),
                   source=source)


async def load_run(store: Any, run_id: str) -> RunData:
    """A finished evaluation run from the object store."""
    if not run_id or "/" in run_id or ".." in run_id:
        raise InvalidArgument("run_ids", f"{run_id!r} is not a run id (run-YYYYMMDD-HHMMSS-xxxxxx)")
    if not await store.exists(run_record(run_id)):
        raise NotFound(f"run {run_id} does not exist")
    run = await store.get_json(run_record(run_id))
    files = {}
    for fname in OUTPUT_FILES:
        key = output_key(run_id, fname)
        if await store.exists(key):
            files[fname] = await store.get(key)
    return run_from_files(run_id, files, name=(run.get("spec") or {}).get("name", ""), source=store.url(run_prefix(run_id)))


def load_run_folder(path: str | Path) -> RunData:
    """A run from a local folder of its output files (``parrot eval --out DIR``)."""
    p = Path(path)
    if not p.is_dir():
        raise NotFound(f"{path} is not a folder")
    files = {f: (p / f).read_bytes() for f in OUTPUT_FILES if (p / f).is_file()}
    summary_id = ""
    if "summary.json" in files:
        try:
            summary_id = json.loads(files["summary.json"]).get("run_id", "")
        except ValueError:
            pass
    return run_from_files(summary_id or p.name, files, source=str(p))

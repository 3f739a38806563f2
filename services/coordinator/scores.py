"""Per-turn scores of the latest two evaluation runs of each series, as Prometheus gauges.

A *series* is the evaluation runs that share a run name and a model id (the chart's CronJob
names its runs ``eval-<model>-<benchmark>``). For each series the coordinator exports the
per-turn mean judge score of its latest succeeded run (``parrot_eval_turn_score``) and of the
run before it (``parrot_eval_turn_score_previous``), so the score-regression alert is a plain
subtraction. The board is rebuilt from the object store when the coordinator starts
(:meth:`ScoreBoard.load`), so a restart does not lose the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from prometheus_client import Gauge

from parrot.storage.layout import output_key
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.kinds import KINDS
from services.coordinator.kinds.evaluation import DEFAULT_MODEL_ID

log = logging.getLogger(__name__)

LABELS = ["name", "model_id", "turn"]
TURN_SCORE = Gauge("parrot_eval_turn_score",
                   "Per-turn mean judge score of the latest succeeded evaluation run of a series (run name, model_id).",
                   LABELS)
TURN_SCORE_PREVIOUS = Gauge("parrot_eval_turn_score_previous",
                            "Per-turn mean judge score of the evaluation run before the latest one, same series.", LABELS)
LAST_RUN = Gauge("parrot_eval_last_run_timestamp_seconds",
                 "When the latest succeeded evaluation run of a series finished (Unix time).", ["name", "model_id"])


@dataclass(frozen=True)
class ScoredRun:
    finished_at: float
    run_id: str
    per_turn: dict[str, float]  # turn number (as a string) -> mean score


def per_turn_means(summary: dict[str, Any]) -> dict[str, float]:
    """``summary.json`` of an evaluation run -> {turn: mean}; turns without a mean are left out."""
    out = {}
    for turn, block in ((summary.get("scores") or {}).get("per_turn") or {}).items():
        mean = (block or {}).get("mean")
        if isinstance(mean, (int, float)):
            out[str(turn)] = float(mean)
    return out


def series_of(run: cpb.Run, summary: dict[str, Any] | None = None) -> tuple[str, str]:
    model_id = (summary or {}).get("model_id") or run.spec.evaluation.model_id or DEFAULT_MODEL_ID
    return run.spec.name or "", model_id


def scored(run: cpb.Run) -> bool:
    """A succeeded run of a kind whose summaries are scored (evaluation)."""
    kind = KINDS.get(run.spec.WhichOneof("kind") or "")
    return run.state == cpb.RUN_STATE_SUCCEEDED and kind is not None and kind.scored


class ScoreBoard:
    """Keeps the latest two scored runs per series and mirrors them into the gauges."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], list[ScoredRun]] = {}
        self._exported: dict[tuple[str, str], tuple[set[str], set[str]]] = {}

    def record(self, run: cpb.Run, summary: dict[str, Any]) -> None:
        """Adds a finished evaluation run (its ``summary.json``); older runs than the latest two are dropped."""
        if not scored(run):
            return
        key = series_of(run, summary)
        runs = self._runs.setdefault(key, [])
        if any(r.run_id == run.id for r in runs):
            return
        runs.append(ScoredRun(run.finished_at, run.id, per_turn_means(summary)))
        runs.sort(key=lambda r: (r.finished_at, r.run_id))
        del runs[:-2]
        self._export(key)

    def latest(self, name: str, model_id: str) -> list[ScoredRun]:
        return list(self._runs.get((name, model_id), []))

    def _export(self, key: tuple[str, str]) -> None:
        runs = self._runs[key]
        latest, previous = runs[-1], (runs[-2] if len(runs) > 1 else None)
        old_latest, old_previous = self._exported.get(key, (set(), set()))
        for gauge, scored, old in ((TURN_SCORE, latest, old_latest), (TURN_SCORE_PREVIOUS, previous, old_previous)):
            turns = scored.per_turn if scored else {}
            for turn in old - set(turns):
                gauge.remove(*key, turn)
            for turn, mean in turns.items():
                gauge.labels(*key, turn).set(mean)
        self._exported[key] = (set(latest.per_turn), set(previous.per_turn) if previous else set())
        LAST_RUN.labels(*key).set(latest.finished_at)

    async def load(self, store: Any, runs: Iterable[cpb.Run]) -> int:
        """Rebuilds the board from stored runs: reads ``summary.json`` of the latest two succeeded
        evaluation runs of each series. Returns how many runs were recorded."""
        candidates: dict[tuple[str, str], list[cpb.Run]] = {}
        for run in runs:
            if scored(run):
                candidates.setdefault(series_of(run), []).append(run)
        loaded = 0
        for series in candidates.values():
            series.sort(key=lambda r: (r.finished_at, r.id))
            for run in series[-2:]:
                key = output_key(run.id, "summary.json")
                try:
                    summary = await store.get_json(key)
                except Exception as e:  # noqa: BLE001 - one unreadable summary must not stop the coordinator
                    log.warning("cannot read an evaluation summary", extra={"key": key, "error": str(e)})
                    continue
                self.record(run, summary)
                loaded += 1
        return loaded


SCOREBOARD = ScoreBoard()

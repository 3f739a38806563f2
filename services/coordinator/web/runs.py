"""What the pages show about runs, read through the coordinator's RunManager and object store.

A finished run's conversations are listed from a compact in-memory index (one row per
conversation: category, status, per-turn scores, failed instruction checks) built once from the
plan and the run's ``scores.jsonl`` / ``instructions.jsonl`` / ``failures.jsonl``, never from
every conversation record; a page then reads only its own records. A running run's index comes
from the records the executor holds in memory and is rebuilt on each request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from google.protobuf import json_format

from parrot.errors import InvalidArgument, NotFound
from parrot.storage.layout import RUNS, output_key, run_record, unit_key, units_prefix
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.executor import TERMINAL


KIND_SCAN = 2000  # runs read at most to list those of one kind


def state_name(state: int) -> str:
    return cpb.RunState.Name(state).removeprefix("RUN_STATE_").lower()


def run_row(run: cpb.Run) -> dict[str, Any]:
    """One line of the runs table (also what the live event stream sends)."""
    p = run.progress
    done = p.finished + p.failed
    return {"id": run.id, "name": run.spec.name, "kind": run.spec.WhichOneof("kind") or "?", "state": state_name(run.state),
            "total": p.total, "finished": p.finished, "failed": p.failed, "in_flight": p.in_flight,
            "percent": round(100.0 * done / p.total, 1) if p.total else 0.0,
            "eta_s": round(p.eta_s) if run.state == cpb.RUN_STATE_RUNNING and p.eta_s else None,
            "elapsed_s": round(p.elapsed_s, 1), "created_at": run.created_at, "message": run.message,
            "terminal": run.state in TERMINAL}


async def list_runs(manager: Any, page: int, size: int, kind: str = "") -> tuple[list[dict[str, Any]], int]:
    """A page of runs, newest first, and how many runs there are. Reads only the page's run.json;
    with ``kind``, reads run.json newest first until the page is full (at most KIND_SCAN runs), and
    the count is of the runs read."""
    ids = list(reversed(await manager.store.list_folders(RUNS)))
    if kind:
        matched: list[dict[str, Any]] = []
        for run_id in ids[:KIND_SCAN]:
            row = await _row(manager, run_id)
            if row is not None and row["kind"] == kind:
                matched.append(row)
                if len(matched) > (page + 1) * size:
                    break
        return matched[page * size:(page + 1) * size], len(matched)
    rows = [row for run_id in ids[page * size:(page + 1) * size] if (row := await _row(manager, run_id)) is not None]
    return rows, len(ids)


async def _row(manager: Any, run_id: str) -> dict[str, Any] | None:
    try:
        return run_row(await manager.get(run_id))
    except NotFound:  # a folder without run.json (a StartRun that failed before recording)
        return None


def active_rows(manager: Any) -> list[dict[str, Any]]:
    """The runs executing here, from memory (shown even while the store is down)."""
    return [run_row(ex.run) for ex in list(manager.executors.values())]


async def read_json(store: Any, key: str, default: Any = None) -> Any:
    if not await store.exists(key):
        return default
    return await store.get_json(key)


async def read_jsonl(store: Any, key: str) -> list[dict[str, Any]]:
    if not await store.exists(key):
        return []
    return [json.loads(line) for line in (await store.get(key)).decode().splitlines() if line.strip()]


@dataclass
class ConvRow:
    index: int
    id: str
    category: str
    turns: int
    status: str = "pending"  # pending | finished | failed
    scores: list[float | None] = field(default_factory=list)
    failed_checks: list[int] = field(default_factory=list)  # turns with an instruction not followed (strict)
    reason: str = ""

    @property
    def mean(self) -> float | None:
        vals = [s for s in self.scores if s is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def min(self) -> float | None:
        vals = [s for s in self.scores if s is not None]
        return min(vals) if vals else None


@dataclass
class RunIndex:
    run_id: str
    kind: str
    rows: list[ConvRow]
    units: list[dict[str, Any]]  # the plan's units (questions, turns, categories)
    by_question: dict[str, int]
    built_s: float = 0.0

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.rows if r.category})


@dataclass(frozen=True)
class Filters:
    category: str = ""
    score_below: float | None = None
    failed_checks: bool = False
    status: str = ""
    q: str = ""  # text search over the user turns

    @classmethod
    def parse(cls, query: Any) -> "Filters":
        below = query.get("score_below", "").strip()
        try:
            score_below = float(below) if below else None
        except ValueError:
            raise InvalidArgument("score_below", f"{below!r} is not a number") from None
        status = query.get("status", "")
        if status not in ("", "finished", "failed", "pending"):
            raise InvalidArgument("status", f"{status!r}; allowed finished, failed, pending")
        return cls(category=query.get("category", ""), score_below=score_below,
                   failed_checks=query.get("failed_checks", "") in ("1", "on", "true"), status=status,
                   q=query.get("q", "").strip()[:200])

    def keep(self, row: ConvRow, unit: dict[str, Any]) -> bool:
        if self.category and row.category != self.category:
            return False
        if self.status and row.status != self.status:
            return False
        if self.score_below is not None and not (row.min is not None and row.min < self.score_below):
            return False
        if self.failed_checks and not row.failed_checks:
            return False
        if self.q:
            needle = self.q.lower()
            return needle in row.id.lower() or any(needle in str(t).lower() for t in _user_texts(unit))
        return True


def _user_texts(unit: dict[str, Any]) -> list[str]:
    if "turns" in unit:
        return list(unit["turns"])
    return [m.get("content", "") for m in unit.get("messages", []) if m.get("role") == "user"]


def _unit_row(index: int, unit: dict[str, Any]) -> ConvRow:
    return ConvRow(index=index, id=str(unit.get("id", index)), category=str(unit.get("category") or ""),
                   turns=len(_user_texts(unit)))


def _apply_record(row: ConvRow, rec: dict[str, Any]) -> None:
    row.status = rec.get("status", "finished")
    row.reason = rec.get("reason", "")
    data = rec.get("data") or {}
    judgments = sorted(data.get("judgments") or [], key=lambda j: j["turn"])
    row.scores = [j.get("score") for j in judgments]
    row.failed_checks = [c["turn"] for c in data.get("instruction_checks") or [] if c.get("prompt_strict") is False]
    if "turns" in data and isinstance(data["turns"], int):
        row.turns = max(row.turns, data["turns"])


class Lru:
    """What the pages computed from finished runs, kept for the few runs looked at last; a key names
    the run's state and finish time, so a resumed run's new outputs are never served stale."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._locks: dict[Any, asyncio.Lock] = {}

    async def get(self, key: Any, build: Callable[[], Awaitable[Any]]) -> Any:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one build per key, however many requests wait for it
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = await build()
            self._items[key] = value
            while len(self._items) > self.size:
                old, _ = self._items.popitem(last=False)
                self._locks.pop(old, None)
            return value


def finished_key(manager: Any, run: cpb.Run) -> tuple[str, int, float] | None:
    """The cache key of a run that ended and is not executing here; None for one that may still change."""
    if run.state not in TERMINAL or run.id in manager.executors:
        return None
    return (run.id, run.state, run.finished_at)


class IndexCache(Lru):
    """The conversation index of the few finished runs looked at last."""

    async def get_index(self, manager: Any, run: cpb.Run) -> RunIndex:
        key = finished_key(manager, run)
        if key is None:
            return await build_index(manager, run)
        return await self.get(key, lambda: build_index(manager, run))


async def build_index(manager: Any, run: cpb.Run) -> RunIndex:
    from services.coordinator.kinds import plan_run, resolve

    t0 = time.monotonic()
    store = manager.store
    ex = manager.executors.get(run.id)
    plan = ex.plan if ex is not None else (await plan_run(resolve(run.spec), store))[0]  # an executing run has its plan
    rows = [_unit_row(i, u) for i, u in enumerate(plan.units)]
    by_question = {str(u.get("question_id", u.get("id"))): i for i, u in enumerate(plan.units)}
    if ex is not None:
        for i, rec in list(ex.units.items()):
            _apply_record(rows[i], rec)
    elif await store.exists(output_key(run.id, "summary.json")):
        for f in await read_jsonl(store, output_key(run.id, "failures.jsonl")):
            rows[f["index"]].status, rows[f["index"]].reason = "failed", f.get("reason", "")
        for r in rows:
            if r.status == "pending":
                r.status = "finished"
        scores: dict[int, dict[int, float | None]] = {}
        for s in await read_jsonl(store, output_key(run.id, "scores.jsonl")):
            i = by_question.get(str(s["question_id"]))
            if i is not None:
                scores.setdefault(i, {})[int(s["turn"])] = s["score"]
        for i, per_turn in scores.items():
            rows[i].scores = [per_turn[t] for t in sorted(per_turn)]
        for c in await read_jsonl(store, output_key(run.id, "instructions.jsonl")):
            i = by_question.get(str(c["question_id"]))
            if i is not None and c.get("prompt_strict") is False:
                rows[i].failed_checks.append(int(c["turn"]))
    else:  # ended without outputs (cancelled, failed): the records say what was done
        keys = await store.list(units_prefix(run.id))
        recs = await asyncio.gather(*(store.get_json(k) for k in keys))
        for rec in recs:
            if 0 <= rec.get("index", -1) < len(rows):
                _apply_record(rows[rec["index"]], rec)
    return RunIndex(run.id, plan.kind.name, rows, plan.units, by_question, time.monotonic() - t0)


async def unit_record(manager: Any, run_id: str, index: int) -> dict[str, Any] | None:
    ex = manager.executors.get(run_id)
    if ex is not None and index in ex.units:
        return ex.units[index]
    key = unit_key(run_id, index)
    return await manager.store.get_json(key) if await manager.store.exists(key) else None


async def stored_run(store: Any, run_id: str) -> cpb.Run:
    return json_format.ParseDict(await store.get_json(run_record(run_id)), cpb.Run(),
                                 ignore_unknown_fields=True)

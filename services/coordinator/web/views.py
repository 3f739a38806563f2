"""The content of each page as plain dicts for the templates (no HTTP here).

Figures and tables of evaluation runs come from ``parrot.reports`` (``build_report``,
``per_turn_series``, ``instruction_series``): the page shows what the static reports show.
"""

from __future__ import annotations

from typing import Any

from parrot.errors import FailedPrecondition
from parrot.storage.layout import output_key
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.web.runs import ConvRow, RunIndex, read_json, read_jsonl

TOP_DIFFERENCES = 20


def table_dict(table: Any) -> dict[str, Any]:
    return {"headers": list(table.headers), "rows": [list(r) for r in table.rows]}


def sections_dict(report: Any, titles: set[str]) -> list[dict[str, Any]]:
    return [{"title": s.title, "text": s.text, "tables": [table_dict(t) for t in s.tables]}
            for s in report.sections if s.title in titles]


async def evaluation_view(store: Any, run: cpb.Run) -> dict[str, Any]:
    """Per-turn curve with CI band, instruction following per turn, per-category table, failures."""
    from parrot.reports import load_run
    from parrot.reports.build import build_report, instruction_series, per_turn_series

    failures = await read_jsonl(store, output_key(run.id, "failures.jsonl"))
    if not await store.exists(output_key(run.id, "summary.json")):
        return {"ready": False, "failures": failures}
    data = await load_run(store, run.id)
    judged = bool([s for s in data.scores if s.get("score") is not None])
    report = build_report([data])
    series = per_turn_series(data)
    inst = instruction_series(data) if data.summary.get("instructions") else None
    return {"ready": True, "judged": judged, "summary": data.summary, "failures": failures,
            "overall": (data.summary.get("scores") or {}).get("overall"),
            "chart": {"score": series if series["turn"] else None, "instructions": inst if inst and inst["turn"] else None},
            "sections": sections_dict(report, {"Mean judge score per turn", "Per category", "Instruction following per turn",
                                               "Judge agreement"})}


async def dataset_view(store: Any, run: cpb.Run) -> dict[str, Any]:
    """A collection or negatives run: its dataset statistics (the paper's table) and drop counts."""
    summary = await read_json(store, output_key(run.id, "summary.json"))
    failures = await read_jsonl(store, output_key(run.id, "failures.jsonl"))
    if summary is None:
        return {"ready": False, "failures": failures}
    stats = summary.get("stats") or {}
    flat = [[k, _fmt(v)] for k, v in stats.items() if not isinstance(v, dict)]
    nested = {k: [[kk, _fmt(vv)] for kk, vv in v.items()] for k, v in stats.items() if isinstance(v, dict)}
    drops = summary.get("dropped") or {}
    return {"ready": True, "stats": flat, "nested": nested, "dropped": [[k, v] for k, v in drops.items()],
            "failures": failures, "summary": summary}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "–" if v is None else str(v)


def page_rows(index: RunIndex, rows: list[ConvRow]) -> list[dict[str, Any]]:
    return [{"index": r.index, "id": r.id, "category": r.category or "–", "turns": r.turns, "status": r.status,
             "mean": r.mean, "min": r.min, "failed_checks": r.failed_checks, "reason": r.reason,
             "first": _first_turn(index.units[r.index])} for r in rows]


def _first_turn(unit: dict[str, Any]) -> str:
    turns = unit.get("turns") or [m.get("content", "") for m in unit.get("messages", []) if m.get("role") == "user"]
    text = str(turns[0]) if turns else ""
    return text if len(text) <= 120 else text[:117] + "…"


def conversation_view(kind: str, unit: dict[str, Any], rec: dict[str, Any] | None) -> dict[str, Any]:
    """One conversation turn by turn, in the shape of its run kind."""
    status = (rec or {}).get("status", "pending")
    data = (rec or {}).get("data") or {}
    view: dict[str, Any] = {"status": status, "reason": (rec or {}).get("reason", ""),
                            "elapsed_s": (rec or {}).get("elapsed_s"), "turns": [], "pairs": [], "selected": []}
    if kind == "evaluation":
        view["turns"] = _evaluation_turns(unit, data)
    elif kind == "collection":
        view["turns"] = _collection_turns(data.get("messages") or unit.get("messages") or [])
        view["metadata"] = data.get("metadata") or {}
    else:
        view["turns"] = _collection_turns(unit.get("messages") or [])
        view["pairs"] = [_pair(p) for p in data.get("pairs") or []]
        view["selected"] = data.get("selected") or []
    return view


def _evaluation_turns(unit: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
    answers = data.get("answers") or []
    judgments = {j["turn"]: j for j in data.get("judgments") or []}
    second = {j["turn"]: j for j in data.get("second_judgments") or []}
    checks = {c["turn"]: c for c in data.get("instruction_checks") or []}
    provenance = {p.get("turn"): p for p in unit.get("provenance") or []}
    refs = unit.get("references") or []
    turns = []
    for t, question in enumerate(unit.get("turns") or [], 1):
        j = judgments.get(t) or {}
        c = checks.get(t) or {}
        turns.append({"turn": t, "user": question, "answer": answers[t - 1] if t - 1 < len(answers) else None,
                      "reference": refs[t - 1] if t - 1 < len(refs) else "",
                      "score": j.get("score"), "explanation": j.get("explanation") or j.get("raw_output") or "",
                      "judge_model": j.get("judge_model", ""), "second_score": (second.get(t) or {}).get("score"),
                      "checks": [{"id": r["instruction_id"], "kwargs": r.get("kwargs") or {}, "given_at": r.get("given_at_turn"),
                                  "strict": r.get("strict"), "loose": r.get("loose")} for r in c.get("results") or []],
                      "provenance": provenance.get(t)})
    return turns


def _collection_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """User turns with the assistant's answer; follow-ups the detector calls context-dependent flagged with their cues."""
    from parrot.analysis.context import is_context_dependent

    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "user":
            k = len(turns)
            verdict = is_context_dependent(m.get("content", ""), k) if k > 0 else None
            turns.append({"turn": k + 1, "user": m.get("content", ""), "answer": None,
                          "dependent": bool(verdict and verdict.dependent),
                          "cues": list(verdict.cues) if verdict else [], "dependent_kinds": list(verdict.kinds) if verdict else []})
        elif m.get("role") == "assistant" and turns:
            turns[-1]["answer"] = m.get("content", "")
    return turns


def _text(x: Any) -> str:
    if isinstance(x, list):
        return "\n\n".join(_text(m) for m in x)
    if isinstance(x, dict):
        return str(x.get("content", ""))
    return "" if x is None else str(x)


def _pair(p: dict[str, Any]) -> dict[str, Any]:
    prompt = p.get("prompt") or []
    last_user = next((m.get("content", "") for m in reversed(prompt) if isinstance(m, dict) and m.get("role") == "user"), "")
    return {"strategy": p.get("strategy", ""), "query": last_user, "history_turns": max(0, len(prompt) - 1) // 2,
            "chosen": _text(p.get("chosen")), "rejected": _text(p.get("rejected"))}


def compare_view(a: Any, b: Any, index_a: RunIndex | None) -> dict[str, Any]:
    """Two evaluation runs (RunData): per-turn means and deltas, per category, the session turns that differ most."""
    from parrot.reports.build import scores_by_session_turn, build_report, per_turn_series

    report = build_report([a, b])
    items_a, items_b = scores_by_session_turn(a), scores_by_session_turn(b)
    common = sorted(set(items_a) & set(items_b))
    if not common:
        raise FailedPrecondition(f"runs {a.run_id} and {b.run_id} share no graded session turn; compare runs "
                                 "over the same questions")
    diffs = sorted(({"question_id": q, "turn": t, "a": items_a[(q, t)], "b": items_b[(q, t)],
                     "delta": items_b[(q, t)] - items_a[(q, t)],
                     "index": index_a.by_question.get(q) if index_a else None} for q, t in common),
                   key=lambda d: (-abs(d["delta"]), d["question_id"], d["turn"]))
    sa, sb = per_turn_series(a), per_turn_series(b)
    turns = sorted(set(sa["turn"]) | set(sb["turn"]))
    mean_a, mean_b = dict(zip(sa["turn"], sa["mean"])), dict(zip(sb["turn"], sb["mean"]))
    deltas = [{"turn": t, "a": mean_a.get(t), "b": mean_b.get(t),
               "delta": None if mean_a.get(t) is None or mean_b.get(t) is None else mean_b[t] - mean_a[t]} for t in turns]
    # Only labels are kept of the runs (a comparison is cached; their score lists are not).
    return {"a": {"run_id": a.run_id, "label": a.label}, "b": {"run_id": b.run_id, "label": b.label}, "deltas": deltas, "differ": diffs[:TOP_DIFFERENCES], "common": len(common),
            "chart": {"a": sa, "b": sb, "labels": [a.label, b.label]},
            "sections": sections_dict(report, {"Runs", "Per category", "Instruction following per turn"})}

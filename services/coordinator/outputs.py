"""A finished run's output files, assembled from its unit records in input order.

Evaluation: ``answers.jsonl`` (FastChat answer records), ``judgments.jsonl`` (FastChat single
judgment records, one per turn), ``scores.jsonl`` (question, category, turn, score; None for
a judge failure: what reports read), ``pairwise.jsonl`` (pairwise mode), ``summary.json`` (mean
score per turn / category / overall with bootstrap 95% CIs, judge failures), and where they
apply ``instructions.jsonl`` (per-turn instruction checks; accuracy in the summary) and
``judgments_second.jsonl`` (a second judge; agreement in the summary).
Collection: ``dataset.jsonl`` (ShareGPT records with per-conversation metadata), ``stats.json``,
``summary.json`` (statistics and filter drop counts).
Negatives: ``preferences.jsonl`` (CaPO pairs in TRL's conversational preference format,
``parrot.datasets.capo``), ``selected.jsonl`` (every selected query: cues, judge score, pairs
kept or why it was skipped), ``stats.json`` and ``summary.json`` (pairs and drops per strategy,
cleaning counts). Failed conversations are listed in
``failures.jsonl`` with their reasons, never silently dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from parrot.conversation import Message, Role
from parrot.storage.layout import outputs_prefix
from parrot.v1 import coordinator_pb2 as cpb


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


async def write_outputs(run: cpb.Run, plan: Any, units: dict[int, dict[str, Any]], store: Any) -> dict[str, Any]:
    """Writes the run's output files; returns the summary (what ``summary.json`` holds)."""
    prefix = outputs_prefix(run.id)
    ordered = [units[i] for i in sorted(units)]
    failures = [{"index": u["index"], "id": u["id"], "reason": u.get("reason", "")} for u in ordered if u["status"] != "finished"]
    done = [u for u in ordered if u["status"] == "finished"]
    if plan.kind == "negatives":
        files = _negatives_files(run, plan, done)
    else:
        files = _evaluation_files(run, plan, done) if plan.kind == "evaluation" else _collection_files(run, plan, done)
    files["failures.jsonl"] = _jsonl(failures)
    summary = json.loads(files["summary.json"])
    summary.update({"run_id": run.id, "kind": plan.kind, "conversations": len(plan.units), "finished": len(done),
                    "failed": len(failures), "written_at": time.time()})
    files["summary.json"] = json.dumps(summary, indent=2).encode()
    for name, data in files.items():
        await store.put(f"{prefix}/{name}", data)
    return summary


def _evaluation_files(run: cpb.Run, plan: Any, done: list[dict[str, Any]]) -> dict[str, bytes]:
    from parrot.analysis import score_summary
    from parrot.datasets import fastchat
    from services.coordinator.protocols import protocol_summary

    e = run.spec.evaluation
    model_id = e.model_id or "model"
    answers, judgments, pairwise, scores = [], [], [], []
    failures = 0
    units = {u["id"]: u for u in plan.units}
    for rec in done:
        data, unit = rec["data"], units[rec["id"]]
        qid = unit["question_id"]
        tstamp = time.time()
        answers.append(fastchat.answer_record(question_id=qid, model_id=model_id, turns=data["answers"],
                                              answer_id=f"{run.id}-{rec['index']}", tstamp=tstamp))
        for j in data["judgments"]:
            t = j["turn"]
            scores.append({"question_id": qid, "category": unit["category"], "turn": t, "score": j["score"],
                           **{k: unit[k] for k in ("task", "language", "arm", "repeat") if unit.get(k)}})
            if j["score"] is None:  # recorded by older runs; written as FastChat's -1, as documented
                failures += 1
            judgments.append(fastchat.single_judgment_record(
                question_id=qid, model=model_id, judge_model=j["judge_model"], prompt_name=j["prompt_name"],
                user_prompt=unit["turns"][t - 1], judgment=j.get("raw_output", ""), score=j["score"], turn=t,
                tstamp=tstamp))
        for p in data.get("pairwise", []):
            if p["winner"] is None:
                continue
            v = {x["swapped"]: x for x in p["verdicts"]}
            pairwise.append(fastchat.pairwise_judgment_record(
                question_id=qid, model_1=model_id, model_2=e.baseline_model_id or "baseline",
                g1_winner=(v.get(False) or {}).get("winner") or "tie", g2_winner=(v.get(True) or {}).get("winner") or "tie",
                judge_model=p["judge_model"], prompt_name=p["prompt_name"], g1_user_prompt=unit["turns"][p["turn"] - 1],
                g1_judgment=(v.get(False) or {}).get("raw_output", ""), g2_user_prompt=unit["turns"][p["turn"] - 1],
                g2_judgment=(v.get(True) or {}).get("raw_output", ""), turn=p["turn"], tstamp=tstamp))
    summary: dict[str, Any] = {"model_id": model_id, "scores": score_summary(scores), "judge_failures": failures,
                               "judge_model": next((j["judge_model"] for rec in done for j in rec["data"]["judgments"]
                                                    if j.get("judge_model")), None)}
    extra_files = _instruction_and_second_judge(run, plan, done, summary, model_id)
    summary["protocol"] = protocol_summary(plan, done, int(plan.notes.get("repeats", 1)))
    if e.pairwise:
        wins = {"model_1": 0, "model_2": 0, "tie": 0}
        for rec in done:
            for p in rec["data"].get("pairwise", []):
                if p["winner"]:
                    wins[p["winner"]] += 1
        summary["pairwise"] = {"baseline_model_id": e.baseline_model_id or "baseline", **wins}
    files = {"answers.jsonl": _jsonl(answers), "judgments.jsonl": _jsonl(judgments),
             "scores.jsonl": _jsonl(scores), "summary.json": json.dumps(summary).encode()}
    if e.pairwise:
        files["pairwise.jsonl"] = _jsonl(pairwise)
    files.update(extra_files)
    return files


def _instruction_and_second_judge(run: cpb.Run, plan: Any, done: list[dict[str, Any]], summary: dict[str, Any],
                                  model_id: str) -> dict[str, bytes]:
    """``instructions.jsonl`` + summary["instructions"] (per-turn accuracy) where sessions carry
    instructions; ``judgments_second.jsonl`` + summary["judge_agreement"] with a second judge."""
    from parrot.analysis import judge_agreement, score_summary
    from parrot.datasets import fastchat
    from parrot.instructions import instruction_summary

    units = {u["id"]: u for u in plan.units}
    files: dict[str, bytes] = {}
    checks: list[dict[str, Any]] = []
    for rec in done:
        unit = units[rec["id"]]
        for c in rec["data"].get("instruction_checks") or []:
            if c["results"]:
                checks.append({"question_id": unit["question_id"], "category": unit["category"], "model_id": model_id,
                               **{k: unit[k] for k in ("language", "repeat") if unit.get(k)}, **c})
    if checks:
        files["instructions.jsonl"] = _jsonl(checks)
        summary["instructions"] = instruction_summary(checks)
        languages = sorted({c["language"] for c in checks if c.get("language")})
        if languages:  # Multi-IF: per-turn accuracy per language, with bootstrap CIs
            summary["instructions"]["per_language"] = {
                lang: {k: v for k, v in instruction_summary([c for c in checks if c.get("language") == lang]).items()
                       if k in ("overall", "per_turn")} for lang in languages}
    if run.spec.evaluation.second_judge:
        first: dict[Any, float | None] = {}
        second: dict[Any, float | None] = {}
        rows, scores = [], []
        tstamp = time.time()
        for rec in done:
            unit = units[rec["id"]]
            qid = unit["question_id"]
            for j in rec["data"]["judgments"]:
                first[(str(qid), j["turn"])] = j["score"]
            for j in rec["data"].get("second_judgments") or []:
                second[(str(qid), j["turn"])] = j["score"]
                scores.append({"question_id": qid, "category": unit["category"], "turn": j["turn"], "score": j["score"]})
                if j["score"] is not None:
                    rows.append(fastchat.single_judgment_record(
                        question_id=qid, model=model_id, judge_model=j["judge_model"], prompt_name=j["prompt_name"],
                        user_prompt=unit["turns"][j["turn"] - 1], judgment=j.get("raw_output", ""), score=j["score"],
                        turn=j["turn"], tstamp=tstamp))
        files["judgments_second.jsonl"] = _jsonl(rows)
        summary["second_judge"] = {"judge_model": rows[0]["judge"][0] if rows else None,
                                   "scores": score_summary(scores)}
        summary["judge_agreement"] = {"judge_a": summary.get("judge_model"),
                                      "judge_b": summary["second_judge"]["judge_model"],
                                      **judge_agreement(first, second)}
    return files


def _collection_files(run: cpb.Run, plan: Any, done: list[dict[str, Any]]) -> dict[str, bytes]:
    from parrot.analysis import dataset_stats
    from parrot.datasets import to_sharegpt_record

    rows, conversations = [], []
    drops: dict[str, int] = {}
    for rec in done:
        data = rec["data"]
        messages = [Message(Role(m["role"]), m["content"]) for m in data["messages"]]
        conversations.append(messages)
        rows.append(to_sharegpt_record(f"{run.id}-{rec['index']}", messages, {"metadata": data["metadata"]}))
        for k, v in data.get("drops", {}).items():
            drops[k] = drops.get(k, 0) + v
    stats = dataset_stats(conversations)
    return {"dataset.jsonl": _jsonl(rows), "stats.json": json.dumps(stats, indent=2).encode(),
            "summary.json": json.dumps({"stats": stats, "dropped": drops,
                                        "seeds_skipped": plan.notes.get("seeds_skipped", {})}).encode()}


def negatives_stats(plan: Any, done: list[dict[str, Any]], strategies: list[str]) -> dict[str, Any]:
    """Pairs and drops per strategy, skipped queries by reason, and the plan's cleaning counts."""
    per: dict[str, dict[str, int]] = {s: {"pairs": 0, "near_identical": 0, "empty": 0, "no_distractor": 0} for s in strategies}
    skipped: dict[str, int] = {"judge_rejected": 0, "empty_chosen": 0}
    queries = pairs = 0
    for rec in done:
        data = rec["data"]
        queries += len(data.get("selected", []))
        for row in data.get("pairs", []):
            per.setdefault(row["strategy"], {"pairs": 0, "near_identical": 0, "empty": 0, "no_distractor": 0})
            per[row["strategy"]]["pairs"] += 1
            pairs += 1
        for reason, count in (data.get("drops") or {}).items():
            strategy, sep, what = reason.partition(":")
            if sep:
                per.setdefault(strategy, {})[what] = per.get(strategy, {}).get(what, 0) + int(count)
            else:
                skipped[reason] = skipped.get(reason, 0) + int(count)
    used = queries - sum(skipped.values())
    return {"conversations": len(done), "queries_selected": queries, "queries_used": used, "queries_skipped": skipped,
            "pairs": pairs, "pairs_per_query": pairs / used if used else None, "per_strategy": per,
            "conversations_without_selected_query": plan.notes.get("conversations_without_selected_query", 0),
            "cleaning": plan.notes.get("cleaning", {})}


def _negatives_files(run: cpb.Run, plan: Any, done: list[dict[str, Any]]) -> dict[str, bytes]:
    from parrot.datasets.capo import STRATEGIES

    strategies = list(run.spec.negatives.strategies) or list(STRATEGIES)
    rows, selected = [], []
    for rec in done:
        rows.extend(rec["data"].get("pairs", []))
        for info in rec["data"].get("selected", []):
            selected.append({"source_id": rec["id"], **info})
    stats = negatives_stats(plan, done, strategies)
    models = {}
    for rec in done:
        models.update(rec["data"].get("metadata", {}).get("models", {}))
    return {"preferences.jsonl": _jsonl(rows), "selected.jsonl": _jsonl(selected),
            "stats.json": json.dumps(stats, indent=2).encode(),
            "summary.json": json.dumps({"stats": stats, "strategies": strategies, "models": models}).encode()}

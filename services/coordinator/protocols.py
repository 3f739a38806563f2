"""Published benchmarks' protocols in an evaluation run: the units a question becomes, and the
summary block that scores them the benchmark's way.

Units: one per question, per Lost-in-Conversation arm (FULL: the fully specified instruction in
one turn; CONCAT: the shards as one bullet list in one turn; SHARDED: one shard per turn) and per
repeat (``spec.evaluation.repeats``, each with its own seed). Each unit carries its history mode
("self": the responder's own earlier answers; "golden": the file's assistant turns before the
answered one), the turns that are judged, and a per-item judge prompt where the benchmark has one.

Summary (``summary["protocol"]``): the benchmark, history mode and how it is scored:

* MT-Bench-101: dialogue score = the minimum over its judged turns; per task the mean of its
  dialogue scores (bootstrap CI); overall the mean over tasks.
* MultiChallenge: a verdict per item (YES when the rubric judge's score is above 5.5); pass rate
  per axis; overall the mean over axes; with repeats an item passes when any attempt passes.
* Lost in Conversation: per arm the mean final-turn score on 0-100 (judge score x 10), aptitude
  (per-item 90th percentile over repeats, averaged) and unreliability (90th - 10th percentile).
* Every protocol: pass^k over repeats (the chance that all k runs of an item pass; unbiased
  estimator C(c, k) / C(n, k) over n runs with c passes), with what "pass" means for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from parrot.errors import InvalidArgument

HISTORY_MODES = ("self", "golden")
LIC_ARMS = ("full", "concat", "sharded")
MAX_REPEATS = 64
YES_ABOVE = 5.5  # MultiChallenge: a rubric score above this reads as YES
PASS_SCORE = 8.0  # judge-scored items: a dialogue score at or above this passes (pass^k)


def check_fields(e: Any) -> tuple[str, list[str], int]:
    """Validates history / arms / repeats of an EvaluationSpec; returns them with defaults applied."""
    if e.history not in ("",) + HISTORY_MODES:
        raise InvalidArgument("spec.evaluation.history", f"is {e.history!r}; allowed: {', '.join(HISTORY_MODES)} "
                                                         "(empty = the benchmark's own protocol)")
    from services.coordinator.spec import distinct_choices

    arms = distinct_choices("spec.evaluation.arms", e.arms, LIC_ARMS)
    if e.repeats > MAX_REPEATS:
        raise InvalidArgument("spec.evaluation.repeats", f"is {e.repeats}; allowed 0..{MAX_REPEATS} (0 = 1)")
    if e.pairwise and e.history == "golden":
        raise InvalidArgument("spec.evaluation.history", "golden history cannot be combined with pairwise")
    return e.history, arms or list(LIC_ARMS), max(1, e.repeats)


def question_units(q: Any, references: list[str], history: str, arms: list[str], repeats: int,
                   name: str) -> list[dict[str, Any]]:
    """The units of one question (see the module docstring)."""
    p = q.protocol
    base: dict[str, Any] = {"question_id": q.question_id, "category": q.category, "turns": list(q.turns),
                            "references": list(references)}
    if q.instructions:
        base["instructions"] = [[i.as_dict() for i in turn] for turn in q.instructions]
    if (q.extra or {}).get("turn_provenance"):  # drafted turns (`bench extend`): shown by the run browser
        base["provenance"] = q.extra["turn_provenance"]
    mode = history or (p.default_history if p else "self")
    golden = list(p.golden) if p and p.golden else list(references)
    if mode == "golden" and len([g for g in golden[: len(q.turns) - 1]]) < len(q.turns) - 1:
        raise InvalidArgument("spec.evaluation.history", f"is golden, but {name}: question {q.question_id} has no "
                                                         "reference assistant turn for every turn before its last")
    base["history"] = mode
    if mode == "golden":
        base["golden"] = golden[: len(q.turns)]
    if p:
        base.update({"benchmark": p.benchmark, "task": p.task, "language": p.language, "judge_prompt": p.judge_prompt,
                     "instructions_in_force": p.instructions_in_force})
        if p.scored_turns:
            base["scored_turns"] = list(p.scored_turns)
        if p.rubric:  # the rubric is the judge's reference for the judged turn
            base["references"] = [""] * (len(q.turns) - 1) + [p.rubric]
            base["expected_verdict"] = p.expected_verdict or "YES"
    variants = [base]
    if p and p.benchmark == "lost-in-conversation":
        variants = [_lic_arm(base, p, arm) for arm in arms]
    units = []
    for v in variants:
        for r in range(repeats):
            key = str(q.question_id) + (f":{v['arm']}" if "arm" in v else "") + (f"#{r + 1}" if repeats > 1 else "")
            units.append({"id": key, **v, **({"repeat": r + 1} if repeats > 1 else {})})
    return units


def _lic_arm(base: dict[str, Any], p: Any, arm: str) -> dict[str, Any]:
    concat = "\n".join(f"- {s}" for s in p.shards)
    turns = {"full": [p.full_prompt or concat], "concat": [concat], "sharded": list(p.shards)}[arm]
    answer = (base["references"] or [""])[-1]
    return {**base, "arm": arm, "turns": turns, "scored_turns": [len(turns)],
            "references": [""] * (len(turns) - 1) + [answer] if answer else [],
            "full_from": "record" if p.full_prompt else "shards"}


# ----------------------------------------------------------------------------------------- summary

def protocol_summary(plan: Any, done: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """``summary["protocol"]``: the benchmark (None for a plain session file), history mode and scores."""
    units = {u["id"]: u for u in plan.units}
    benchmarks = {u.get("benchmark") for u in plan.units} - {None, ""}
    benchmark = sorted(benchmarks)[0] if benchmarks else None
    modes = sorted({u.get("history", "self") for u in plan.units})
    out: dict[str, Any] = {"benchmark": benchmark, "history": modes[0] if len(modes) == 1 else modes,
                           "name": f"{benchmark or 'sessions'} ({'/'.join(modes)} history)"}
    items = [(units[rec["id"]], rec["data"]) for rec in done]
    if benchmark is None:  # a plain session file: the history mode, and pass^k where it repeats
        if repeats > 1:
            out["pass_k"] = pass_k_block(items, repeats)
        return out
    if benchmark == "mtbench101":
        out.update(_mtbench101(items))
    elif benchmark == "multichallenge":
        out.update(_multichallenge(items))
    elif benchmark == "lost-in-conversation":
        out.update(_lost_in_conversation(items))
        out["name"] = f"lost-in-conversation ({', '.join(sorted({u['arm'] for u in plan.units}))} arms)"
    out["pass_k"] = pass_k_block(items, repeats)
    return out


def dialogue_score(data: dict[str, Any]) -> float | None:
    """The minimum judge score over the judged turns (None when a turn has no score)."""
    scores = [j["score"] for j in data.get("judgments", [])]
    if not scores or any(s is None for s in scores):
        return None
    return float(min(scores))


def _mtbench101(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    from parrot.analysis.bootstrap import bootstrap_ci

    per_task: dict[str, list[float]] = defaultdict(list)
    for unit, data in items:
        s = dialogue_score(data)
        if s is not None:
            per_task[unit["task"]].append(s)
    tasks = {}
    for task in sorted(per_task):
        mean, low, high = bootstrap_ci(per_task[task], 2000, 0.95, 0)
        tasks[task] = {"mean": mean, "low": low, "high": high, "n": len(per_task[task])}
    means = [t["mean"] for t in tasks.values()]
    return {"scored_as": "dialogue score = minimum judge score over the judged turns; task = mean over its dialogues; "
                         "overall = mean over tasks",
            "per_task": tasks, "overall": sum(means) / len(means) if means else None}


def verdict(score: float | None) -> str | None:
    return None if score is None else ("YES" if score > YES_ABOVE else "NO")


def _multichallenge(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    passed: dict[str, dict[str, bool]] = defaultdict(dict)
    for unit, data in items:
        v = verdict(dialogue_score(data))
        ok = v is not None and v == unit.get("expected_verdict", "YES")
        qid = str(unit["question_id"])
        passed[unit["task"]][qid] = passed[unit["task"]].get(qid, False) or ok
    axes = {a: {"pass_rate": sum(v.values()) / len(v), "n": len(v)} for a, v in sorted(passed.items())}
    rates = [a["pass_rate"] for a in axes.values()]
    return {"scored_as": f"YES when the rubric score is above {YES_ABOVE}; an item passes when a run's verdict is "
                         "its PASS_CRITERIA; axis = share passed; overall = mean over axes",
            "per_axis": axes, "overall": sum(rates) / len(rates) if rates else None}


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _lost_in_conversation(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for unit, data in items:
        s = dialogue_score(data)
        if s is not None:
            runs[unit["arm"]][str(unit["question_id"])].append(s * 10.0)
    arms = {}
    for arm, per_item in sorted(runs.items()):
        scores = [x for v in per_item.values() for x in v]
        aptitude = [_percentile(v, 0.9) for v in per_item.values()]
        spread = [_percentile(v, 0.9) - _percentile(v, 0.1) for v in per_item.values()]
        arms[arm] = {"mean": sum(scores) / len(scores), "aptitude": sum(aptitude) / len(aptitude),
                     "unreliability": sum(spread) / len(spread), "items": len(per_item), "runs": len(scores)}
    full, sharded = arms.get("full", {}).get("mean"), arms.get("sharded", {}).get("mean")
    return {"scored_as": "final-turn judge score x 10 (0-100); aptitude = per-item 90th percentile over repeats, "
                         "unreliability = 90th - 10th percentile, both averaged over items",
            "per_arm": arms, "sharded_vs_full": (sharded / full) if full and sharded is not None else None}


def unit_passed(unit: dict[str, Any], data: dict[str, Any]) -> bool | None:
    """Whether one run of an item passes: its rubric verdict (MultiChallenge), all instruction
    checks of every turn (strict) where the item has instructions and no judge ran, else its
    dialogue score at or above PASS_SCORE."""
    if unit.get("expected_verdict"):
        v = verdict(dialogue_score(data))
        return None if v is None else v == unit["expected_verdict"]
    checks = [c for c in data.get("instruction_checks") or [] if c.get("prompt_strict") is not None]
    if checks and not data.get("judgments"):
        return all(c["prompt_strict"] for c in checks)
    s = dialogue_score(data)
    return None if s is None else s >= PASS_SCORE


def pass_k_block(items: list[tuple[dict[str, Any], dict[str, Any]]], repeats: int) -> dict[str, Any]:
    """pass^k for k = 1..repeats over the items (an item: question and arm)."""
    trials: dict[str, list[bool]] = defaultdict(list)
    for unit, data in items:
        ok = unit_passed(unit, data)
        if ok is not None:
            trials[f"{unit['question_id']}:{unit.get('arm', '')}"].append(ok)
    out: dict[str, Any] = {"pass_means": f"rubric verdict; else all instruction checks when no judge ran; else "
                                         f"dialogue score >= {PASS_SCORE}", "items": len(trials)}
    for k in range(1, repeats + 1):
        vals = [math.comb(sum(t), k) / math.comb(len(t), k) for t in trials.values() if len(t) >= k]
        out[str(k)] = sum(vals) / len(vals) if vals else None
    return out

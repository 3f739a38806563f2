"""Bootstrap confidence intervals and the score summary of an N-turn benchmark run.

``bootstrap_ci`` resamples the values with replacement ``n_resamples`` times (numpy's PCG64
generator seeded with ``seed``, so the same input gives the same interval) and takes the
percentile interval of the resampled means. ``score_summary`` applies it to judge scores per
turn, per category and overall; a score of None is a judge failure, counted but not averaged.
Resampling is over graded turns (not clustered by question). All figures are plain floats or
None, never NaN, so the summary is JSON-serializable.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# Resample in blocks of at most this many drawn indices, to bound memory on large inputs.
_BLOCK_ELEMENTS = 4_000_000


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile bootstrap interval.

    No values gives (nan, nan, nan); one value v gives (v, v, v).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite numbers")
    n = arr.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return (mean, float(low), float(high))


def score_summary(
    records: Iterable[Mapping[str, Any]],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarizes judge scores of an N-turn run.

    Each record is ``{"question_id", "category", "turn" (1-based int), "score" (number or None)}``.
    Returns::

        {"overall": {"mean", "low", "high", "n"},      # low..high: the bootstrap interval
         "per_turn": {"1": {...}, "2": {...}},          # keys are turn numbers as strings
         "per_category": {"writing": {...}, ...},
         "turn_drop": {"2": mean(turn 2) - mean(turn 1), ...},   # None where a mean is missing
         "turn_over_turn": {"2": mean(turn 2) - mean(turn 1), "3": mean(turn 3) - mean(turn 2), ...},
         "per_category_turn": {"writing": {"1": {...}, ...}, ...},
         "counts": {"records", "scored", "judge_failures", "questions",
                    "judge_failures_per_turn": {"1": 0, ...}},
         "judge_failures": int, "confidence", "n_resamples", "seed"}
    """
    overall: list[float] = []
    per_turn: dict[int, list[float]] = defaultdict(list)
    per_category: dict[str, list[float]] = defaultdict(list)
    per_category_turn: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    failures_per_turn: dict[int, int] = defaultdict(int)
    questions: set[Any] = set()
    n_records = 0
    for i, rec in enumerate(records):
        n_records += 1
        qid, category, turn, score = _check_record(i, rec)
        questions.add(qid)
        per_turn.setdefault(turn, [])
        per_category.setdefault(category, [])
        per_category_turn[category].setdefault(turn, [])
        if score is None:
            failures_per_turn[turn] += 1
            continue
        overall.append(score)
        per_turn[turn].append(score)
        per_category[category].append(score)
        per_category_turn[category][turn].append(score)

    def block(values: list[float]) -> dict[str, Any]:
        mean, low, high = bootstrap_ci(values, n_resamples, confidence, seed)
        return {"mean": _finite(mean), "low": _finite(low), "high": _finite(high), "n": len(values)}

    turns = sorted(per_turn)
    turn_means = {t: (float(np.mean(per_turn[t])) if per_turn[t] else None) for t in turns}
    first = turn_means.get(1)
    failures = sum(failures_per_turn.values())
    return {
        "overall": block(overall),
        "per_turn": {str(t): block(per_turn[t]) for t in turns},
        "per_category": {c: block(per_category[c]) for c in sorted(per_category)},
        "turn_drop": {
            str(t): (turn_means[t] - first if turn_means[t] is not None and first is not None else None)
            for t in turns
            if t > 1
        },
        "turn_over_turn": {
            str(t): (turn_means[t] - turn_means[p] if turn_means[t] is not None and turn_means[p] is not None else None)
            for p, t in zip(turns, turns[1:])
        },
        "per_category_turn": {c: {str(t): block(v) for t, v in sorted(per_category_turn[c].items())}
                              for c in sorted(per_category_turn)},
        "counts": {
            "records": n_records,
            "scored": len(overall),
            "judge_failures": failures,
            "questions": len(questions),
            "judge_failures_per_turn": {str(t): failures_per_turn.get(t, 0) for t in turns},
        },
        "judge_failures": failures,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
    }


def _check_record(i: int, rec: Mapping[str, Any]) -> tuple[Any, str, int, float | None]:
    for key in ("question_id", "category", "turn", "score"):
        if key not in rec:
            raise ValueError(f"records[{i}]: field {key!r} is missing")
    turn = rec["turn"]
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise ValueError(f"records[{i}]: field 'turn' must be an int >= 1, got {turn!r}")
    category = rec["category"]
    if not isinstance(category, str):
        raise ValueError(f"records[{i}]: field 'category' must be a string, got {category!r}")
    score = rec["score"]
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"records[{i}]: field 'score' must be a finite number or None, got {score!r}")
        score = float(score)
    return rec["question_id"], category, turn, score


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

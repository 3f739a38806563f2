"""Agreement between two judges that graded the same answers.

Given the two judges' scores of the same items (graded turns), reports:

* ``spearman``: Spearman's rank correlation (Pearson correlation of the average ranks, so ties
  are handled); None when either judge gave every item the same score;
* ``pairwise_agreement``: over every pair of items, the share where both judges order the pair
  the same way (a prefers i, both prefer j, or both tie): the agreement measure MT-Bench uses
  for judges, applied to single-answer grades;
* ``pairwise_agreement_no_ties``: the same over the pairs that neither judge tied;
* ``exact_agreement`` (same score after rounding to integers) and ``mean_abs_diff``.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np

_BLOCK = 2048


def rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    x, y = _arrays(a, b)
    if len(x) < 2:
        return None
    rx, ry = rank_average(x), rank_average(y)
    if np.all(rx == rx[0]) or np.all(ry == ry[0]):
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def pairwise_agreement(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(agreement over all pairs, agreement over pairs neither judge tied, number of pairs)."""
    x, y = _arrays(a, b)
    n = len(x)
    if n < 2:
        return None, None, 0
    same = total = same_nt = total_nt = 0
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        sx = np.sign(x[start:stop, None] - x[None, :])
        sy = np.sign(y[start:stop, None] - y[None, :])
        upper = np.arange(start, stop)[:, None] < np.arange(n)[None, :]  # each pair once
        agree = (sx == sy) & upper
        same += int(agree.sum())
        total += int(upper.sum())
        no_tie = upper & (sx != 0) & (sy != 0)
        same_nt += int((agree & no_tie).sum())
        total_nt += int(no_tie.sum())
    return same / total, (same_nt / total_nt if total_nt else None), total


def judge_agreement(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None]) -> dict[str, Any]:
    """Agreement of two judges' scores keyed by item (e.g. (question_id, turn)); items one judge
    failed to grade (None or missing) are left out and counted."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    xs = [float(a[k]) for k in keys]  # type: ignore[arg-type]
    ys = [float(b[k]) for k in keys]  # type: ignore[arg-type]
    agree, agree_nt, pairs = pairwise_agreement(xs, ys)
    x, y = np.asarray(xs), np.asarray(ys)
    return {
        "n": len(keys),
        "only_one_judge": len(set(a) | set(b)) - len(keys),
        "spearman": spearman(xs, ys),
        "pairwise_agreement": agree,
        "pairwise_agreement_no_ties": agree_nt,
        "pairs": pairs,
        "exact_agreement": float(np.mean(np.rint(x) == np.rint(y))) if keys else None,
        "mean_abs_diff": float(np.mean(np.abs(x - y))) if keys else None,
        "mean_a": float(x.mean()) if keys else None,
        "mean_b": float(y.mean()) if keys else None,
    }


def _arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"the two judges scored different numbers of items ({len(a)} vs {len(b)})")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("scores must be finite numbers")
    return x, y


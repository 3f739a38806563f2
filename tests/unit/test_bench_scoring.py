"""Scoring: bootstrap CIs, per-turn / per-category summary with turn-over-turn change, judge agreement."""

from __future__ import annotations

import numpy as np
import pytest

from parrot.analysis import bootstrap_ci, judge_agreement, pairwise_agreement, score_summary, spearman


def test_bootstrap_ci_is_deterministic_and_covers_the_mean():
    values = [3, 4, 5, 6, 7, 8, 9, 5, 6, 7]
    mean, low, high = bootstrap_ci(values, n_resamples=4000, seed=1)
    assert mean == pytest.approx(6.0)
    assert low < mean < high and 4.5 < low and high < 7.5
    assert bootstrap_ci(values, n_resamples=4000, seed=1) == (mean, low, high)
    # the percentile interval matches a direct resampling computation
    rng = np.random.default_rng(1)
    means = np.asarray(values, dtype=float)[rng.integers(0, 10, size=(4000, 10))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    # more data, narrower interval; constant data, zero width
    _, l2, h2 = bootstrap_ci(values * 10, n_resamples=4000, seed=1)
    assert h2 - l2 < high - low
    assert bootstrap_ci([5, 5, 5]) == (5.0, 5.0, 5.0)


def test_score_summary_per_turn_category_and_turn_over_turn():
    recs = []
    for q, cat in ((1, "writing"), (2, "math"), (3, "math")):
        for t, base in zip(range(1, 5), (8, 7, 7, 5)):
            recs.append({"question_id": q, "category": cat, "turn": t, "score": base + (q % 2)})
    recs.append({"question_id": 3, "category": "math", "turn": 4, "score": None})  # a judge failure
    s = score_summary(recs, n_resamples=500)
    assert set(s["per_turn"]) == {"1", "2", "3", "4"}
    assert s["per_turn"]["1"]["mean"] == pytest.approx(8 + 2 / 3)
    assert s["turn_over_turn"]["2"] == pytest.approx(-1.0)
    assert s["turn_over_turn"]["3"] == pytest.approx(0.0)
    assert s["turn_over_turn"]["4"] == pytest.approx(-2.0)
    assert s["turn_drop"]["4"] == pytest.approx(-3.0)
    assert s["per_category"]["writing"]["n"] == 4 and s["per_category"]["math"]["n"] == 8
    assert s["per_category_turn"]["math"]["4"]["n"] == 2
    assert s["judge_failures"] == 1 and s["counts"]["judge_failures_per_turn"]["4"] == 1
    for block in s["per_turn"].values():
        assert block["low"] <= block["mean"] <= block["high"]


def test_spearman_and_pairwise_agreement():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks a = [1.5, 1.5, 3, 4], b = [1, 2, 3, 4] -> r = 0.9487
    assert spearman([2, 2, 5, 9], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([7, 7, 7], [1, 2, 3]) is None
    # pairs: (0,1) a tie/b prefers 1: disagree; (0,2) agree; (1,2) agree -> 2/3; no-tie pairs: 2/2
    agree, agree_nt, pairs = pairwise_agreement([5, 5, 9], [4, 6, 9])
    assert (agree, agree_nt, pairs) == (pytest.approx(2 / 3), 1.0, 3)
    with pytest.raises(ValueError):
        pairwise_agreement([1, 2], [1])


def test_judge_agreement_on_keyed_scores():
    a = {("q1", 1): 8.0, ("q1", 2): 6.0, ("q2", 1): 9.0, ("q2", 2): 3.0, ("q3", 1): None}
    b = {("q1", 1): 7.0, ("q1", 2): 6.0, ("q2", 1): 8.0, ("q2", 2): 2.0, ("q3", 1): 5.0, ("q4", 1): 4.0}
    r = judge_agreement(a, b)
    assert r["n"] == 4 and r["only_one_judge"] == 2
    assert r["spearman"] == pytest.approx(1.0) and r["pairwise_agreement"] == 1.0 and r["pairs"] == 6
    assert r["exact_agreement"] == 0.25 and r["mean_abs_diff"] == pytest.approx(0.75)
    assert judge_agreement({}, {})["spearman"] is None

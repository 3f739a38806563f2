"""Probability-weighted scoring for local judges, and the pairwise decision rule.

A small local judge rarely writes "[[N]]" on its own, so its rating is read from its
token probabilities instead: after the judge's explanation, the reply is prefilled with
"Rating: [[" and the backend scores each continuation "1]]" .. "10]]". Each continuation
ends with "]]", so the ten strings are mutually exclusive ("1]]" cannot be a prefix of
"10]]"). Their probabilities, renormalised to sum to 1, give the expected rating.
Pairwise works the same way over "A]]", "B]]", "C]]" (C is a tie).
"""

from __future__ import annotations

import math
from typing import Sequence

from parrot.judging.parsing import PairLabel

RATINGS: tuple[int, ...] = tuple(range(1, 11))
RATING_CONTINUATIONS: tuple[str, ...] = tuple(f"{r}]]" for r in RATINGS)
RATING_PREFILL = "Rating: [["
PAIR_LABELS: tuple[PairLabel, ...] = ("A", "B", "tie")
PAIR_CONTINUATIONS: tuple[str, ...] = ("A]]", "B]]", "C]]")
PAIR_PREFILL = "Verdict: [["


class ScoringError(ValueError):
    """The backend's log-probabilities cannot be turned into a distribution."""


def normalize_logprobs(logprobs: Sequence[float]) -> list[float]:
    """Softmax of log-probabilities: probabilities that sum to 1.

    ``-inf`` entries get probability 0. NaN, ``+inf`` or all ``-inf`` raise ScoringError.
    """
    values = [float(x) for x in logprobs]
    if not values:
        raise ScoringError("no log-probabilities to normalise")
    if any(math.isnan(x) or x == math.inf for x in values):
        raise ScoringError(f"log-probabilities must be finite or -inf, got {values}")
    top = max(values)
    if top == -math.inf:
        raise ScoringError("every continuation has probability 0")
    weights = [math.exp(x - top) for x in values]
    total = math.fsum(weights)
    return [w / total for w in weights]


def expected_rating(probabilities: Sequence[float]) -> float:
    """Sum of rating times probability, for probabilities of ratings 1..10."""
    if len(probabilities) != len(RATINGS):
        raise ScoringError(f"expected {len(RATINGS)} rating probabilities, got {len(probabilities)}")
    return math.fsum(r * p for r, p in zip(RATINGS, probabilities))


def rating_from_logprobs(logprobs: Sequence[float]) -> tuple[float, list[float]]:
    """(expected rating, probabilities of 1..10) from the log-probs of RATING_CONTINUATIONS."""
    if len(logprobs) != len(RATING_CONTINUATIONS):
        raise ScoringError(f"expected {len(RATING_CONTINUATIONS)} log-probabilities, got {len(logprobs)}")
    probs = normalize_logprobs(logprobs)
    return expected_rating(probs), probs


def pair_from_logprobs(logprobs: Sequence[float]) -> tuple[PairLabel, list[float]]:
    """(winner, probabilities of A, B, tie) from the log-probs of PAIR_CONTINUATIONS.

    The winner is the most probable label; an exact tie between labels is a tie.
    """
    if len(logprobs) != len(PAIR_CONTINUATIONS):
        raise ScoringError(f"expected {len(PAIR_CONTINUATIONS)} log-probabilities, got {len(logprobs)}")
    probs = normalize_logprobs(logprobs)
    top = max(probs)
    best = [label for label, p in zip(PAIR_LABELS, probs) if p == top]
    return (best[0] if len(best) == 1 else "tie"), probs


def swap_label(label: PairLabel) -> PairLabel:
    """Maps a verdict given with B shown first back to the request's labels."""
    return {"A": "B", "B": "A", "tie": "tie"}[label]


def swap_probabilities(probabilities: Sequence[float]) -> list[float]:
    """Maps (A, B, tie) probabilities of the swapped order back to the request's labels."""
    a, b, tie = probabilities
    return [b, a, tie]


def combine_orders(first: PairLabel, second: PairLabel) -> PairLabel:
    """FastChat's rule for the two orders (both in the request's labels).

    The same winner in both orders wins; any disagreement is a tie.
    """
    return first if first == second else "tie"

"""Runs a judge model over rendered judge prompts: one rating, or one pairwise verdict.

Two ways to get a score, chosen by the backend:

* **Local judges** (``backend.supports_scoring``): the judge writes its explanation with
  generation stopped at "[[" and at the rating label, so it never rates in free text; then
  the reply is prefilled with that explanation plus "Rating: [[" (or "Verdict: [[") and the
  backend scores the rating continuations. The score is the expected rating under those
  probabilities (``scoring``). It cannot fail to parse, and it depends only on the judge's
  own output region: the graded answer is in the prompt, never in the scored prefix.
* **API judges**: the judge writes explanation and "[[N]]"; the last marker in its output is
  parsed. An output without one is retried (``max_attempts`` calls in all, the seed moved
  by the attempt number when a seed is given); if none parses, Unavailable is raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Literal, Sequence

from parrot.backends.base import Backend, GenerationRequest
from parrot.conversation import MAX_SEED, GenerationParams, Message
from parrot.errors import Unavailable
from parrot.judging.parsing import PairLabel, parse_pair, parse_rating, strip_rating, strip_verdict
from parrot.judging.scoring import (
    PAIR_CONTINUATIONS,
    PAIR_PREFILL,
    RATING_CONTINUATIONS,
    RATING_PREFILL,
    combine_orders,
    pair_from_logprobs,
    rating_from_logprobs,
    swap_label,
    swap_probabilities,
)
from parrot.metrics import STAGE_LATENCY, child

logger = logging.getLogger(__name__)

ScoreMethod = Literal["parsed", "probability_weighted"]

# Where the explanation of a local judge is cut, so that it never rates in free text.
RATING_STOPS: tuple[str, ...] = ("[[", "Rating:")
PAIR_STOPS: tuple[str, ...] = ("[[", "Verdict:")


@dataclass(frozen=True)
class SingleJudgment:
    score: float
    explanation: str
    raw_output: str
    method: ScoreMethod
    rating_probabilities: list[float]  # ratings 1..10; empty for parsed scores
    attempts: int


@dataclass(frozen=True)
class PairVerdict:
    """The verdict of one order, already in the request's labels."""

    winner: PairLabel
    swapped: bool  # True when B was shown first
    explanation: str
    raw_output: str
    probabilities: list[float]  # A, B, tie; empty for parsed verdicts
    attempts: int


@dataclass(frozen=True)
class PairJudgment:
    winner: PairLabel
    method: ScoreMethod
    verdicts: tuple[PairVerdict, PairVerdict]


class JudgeEngine:
    """Grades with one backend; local or API mode follows ``backend.supports_scoring``."""

    def __init__(self, backend: Backend, *, api_max_attempts: int = 3) -> None:
        if api_max_attempts < 1:
            raise ValueError("api_max_attempts must be at least 1")
        self.backend = backend
        self.api_max_attempts = api_max_attempts

    @property
    def local(self) -> bool:
        return bool(self.backend.supports_scoring)

    async def grade(self, messages: Sequence[Message], params: GenerationParams) -> SingleJudgment:
        """Rates the answer that the rendered judge ``messages`` ask about."""
        if self.local:
            return await self._grade_local(messages, params)
        return await self._grade_api(messages, params)

    async def compare(
        self, shown_a_first: Sequence[Message], shown_b_first: Sequence[Message], params: GenerationParams
    ) -> PairJudgment:
        """Judges both orders and combines them (``scoring.combine_orders``)."""
        if self.local:
            first, second = await self._compare_local(shown_a_first, shown_b_first, params)
        else:
            first, second = await asyncio.gather(
                self._compare_api(shown_a_first, params, swapped=False),
                self._compare_api(shown_b_first, params, swapped=True),
            )
        winner = combine_orders(first.winner, second.winner)
        method: ScoreMethod = "probability_weighted" if self.local else "parsed"
        return PairJudgment(winner=winner, method=method, verdicts=(first, second))

    # ------------------------------------------------------------------ local judges

    async def _grade_local(self, messages: Sequence[Message], params: GenerationParams) -> SingleJudgment:
        (raw,), (logprobs,) = await self._generate_scored(
            [GenerationRequest(messages, _with_stops(params, RATING_STOPS))], RATING_STOPS, RATING_PREFILL,
            RATING_CONTINUATIONS)
        explanation = cut_at_stops(raw, RATING_STOPS)
        score, probs = rating_from_logprobs(logprobs)
        return SingleJudgment(
            score=score,
            explanation=explanation,
            raw_output=raw,
            method="probability_weighted",
            rating_probabilities=probs,
            attempts=1,
        )

    async def _compare_local(
        self, shown_a_first: Sequence[Message], shown_b_first: Sequence[Message], params: GenerationParams
    ) -> tuple[PairVerdict, PairVerdict]:
        p = _with_stops(params, PAIR_STOPS)
        # One call for both orders, so a batching backend decodes them together.
        raws, logprobs = await self._generate_scored(
            [GenerationRequest(shown_a_first, p), GenerationRequest(shown_b_first, p)], PAIR_STOPS, PAIR_PREFILL,
            PAIR_CONTINUATIONS)
        explanations = [cut_at_stops(r, PAIR_STOPS) for r in raws]
        verdicts = []
        for swapped, raw, explanation, lp in zip((False, True), raws, explanations, logprobs):
            label, probs = pair_from_logprobs(lp)
            if swapped:
                label, probs = swap_label(label), swap_probabilities(probs)
            verdicts.append(
                PairVerdict(
                    winner=label,
                    swapped=swapped,
                    explanation=explanation,
                    raw_output=raw,
                    probabilities=probs,
                    attempts=1,
                )
            )
        return verdicts[0], verdicts[1]

    # -------------------------------------------------------------------- API judges

    async def _grade_api(self, messages: Sequence[Message], params: GenerationParams) -> SingleJudgment:
        for attempt in range(self.api_max_attempts):
            (raw,) = await self._generate([GenerationRequest(messages, _attempt_params(params, attempt))])
            score = parse_rating(raw)
            if score is not None:
                return SingleJudgment(
                    score=score,
                    explanation=strip_rating(raw),
                    raw_output=raw,
                    method="parsed",
                    rating_probabilities=[],
                    attempts=attempt + 1,
                )
            logger.warning("judge output had no [[rating]] (attempt %d of %d)", attempt + 1, self.api_max_attempts)
        raise Unavailable(f"judge output had no [[rating]] after {self.api_max_attempts} attempts")

    async def _compare_api(self, messages: Sequence[Message], params: GenerationParams, *, swapped: bool) -> PairVerdict:
        for attempt in range(self.api_max_attempts):
            (raw,) = await self._generate([GenerationRequest(messages, _attempt_params(params, attempt))])
            label = parse_pair(raw)
            if label is not None:
                return PairVerdict(
                    winner=swap_label(label) if swapped else label,
                    swapped=swapped,
                    explanation=strip_verdict(raw),
                    raw_output=raw,
                    probabilities=[],
                    attempts=attempt + 1,
                )
            logger.warning(
                "judge output had no [[A]]/[[B]]/[[C]] verdict (attempt %d of %d, swapped=%s)",
                attempt + 1,
                self.api_max_attempts,
                swapped,
            )
        raise Unavailable(f"judge output had no [[A]]/[[B]]/[[C]] verdict after {self.api_max_attempts} attempts")

    # ----------------------------------------------------------------------- helpers

    async def _generate(self, requests: list[GenerationRequest]) -> list[str]:
        start = time.perf_counter()
        results = await self.backend.generate(requests)
        child(STAGE_LATENCY, self.backend.model_name, "judge_generate").observe(time.perf_counter() - start)
        return [r.text for r in results]

    async def _generate_scored(
        self, requests: list[GenerationRequest], stops: Sequence[str], label_prefill: str, continuations: Sequence[str]
    ) -> tuple[list[str], list[list[float]]]:
        """Local judges: the explanation, then the label's log-probabilities right after it.

        The scored prefix is built from the judge's own generated text only (cut at the stops), so
        nothing inside the graded answer can set the score.
        """
        start = time.perf_counter()
        results = await self.backend.generate_scored(
            requests, lambda text: scoring_prefill(cut_at_stops(text, stops), label_prefill), continuations)
        child(STAGE_LATENCY, self.backend.model_name, "judge_generate").observe(time.perf_counter() - start)
        return [r.text for r in results], [list(r.scores or ()) for r in results]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string, stripped.

    Backends already stop there; cutting again keeps the scored prefix free of any rating
    even from a backend that returns a little more.
    """
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


def scoring_prefill(explanation: str, label_prefill: str) -> str:
    """The judge's reply up to the rating: its explanation, then e.g. "Rating: [["."""
    return f"{explanation}\n{label_prefill}" if explanation else label_prefill


def _with_stops(params: GenerationParams, stops: Sequence[str]) -> GenerationParams:
    merged = tuple(dict.fromkeys((*params.stop, *stops)))
    return dataclasses.replace(params, stop=merged)


def _attempt_params(params: GenerationParams, attempt: int) -> GenerationParams:
    if params.seed is None or attempt == 0:
        return params
    return dataclasses.replace(params, seed=(params.seed + attempt) % (MAX_SEED + 1))

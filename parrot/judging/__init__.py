"""MT-Bench-style judging: prompt records, rendering, output parsing and scoring.

``prompts`` loads and renders the judge prompts, ``parsing`` reads "[[N]]" / "[[A]]" from
an API judge's text, ``scoring`` turns a local judge's rating-token log-probabilities into
an expected rating, and ``engine`` runs a backend over rendered prompts.
"""

from parrot.judging.engine import JudgeEngine, PairJudgment, PairVerdict, SingleJudgment
from parrot.judging.parsing import parse_pair, parse_rating
from parrot.judging.prompts import (
    DEFAULT_PAIR_PROMPT,
    DEFAULT_PAIR_REF_PROMPT,
    DEFAULT_SINGLE_PROMPT,
    DEFAULT_SINGLE_REF_PROMPT,
    JudgePrompt,
    PromptFileError,
    Transcript,
    load_default_prompts,
    load_prompts,
    render_pair,
    render_single,
)
from parrot.judging.scoring import expected_rating, normalize_logprobs, pair_from_logprobs, rating_from_logprobs

__all__ = [
    "DEFAULT_PAIR_PROMPT",
    "DEFAULT_PAIR_REF_PROMPT",
    "DEFAULT_SINGLE_PROMPT",
    "DEFAULT_SINGLE_REF_PROMPT",
    "JudgeEngine",
    "JudgePrompt",
    "PairJudgment",
    "PairVerdict",
    "PromptFileError",
    "SingleJudgment",
    "Transcript",
    "expected_rating",
    "load_default_prompts",
    "load_prompts",
    "normalize_logprobs",
    "pair_from_logprobs",
    "parse_pair",
    "parse_rating",
    "rating_from_logprobs",
    "render_pair",
    "render_single",
]

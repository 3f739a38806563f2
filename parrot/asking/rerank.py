"""How the asker chooses among its own samples: reranking (draw several, keep the one that scores best)
and the end threshold (below).

The score of a candidate question is the asker model's own mean per-token log-likelihood of the
sample that gave it (``Backend.score`` of the raw sample after the asker prompt, divided by the
sample's tokens), plus ``context_bonus`` when the context-dependence detector
(``parrot.analysis.is_context_dependent``) marks it dependent on the earlier turns, minus
``repeat_penalty`` when it equals or nearly equals an earlier user turn
(``parrot.analysis.repeats_any``). These are the same rules as the scorecard's
``context_dependent`` and ``repeats`` rows (``parrot.asking.scorecard``), so a reranked asker is
pushed toward what that scorecard counts as human-like.

The end threshold (``end_threshold`` > 0, `--end-threshold P`) is the other choice the asker makes
among its samples: an ending sample (the end-of-conversation marker) ends the conversation only when
the model's own probability of the whole marker after the prompt is at least P; below it, the
sample is re-drawn as a question. A trained asker's greedy sample is the marker whenever the
marker's first token is the likeliest, which can be at a probability far below one half; the
threshold asks for more than that (README, "The asker recipe's levers, measured").

This module holds only the settings (light, so `parrot serve` builds its ``--rerank-*`` flags from
them at start-up); the scoring is ``services.asker.service.candidate_score``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parrot.errors import ConfigError


@dataclass(frozen=True)
class RerankSettings:
    """How the asker service reranks samples (`parrot serve asker --rerank-samples N`)."""

    samples: int = field(default=0, metadata={
        "flag": "rerank-samples",
        "help": "Samples drawn per question, the best kept (own mean token log-likelihood + context-dependence "
                "bonus - repeat penalty); 0 or 1 = off. Needs a backend that scores (transformers, echo, "
                "engine with --engine-tokenizer)."})
    context_bonus: float = field(default=0.5, metadata={
        "flag": "rerank-context-bonus",
        "help": "Added to a reranked candidate's score when the detector marks it context-dependent."})
    repeat_penalty: float = field(default=2.0, metadata={
        "flag": "rerank-repeat-penalty",
        "help": "Subtracted from a reranked candidate's score when it (nearly) repeats an earlier user turn."})

    end_threshold: float = field(default=0.0, metadata={
        "flag": "end-threshold",
        "help": "End a conversation only when the model's probability of the end-of-conversation marker is at "
                "least this (0..1); below it, an ending sample is re-drawn as a question. 0 = off: the asker "
                "ends whenever its first sample is the marker. Needs a backend that scores."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.end_threshold <= 1.0:
            raise ConfigError(f"asker --end-threshold is {self.end_threshold}; allowed 0..1 (0 = off)")
        if not 0 <= self.samples <= 16:
            raise ConfigError(f"asker --rerank-samples is {self.samples}; allowed 0..16 (0 or 1 = off)")
        for name in ("context_bonus", "repeat_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"asker --rerank-{name.replace('_', '-')} is {getattr(self, name)}; it must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.samples > 1

    @property
    def needs_scoring(self) -> bool:
        """Whether the backend must score continuations: reranking, or the end threshold."""
        return self.enabled or self.end_threshold > 0

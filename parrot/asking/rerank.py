"""The settings of reranking an asker's samples: draw several, keep the one that scores best.

The score of a candidate question is the asker model's own mean per-token log-likelihood of the
sample that gave it (``Backend.score`` of the raw sample after the asker prompt, divided by the
sample's tokens), plus ``context_bonus`` when the context-dependence detector
(``parrot.analysis.is_context_dependent``) marks it dependent on the earlier turns, minus
``repeat_penalty`` when it equals or nearly equals an earlier user turn
(``parrot.analysis.repeats_any``). These are the same rules as the scorecard's
``context_dependent`` and ``repeats`` rows (``parrot.asking.scorecard``), so a reranked asker is
pushed toward what that scorecard counts as human-like.

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

    def __post_init__(self) -> None:
        if not 0 <= self.samples <= 16:
            raise ConfigError(f"asker --rerank-samples is {self.samples}; allowed 0..16 (0 or 1 = off)")
        for name in ("context_bonus", "repeat_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"asker --rerank-{name.replace('_', '-')} is {getattr(self, name)}; it must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.samples > 1

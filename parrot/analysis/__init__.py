"""Pure analysis helpers: context-dependence detection, follow-up filters, dataset stats, bootstrap CIs."""

from parrot.analysis.agreement import judge_agreement, pairwise_agreement, spearman
from parrot.analysis.bootstrap import bootstrap_ci, score_summary
from parrot.analysis.context import (
    ANAPHORA,
    ELLIPSIS,
    EXPLICIT_REFERENCE,
    KINDS,
    ContextVerdict,
    is_context_dependent,
)
from parrot.analysis.filters import (
    REASONS,
    FilterCounts,
    FollowUpFilter,
    near_duplicate,
    normalize,
    repeats_any,
)
from parrot.analysis.stats import (
    STATS_ROWS,
    ConversationStats,
    context_dependent_turns,
    conversation_stats,
    dataset_stats,
    distinct_n,
    format_stats_table,
    user_turns,
    whitespace_token_count,
)

__all__ = [
    "ANAPHORA",
    "ELLIPSIS",
    "EXPLICIT_REFERENCE",
    "KINDS",
    "REASONS",
    "STATS_ROWS",
    "ContextVerdict",
    "ConversationStats",
    "FilterCounts",
    "FollowUpFilter",
    "bootstrap_ci",
    "context_dependent_turns",
    "conversation_stats",
    "dataset_stats",
    "distinct_n",
    "format_stats_table",
    "is_context_dependent",
    "judge_agreement",
    "near_duplicate",
    "normalize",
    "pairwise_agreement",
    "repeats_any",
    "score_summary",
    "spearman",
    "user_turns",
    "whitespace_token_count",
]

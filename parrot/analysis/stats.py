"""Dataset statistics as the Parrot paper reports them (turns and context-dependent queries per session).

``dataset_stats`` summarizes a list of conversations:

* ``sessions``: number of conversations;
* ``turns_per_session``: mean number of user turns;
* ``tokens_per_session``: mean number of tokens over all user and assistant messages (system
  messages excluded), counted by ``tokenizer_count`` when given and by whitespace splitting
  otherwise; ``token_counter`` says which ("tokenizer" or "whitespace");
* ``context_dependent_per_session``: mean number of follow-up user turns (every user turn after
  the first) that ``is_context_dependent`` flags, and ``context_dependent_fraction``: flagged
  follow-ups over all follow-ups; ``context_dependent_kinds`` counts the flagged turns per kind;
* ``distinct_2``: distinct word bigrams over all bigrams of the user turns (lower-cased,
  punctuation stripped; bigrams do not cross turns), a lexical diversity figure.

Means over zero sessions (and the fraction over zero follow-ups) are None, so the result is
always JSON-serializable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from parrot.analysis.context import KINDS, is_context_dependent
from parrot.analysis.filters import normalize
from parrot.conversation import Message, Role

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class ConversationStats:
    user_turns: int
    follow_ups: int  # user turns after the first
    tokens: int
    context_dependent: int  # flagged follow-ups
    dependent_turns: list[int] = field(default_factory=list)  # 0-based user-turn indices of flagged turns
    kinds: dict[str, int] = field(default_factory=dict)  # flagged turns per kind


def whitespace_token_count(text: str) -> int:
    return len(text.split())


def user_turns(messages: Sequence[Message]) -> list[str]:
    return [m.content for m in messages if m.role is Role.USER]


def context_dependent_turns(messages: Sequence[Message]) -> list[int]:
    """0-based indices (among the user turns) of the follow-ups the detector flags."""
    return [k for k, text in enumerate(user_turns(messages)) if k > 0 and is_context_dependent(text, k).dependent]


def conversation_stats(messages: Sequence[Message], tokenizer_count: TokenCounter | None = None) -> ConversationStats:
    """Per-conversation counts; the user turn with index k is judged with a history of k turns."""
    count = tokenizer_count or whitespace_token_count
    turns = user_turns(messages)
    dependent: list[int] = []
    kinds = dict.fromkeys(KINDS, 0)
    for k, text in enumerate(turns):
        if k == 0:
            continue
        verdict = is_context_dependent(text, k)
        if verdict.dependent:
            dependent.append(k)
            for kind in verdict.kinds:
                kinds[kind] += 1
    tokens = sum(count(m.content) for m in messages if m.role is not Role.SYSTEM)
    return ConversationStats(
        user_turns=len(turns),
        follow_ups=max(len(turns) - 1, 0),
        tokens=tokens,
        context_dependent=len(dependent),
        dependent_turns=dependent,
        kinds=kinds,
    )


def distinct_n(texts: Iterable[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all word n-grams of the texts (None when there are none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = normalize(text).split()
        for i in range(len(words) - n + 1):
            seen.add(tuple(words[i : i + n]))
            total += 1
    return len(seen) / total if total else None


def dataset_stats(
    conversations: Sequence[Sequence[Message]], tokenizer_count: TokenCounter | None = None
) -> dict[str, object]:
    """The dataset summary described in the module docstring."""
    per = [conversation_stats(c, tokenizer_count) for c in conversations]
    n = len(per)
    follow_ups = sum(s.follow_ups for s in per)
    dependent = sum(s.context_dependent for s in per)
    kinds = dict.fromkeys(KINDS, 0)
    for s in per:
        for kind, k in s.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + k
    return {
        "sessions": n,
        "user_turns": sum(s.user_turns for s in per),
        "follow_ups": follow_ups,
        "turns_per_session": _mean(sum(s.user_turns for s in per), n),
        "tokens_per_session": _mean(sum(s.tokens for s in per), n),
        "token_counter": "tokenizer" if tokenizer_count is not None else "whitespace",
        "context_dependent": dependent,
        "context_dependent_per_session": _mean(dependent, n),
        "context_dependent_fraction": _mean(dependent, follow_ups),
        "context_dependent_kinds": kinds,
        "distinct_2": distinct_n((t for c in conversations for t in user_turns(c)), 2),
    }


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


# The rows of ``format_stats_table``: (key of ``dataset_stats``, label), in the order of the
# Parrot paper's Table 1 comparison.
STATS_ROWS: tuple[tuple[str, str], ...] = (
    ("sessions", "sessions"),
    ("turns_per_session", "user turns / session"),
    ("tokens_per_session", "tokens / session"),
    ("context_dependent_per_session", "context-dependent queries / session"),
    ("context_dependent_fraction", "context-dependent fraction of follow-ups"),
    ("distinct_2", "distinct-2 of user turns"),
)


def format_stats_table(named: Sequence[tuple[str, dict[str, object]]]) -> str:
    """A Markdown table with one column per dataset and one row per figure of ``STATS_ROWS``.

    ``named`` holds (dataset name, ``dataset_stats`` result) pairs. The token row names its
    counter ("tokens / session (tokenizer)"), taken from the first dataset.
    """
    if not named:
        raise ValueError("no datasets to tabulate")
    counter = named[0][1].get("token_counter", "whitespace")
    header = "| | " + " | ".join(name for name, _ in named) + " |"
    lines = [header, "|---" * (len(named) + 1) + "|"]
    for key, label in STATS_ROWS:
        if key == "tokens_per_session":
            label = f"{label} ({counter})"
        cells = [_cell(stats.get(key)) for _, stats in named]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return str(value)

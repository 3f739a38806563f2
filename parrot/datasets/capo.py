"""CaPO (context-aware preference optimization) pairs: the prompts that make rejected answers, and the rows.

For a context-dependent user query (one that needs the earlier turns), the *chosen* answer is
given the full history; each *rejected* answer is made by the same responder with the context
perturbed, one strategy each (the Parrot paper's three):

``context_neglect``
    The query alone, history removed: the answer ignores what "it" / "that" points to.
``context_hallucination``
    The query alone plus a system instruction (``HALLUCINATION_INSTRUCTION``) to assume what the
    references mean and answer as if the conversation were known: a confident answer about a
    guessed referent.
``context_misunderstanding``
    The history replaced by an irrelevant part of it: an earlier exchange of the same session
    other than the latest one (the one least similar to the latest exchange and the query,
    ``pick_session_distractor``), or, when the history has a single exchange, an exchange of
    another session (a distractor chosen by the caller). The answer resolves the reference
    against the wrong turn.

Rows are TRL's conversational preference format, one per (query, strategy)::
    {"prompt": [history messages..., {"role": "user", "content": query}],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "strategy": "context_neglect", "source_id": "<conversation id>", "turn": k,
     "models": {"chosen": "<model or 'dataset'>", "rejected": "<model>"}}

``turn`` is the query's 1-based index among the user turns. ``validate_preference_row`` checks
this schema; ``load_preferences`` reads a file of rows and checks each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from parrot.analysis.filters import normalize
from parrot.conversation import Message, Role
from parrot.datasets.jsonio import DatasetError, iter_jsonl, json_type, read_file

CONTEXT_NEGLECT = "context_neglect"
CONTEXT_HALLUCINATION = "context_hallucination"
CONTEXT_MISUNDERSTANDING = "context_misunderstanding"
STRATEGIES: tuple[str, ...] = (CONTEXT_NEGLECT, CONTEXT_HALLUCINATION, CONTEXT_MISUNDERSTANDING)

HALLUCINATION_INSTRUCTION = (
    "The user is continuing an earlier conversation with you that you cannot see. Do not ask what they mean "
    "and do not say that context is missing: assume what the references in their message (such as \"it\", "
    "\"that\", \"the above\", \"the second one\") stand for, and answer confidently as if you remembered the "
    "conversation."
)


def exchanges(history: Sequence[Message]) -> list[tuple[Message, Message]]:
    """The (user, assistant) pairs of an alternating history (a system message is skipped)."""
    body = [m for m in history if m.role is not Role.SYSTEM]
    return [(body[i], body[i + 1]) for i in range(0, len(body) - 1, 2)
            if body[i].role is Role.USER and body[i + 1].role is Role.ASSISTANT]


def _content_words(text: str) -> set[str]:
    return {w for w in normalize(text).split() if len(w) >= 4}  # short words are mostly function words


def pick_session_distractor(history: Sequence[Message], query: str) -> list[Message] | None:
    """An earlier exchange other than the latest: the one least related to the latest exchange and the query.

    Relatedness is the share of an exchange's content words (normalized, 4 letters or more) that
    occur in the latest exchange or the query; ties go to the earliest. None when the history
    has fewer than two exchanges.
    """
    pairs = exchanges(history)
    if len(pairs) < 2:
        return None
    latest = _content_words(" ".join([pairs[-1][0].content, pairs[-1][1].content, query]))
    scored = []
    for i, (u, a) in enumerate(pairs[:-1]):
        words = _content_words(f"{u.content} {a.content}")
        scored.append((len(words & latest) / max(1, len(words)), i))
    _, best = min(scored)
    return list(pairs[best])


def chosen_messages(history: Sequence[Message], query: str) -> list[Message]:
    """What the chosen answer is generated from: the full history and the query."""
    return [*history, Message(Role.USER, query)]


def strategy_messages(strategy: str, history: Sequence[Message], query: str,
                      distractor: Sequence[Message] | None = None) -> list[Message]:
    """The responder's input for one rejected answer (strategies in the module docstring).

    ``context_misunderstanding`` uses ``distractor`` (an exchange of another session) only when
    the history has no earlier exchange to use; it raises ValueError when there is neither.
    """
    ask = Message(Role.USER, query)
    if strategy == CONTEXT_NEGLECT:
        return [ask]
    if strategy == CONTEXT_HALLUCINATION:
        return [Message(Role.SYSTEM, HALLUCINATION_INSTRUCTION), ask]
    if strategy == CONTEXT_MISUNDERSTANDING:
        context = pick_session_distractor(history, query) or (list(distractor) if distractor else None)
        if not context:
            raise ValueError("context_misunderstanding needs a second exchange in the history or a distractor")
        return [*context, ask]
    raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")


def preference_row(history: Sequence[Message], query: str, chosen: str, rejected: str, *, strategy: str,
                   source_id: str, turn: int, models: dict[str, str]) -> dict[str, Any]:
    """One row in TRL's conversational preference format plus our provenance fields."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    return {"prompt": [m.as_dict() for m in chosen_messages(history, query)],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "strategy": strategy, "source_id": source_id, "turn": turn, "models": dict(models)}


def _check_messages(name: str, line: int, key: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise DatasetError(name, line, key, f"must be a non-empty list of chat messages, got {json_type(value)}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DatasetError(name, line, f"{key}[{i}]", f"must be an object with role and content, got {json_type(m)}")
        if m.get("role") not in ("system", "user", "assistant"):
            raise DatasetError(name, line, f"{key}[{i}].role", f"is {m.get('role')!r}; allowed: system, user, assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DatasetError(name, line, f"{key}[{i}].content", "must be a non-empty string")


def validate_preference_row(name: str, line: int, row: Any) -> None:
    """Checks one preference row (schema in the module docstring); DatasetError names file, line and field."""
    if not isinstance(row, dict):
        raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(row)}")
    _check_messages(name, line, "prompt", row.get("prompt"))
    if row["prompt"][-1]["role"] != "user":
        raise DatasetError(name, line, f"prompt[{len(row['prompt']) - 1}].role", "the last prompt message must be the user query")
    for key in ("chosen", "rejected"):
        _check_messages(name, line, key, row.get(key))
        if len(row[key]) != 1 or row[key][0]["role"] != "assistant":
            raise DatasetError(name, line, key, "must hold exactly one assistant message")
    if row.get("strategy") not in STRATEGIES:
        raise DatasetError(name, line, "strategy", f"is {row.get('strategy')!r}; allowed: {', '.join(STRATEGIES)}")
    if not isinstance(row.get("source_id"), str) or not row["source_id"]:
        raise DatasetError(name, line, "source_id", "must be a non-empty string")
    turn = row.get("turn")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 2:
        raise DatasetError(name, line, "turn", "must be an integer >= 2 (a follow-up's 1-based user-turn index)")
    models = row.get("models")
    if not isinstance(models, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in models.items()):
        raise DatasetError(name, line, "models", "must be an object of strings (role -> model name)")


def load_preferences(name: str, text: str | bytes) -> list[dict[str, Any]]:
    """The rows of a preference JSONL file, each checked by ``validate_preference_row``."""
    rows = []
    for line, row in iter_jsonl(name, text):
        validate_preference_row(name, line, row)
        rows.append(row)
    return rows


def load_preferences_file(path: str | Path) -> list[dict[str, Any]]:
    return load_preferences(*read_file(path))

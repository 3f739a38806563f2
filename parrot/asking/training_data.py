"""Asker SFT examples from conversation logs: the training data of Parrot-Ask.

Each example teaches the asker to write one real user turn. For every user turn after the first
of a cleaned conversation (``parrot.datasets.cleaning``), the example is::

    {"id": "<conversation id>:<k>", "messages": [...], "source": "<input file name>",
     "turn": k, "context_turns": n, "tokens": t, "context_dependent": bool, "cues": [...]}

* ``k`` is the 1-based index of the target among the conversation's user turns (2 = the second
  user turn), so ids are unique within a file.
* ``messages`` is ``to_role_swapped(context)`` (``parrot/asking/prompting.py``: the exact format
  the asker service sends a trained checkpoint; user turns become ``assistant`` messages, answers
  become ``user`` messages, the conversation's own system message is dropped) followed by the
  target user turn as the final ``{"role": "assistant", ...}`` message. Ordinary SFT with the
  loss on assistant messages therefore trains the model to speak as the user.
  ``example_to_conversation`` turns an example back into the (context + target) conversation.
* ``context_turns`` is the number of earlier exchanges kept (see the length cap below), ``tokens``
  the example's token count, and ``context_dependent`` / ``cues`` the detector's verdict
  (``parrot.analysis.is_context_dependent``) on the target, for filtering or weighting.

End of conversation (``end_examples``): where the real session ended, after its last answer, one
more example has the whole conversation as context and ``END_OF_CONVERSATION``
(``parrot/asking/prompting.py``) as its target, with ``k`` = user turns + 1 and
``"end_of_conversation": true`` (every other example has false). A ShareGPT session split into
chunks (``abc_0``, ``abc_1``, ...) ends only in its highest-numbered chunk of the input; a
conversation whose last message is a user turn (unanswered) has no end example.

Length cap: an example counts ``token_count(content) + message_overhead_tokens`` per message
(4 covers ChatML's ``<|im_start|>role\\n`` ... ``<|im_end|>\\n``). A target over
``max_target_tokens`` is dropped (``target_too_long``: pasted material, not a question). When the
example is over ``max_tokens``, the oldest exchanges of its context are left out until it fits
(counted in ``context_trimmed``); when even the last exchange and the target do not fit, it is
dropped (``too_long``). Examples equal (normalized) to an earlier one are dropped
(``duplicate_example``: overlapping ShareGPT chunks give such repeats).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from parrot.analysis import is_context_dependent
from parrot.conversation import Message, Role
from parrot.datasets import DatasetError, ShareGPTRecord
from parrot.datasets.cleaning import (
    CleaningConfig,
    CleaningReport,
    TokenCount,
    clean_conversations,
    conversation_key,
    whitespace_tokens,
)
from parrot.datasets.jsonio import json_type
from parrot.asking.prompting import END_OF_CONVERSATION, from_role_swapped, to_role_swapped

EXAMPLE_DROP_REASONS: tuple[str, ...] = ("target_too_long", "too_long", "duplicate_example")


@dataclass(frozen=True)
class AskerDataConfig:
    """How conversations become asker examples (rules in the module docstring)."""

    cleaning: CleaningConfig = field(default_factory=CleaningConfig, metadata={"help": "Conversation cleaning rules."})
    max_tokens: int = field(default=2048, metadata={"help": "Most tokens per example (context + target)."})
    max_target_tokens: int = field(default=512, metadata={"help": "Drop targets (user turns) longer than this."})
    message_overhead_tokens: int = field(default=4, metadata={"help": "Tokens added per message for the chat template."})
    dedupe_examples: bool = field(default=True, metadata={"help": "Drop examples equal to an earlier one."})
    end_examples: bool = field(default=False, metadata={
        "help": "Add an example whose target is the end-of-conversation marker where the real session ended."})

    def __post_init__(self) -> None:
        if self.max_target_tokens < 1 or self.max_tokens < 1:
            raise ValueError("max_tokens and max_target_tokens must be at least 1")
        if self.max_target_tokens > self.max_tokens:
            raise ValueError(f"max_target_tokens ({self.max_target_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.message_overhead_tokens < 0:
            raise ValueError("message_overhead_tokens must be >= 0")


@dataclass
class AskerDataReport:
    """Counts of a ``build_asker_dataset`` call, written next to the examples."""

    files: list[str] = field(default_factory=list)
    cleaning: CleaningReport = field(default_factory=CleaningReport)
    targets: int = 0  # user turns after the first, in kept conversations
    examples: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXAMPLE_DROP_REASONS, 0))
    context_trimmed: int = 0
    context_dependent: int = 0
    end_examples: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "cleaning": self.cleaning.as_dict(), "targets": self.targets,
                "examples": self.examples, "examples_dropped": dict(self.dropped),
                "context_trimmed": self.context_trimmed, "context_dependent": self.context_dependent,
                "end_examples": self.end_examples,
                "context_dependent_fraction": self.context_dependent / self.examples if self.examples else None,
                "tokens": self.tokens, "tokens_per_example": self.tokens / self.examples if self.examples else None}


def conversation_examples(record: ShareGPTRecord, source: str, config: AskerDataConfig, report: AskerDataReport,
                          token_count: TokenCount = whitespace_tokens,
                          seen: set[str] | None = None, ends_session: bool = False) -> list[dict[str, Any]]:
    """The examples of one cleaned conversation (drops counted in ``report``); with ``ends_session``
    and ``config.end_examples``, also its end-of-conversation example."""
    body = [m for m in record.messages if m.role is not Role.SYSTEM]
    user_positions = [i for i, m in enumerate(body) if m.role is Role.USER]
    targets = [(k, pos, body[pos]) for k, pos in enumerate(user_positions[1:], start=2)]
    if ends_session and config.end_examples and body and body[-1].role is Role.ASSISTANT:
        targets.append((len(user_positions) + 1, len(body), Message(Role.USER, END_OF_CONVERSATION)))
    cost = [token_count(m.content) + config.message_overhead_tokens for m in body]
    rows: list[dict[str, Any]] = []
    for k, pos, target in targets:
        ends = pos == len(body)
        if not ends:
            report.targets += 1
        target_cost = token_count(target.content) + config.message_overhead_tokens
        if target_cost - config.message_overhead_tokens > config.max_target_tokens:
            report.dropped["target_too_long"] += 1
            continue
        start = 0
        while start < pos - 2 and sum(cost[start:pos]) + target_cost > config.max_tokens:
            start += 2  # leave out the oldest exchange
        total = sum(cost[start:pos]) + target_cost
        if total > config.max_tokens:
            report.dropped["too_long"] += 1
            continue
        context = body[start:pos]
        if seen is not None and config.dedupe_examples:
            key = conversation_key([*context, target])
            if key in seen:
                report.dropped["duplicate_example"] += 1
                continue
            seen.add(key)
        if start:
            report.context_trimmed += 1
        verdict = is_context_dependent("" if ends else target.content, k - 1)
        messages = [*to_role_swapped(context), Message(Role.ASSISTANT, target.content)]
        rows.append({"id": f"{record.id}:{k}", "messages": [m.as_dict() for m in messages], "source": source,
                     "turn": k, "context_turns": len(context) // 2, "tokens": total,
                     "context_dependent": verdict.dependent, "cues": verdict.cues, "end_of_conversation": ends})
        report.examples += 1
        report.end_examples += int(ends)
        report.tokens += total
        report.context_dependent += int(verdict.dependent)
    return rows


def last_chunks(records: Iterable[ShareGPTRecord]) -> set[str]:
    """Ids of the records that end their session: the highest-numbered ShareGPT chunk of each."""
    best: dict[str, tuple[int, str]] = {}
    for r in records:
        suffix = r.id[len(session_key(r.id)):]
        number = int(suffix[1:]) if suffix else -1
        key = session_key(r.id)
        if key not in best or number > best[key][0]:
            best[key] = (number, r.id)
    return {rid for _, rid in best.values()}


def build_asker_dataset(files: Iterable[tuple[str, Sequence[ShareGPTRecord]]], config: AskerDataConfig = AskerDataConfig(),
                        token_count: TokenCount = whitespace_tokens) -> tuple[list[dict[str, Any]], AskerDataReport]:
    """Cleans every file's conversations and turns them into examples (one report for all files).

    ``files`` holds (source name, records) pairs; conversations and examples are de-duplicated
    across files too.
    """
    report = AskerDataReport()
    seen_conversations: set[str] = set()
    seen_examples: set[str] = set()
    rows: list[dict[str, Any]] = []
    for source, records in files:
        report.files.append(source)
        enders = last_chunks(records)
        kept, _ = clean_conversations(records, config.cleaning, token_count, report.cleaning, seen_conversations)
        for record in kept:
            rows.extend(conversation_examples(record, source, config, report, token_count, seen_examples,
                                              ends_session=record.id in enders))
    return rows, report


def example_to_conversation(row: dict[str, Any]) -> list[Message]:
    """The conversation an example was made from: its context and, last, the target user turn."""
    messages = [Message(Role(m["role"]), m["content"]) for m in row["messages"]]
    conversation, _persona, _topic = from_role_swapped(messages)
    return conversation


def validate_example(name: str, line: int, row: Any) -> None:
    """Checks one asker example row; raises DatasetError naming the file, line and field."""
    if not isinstance(row, dict):
        raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(row)}")
    for key in ("id", "source"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise DatasetError(name, line, key, "must be a non-empty string")
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise DatasetError(name, line, "messages", "must be a list of at least 2 chat messages (context, target)")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise DatasetError(name, line, f"{where}.role", "must be system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DatasetError(name, line, f"{where}.content", "must be a non-empty string")
    if messages[-1]["role"] != "assistant":
        raise DatasetError(name, line, f"messages[{len(messages) - 1}].role",
                           "the last message (the target user turn) must have role 'assistant'")


_CHUNK_SUFFIX = re.compile(r"_\d+$")


def session_key(conversation_id: str) -> str:
    """The id without ShareGPT's chunk suffix (``abc_3`` -> ``abc``): chunks of one session share it."""
    return _CHUNK_SUFFIX.sub("", conversation_id)


def is_held_out(conversation_id: str, fraction: float) -> bool:
    """Whether the conversation's session belongs to the held-out part (deterministic, by hash)."""
    digest = hashlib.sha256(session_key(conversation_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


def split_holdout(rows: Sequence[dict[str, Any]], fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows) of asker examples, split by conversation (see the module docstring)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction is {fraction}; allowed 0 <= x < 1")
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for row in rows:
        conversation_id = str(row["id"]).rsplit(":", 1)[0]
        (held if is_held_out(conversation_id, fraction) else train).append(row)
    return train, held

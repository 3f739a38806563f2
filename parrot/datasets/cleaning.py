"""Cleaning of conversation logs (ShareGPT and the like) before they are used for training or CaPO.

``clean_conversations`` applies these rules to every record, in this order, and counts what each
rule did in a ``CleaningReport`` (nothing is dropped silently):

1. **Empty turns** (empty or whitespace-only content) are removed: ``repaired["empty_turns_removed"]``
   counts the messages.
2. **System messages** other than a leading one are removed (``repaired["system_messages_removed"]``).
   A leading system message is kept; formats that do not use it (the asker's role swap) drop it.
3. **Leading assistant turns** (a ShareGPT chunk that starts mid-conversation): with ``repair`` they
   are trimmed (``repaired["leading_assistant_trimmed"]`` counts conversations), without it the
   conversation is dropped (``dropped["starts_with_assistant"]``).
4. **Wrong alternation** (two user or two assistant turns in a row): with ``repair`` the
   conversation is cut before the first message that breaks the alternation
   (``repaired["truncated_at_bad_alternation"]``), without it it is dropped (``dropped["bad_alternation"]``).
5. **Long messages**: when ``max_message_tokens`` is set, the conversation is cut before the first
   message longer than that (``repaired["truncated_at_long_message"]``).
6. **Too few user turns**: conversations with fewer than ``min_user_turns`` user turns left are
   dropped (``dropped["too_few_user_turns"]``; ``dropped["no_user_turn"]`` when none is left).
7. **Duplicates**: a conversation whose messages equal (after ``normalize``: case, punctuation and
   whitespace ignored) those of an earlier kept one is dropped (``dropped["duplicate"]``).

Tokens are counted by the ``token_count`` callable given (a tokenizer's, or whitespace words).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from parrot.analysis.filters import normalize
from parrot.conversation import Message, Role
from parrot.datasets.sharegpt import ShareGPTRecord

TokenCount = Callable[[str], int]

DROP_REASONS: tuple[str, ...] = ("starts_with_assistant", "bad_alternation", "no_user_turn", "too_few_user_turns",
                                 "duplicate")
REPAIRS: tuple[str, ...] = ("empty_turns_removed", "system_messages_removed", "leading_assistant_trimmed",
                            "truncated_at_bad_alternation", "truncated_at_long_message")


def whitespace_tokens(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class CleaningConfig:
    """What ``clean_conversations`` keeps (rules in the module docstring)."""

    min_user_turns: int = field(default=2, metadata={"help": "Drop conversations with fewer user turns (after repairs)."})
    repair: bool = field(default=True, metadata={
        "help": "Trim leading assistant turns and cut at a wrong alternation instead of dropping the conversation."})
    max_message_tokens: int = field(default=0, metadata={
        "help": "Cut a conversation before the first message longer than this many tokens (0 = no cap)."})
    dedupe: bool = field(default=True, metadata={"help": "Drop conversations that repeat an earlier one (normalized)."})

    def __post_init__(self) -> None:
        if self.min_user_turns < 1:
            raise ValueError(f"min_user_turns is {self.min_user_turns}; it must be at least 1")
        if self.max_message_tokens < 0:
            raise ValueError(f"max_message_tokens is {self.max_message_tokens}; it must be >= 0 (0 = no cap)")


@dataclass
class CleaningReport:
    """What cleaning did: conversations in and kept, drops by reason, repairs by kind."""

    conversations_in: int = 0
    conversations_kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    repaired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPAIRS, 0))

    def as_dict(self) -> dict[str, Any]:
        return {"conversations_in": self.conversations_in, "conversations_kept": self.conversations_kept,
                "dropped": dict(self.dropped), "repaired": dict(self.repaired)}


def conversation_key(messages: Sequence[Message]) -> str:
    """A hash of the normalized messages (roles and texts): equal for duplicates up to case and punctuation."""

    h = hashlib.sha256()
    for m in messages:
        h.update(m.role.value.encode())
        h.update(b"\x00")
        h.update(normalize(m.content).encode())
        h.update(b"\x01")
    return h.hexdigest()


def clean_messages(messages: Sequence[Message], config: CleaningConfig, report: CleaningReport,
                   token_count: TokenCount = whitespace_tokens) -> list[Message] | None:
    """Rules 1-6 for one conversation; the cleaned messages, or None when it is dropped (counted)."""
    msgs = [m for m in messages if m.content.strip()]
    report.repaired["empty_turns_removed"] += len(messages) - len(msgs)
    kept: list[Message] = []
    for i, m in enumerate(msgs):
        if m.role is Role.SYSTEM and i > 0:
            report.repaired["system_messages_removed"] += 1
            continue
        kept.append(m)
    system = kept[:1] if kept and kept[0].role is Role.SYSTEM else []
    body = kept[len(system):]
    if body and body[0].role is Role.ASSISTANT:
        if not config.repair:
            report.dropped["starts_with_assistant"] += 1
            return None
        first_user = next((i for i, m in enumerate(body) if m.role is Role.USER), len(body))
        body = body[first_user:]
        report.repaired["leading_assistant_trimmed"] += 1
    for i in range(1, len(body)):
        if body[i].role is body[i - 1].role:
            if not config.repair:
                report.dropped["bad_alternation"] += 1
                return None
            body = body[:i]
            report.repaired["truncated_at_bad_alternation"] += 1
            break
    if config.max_message_tokens:
        for i, m in enumerate(body):
            if token_count(m.content) > config.max_message_tokens:
                body = body[:i]
                report.repaired["truncated_at_long_message"] += 1
                break
    users = sum(1 for m in body if m.role is Role.USER)
    if users == 0:
        report.dropped["no_user_turn"] += 1
        return None
    if users < config.min_user_turns:
        report.dropped["too_few_user_turns"] += 1
        return None
    return system + body


def clean_conversations(records: Iterable[ShareGPTRecord], config: CleaningConfig = CleaningConfig(),
                        token_count: TokenCount = whitespace_tokens,
                        report: CleaningReport | None = None,
                        seen: set[str] | None = None) -> tuple[list[ShareGPTRecord], CleaningReport]:
    """The records that survive the rules (messages cleaned), in input order, and the report.

    For several files, pass the same ``report`` (one report) and ``seen`` (de-duplication across
    the files: it collects the keys of the kept conversations).
    """
    report = report if report is not None else CleaningReport()
    seen = seen if seen is not None else set()
    out: list[ShareGPTRecord] = []
    for record in records:
        report.conversations_in += 1
        cleaned = clean_messages(record.messages, config, report, token_count)
        if cleaned is None:
            continue
        if config.dedupe:
            key = conversation_key(cleaned)
            if key in seen:
                report.dropped["duplicate"] += 1
                continue
            seen.add(key)
        report.conversations_kept += 1
        out.append(replace(record, messages=cleaned))
    return out, report

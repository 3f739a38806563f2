"""Any conversation dataset as (id, messages) pairs, for statistics and the data pipeline.

Formats (``CONVERSATION_FORMATS``; "auto" decides by the first record):

``sharegpt``
    ShareGPT JSON array or JSONL (``parrot.datasets.sharegpt``); also what ``parrot collect``
    writes (``dataset.jsonl``). Auto: the first record has ``conversations``.
``mtbench``
    MT-Bench question files of any number of turns: user turns only, no answers. Auto: the first
    record has ``turns`` and ``question_id``.
``messages``
    JSONL of chat records ``{"id"?: ..., "messages": [{"role", "content"}, ...]}`` (TRL's
    conversational format). Auto: the first record has ``messages``.

Asker SFT examples (``parrot data asker``) are ``messages`` records in the role-swapped format;
``parrot data stats --format asker`` reads them back as the conversations they came from
(``parrot.asking.training_data.example_to_conversation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from parrot.conversation import Message, Role
from parrot.datasets.jsonio import DatasetError, decode_text, iter_records, json_type, read_file
from parrot.datasets.mtbench import load_questions
from parrot.datasets.sharegpt import load_sharegpt

ConversationFormat = Literal["auto", "sharegpt", "mtbench", "messages"]
CONVERSATION_FORMATS: tuple[str, ...] = ("auto", "sharegpt", "mtbench", "messages")
_ROLES = {r.value: r for r in Role}


def detect_format(name: str, text: str | bytes) -> str:
    """"sharegpt", "mtbench" or "messages", from the first record (DatasetError when none fits)."""
    first = next(iter_records(name, text), None)
    if first is None:
        raise DatasetError(name, None, None, "holds no records")
    line, value = first
    if isinstance(value, dict):
        if "conversations" in value:
            return "sharegpt"
        if "turns" in value and "question_id" in value:
            return "mtbench"
        if "messages" in value:
            return "messages"
    raise DatasetError(name, line, None, f"is not a known conversation format (a {json_type(value)} without "
                                         "'conversations', 'turns'+'question_id' or 'messages'); "
                                         f"formats: {', '.join(CONVERSATION_FORMATS[1:])}")


def load_conversations(name: str, text: str | bytes, fmt: str = "auto") -> list[tuple[str, list[Message]]]:
    """(id, messages) of every record, in file order (see the module docstring for formats)."""
    if fmt not in CONVERSATION_FORMATS:
        raise ValueError(f"format is {fmt!r}; allowed: {', '.join(CONVERSATION_FORMATS)}")
    content = decode_text(name, text)
    if fmt == "auto":
        fmt = detect_format(name, content)
    if fmt == "sharegpt":
        return [(r.id, r.messages) for r in load_sharegpt(name, content)]
    if fmt == "mtbench":
        return [(str(q.question_id), [Message(Role.USER, t) for t in q.turns]) for q in load_questions(name, content)]
    return load_messages_records(name, content)


def load_conversations_file(path: str | Path, fmt: str = "auto") -> list[tuple[str, list[Message]]]:
    return load_conversations(*read_file(path), fmt=fmt)


def load_messages_records(name: str, text: str | bytes) -> list[tuple[str, list[Message]]]:
    """(id, messages) of a chat-records file (``messages`` format); a record without an id gets ``record-N``."""
    out = []
    for number, (line, value) in enumerate(iter_records(name, text), start=1):
        if not isinstance(value, dict):
            raise DatasetError(name, line, None, f"must be a JSON object with 'messages', got {json_type(value)}")
        raw = value.get("messages")
        if not isinstance(raw, list):
            raise DatasetError(name, line, "messages", "is missing" if raw is None else "must be a list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _ROLES:
                raise DatasetError(name, line, f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}")
            if not isinstance(m.get("content"), str):
                raise DatasetError(name, line, f"messages[{i}].content", "must be a string")
            messages.append(Message(_ROLES[m["role"]], m["content"]))
        rid = value.get("id", f"record-{number}")
        out.append((str(rid), messages))
    return out

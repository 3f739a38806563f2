"""ShareGPT conversations and seed queries for Parrot-Ask collection.

ShareGPT files are a JSON array or JSONL (detected by the first non-space character: ``[``
means an array) of records::

    {"id": "abc_0", "conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}

Speaker names map to roles case-insensitively: human/user -> user; gpt/chatgpt/bard/bing/
assistant -> assistant; system -> system. Any other name is an error naming the line and the
field (``conversations[3].from``). Empty values are kept (real dumps have them); other keys of a
record are kept in ``ShareGPTRecord.extra``. Ids (string or integer) must be unique in a file.

Seeds are the first-turn queries a collection run starts from. They come from a ShareGPT file
(the first human turn of each conversation; a record that starts with a gpt turn, a continuation
chunk, gives its first human turn after it) or from a plain query file: JSONL or a JSON array
whose elements are ``{"id"?: str, "query" | "prompt" | "text": str}`` or bare JSON strings; a
record without an id gets ``record-N`` (N: its 1-based position among the records).
Records that give no usable query are skipped and counted by reason (``SKIP_REASONS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from parrot.conversation import SPEAKER_ROLES, Message, Role
from parrot.datasets.jsonio import DatasetError, decode_text, iter_records, json_type, read_file

# The speaker names written by ``to_sharegpt_record``.
ROLE_SPEAKERS: dict[Role, str] = {Role.USER: "human", Role.ASSISTANT: "gpt", Role.SYSTEM: "system"}

QUERY_KEYS: tuple[str, ...] = ("query", "prompt", "text")

SeedFormat = Literal["auto", "sharegpt", "queries"]
SEED_FORMATS: tuple[str, ...] = ("auto", "sharegpt", "queries")

# Why a record gave no seed.
SKIP_NO_HUMAN_TURN = "no_human_turn"
SKIP_EMPTY_QUERY = "empty_query"
SKIP_REASONS: tuple[str, ...] = (SKIP_NO_HUMAN_TURN, SKIP_EMPTY_QUERY)


@dataclass(frozen=True)
class ShareGPTRecord:
    id: str
    messages: list[Message]
    line: int  # where the record starts in its file (1-based)
    extra: dict[str, Any] = field(default_factory=dict)  # the record's other keys


@dataclass(frozen=True)
class Seed:
    id: str
    query: str
    source_line: int


@dataclass(frozen=True)
class SeedSet:
    seeds: list[Seed]
    skipped: dict[str, int]  # reason -> count, every reason in SKIP_REASONS present
    format: str  # "sharegpt" or "queries": the format that was read

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


# ---------------------------------------------------------------------------- ShareGPT


def load_sharegpt(name: str, text: str | bytes) -> list[ShareGPTRecord]:
    """Parses a ShareGPT JSON array or JSONL text into records (see the module docstring)."""
    records: list[ShareGPTRecord] = []
    seen: dict[str, int] = {}
    for line, value in iter_records(name, text):
        record = _sharegpt_record(name, line, value)
        if record.id in seen:
            raise DatasetError(name, line, "id", f"{record.id!r} is already used by the record on line {seen[record.id]}")
        seen[record.id] = line
        records.append(record)
    return records


def load_sharegpt_file(path: str | Path) -> list[ShareGPTRecord]:
    return load_sharegpt(*read_file(path))


def _sharegpt_record(name: str, line: int, value: Any) -> ShareGPTRecord:
    if not isinstance(value, dict):
        raise DatasetError(name, line, None, f"must be a JSON object with 'id' and 'conversations', got {json_type(value)}")
    record_id = _record_id(name, line, value.get("id"), required=True)
    turns = value.get("conversations")
    if not isinstance(turns, list):
        what = "is missing" if "conversations" not in value else f"must be a list, got {json_type(turns)}"
        raise DatasetError(name, line, "conversations", what)
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise DatasetError(name, line, where, f"must be an object with 'from' and 'value', got {json_type(turn)}")
        speaker = turn.get("from")
        if not isinstance(speaker, str):
            raise DatasetError(name, line, f"{where}.from", "is missing" if speaker is None else "must be a string")
        role = SPEAKER_ROLES.get(speaker.strip().lower())
        if role is None:
            allowed = ", ".join(SPEAKER_ROLES)
            raise DatasetError(name, line, f"{where}.from", f"is {speaker!r}; allowed: {allowed}")
        content = turn.get("value")
        if not isinstance(content, str):
            raise DatasetError(name, line, f"{where}.value", "is missing" if content is None else "must be a string")
        messages.append(Message(role, content))
    extra = {k: v for k, v in value.items() if k not in ("id", "conversations")}
    return ShareGPTRecord(id=record_id, messages=messages, line=line, extra=extra)


def to_sharegpt_record(conv_id: str, messages: Sequence[Message], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ShareGPT record for writing a dataset; ``extra`` keys (metadata) follow the conversation."""
    record: dict[str, Any] = {
        "id": conv_id,
        "conversations": [{"from": ROLE_SPEAKERS[m.role], "value": m.content} for m in messages],
    }
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra key {key!r} would overwrite the record's own field")
        record[key] = value
    return record


# ---------------------------------------------------------------------------- seeds


def seed_queries(records: Iterable[ShareGPTRecord]) -> SeedSet:
    """The first human turn of each conversation as a seed (see the module docstring)."""
    seeds: list[Seed] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for record in records:
        first = next((m for m in record.messages if m.role is Role.USER), None)
        if first is None:
            skipped[SKIP_NO_HUMAN_TURN] += 1
        elif not first.content.strip():
            skipped[SKIP_EMPTY_QUERY] += 1
        else:
            seeds.append(Seed(id=record.id, query=first.content.strip(), source_line=record.line))
    return SeedSet(seeds=seeds, skipped=skipped, format="sharegpt")


def load_seeds(name: str, text: str | bytes, fmt: SeedFormat = "auto") -> SeedSet:
    """Seed queries from a ShareGPT file or a plain query file.

    ``fmt="auto"`` reads the file as ShareGPT when its first record is an object with a
    ``conversations`` key, and as a query file otherwise.
    """
    if fmt not in SEED_FORMATS:
        raise ValueError(f"fmt is {fmt!r}; allowed: {', '.join(SEED_FORMATS)}")
    content = decode_text(name, text)
    if fmt == "auto":
        first = next(iter_records(name, content), None)
        if first is None:
            raise DatasetError(name, None, None, "holds no records")
        fmt = "sharegpt" if isinstance(first[1], dict) and "conversations" in first[1] else "queries"
    if fmt == "sharegpt":
        return seed_queries(load_sharegpt(name, content))
    return _load_query_seeds(name, content)


def load_seeds_file(path: str | Path, fmt: SeedFormat = "auto") -> SeedSet:
    return load_seeds(*read_file(path), fmt=fmt)


def _load_query_seeds(name: str, text: str) -> SeedSet:
    seeds: list[Seed] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    seen: dict[str, int] = {}
    for number, (line, value) in enumerate(iter_records(name, text), start=1):
        default_id = f"record-{number}"
        if isinstance(value, str):
            seed_id, query = default_id, value
        elif isinstance(value, dict):
            keys = [k for k in QUERY_KEYS if k in value]
            if not keys:
                raise DatasetError(name, line, None, f"needs one of the fields {', '.join(QUERY_KEYS)}")
            if len(keys) > 1:
                problem = f"conflicts with {keys[0]!r}; give exactly one of {', '.join(QUERY_KEYS)}"
                raise DatasetError(name, line, keys[1], problem)
            query = value[keys[0]]
            if not isinstance(query, str):
                raise DatasetError(name, line, keys[0], f"must be a string, got {json_type(query)}")
            explicit = _record_id(name, line, value.get("id"), required=False)
            seed_id = explicit if explicit is not None else default_id
        else:
            raise DatasetError(name, line, None, f"must be a JSON string or an object with a query, got {json_type(value)}")
        if seed_id in seen:
            raise DatasetError(name, line, "id", f"{seed_id!r} is already used by the record on line {seen[seed_id]}")
        seen[seed_id] = line
        if not query.strip():
            skipped[SKIP_EMPTY_QUERY] += 1
            continue
        seeds.append(Seed(id=seed_id, query=query.strip(), source_line=line))
    return SeedSet(seeds=seeds, skipped=skipped, format="queries")


def _record_id(name: str, line: int, value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise DatasetError(name, line, "id", "is missing; every record needs a string or integer id")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(name, line, "id", f"must be a string or an integer, got {json_type(value)}")
    record_id = str(value)
    if not record_id.strip():
        raise DatasetError(name, line, "id", "is empty")
    return record_id


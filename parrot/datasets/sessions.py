"""Evaluation sessions from any of the formats a benchmark comes in, as ``Question`` objects.

An evaluation needs, per session, an id, a category and the user turns (plus optional reference
answers and per-turn instructions). Four file formats give them:

* ``mtbench``: FastChat's question file, with turns of any length (MT-Bench has 2, MT-Bench++ 8);
  see :mod:`parrot.datasets.mtbench`.
* ``sessions``: a plain JSONL of multi-turn sessions, one object a line::

      {"id": "trip-1", "category": "planning", "messages": [
          {"role": "user", "content": "..."}, {"role": "assistant", "content": "..."},
          {"role": "user", "content": "..."}],
       "instructions": [...]}

  ``id`` (string or integer, unique) and ``messages`` are required; ``category`` defaults to
  "general"; roles are user, assistant or system; the user messages are the turns (assistant
  and system messages are dropped: the model under test writes its own answers).
  ``instructions`` as in the MT-Bench format, one entry per user turn.
* ``sharegpt``: ShareGPT conversations (JSON array or JSONL) used as sessions: the human turns
  only, category "sharegpt" (or the record's ``category`` if it is a string). A conversation
  with no non-empty human turn is an error naming its line.
* the published benchmark files, read as they ship (see :mod:`parrot.datasets.published`):
  ``mt-eval``, ``mtbench101``, ``multi-if``, ``lost-in-conversation``, ``multichallenge``.
* ``auto``: decided by the first record: ``turns`` means mtbench, ``messages`` sessions,
  ``conversations`` sharegpt, then the published shapes (a CSV header naming ``turn_1_prompt``
  is Multi-IF).
"""

from __future__ import annotations

from pathlib import Path
from parrot.conversation import Role
from parrot.datasets.jsonio import DatasetError, decode_text, iter_jsonl, iter_records, json_type, read_file
from parrot.datasets.mtbench import Question, load_questions, record_instructions
from parrot.datasets.published import PUBLISHED_FORMATS, PUBLISHED_LOADERS, detect_published
from parrot.datasets.sharegpt import load_sharegpt

SESSION_FORMATS = ("auto", "mtbench", "sessions", "sharegpt") + PUBLISHED_FORMATS
_ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT, "system": Role.SYSTEM}


def load_sessions(name: str, text: str | bytes) -> list[Question]:
    """Parses a plain sessions JSONL (see the module docstring)."""
    out: list[Question] = []
    seen: dict[str, int] = {}
    for line, value in iter_jsonl(name, text):
        if not isinstance(value, dict):
            raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(value)}")
        sid = value.get("id")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or (isinstance(sid, str) and not sid.strip()):
            problem = "is missing" if "id" not in value else f"must be an integer or a non-empty string, got {json_type(sid)}"
            raise DatasetError(name, line, "id", problem)
        if str(sid) in seen:
            raise DatasetError(name, line, "id", f"{sid!r} is already used by the session on line {seen[str(sid)]}")
        category = value.get("category", "general")
        if not isinstance(category, str) or not category.strip():
            raise DatasetError(name, line, "category", "expected a non-empty string")
        messages = value.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DatasetError(name, line, "messages", "is missing" if "messages" not in value
                               else "expected a non-empty list of {role, content} objects")
        turns: list[str] = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise DatasetError(name, line, where, f"expected an object with role and content, got {json_type(m)}")
            role = m.get("role")
            if role not in _ROLES:
                raise DatasetError(name, line, f"{where}.role", f"is {role!r}; allowed: {', '.join(_ROLES)}")
            content = m.get("content")
            if not isinstance(content, str):
                raise DatasetError(name, line, f"{where}.content", "is missing" if content is None else "must be a string")
            if _ROLES[role] is Role.USER:
                if not content.strip():
                    raise DatasetError(name, line, f"{where}.content", "a user turn must not be empty")
                turns.append(content)
        if not turns:
            raise DatasetError(name, line, "messages", "holds no user message")
        seen[str(sid)] = line
        out.append(Question(question_id=sid, category=category, turns=turns,
                            instructions=record_instructions(name, line, value, len(turns))))
    if not out:
        raise DatasetError(name, None, None, "holds no sessions")
    return out


def sessions_from_sharegpt(name: str, text: str | bytes) -> list[Question]:
    """ShareGPT conversations as evaluation sessions: their human turns only."""
    out: list[Question] = []
    for rec in load_sharegpt(name, text):
        turns = [m.content for m in rec.messages if m.role is Role.USER and m.content.strip()]
        if not turns:
            raise DatasetError(name, rec.line, "conversations", "holds no non-empty human turn to use as a session")
        category = rec.extra.get("category")
        out.append(Question(question_id=rec.id, category=category if isinstance(category, str) and category.strip()
                            else "sharegpt", turns=turns))
    if not out:
        raise DatasetError(name, None, None, "holds no conversations")
    return out


def detect_session_format(name: str, text: str | bytes) -> str:
    text = decode_text(name, text)
    if detect_published(None, text):
        return "multi-if"  # the CSV export
    first = next(iter_records(name, text), None)
    if first is None:
        raise DatasetError(name, None, None, "holds no records")
    line, value = first
    if isinstance(value, dict):
        for key, fmt in (("turns", "mtbench"), ("messages", "sessions"), ("conversations", "sharegpt")):
            if key in value:
                return fmt
        published = detect_published(value)
        if published:
            return published
    raise DatasetError(name, line, None, "is not a session record: expected 'turns' (MT-Bench), 'messages' (sessions), "
                                         "'conversations' (ShareGPT), 'conversation' of {user, sys} (MT-Eval), "
                                         "'history' + 'task' (MT-Bench-101), 'turn_1_prompt' (Multi-IF), 'shards' "
                                         "(Lost in Conversation) or 'CONVERSATION' (MultiChallenge)")


def load_eval_sessions(name: str, text: str | bytes, fmt: str = "auto") -> list[Question]:
    """Sessions for an evaluation run from a file in any of ``SESSION_FORMATS``."""
    if fmt not in SESSION_FORMATS:
        raise ValueError(f"format is {fmt!r}; allowed: {', '.join(SESSION_FORMATS)}")
    text = decode_text(name, text)
    if fmt == "auto":
        fmt = detect_session_format(name, text)
    loader = {"mtbench": load_questions, "sessions": load_sessions, "sharegpt": sessions_from_sharegpt,
              **PUBLISHED_LOADERS}[fmt]
    return loader(name, text)


def load_eval_sessions_file(path: str | Path, fmt: str = "auto") -> list[Question]:
    return load_eval_sessions(*read_file(path), fmt=fmt)


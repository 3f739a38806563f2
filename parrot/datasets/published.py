"""Published multi-turn benchmark files, read as they ship (no conversion), as ``Question`` objects.

Each loader takes a display name and the content, validates every record (errors name the record's
line, its 0-based index and the field, as ``file:7: field '[6].history[2].bot': ...``) and attaches the benchmark's :class:`~parrot.datasets.mtbench.Protocol`. Record
shapes (field names as published; our fixtures in ``tests/fixtures/published/`` follow them):

``mt-eval``: MT-Eval's ``mt-bench_extended.jsonl`` (MT-Bench extended to 5 turns)::

    {"question_id": 81, "category": "writing",
     "conversation": [{"id": "81_0", "user": "...", "sys": "..."}, ...]}

``mtbench101``: MT-Bench-101's ``mtbench101.jsonl`` (1,388 dialogues, 13 tasks)::

    {"task": "GR", "id": 1, "history": [{"user": "...", "bot": "..."}, ...]}

``multi-if``: Multi-IF (JSONL / JSON export or the published CSV), three turns::

    {"key": ..., "language": "French", "turn_1_prompt": "{\\"role\\": \\"user\\", \\"content\\": ...}",
     "turn_1_instruction_id_list": "[...]", "turn_1_kwargs": "[\\"{...}\\"]", "turn_2_prompt": ..., ...}

  Values may be JSON strings (the CSV) or native lists / objects; a ``turn_N_prompt`` of "None" or
  "" ends the session. Each turn's list is the instructions in force at that turn (cumulative).

``lost-in-conversation``: the sharded instructions of Laban et al. 2025 (a JSON array)::

    {"task_id": "...", "task": "math", "shards": [{"shard_id": 1, "shard": "..."}, ...],
     "question": "..." (or "fully_specified_question", "prompt", "question_content"), ...}

``multichallenge``: MultiChallenge's ``benchmark_questions.jsonl``::

    {"QUESTION_ID": "...", "AXIS": "INFERENCE_MEMORY", "CONVERSATION": [{"role", "content"}, ...],
     "TARGET_QUESTION": "<YES/NO criterion>", "PASS_CRITERIA": "YES"}
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Callable

from parrot.datasets.jsonio import DatasetError, decode_text, iter_records, json_type
from parrot.datasets.mtbench import Protocol, Question, record_instructions

PUBLISHED_FORMATS = ("mt-eval", "mtbench101", "multi-if", "lost-in-conversation", "multichallenge")

# MT-Bench-101: tasks whose first turn is context only (not answered for a score), and tasks whose
# judge compares with the file's answer of the graded turn (the reference solution).
MTBENCH101_TASKS = ("CM", "SI", "AR", "TS", "CC", "CR", "FR", "SC", "SA", "MR", "GR", "IC", "PI")
MTBENCH101_SKIP_FIRST = ("FR", "CR", "AR", "SA", "SC", "CM")
MTBENCH101_NEEDS_REFERENCE = ("MR", "GR")
MULTICHALLENGE_PROMPT = "multichallenge-rubric-v1"
LIC_FULL_FIELDS = ("fully_specified_question", "question", "prompt", "question_content")


def _object(name: str, line: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(value)}")
    return value


def _text(name: str, line: int, record: dict[str, Any], key: str, where: str | None = None,
          allow_empty: bool = False) -> str:
    value = record.get(key)
    field = where or key
    if not isinstance(value, str):
        raise DatasetError(name, line, field, "is missing" if key not in record else f"must be a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise DatasetError(name, line, field, "must not be empty")
    return value


def _item_id(name: str, line: int, record: dict[str, Any], key: str) -> int | str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise DatasetError(name, line, key, "is missing" if key not in record
                           else f"must be an integer or a non-empty string, got {json_type(value)}")
    return value


def _parse_record(name: str, index: int, line: int, value: Any,
                  parse: Callable[[int, dict[str, Any]], Question]) -> Question:
    """One record; an error's field is prefixed with the record's 0-based index (``[12].shards[3].shard``)."""
    try:
        return parse(line, _object(name, line, value))
    except DatasetError as e:
        raise DatasetError(name, e.line, f"[{index}]" + (f".{e.field}" if e.field else ""), e.problem) from e


def _collect(name: str, text: str | bytes, parse: Callable[[int, dict[str, Any]], Question]) -> list[Question]:
    out: list[Question] = []
    seen: dict[str, int] = {}
    for index, (line, value) in enumerate(iter_records(name, text)):
        q = _parse_record(name, index, line, value, parse)
        if str(q.question_id) in seen:
            raise DatasetError(name, line, None, f"id {q.question_id!r} is already used by the record on line "
                                                 f"{seen[str(q.question_id)]}")
        seen[str(q.question_id)] = line
        out.append(q)
    if not out:
        raise DatasetError(name, None, None, "holds no records")
    return out


def _pairs(name: str, line: int, record: dict[str, Any], key: str, user: str, bot: str) -> tuple[list[str], list[str]]:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise DatasetError(name, line, key, "is missing" if key not in record
                           else f"expected a non-empty list of {{{user}, {bot}}} objects")
    users, bots = [], []
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise DatasetError(name, line, where, f"expected an object with {user!r} and {bot!r}, got {json_type(t)}")
        users.append(_text(name, line, t, user, f"{where}.{user}"))
        bots.append(_text(name, line, t, bot, f"{where}.{bot}", allow_empty=True))
    return users, bots


def load_mt_eval(name: str, text: str | bytes) -> list[Question]:
    """MT-Eval's ``mt-bench_extended.jsonl`` (its ``sys`` turns are the golden history)."""

    def parse(line: int, r: dict[str, Any]) -> Question:
        qid = _item_id(name, line, r, "question_id")
        category = _text(name, line, r, "category")
        users, bots = _pairs(name, line, r, "conversation", "user", "sys")
        return Question(question_id=qid, category=category, turns=users,
                        protocol=Protocol("mt-eval", task=category, golden=tuple(bots)))

    return _collect(name, text, parse)


def load_mtbench101(name: str, text: str | bytes) -> list[Question]:
    """MT-Bench-101's ``mtbench101.jsonl``: golden history, per-task judge prompt, first turn of
    some tasks not scored, the file's answer as the reference of the math / reasoning tasks."""

    def parse(line: int, r: dict[str, Any]) -> Question:
        task = _text(name, line, r, "task")
        if task not in MTBENCH101_TASKS:
            raise DatasetError(name, line, "task", f"is {task!r}; allowed: {', '.join(MTBENCH101_TASKS)}")
        qid = _item_id(name, line, r, "id")
        users, bots = _pairs(name, line, r, "history", "user", "bot")
        first = 2 if task in MTBENCH101_SKIP_FIRST else 1
        if len(users) < first:
            raise DatasetError(name, line, "history", f"task {task} scores from turn 2; the dialogue has 1 turn")
        refs = list(bots) if task in MTBENCH101_NEEDS_REFERENCE else None
        return Question(question_id=qid, category=task, turns=users, references=refs,
                        protocol=Protocol("mtbench101", task=task, golden=tuple(bots), default_history="golden",
                                          scored_turns=tuple(range(first, len(users) + 1)),
                                          judge_prompt=f"mtbench101-{task.lower()}-v1"))

    return _collect(name, text, parse)


def load_multichallenge(name: str, text: str | bytes) -> list[Question]:
    """MultiChallenge: the fixed conversation as golden history, the last user turn answered and
    judged YES/NO against ``TARGET_QUESTION``."""

    def parse(line: int, r: dict[str, Any]) -> Question:
        qid = _item_id(name, line, r, "QUESTION_ID")
        axis = _text(name, line, r, "AXIS")
        rubric = _text(name, line, r, "TARGET_QUESTION")
        expected = r.get("PASS_CRITERIA", "YES")
        if expected not in ("YES", "NO"):
            raise DatasetError(name, line, "PASS_CRITERIA", f"is {expected!r}; allowed: YES, NO")
        conv = r.get("CONVERSATION")
        if not isinstance(conv, list) or not conv:
            raise DatasetError(name, line, "CONVERSATION", "is missing" if "CONVERSATION" not in r
                               else "expected a non-empty list of {role, content} objects")
        users, bots = [], []
        for i, m in enumerate(conv):
            where = f"CONVERSATION[{i}]"
            m = m if isinstance(m, dict) else {}
            want = "user" if i % 2 == 0 else "assistant"
            if m.get("role") != want:
                raise DatasetError(name, line, f"{where}.role", f"is {m.get('role')!r}; expected {want!r} "
                                                                "(turns alternate, starting with the user)")
            (users if want == "user" else bots).append(_text(name, line, m, "content", f"{where}.content",
                                                             allow_empty=want == "assistant"))
        if len(conv) % 2 == 0:
            raise DatasetError(name, line, "CONVERSATION", "must end with the user turn to answer")
        return Question(question_id=qid, category=axis, turns=users,
                        protocol=Protocol("multichallenge", task=axis, golden=tuple(bots), default_history="golden",
                                          scored_turns=(len(users),), judge_prompt=MULTICHALLENGE_PROMPT,
                                          rubric=rubric, expected_verdict=expected))

    return _collect(name, text, parse)


def load_lost_in_conversation(name: str, text: str | bytes) -> list[Question]:
    """Lost in Conversation's sharded instructions: turns are the shards in order (the SHARDED arm);
    the FULL and CONCAT arms are built from ``full_prompt`` and ``shards`` by the run's plan."""

    def parse(line: int, r: dict[str, Any]) -> Question:
        qid = _item_id(name, line, r, "task_id")
        task = _text(name, line, r, "task")
        shards = r.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DatasetError(name, line, "shards", "is missing" if "shards" not in r
                               else "expected a non-empty list of {shard_id, shard} objects")
        ordered: list[tuple[int, str]] = []
        for i, s in enumerate(shards):
            where = f"shards[{i}]"
            if not isinstance(s, dict):
                raise DatasetError(name, line, where, f"expected an object with shard_id and shard, got {json_type(s)}")
            sid = s.get("shard_id")
            if isinstance(sid, bool) or not isinstance(sid, int):
                raise DatasetError(name, line, f"{where}.shard_id", "must be an integer")
            text_ = _text(name, line, s, "shard", f"{where}.shard", allow_empty=True)
            if text_.strip():  # the published translation file has an empty shard: nothing to say, skipped
                ordered.append((sid, text_))
        if not ordered:
            raise DatasetError(name, line, "shards", "holds no non-empty shard")
        ids = [sid for sid, _ in ordered]
        if len(set(ids)) != len(ids):
            raise DatasetError(name, line, "shards", "repeats a shard_id")
        texts = tuple(t for _, t in sorted(ordered))
        answer = r.get("answer")
        return Question(question_id=qid, category=task, turns=list(texts),
                        references=[""] * (len(texts) - 1) + [answer] if isinstance(answer, str) and answer else None,
                        protocol=Protocol("lost-in-conversation", task=task, shards=texts,
                                          full_prompt=_full_prompt(r), scored_turns=(len(texts),)))

    return _collect(name, text, parse)


def _full_prompt(record: dict[str, Any]) -> str:
    """The fully specified instruction where the record carries one ("" when it does not)."""
    for key in LIC_FULL_FIELDS:
        value = record.get(key)
        while isinstance(value, list) and value:  # actions: [[{"role": "user", "content": ...}]]
            value = value[0]
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value.strip():
            return value
    return ""


def load_multi_if(name: str, text: str | bytes) -> list[Question]:
    """Multi-IF: up to three turns, each with the instructions in force at it, and a language."""
    text = decode_text(name, text)
    rows = _csv_rows(name, text) if _is_csv(text) else iter_records(name, text)

    def parse(line: int, r: dict[str, Any]) -> Question:
        qid = _item_id(name, line, r, "key")
        language = _text(name, line, r, "language")
        turns: list[str] = []
        per_turn: dict[str, Any] = {}
        for t in range(1, 100):
            key = f"turn_{t}_prompt"
            prompt = _json_value(name, line, key, r.get(key))
            if prompt in (None, "", "None"):
                break
            if isinstance(prompt, dict):
                prompt = prompt.get("content")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError(name, line, key, "expected a {role, content} object (or its JSON) with text")
            turns.append(prompt)
            ids = _json_value(name, line, f"turn_{t}_instruction_id_list", r.get(f"turn_{t}_instruction_id_list"))
            kwargs = _json_value(name, line, f"turn_{t}_kwargs", r.get(f"turn_{t}_kwargs"))
            if isinstance(kwargs, list):
                kwargs = [_json_value(name, line, f"turn_{t}_kwargs[{i}]", k) for i, k in enumerate(kwargs)]
                kwargs = [{k: v for k, v in kw.items() if v is not None} if isinstance(kw, dict) else kw for kw in kwargs]
            per_turn[f"turn_{t}_instruction_id_list"] = ids
            per_turn[f"turn_{t}_kwargs"] = kwargs
        if not turns:
            raise DatasetError(name, line, "turn_1_prompt", "is missing or empty")
        instructions = record_instructions(name, line, per_turn, len(turns))
        return Question(question_id=qid, category=language, turns=turns, instructions=instructions,
                        protocol=Protocol("multi-if", task=language, language=language, instructions_in_force=True))

    out: list[Question] = []
    seen: dict[str, int] = {}
    for index, (line, value) in enumerate(rows):
        q = _parse_record(name, index, line, value, parse)
        if str(q.question_id) in seen:
            raise DatasetError(name, line, "key", f"{q.question_id!r} is already used on line {seen[str(q.question_id)]}")
        seen[str(q.question_id)] = line
        out.append(q)
    if not out:
        raise DatasetError(name, None, None, "holds no records")
    return out


def _json_value(name: str, line: int, field: str, value: Any) -> Any:
    """A value that may be given as its JSON text (as the CSV export writes lists and objects)."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DatasetError(name, line, field, f"is not valid JSON ({e.msg} at column {e.colno})") from e
    return value


def _csv_rows(name: str, text: str) -> Any:
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        yield reader.line_num, {k: v for k, v in row.items() if k}


def detect_published(record: Any, text: str = "") -> str | None:
    """The published format a first record has, or None."""
    if isinstance(record, dict):
        if "history" in record and "task" in record:
            return "mtbench101"
        conv = record.get("conversation")
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and "sys" in conv[0]:
            return "mt-eval"
        if "turn_1_prompt" in record:
            return "multi-if"
        if "shards" in record:
            return "lost-in-conversation"
        if "CONVERSATION" in record or "TARGET_QUESTION" in record:
            return "multichallenge"
    if text and _is_csv(text):
        return "multi-if"
    return None


def _is_csv(text: str) -> bool:
    """Multi-IF's CSV: a header line naming turn_1_prompt (a JSON file starts with '{' or '[')."""
    head = text.lstrip()
    return not head.startswith(("{", "[")) and "turn_1_prompt" in head.split("\n", 1)[0]


PUBLISHED_LOADERS: dict[str, Callable[[str, str | bytes], list[Question]]] = {
    "mt-eval": load_mt_eval,
    "mtbench101": load_mtbench101,
    "multi-if": load_multi_if,
    "lost-in-conversation": load_lost_in_conversation,
    "multichallenge": load_multichallenge,
}

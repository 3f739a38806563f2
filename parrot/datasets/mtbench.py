"""MT-Bench style question files (FastChat's ``question.jsonl``) of any number of turns.

One JSON object a line (blank lines are skipped)::
    {"question_id": 81, "category": "writing", "turns": ["...", "..."], "reference": ["..."]}

``question_id`` is an integer or a non-empty string, unique in the file; ``category`` is a
required non-empty string; ``turns`` is a non-empty list of non-empty strings of any length
(2 in MT-Bench, 8 in MT-Bench++); ``reference`` (optional) is a list of strings, one reference
answer per turn at most; ``instructions`` (optional) are verifiable instructions per turn in
the record format of :mod:`parrot.instructions.scoring` (``instruction_id_list`` + ``kwargs``;
checked against the registry when the file is loaded). Other keys are ignored (an extended
file's ``turn_provenance`` is kept in ``Question.extra``).

Reference answers may also come from a FastChat reference answer file (an answer file:
``{"question_id", "model_id"?, "choices": [{"index": 0, "turns": [...]}]}``); ``load_references``
reads one and ``attach_references`` puts its answers on the questions that have none.
Question ids are compared as given: 81 and "81" are different ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from parrot.datasets.jsonio import DatasetError, iter_jsonl, json_type, read_file
from parrot.datasets.fastchat import QuestionId, load_answers, question_id_field
from parrot.instructions import InstructionError, parse_session_instructions


# Keys besides the question fields that are kept on load and written back by ``as_record``.
EXTRA_KEYS = ("turn_provenance", "source")


@dataclass(frozen=True)
class Protocol:
    """How a published benchmark's item is run and scored (None on a plain question file).

    ``golden`` holds the file's own assistant turns (the history answered against in golden-history
    mode); ``scored_turns`` the 1-based turns that are judged (None = all); ``judge_prompt`` a
    per-item judge prompt name; ``rubric`` a YES/NO criterion and ``expected_verdict`` the verdict that passes (MultiChallenge); ``shards`` and
    ``full_prompt`` the sharded and fully specified instruction (Lost in Conversation);
    ``instructions_in_force`` means each turn's instruction list is already cumulative (Multi-IF).
    """

    benchmark: str
    task: str = ""
    language: str = ""
    golden: tuple[str, ...] = ()
    scored_turns: tuple[int, ...] | None = None
    default_history: str = "self"
    judge_prompt: str = ""
    rubric: str = ""
    expected_verdict: str = ""
    shards: tuple[str, ...] = ()
    full_prompt: str = ""
    instructions_in_force: bool = False


@dataclass(frozen=True)
class Question:
    question_id: QuestionId
    category: str
    turns: list[str]
    references: list[str] | None = None
    # Per turn: the instructions given at that turn (see parrot.instructions), or None.
    instructions: list[list[Any]] | None = None
    # Other keys of the record (e.g. turn_provenance of an extended file).
    extra: dict[str, Any] | None = None
    # The published benchmark's protocol, for files read by parrot.datasets.published.
    protocol: Protocol | None = None

    def as_record(self) -> dict[str, Any]:
        """The question as a FastChat question-file record."""
        record: dict[str, Any] = {"question_id": self.question_id, "category": self.category, "turns": list(self.turns)}
        if self.references is not None:
            record["reference"] = list(self.references)
        if self.instructions is not None:
            record["instructions"] = [instructions_record(specs) for specs in self.instructions]
        for k, v in (self.extra or {}).items():
            record.setdefault(k, v)
        return record


def instructions_record(specs: list[Any]) -> dict[str, Any] | None:
    """One turn's instructions in the file format (None when the turn adds none)."""
    if not specs:
        return None
    return {"instruction_id_list": [s.instruction_id for s in specs], "kwargs": [dict(s.kwargs) for s in specs]}


def record_instructions(name: str, line: int, record: dict[str, Any], n_turns: int) -> list[list[Any]] | None:
    """The record's per-turn instructions, validated; errors name the file, line and field."""
    if "instructions" not in record and not any(isinstance(k, str) and k.startswith("turn_") for k in record):
        return None

    try:
        return parse_session_instructions(record, n_turns)
    except InstructionError as e:
        raise DatasetError(name, line, e.field, e.problem) from e


def load_questions(name: str, text: str | bytes) -> list[Question]:
    """Parses a question JSONL text (see the module docstring); the file must hold a question."""
    questions: list[Question] = []
    seen: dict[QuestionId, int] = {}
    for line, value in iter_jsonl(name, text):
        if not isinstance(value, dict):
            raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(value)}")
        qid = question_id_field(name, line, value)
        if qid in seen:
            raise DatasetError(name, line, "question_id", f"{qid!r} is already used by the question on line {seen[qid]}")
        category = value.get("category")
        if not isinstance(category, str) or not category.strip():
            problem = "is missing" if "category" not in value else "expected a non-empty string"
            raise DatasetError(name, line, "category", problem)
        turns = value.get("turns")
        if not _strings(turns, allow_empty_items=False):
            raise DatasetError(name, line, "turns", "expected a non-empty list of non-empty strings")
        references = value.get("reference")
        if references is not None:
            if not _strings(references, allow_empty_items=True):
                raise DatasetError(name, line, "reference", "expected a non-empty list of strings")
            if len(references) > len(turns):
                raise DatasetError(
                    name, line, "reference", f"has {len(references)} answers for {len(turns)} turns; at most one per turn"
                )
        instructions = record_instructions(name, line, value, len(turns))
        seen[qid] = line
        extra = {k: v for k, v in value.items() if k in EXTRA_KEYS}
        questions.append(Question(question_id=qid, category=category, turns=list(turns), references=references,
                                  instructions=instructions, extra=extra or None))
    if not questions:
        raise DatasetError(name, None, None, "holds no questions")
    return questions


def load_questions_file(path: str | Path) -> list[Question]:
    return load_questions(*read_file(path))


def load_references(name: str, text: str | bytes) -> dict[QuestionId, list[str]]:
    """Reference answers (the first choice's turns) from a FastChat answer file, by question id."""
    return {qid: list(answer.turns) for qid, answer in load_answers(name, text).items()}


def load_references_file(path: str | Path) -> dict[QuestionId, list[str]]:
    return load_references(*read_file(path))


def attach_references(
    questions: Sequence[Question], references: Mapping[QuestionId, Sequence[str]], *, overwrite: bool = False
) -> list[Question]:
    """The questions with reference answers from ``references`` where they have none.

    With ``overwrite`` the file's references replace the questions' own. Reference lists longer
    than a question's turns are cut to its length.
    """
    out: list[Question] = []
    for q in questions:
        ref = references.get(q.question_id)
        if ref is not None and (overwrite or q.references is None):
            q = replace(q, references=list(ref)[: len(q.turns)])
        out.append(q)
    return out


def _strings(value: Any, *, allow_empty_items: bool) -> bool:
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, str) and (allow_empty_items or v.strip()) for v in value)

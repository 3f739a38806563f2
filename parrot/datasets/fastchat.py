"""FastChat ``llm_judge`` output records: model answers, single and pairwise judgments.

The builders write exactly the fields FastChat's ``gen_model_answer.py`` and ``gen_judgment.py``
write, so FastChat's ``show_result.py`` and other tools read our files unchanged:

* answer: ``question_id, answer_id, model_id, choices[{index, turns}], tstamp``;
* single judgment: ``question_id, model, judge [judge model, prompt name], user_prompt,
  judgment, score, turn, tstamp``;
* pairwise judgment: ``question_id, model_1, model_2, g1_winner, g2_winner, judge, g1_user_prompt,
  g1_judgment, g2_user_prompt, g2_judgment, turn, tstamp``. Game 1 shows model_1 as assistant A,
  game 2 shows model_2 as A; winners are given in model terms ("model_1", "model_2", "tie").

FastChat marks a judge output it could not parse with score -1 and winner "error"; the builders
take None for those and write FastChat's markers, and the loaders turn the markers back into None.
``turn`` is 1-based and, unlike FastChat's 1-or-2, may go up to the session length (MT-Bench++).
Extra keys (for example how a score was computed) may follow FastChat's fields; FastChat ignores
them.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from parrot.datasets.jsonio import DatasetError, iter_jsonl, json_type, read_file

QuestionId = int | str
Winner = Literal["model_1", "model_2", "tie"]

FAILED_SCORE = -1  # FastChat's score for an unparsed single judgment


def judge_tuple(judge_model: str, prompt_name: str, turn: int) -> list[str]:
    """The ``judge`` field. FastChat's loaders key judgments by (judge, question, model); its own
    files have two turns, told apart by two prompt names (``single-v1``, ``single-v1-multi-turn``).
    Every later turn, and turn 2 of a prompt that is not a ``-multi-turn`` one, gets its own name
    (``<prompt>-turn2``, ``-turn3``, ...) so that no loader keeps only one judgment of a session."""
    keep = turn == 1 or (turn == 2 and prompt_name.endswith("multi-turn"))
    return [judge_model, prompt_name if keep else f"{prompt_name}-turn{turn}"]
FAILED_WINNER = "error"  # FastChat's winner for an unparsed pairwise judgment
WINNERS: tuple[str, ...] = ("model_1", "model_2", "tie")

_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_answer_id() -> str:
    """A random 22-character id in the alphabet FastChat's answer ids (shortuuid) use."""
    n = uuid.uuid4().int
    chars = []
    for _ in range(22):
        n, r = divmod(n, len(_SHORTUUID_ALPHABET))
        chars.append(_SHORTUUID_ALPHABET[r])
    return "".join(chars)


# ---------------------------------------------------------------------------- builders


def answer_record(
    question_id: QuestionId,
    model_id: str,
    turns: Sequence[str],
    *,
    answer_id: str | None = None,
    tstamp: float | None = None,
) -> dict[str, Any]:
    """A model answer record with one choice holding the answer of every turn."""
    _check_question_id(question_id)
    if not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError("turns must be a non-empty sequence of strings")
    return {
        "question_id": question_id,
        "answer_id": answer_id or new_answer_id(),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def single_judgment_record(
    *,
    question_id: QuestionId,
    model: str,
    judge_model: str,
    prompt_name: str,
    user_prompt: str,
    judgment: str,
    score: float | None,
    turn: int,
    tstamp: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A single-answer grading record; ``score`` None (judge failure) is written as -1."""
    _check_question_id(question_id)
    _check_turn(turn)
    if score is not None and not math.isfinite(score):
        raise ValueError(f"score must be finite or None, got {score!r}")
    record: dict[str, Any] = {
        "question_id": question_id,
        "model": model,
        "judge": judge_tuple(judge_model, prompt_name, turn),
        "user_prompt": user_prompt,
        "judgment": judgment,
        "score": FAILED_SCORE if score is None else score,
        "turn": turn,
        "tstamp": time.time() if tstamp is None else tstamp,
    }
    return _with_extra(record, extra)


def pairwise_judgment_record(
    *,
    question_id: QuestionId,
    model_1: str,
    model_2: str,
    g1_winner: Winner | None,
    g2_winner: Winner | None,
    judge_model: str,
    prompt_name: str,
    g1_user_prompt: str,
    g1_judgment: str,
    g2_user_prompt: str,
    g2_judgment: str,
    turn: int,
    tstamp: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A pairwise record of both games; a winner None (judge failure) is written as "error"."""
    _check_question_id(question_id)
    _check_turn(turn)
    for key, winner in (("g1_winner", g1_winner), ("g2_winner", g2_winner)):
        if winner is not None and winner not in WINNERS:
            raise ValueError(f"{key} is {winner!r}; allowed: {', '.join(WINNERS)} or None")
    record: dict[str, Any] = {
        "question_id": question_id,
        "model_1": model_1,
        "model_2": model_2,
        "g1_winner": g1_winner or FAILED_WINNER,
        "g2_winner": g2_winner or FAILED_WINNER,
        "judge": judge_tuple(judge_model, prompt_name, turn),
        "g1_user_prompt": g1_user_prompt,
        "g1_judgment": g1_judgment,
        "g2_user_prompt": g2_user_prompt,
        "g2_judgment": g2_judgment,
        "turn": turn,
        "tstamp": time.time() if tstamp is None else tstamp,
    }
    return _with_extra(record, extra)


def game_winner(label: Literal["A", "B", "tie"] | None, *, game: Literal[1, 2]) -> Winner | None:
    """A judge's A/B/tie label in model terms: game 1 shows model_1 as A, game 2 shows model_2 as A."""
    if game not in (1, 2):
        raise ValueError(f"game must be 1 or 2, got {game!r}")
    if label is None or label == "tie":
        return label
    if label not in ("A", "B"):
        raise ValueError(f"label is {label!r}; allowed: A, B, tie or None")
    first: Winner = "model_1" if game == 1 else "model_2"
    second: Winner = "model_2" if game == 1 else "model_1"
    return first if label == "A" else second


# ---------------------------------------------------------------------------- loaders


@dataclass(frozen=True)
class Answer:
    question_id: QuestionId
    model_id: str | None
    answer_id: str | None
    choices: list[list[str]]  # turns of each choice, in record order
    tstamp: float | None
    line: int

    @property
    def turns(self) -> list[str]:
        """The turns of the first choice (the one FastChat grades)."""
        return self.choices[0]


@dataclass(frozen=True)
class SingleJudgmentRecord:
    question_id: QuestionId
    model: str
    judge_model: str
    prompt_name: str
    user_prompt: str
    judgment: str
    score: float | None  # None where FastChat wrote -1
    turn: int
    tstamp: float | None
    line: int


def load_answers(name: str, text: str | bytes) -> dict[QuestionId, Answer]:
    """An answer (or reference answer) JSONL file, keyed by question id (ids must be unique).

    ``model_id``, ``answer_id`` and ``tstamp`` are optional (reference files may lack them);
    ``choices`` must be a non-empty list of ``{"turns": [str, ...]}`` objects.
    """
    answers: dict[QuestionId, Answer] = {}
    for line, value in iter_jsonl(name, text):
        rec = _object(name, line, value)
        qid = question_id_field(name, line, rec)
        if qid in answers:
            raise DatasetError(name, line, "question_id", f"{qid!r} already has an answer on line {answers[qid].line}")
        choices = rec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise DatasetError(name, line, "choices", "expected a non-empty list of {\"index\", \"turns\"} objects")
        parsed: list[list[str]] = []
        for i, choice in enumerate(choices):
            turns = choice.get("turns") if isinstance(choice, dict) else None
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise DatasetError(name, line, f"choices[{i}].turns", "expected a non-empty list of strings")
            parsed.append(list(turns))
        answers[qid] = Answer(
            question_id=qid,
            model_id=_optional_str(name, line, rec, "model_id"),
            answer_id=_optional_str(name, line, rec, "answer_id"),
            choices=parsed,
            tstamp=_optional_number(name, line, rec, "tstamp"),
            line=line,
        )
    return answers


def load_answers_file(path: str | Path) -> dict[QuestionId, Answer]:
    return load_answers(*read_file(path))


def load_single_judgments(name: str, text: str | bytes) -> list[SingleJudgmentRecord]:
    """A single-judgment JSONL file as FastChat writes it, in file order (repeats are kept)."""
    out: list[SingleJudgmentRecord] = []
    for line, value in iter_jsonl(name, text):
        rec = _object(name, line, value)
        judge = rec.get("judge")
        if not (isinstance(judge, list) and len(judge) == 2 and all(isinstance(j, str) for j in judge)):
            raise DatasetError(name, line, "judge", "expected [judge model, prompt name]")
        score = rec.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DatasetError(name, line, "score", f"must be a number, got {json_type(score)}")
        turn = rec.get("turn")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
            raise DatasetError(name, line, "turn", "must be an integer >= 1")
        out.append(
            SingleJudgmentRecord(
                question_id=question_id_field(name, line, rec),
                model=_required_str(name, line, rec, "model"),
                judge_model=judge[0],
                prompt_name=judge[1],
                user_prompt=_optional_str(name, line, rec, "user_prompt") or "",
                judgment=_optional_str(name, line, rec, "judgment") or "",
                score=None if score == FAILED_SCORE else float(score),
                turn=turn,
                tstamp=_optional_number(name, line, rec, "tstamp"),
                line=line,
            )
        )
    return out


def load_single_judgments_file(path: str | Path) -> list[SingleJudgmentRecord]:
    return load_single_judgments(*read_file(path))


# ---------------------------------------------------------------------------- field checks


def question_id_field(name: str, line: int, record: Mapping[str, Any]) -> QuestionId:
    """The record's ``question_id``: an integer or a non-empty string."""
    if "question_id" not in record:
        raise DatasetError(name, line, "question_id", "is missing")
    qid = record["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise DatasetError(name, line, "question_id", f"must be an integer or a non-empty string, got {json_type(qid)}")
    return qid


def _object(name: str, line: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DatasetError(name, line, None, f"must be a JSON object, got {json_type(value)}")
    return value


def _required_str(name: str, line: int, rec: Mapping[str, Any], key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise DatasetError(name, line, key, "is missing" if key not in rec else f"must be a string, got {json_type(value)}")
    return value


def _optional_str(name: str, line: int, rec: Mapping[str, Any], key: str) -> str | None:
    value = rec.get(key)
    if value is not None and not isinstance(value, str):
        raise DatasetError(name, line, key, f"must be a string, got {json_type(value)}")
    return value


def _optional_number(name: str, line: int, rec: Mapping[str, Any], key: str) -> float | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(name, line, key, f"must be a number, got {json_type(value)}")
    return float(value)


def _check_question_id(question_id: Any) -> None:
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)):
        raise ValueError(f"question_id must be an int or a str, got {type(question_id).__name__}")


def _check_turn(turn: Any) -> None:
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise ValueError(f"turn must be an int >= 1, got {turn!r}")


def _with_extra(record: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra key {key!r} would overwrite a FastChat field")
        record[key] = value
    return record

"""Unit tests of parrot.datasets: ShareGPT, seeds, MT-Bench questions, FastChat records.

Every fixture is written here (our own text) in the formats of the public files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parrot.conversation import Message, Role
from parrot.datasets import (
    DatasetError,
    Question,
    answer_record,
    attach_references,
    dumps_jsonl,
    game_winner,
    load_answers,
    load_answers_file,
    load_questions,
    load_questions_file,
    load_references,
    load_references_file,
    load_seeds,
    load_seeds_file,
    load_sharegpt,
    load_sharegpt_file,
    load_single_judgments,
    new_answer_id,
    pairwise_judgment_record,
    seed_queries,
    single_judgment_record,
    to_sharegpt_record,
)
from parrot.datasets.jsonio import iter_records
from parrot.errors import InvalidArgument


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def conv(record_id: object, *turns: tuple[str, str], **extra: object) -> dict:
    return {"id": record_id, "conversations": [{"from": f, "value": v} for f, v in turns], **extra}


GARDEN = conv(
    "garden_0",
    ("human", "How often should I water tomato seedlings?"),
    ("gpt", "Keep the soil moist but not soggy; usually every other day."),
    ("human", "And on hot days?"),
    ("gpt", "Check daily and water in the morning."),
    model="demo",
)
CONTINUATION = conv(
    "bikes_3",
    ("gpt", "...so the chain also needs oil after rain."),
    ("human", "Which oil is best for that?"),
    ("gpt", "A wet lube holds up better in rain."),
)
NO_HUMAN = conv("lonely_1", ("gpt", "This chunk has only an assistant turn."))
WITH_SYSTEM = conv(
    7,
    ("system", "You are a terse assistant."),
    ("user", "Name a prime number above 90."),
    ("assistant", "97."),
    ("bard", "Also 97."),
    ("ChatGPT", "Yes, 97."),
)


# ---------------------------------------------------------------------------- DatasetError


def test_dataset_error_names_file_line_field() -> None:
    err = DatasetError("questions.jsonl", 7, "turns", "expected a non-empty list of strings")
    assert str(err) == "questions.jsonl:7: field 'turns': expected a non-empty list of strings"
    assert (err.file, err.line, err.field) == ("questions.jsonl", 7, "turns")
    assert isinstance(err, ValueError) and isinstance(err, InvalidArgument)
    assert str(DatasetError("data.json", None, None, "holds no records")) == "data.json: holds no records"


# ---------------------------------------------------------------------------- ShareGPT


def test_sharegpt_jsonl_roles_ids_and_extra() -> None:
    records = load_sharegpt("chats.jsonl", jsonl(GARDEN, WITH_SYSTEM))
    assert [r.id for r in records] == ["garden_0", "7"]
    assert [r.line for r in records] == [1, 2]
    assert records[0].messages[0] == Message(Role.USER, "How often should I water tomato seedlings?")
    assert [m.role for m in records[0].messages] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]
    assert records[0].extra == {"model": "demo"}
    assert [m.role for m in records[1].messages] == [Role.SYSTEM, Role.USER] + [Role.ASSISTANT] * 3


def test_sharegpt_json_array_matches_jsonl_and_reports_record_lines() -> None:
    array_text = "[\n" + ",\n".join(json.dumps(r, indent=2) for r in (GARDEN, CONTINUATION)) + "\n]\n"
    from_array = load_sharegpt("chats.json", array_text)
    from_jsonl = load_sharegpt("chats.jsonl", jsonl(GARDEN, CONTINUATION))
    assert [(r.id, r.messages) for r in from_array] == [(r.id, r.messages) for r in from_jsonl]
    assert from_array[0].line == 2
    second_start = array_text.index('{\n  "id": "bikes_3"')
    assert from_array[1].line == array_text.count("\n", 0, second_start) + 1


def test_sharegpt_accepts_bytes_with_bom_and_blank_lines() -> None:
    data = ("\ufeff" + jsonl(GARDEN) + "\n\n" + jsonl(CONTINUATION)).encode("utf-8")
    records = load_sharegpt("chats.jsonl", data)
    assert [r.line for r in records] == [1, 4]


def test_sharegpt_empty_array_is_no_records() -> None:
    assert load_sharegpt("empty.json", "  [ ]  ") == []


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        (jsonl(GARDEN) + '{"id": "x", "conversations": [}\n', 2, None, "not valid JSON"),
        (jsonl(GARDEN, conv("odd", ("human", "hi"), ("robot", "beep"))), 2, "conversations[1].from", "'robot'"),
        (jsonl(conv("m", ("human", "hi")), {"id": "n"}), 2, "conversations", "missing"),
        (jsonl({"id": "n", "conversations": "hi"}), 1, "conversations", "must be a list"),
        (jsonl(conv("v", ("human", 3))), 1, "conversations[0].value", "must be a string"),
        (jsonl({"id": "w", "conversations": [{"value": "hi"}]}), 1, "conversations[0].from", "missing"),
        (jsonl({"id": "w", "conversations": ["hi"]}), 1, "conversations[0]", "must be an object"),
        (jsonl({"conversations": []}), 1, "id", "missing"),
        (jsonl({"id": True, "conversations": []}), 1, "id", "string or an integer"),
        (jsonl({"id": "  ", "conversations": []}), 1, "id", "empty"),
        (jsonl(["not", "an", "object"]), 1, None, "JSON object"),
        (jsonl(GARDEN, CONTINUATION, GARDEN), 3, "id", "line 1"),
    ],
)
def test_sharegpt_malformed_records_name_line_and_field(text: str, line: int, field: str | None, words: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_sharegpt("chats.jsonl", text)
    assert info.value.file == "chats.jsonl"
    assert info.value.line == line
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"chats.jsonl:{line}: ")


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('[\n{"id": "a", "conversations": []},\n{"id": "b", "conversations": []}\n', None, "is closed"),
        ('[\n{"id": "a", "conversations": []},\n', None, "is closed"),
        ('[\n{"id": "a", "conversations": []},\n{"id": "b", "conversations": [\n]\n', 5, "not valid JSON"),
        ('[\n{"id": "a", "conversations": []}\n{"id": "b", "conversations": []}\n]', 3, "expected ','"),
        ('[\n{"id": "a", "conversations": []},\n{"id": "b" "conversations": []}\n]', 3, "not valid JSON"),
        ('[{"id": "a", "conversations": []}]\n[]', 2, "extra content"),
    ],
)
def test_sharegpt_malformed_json_array(text: str, line: int | None, words: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_sharegpt("chats.json", text)
    assert info.value.line == line
    assert words in str(info.value)


def test_invalid_utf8_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="not valid UTF-8"):
        load_sharegpt("chats.jsonl", b'{"id": "a", "conversations": [{"from": "human", "value": "\xff"}]}\n')


def test_to_sharegpt_record_round_trips() -> None:
    messages = [
        Message(Role.SYSTEM, "Be kind."),
        Message(Role.USER, "Suggest a name for a grey cat."),
        Message(Role.ASSISTANT, "Pebble."),
        Message(Role.USER, "Another one?"),
        Message(Role.ASSISTANT, "Smokey."),
    ]
    record = to_sharegpt_record("run1-000", messages, {"seed_id": "cats_0", "turns": 2})
    assert record["conversations"][:2] == [
        {"from": "system", "value": "Be kind."},
        {"from": "human", "value": "Suggest a name for a grey cat."},
    ]
    assert record["conversations"][2]["from"] == "gpt"
    assert list(record)[:2] == ["id", "conversations"] and record["seed_id"] == "cats_0"
    (back,) = load_sharegpt("out.jsonl", dumps_jsonl([record]))
    assert back.id == "run1-000" and back.messages == messages and back.extra == {"seed_id": "cats_0", "turns": 2}
    with pytest.raises(ValueError, match="overwrite"):
        to_sharegpt_record("x", messages, {"id": "y"})


def test_file_loaders_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(jsonl(GARDEN), encoding="utf-8")
    assert load_sharegpt_file(path)[0].id == "garden_0"
    with pytest.raises(DatasetError, match="cannot be read") as info:
        load_sharegpt_file(tmp_path / "absent.jsonl")
    assert info.value.line is None and info.value.file.endswith("absent.jsonl")


# ---------------------------------------------------------------------------- seeds


def test_seed_queries_first_human_turn_and_skips() -> None:
    empty_first = conv("blank_2", ("human", "   "), ("gpt", "?"), ("human", "Real question"))
    records = load_sharegpt("chats.jsonl", jsonl(GARDEN, CONTINUATION, NO_HUMAN, empty_first, WITH_SYSTEM))
    seeds = seed_queries(records)
    assert [(s.id, s.query, s.source_line) for s in seeds.seeds] == [
        ("garden_0", "How often should I water tomato seedlings?", 1),
        ("bikes_3", "Which oil is best for that?", 2),
        ("7", "Name a prime number above 90.", 5),
    ]
    assert seeds.skipped == {"no_human_turn": 1, "empty_query": 1}
    assert seeds.skipped_total == 2 and seeds.format == "sharegpt"


def test_load_seeds_auto_detects_sharegpt_in_array_and_jsonl() -> None:
    array_text = json.dumps([GARDEN, NO_HUMAN], indent=1)
    for name, text in (("a.json", array_text), ("a.jsonl", jsonl(GARDEN, NO_HUMAN))):
        seeds = load_seeds(name, text)
        assert seeds.format == "sharegpt"
        assert [s.id for s in seeds.seeds] == ["garden_0"]
        assert seeds.skipped["no_human_turn"] == 1


def test_load_seeds_plain_queries() -> None:
    text = jsonl(
        "How do magnets work?",
        {"id": "q-2", "query": "  Plan a picnic for six.  "},
        {"prompt": "Write a limerick about a kettle."},
        {"id": 44, "text": "Explain tides simply."},
        {"query": ""},
    )
    seeds = load_seeds("queries.jsonl", text)
    assert seeds.format == "queries"
    assert [(s.id, s.query, s.source_line) for s in seeds.seeds] == [
        ("record-1", "How do magnets work?", 1),
        ("q-2", "Plan a picnic for six.", 2),
        ("record-3", "Write a limerick about a kettle.", 3),
        ("44", "Explain tides simply.", 4),
    ]
    assert seeds.skipped == {"no_human_turn": 0, "empty_query": 1}
    array = load_seeds("queries.json", json.dumps(["One?", "Two?"]))
    assert [(s.id, s.query) for s in array.seeds] == [("record-1", "One?"), ("record-2", "Two?")]


def test_load_seeds_forced_format_and_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl("fine", {"id": "a", "answer": "no query key"}), fmt="queries")
    assert info.value.line == 2 and "query, prompt, text" in str(info.value)
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl({"id": "a", "query": "x"}, {"id": "a", "query": "y"}))
    assert info.value.line == 2 and info.value.field == "id"
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl({"query": "x", "prompt": "y"}))
    assert info.value.field == "prompt"
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl({"query": ["x"]}))
    assert info.value.field == "query"
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl(12))
    assert info.value.line == 1
    with pytest.raises(DatasetError) as info:
        load_seeds("q.jsonl", jsonl("plain"), fmt="sharegpt")
    assert info.value.line == 1
    with pytest.raises(DatasetError, match="no records"):
        load_seeds("q.jsonl", "\n\n")
    with pytest.raises(ValueError, match="fmt"):
        load_seeds("q.jsonl", jsonl("x"), fmt="csv")  # type: ignore[arg-type]
    path = tmp_path / "seeds.jsonl"
    path.write_text(jsonl("Why is the sky blue?"), encoding="utf-8")
    assert load_seeds_file(path).seeds[0].query == "Why is the sky blue?"


# ---------------------------------------------------------------------------- MT-Bench questions


EIGHT_TURNS = {
    "question_id": 9001,
    "category": "writing",
    "turns": [f"Turn {k}: keep improving the slogan." for k in range(1, 9)],
}
MATH = {"question_id": "m-1", "category": "math", "turns": ["What is 12 * 12?", "And 13 * 13?"], "reference": ["144", "169"]}


def test_load_questions_any_number_of_turns_and_references() -> None:
    questions = load_questions("bench.jsonl", jsonl(EIGHT_TURNS) + "\n   \n" + jsonl(MATH))
    assert questions[0] == Question(9001, "writing", EIGHT_TURNS["turns"], None)
    assert len(questions[0].turns) == 8
    assert questions[1].question_id == "m-1" and questions[1].references == ["144", "169"]
    assert questions[1].as_record() == MATH
    assert "reference" not in questions[0].as_record()


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({**MATH, "question_id": 9001}, "question_id", "line 1"),
        ({"question_id": 5, "turns": ["x"]}, "category", "missing"),
        ({"question_id": 5, "category": " ", "turns": ["x"]}, "category", "non-empty string"),
        ({"question_id": 5, "category": "stem", "turns": []}, "turns", "non-empty list"),
        ({"question_id": 5, "category": "stem", "turns": ["ok", ""]}, "turns", "non-empty list"),
        ({"question_id": 5, "category": "stem", "turns": "one turn"}, "turns", "non-empty list"),
        ({"question_id": 5, "category": "stem", "turns": ["a"], "reference": ["1", "2"]}, "reference", "at most one per turn"),
        ({"question_id": 5, "category": "stem", "turns": ["a"], "reference": [3]}, "reference", "list of strings"),
        ({"question_id": True, "category": "stem", "turns": ["a"]}, "question_id", "integer or a non-empty string"),
        ({"category": "stem", "turns": ["a"]}, "question_id", "missing"),
    ],
)
def test_load_questions_malformed(record: dict, field: str, words: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_questions("questions.jsonl", jsonl(EIGHT_TURNS, record))
    assert (info.value.line, info.value.field) == (2, field)
    assert words in str(info.value)
    assert str(info.value).startswith(f"questions.jsonl:2: field '{field}': ")


def test_load_questions_rejects_non_objects_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_questions("q.jsonl", jsonl(EIGHT_TURNS) + "[1, 2]\n")
    assert info.value.line == 2 and info.value.field is None
    with pytest.raises(DatasetError, match="holds no questions"):
        load_questions("q.jsonl", "\n")
    path = tmp_path / "q.jsonl"
    path.write_text(jsonl(MATH), encoding="utf-8")
    assert load_questions_file(path)[0].category == "math"


def test_references_load_and_attach(tmp_path: Path) -> None:
    ref_text = jsonl(
        {
            "question_id": 9001,
            "model_id": "teacher",
            "choices": [{"index": 0, "turns": ["Slogan A", "Slogan B"]}],
            "tstamp": 1.5,
        },
        {"question_id": "m-1", "choices": [{"index": 0, "turns": ["One forty-four", "One sixty-nine"]}]},
    )
    refs = load_references("refs.jsonl", ref_text)
    assert refs == {9001: ["Slogan A", "Slogan B"], "m-1": ["One forty-four", "One sixty-nine"]}
    plain = {"question_id": 3, "category": "stem", "turns": ["Why?"]}
    questions = load_questions("bench.jsonl", jsonl(EIGHT_TURNS, MATH, plain))
    attached = attach_references(questions, refs)
    assert attached[0].references == ["Slogan A", "Slogan B"]
    assert attached[1].references == ["144", "169"]  # its own references are kept
    assert attached[2].references is None
    assert attach_references(questions, refs, overwrite=True)[1].references == ["One forty-four", "One sixty-nine"]
    short = attach_references([Question(1, "math", ["only turn"])], {1: ["a", "b"]})
    assert short[0].references == ["a"]
    path = tmp_path / "refs.jsonl"
    path.write_text(ref_text, encoding="utf-8")
    assert load_references_file(path) == refs


@pytest.mark.parametrize(
    "record, field",
    [
        ({"question_id": 1, "choices": []}, "choices"),
        ({"question_id": 1, "choices": [{"index": 0, "turns": []}]}, "choices[0].turns"),
        ({"question_id": 1, "choices": [{"index": 0, "turns": ["a"]}, {"index": 1, "turns": [2]}]}, "choices[1].turns"),
        ({"question_id": 1, "model_id": 5, "choices": [{"index": 0, "turns": ["a"]}]}, "model_id"),
        ({"question_id": 1, "choices": [{"index": 0, "turns": ["a"]}], "tstamp": "now"}, "tstamp"),
        ({"question_id": 7, "choices": [{"index": 0, "turns": ["a"]}]}, "question_id"),
    ],
)
def test_load_answers_malformed(record: dict, field: str) -> None:
    first = {"question_id": 7, "choices": [{"index": 0, "turns": ["ok"]}]}
    with pytest.raises(DatasetError) as info:
        load_answers("answers.jsonl", jsonl(first, record))
    assert (info.value.line, info.value.field) == (2, field)


# ---------------------------------------------------------------------------- FastChat records

SINGLE_FIELDS = ["question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"]
PAIR_FIELDS = [
    "question_id",
    "model_1",
    "model_2",
    "g1_winner",
    "g2_winner",
    "judge",
    "g1_user_prompt",
    "g1_judgment",
    "g2_user_prompt",
    "g2_judgment",
    "turn",
    "tstamp",
]


def test_answer_record_shape_and_round_trip(tmp_path: Path) -> None:
    record = answer_record(81, "parrot-chat", ["First answer.", "Second answer."], tstamp=12.5)
    assert list(record) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
    assert record["choices"] == [{"index": 0, "turns": ["First answer.", "Second answer."]}]
    assert record["tstamp"] == 12.5 and record["model_id"] == "parrot-chat"
    assert len(record["answer_id"]) == 22
    path = tmp_path / "parrot-chat.jsonl"
    path.write_text(dumps_jsonl([record, answer_record("q2", "parrot-chat", ["x"], answer_id="fixed")]), encoding="utf-8")
    answers = load_answers_file(path)
    assert answers[81].turns == ["First answer.", "Second answer."]
    assert answers[81].answer_id == record["answer_id"] and answers[81].tstamp == 12.5
    assert answers["q2"].answer_id == "fixed"
    with pytest.raises(ValueError):
        answer_record(81, "m", [])
    with pytest.raises(ValueError):
        answer_record(None, "m", ["x"])  # type: ignore[arg-type]


def test_new_answer_ids_are_distinct_shortuuid_style() -> None:
    ids = {new_answer_id() for _ in range(200)}
    assert len(ids) == 200
    alphabet = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
    assert all(len(i) == 22 and set(i) <= alphabet for i in ids)


def test_single_judgment_record_fields_and_failure_marker() -> None:
    record = single_judgment_record(
        question_id=81,
        model="parrot-chat",
        judge_model="gpt-4",
        prompt_name="single-v1-multi-turn",
        user_prompt="<prompt>",
        judgment="Good. Rating: [[8]]",
        score=8.0,
        turn=2,
        tstamp=3.0,
    )
    assert list(record) == SINGLE_FIELDS
    assert record["judge"] == ["gpt-4", "single-v1-multi-turn"]
    assert (record["score"], record["turn"], record["tstamp"]) == (8.0, 2, 3.0)
    failed = single_judgment_record(
        question_id="a", model="m", judge_model="j", prompt_name="p", user_prompt="u", judgment="no marker",
        score=None, turn=8, extra={"method": "parsed"},
    )
    assert failed["score"] == -1 and failed["method"] == "parsed" and list(failed)[:8] == SINGLE_FIELDS
    json.dumps(failed, allow_nan=False)
    for bad in ({"score": float("nan")}, {"turn": 0}, {"extra": {"score": 1}}):
        kwargs = dict(
            question_id=1, model="m", judge_model="j", prompt_name="p", user_prompt="u", judgment="x", score=5.0, turn=1
        )
        kwargs.update(bad)
        with pytest.raises(ValueError):
            single_judgment_record(**kwargs)  # type: ignore[arg-type]


def test_pairwise_judgment_record_fields() -> None:
    record = pairwise_judgment_record(
        question_id=81,
        model_1="parrot-chat",
        model_2="vicuna",
        g1_winner="model_1",
        g2_winner=None,
        judge_model="gpt-4",
        prompt_name="pair-v2-multi-turn",
        g1_user_prompt="p1",
        g1_judgment="[[A]]",
        g2_user_prompt="p2",
        g2_judgment="unclear",
        turn=3,
        tstamp=1.0,
    )
    assert list(record) == PAIR_FIELDS
    assert record["g1_winner"] == "model_1" and record["g2_winner"] == "error"
    assert record["judge"] == ["gpt-4", "pair-v2-multi-turn-turn3"]  # turns past 2 get their own judge tuple
    with pytest.raises(ValueError, match="g1_winner"):
        pairwise_judgment_record(
            question_id=1, model_1="a", model_2="b", g1_winner="A", g2_winner="tie",  # type: ignore[arg-type]
            judge_model="j", prompt_name="p", g1_user_prompt="", g1_judgment="", g2_user_prompt="", g2_judgment="", turn=1,
        )


def test_game_winner_maps_labels_per_game() -> None:
    assert game_winner("A", game=1) == "model_1" and game_winner("B", game=1) == "model_2"
    assert game_winner("A", game=2) == "model_2" and game_winner("B", game=2) == "model_1"
    assert game_winner("tie", game=2) == "tie" and game_winner(None, game=1) is None
    with pytest.raises(ValueError):
        game_winner("C", game=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        game_winner("A", game=3)  # type: ignore[arg-type]


def test_load_single_judgments_turns_failures_into_none() -> None:
    common = dict(model="m", judge_model="j", prompt_name="p", user_prompt="u", judgment="t")
    text = dumps_jsonl(
        [
            single_judgment_record(question_id=1, score=7.5, turn=1, tstamp=1.0, **common),
            single_judgment_record(question_id=1, score=None, turn=2, tstamp=2.0, **common),
        ]
    )
    rows = load_single_judgments("judgments.jsonl", text)
    assert [(r.question_id, r.turn, r.score) for r in rows] == [(1, 1, 7.5), (1, 2, None)]
    assert rows[0].judge_model == "j" and rows[0].prompt_name == "p" and rows[1].line == 2
    with pytest.raises(DatasetError) as info:
        bad = {"question_id": 2, "model": "m", "judge": "j", "score": 1, "turn": 1}
        load_single_judgments("judgments.jsonl", text + json.dumps(bad) + "\n")
    assert (info.value.line, info.value.field) == (3, "judge")


def test_iter_records_detects_format_by_first_character() -> None:
    assert [v for _, v in iter_records("x", '  \n [1, {"a": 2}]')] == [1, {"a": 2}]
    assert [v for _, v in iter_records("x", '{"a": 1}\n\n{"a": 2}\n')] == [{"a": 1}, {"a": 2}]

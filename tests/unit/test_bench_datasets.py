"""Benchmark loaders: MT-Bench questions and reference answers, N-turn files, plain sessions JSONL,
ShareGPT conversations as sessions, format detection; malformed records name file, line, field."""

from __future__ import annotations

import json

import pytest

from parrot.datasets import (
    DatasetError,
    attach_references,
    detect_session_format,
    load_eval_sessions,
    load_questions,
    load_references,
    load_sessions,
    sessions_from_sharegpt,
)
from tests.process.test_coordinator import sharegpt


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


TWO_TURN = [
    {"question_id": 7, "category": "writing", "turns": ["Write a limerick about a sleepy owl.", "Make it rhyme better."]},
    {"question_id": 8, "category": "math", "turns": ["What is 12 squared?", "And its square root?"], "reference": ["144"]},
]
EIGHT_TURN = {"question_id": "trip-1", "category": "planning",
              "turns": ["Plan a day in a small harbour town."] + [f"Now change part {i} of it." for i in range(2, 9)],
              "turn_provenance": [{"turn": 1, "source": "original"}]}


def test_mtbench_questions_and_reference_answers():
    qs = load_questions("question.jsonl", jsonl(*TWO_TURN))
    assert [q.question_id for q in qs] == [7, 8] and qs[1].references == ["144"]
    refs = load_references("ref.jsonl", jsonl(
        {"question_id": 7, "model_id": "ref-model", "choices": [{"index": 0, "turns": ["An owl...", "A better owl..."]}]}))
    merged = attach_references(qs, refs)
    assert merged[0].references == ["An owl...", "A better owl..."] and merged[1].references == ["144"]
    with pytest.raises(DatasetError) as e:
        load_references("ref.jsonl", jsonl({"question_id": 7, "choices": "nope"}))
    assert e.value.file == "ref.jsonl" and e.value.line == 1 and e.value.field and "choices" in e.value.field


def test_n_turn_file_keeps_all_turns_and_provenance():
    [q] = load_questions("mtbench_pp.jsonl", jsonl(EIGHT_TURN))
    assert len(q.turns) == 8 and q.question_id == "trip-1"
    assert q.extra == {"turn_provenance": [{"turn": 1, "source": "original"}]}
    assert q.as_record()["turn_provenance"] == EIGHT_TURN["turn_provenance"]
    with pytest.raises(DatasetError) as e:
        load_questions("mtbench_pp.jsonl", jsonl(TWO_TURN[0], dict(EIGHT_TURN, turns=["ok", ""])))
    assert (e.value.line, e.value.field) == (2, "turns")
    assert str(e.value).startswith("mtbench_pp.jsonl:2: field 'turns'")


def test_plain_sessions_jsonl():
    rows = [
        {"id": "s1", "category": "cooking", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How long do I boil an egg?"},
            {"role": "assistant", "content": "About nine minutes."},
            {"role": "user", "content": "And for a soft one?"}]},
        {"id": 2, "messages": [{"role": "user", "content": "Name three rivers."}],
         "instructions": [{"instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 3}]}]},
    ]
    qs = load_sessions("sessions.jsonl", jsonl(*rows))
    assert qs[0].turns == ["How long do I boil an egg?", "And for a soft one?"] and qs[0].category == "cooking"
    assert qs[1].category == "general" and qs[1].instructions[0][0].kwargs == {"num_bullets": 3}
    cases = [
        ({"messages": [{"role": "user", "content": "x"}]}, "id"),
        ({"id": "a", "messages": []}, "messages"),
        ({"id": "a", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"id": "a", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"id": "a", "messages": [{"role": "assistant", "content": "only me"}]}, "messages"),
        ({"id": "a", "category": 3, "messages": [{"role": "user", "content": "x"}]}, "category"),
    ]
    for bad, field in cases:
        with pytest.raises(DatasetError) as e:
            load_sessions("sessions.jsonl", jsonl(rows[0], bad))
        assert (e.value.file, e.value.line, e.value.field) == ("sessions.jsonl", 2, field), bad
    with pytest.raises(DatasetError, match="already used"):
        load_sessions("sessions.jsonl", jsonl(rows[0], rows[0]))


def test_sharegpt_conversations_as_sessions_user_turns_only():
    recs = [sharegpt("c1", ("human", "Suggest a name for a bakery."), ("gpt", "Crumb & Co."),
                     ("human", "Something warmer?"), ("gpt", "Hearth Loaves.")),
            dict(sharegpt("c2", ("gpt", "(continued)"), ("human", "Translate 'bread' to Spanish.")), category="lang")]
    qs = sessions_from_sharegpt("sg.json", json.dumps(recs, indent=1))
    assert qs[0].turns == ["Suggest a name for a bakery.", "Something warmer?"] and qs[0].category == "sharegpt"
    assert qs[1].turns == ["Translate 'bread' to Spanish."] and qs[1].category == "lang"
    with pytest.raises(DatasetError) as e:
        sessions_from_sharegpt("sg.jsonl", jsonl(recs[0], sharegpt("c3", ("gpt", "hello"))))
    assert (e.value.line, e.value.field) == (2, "conversations")
    with pytest.raises(DatasetError) as e:
        sessions_from_sharegpt("sg.jsonl", jsonl({"id": "c4", "conversations": [{"from": "robot", "value": "x"}]}))
    assert e.value.field == "conversations[0].from"


def test_format_detection_and_dispatch():
    sg = jsonl(sharegpt("c1", ("human", "Hi there, plan my week?")))
    sessions = jsonl({"id": "s", "messages": [{"role": "user", "content": "Hello?"}]})
    assert detect_session_format("a", jsonl(*TWO_TURN)) == "mtbench"
    assert detect_session_format("b", sessions) == "sessions"
    assert detect_session_format("c", sg) == "sharegpt"
    assert [len(q.turns) for q in load_eval_sessions("a", jsonl(*TWO_TURN))] == [2, 2]
    assert load_eval_sessions("c", sg)[0].turns == ["Hi there, plan my week?"]
    with pytest.raises(DatasetError) as e:
        load_eval_sessions("d.jsonl", jsonl({"prompt": "hello"}))
    assert e.value.line == 1 and "turns" in str(e.value)
    with pytest.raises(DatasetError):  # a forced format reads the file as that format
        load_eval_sessions("e.jsonl", sessions, "mtbench")

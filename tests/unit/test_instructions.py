"""Verifiable instruction checks: every registered instruction has a passing and a failing answer,
arguments are validated, the loose variants, accumulation across turns, and per-turn accuracy."""

from __future__ import annotations

import json

import pytest

from parrot.datasets import DatasetError, load_questions
from parrot.instructions import (
    REGISTRY,
    InstructionError,
    InstructionSpec,
    accumulate,
    check_session,
    instruction_summary,
    loose_variants,
    make_instruction,
    parse_session_instructions,
)

# (instruction id, kwargs, an answer that follows it, an answer that does not). Our own texts.
CASES = [
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Tea is warm.", "Tea is warm and it tastes of honey today."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "Tea is warm and sweet.", "Tea is warm."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "exactly"},
     "The kettle sang. Then it stopped!", "The kettle sang. Then it stopped. Then silence."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "First part about rivers.\n***\nSecond part about lakes.", "Only one part about rivers."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "lakes"},
     "Rivers flow.\n\nLakes rest quietly.", "Rivers flow.\n\nPonds rest quietly."),
    ("keywords:existence", {"keywords": ["lantern", "harbor"]},
     "The lantern lit the harbor.", "The lantern lit the bay."),
    ("keywords:forbidden_words", {"forbidden_words": ["very"]},
     "It was quite cold; everything was covery.", "It was very cold."),
    ("keywords:frequency", {"keyword": "moss", "frequency": 2, "relation": "at least"},
     "Moss on stones, moss on bark.", "Moss on stones, lichen on bark."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zebras zigzag.", "Horses gallop."),
    ("detectable_format:json_format", {},
     '```json\n{"city": "Lund", "rain": true}\n```', "city: Lund, rain: yes"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "Packing list:\n* socks\n* map\n- torch", "Packing list:\n* socks\n* map\n**not a bullet**"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Remember *the key* and **the code**.", "Remember the key and **the code**."),
    ("detectable_format:multiple_sections", {"section_spliter": "Part", "num_sections": 2},
     "Part 1\nBoil water.\nPart 2\nAdd leaves.", "Part 1\nBoil water and add leaves."),
    ("detectable_format:title", {}, "<<Ode to Toast>>\nCrisp and golden.", "Ode to Toast\nCrisp and golden."),
    ("detectable_format:constrained_response", {}, "I checked twice. My answer is maybe.", "Probably yes."),
    ("language:response_language", {"language": "fr"},
     "Le chat dort tranquillement sur le canapé pendant que la pluie tombe dehors.",
     "The cat sleeps quietly on the sofa while the rain falls outside."),
    ("startend:start_checker", {"start_phrase": "Dear committee"},
     "Dear committee, thank you.", "Hello committee, thank you."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "That covers it. Any other questions?  ", "Any other questions? That covers it."),
    ("startend:quotation", {}, '"All of this is quoted."', 'All of this is "partly" quoted.'),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a blue fruit."},
     "Name a blue fruit. Blueberries.", "Blueberries. Name a blue fruit."),
    ("combination:two_responses", {}, "Pasta with beans.\n******\nRice with lentils.", "Pasta with beans."),
    ("change_case:english_lowercase", {}, "all quiet on the lane.", "All quiet on the lane."),
    ("change_case:english_capital", {}, "ALL QUIET ON THE LANE.", "ALL QUIET ON THE Lane."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY IMPORTANT.", "This is VERY important."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Send it to [name] at [address].", "Send it to [name] at home."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "See you soon.\nP.S. Bring the map.", "See you soon. Bring the map."),
    ("punctuation:no_comma", {}, "Bread and butter and jam.", "Bread, butter and jam."),
]


def test_every_registered_instruction_has_cases():
    assert {c[0] for c in CASES} == set(REGISTRY), "each instruction needs a positive and a negative case"
    assert len(REGISTRY) >= 25


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_positive_and_negative(iid, kwargs, good, bad):
    inst = make_instruction(iid, kwargs)
    assert inst.check(good) is True
    assert inst.check(bad) is False
    assert inst.describe()


def test_arguments_are_validated():
    with pytest.raises(InstructionError, match="not a known instruction") as e:
        make_instruction("keywords:nope", {})
    assert e.value.field == "instruction_id"
    with pytest.raises(InstructionError) as e:
        make_instruction("length_constraints:number_words", {"num_words": "ten"})
    assert e.value.field == "num_words" and "integer" in e.value.problem
    with pytest.raises(InstructionError) as e:
        make_instruction("length_constraints:number_words", {"num_words": 3, "relation": "around"})
    assert e.value.field == "relation" and "at least" in e.value.problem
    with pytest.raises(InstructionError) as e:
        make_instruction("punctuation:no_comma", {"colour": "red"})
    assert e.value.field == "colour"
    with pytest.raises(InstructionError) as e:
        make_instruction("keywords:existence", {})
    assert e.value.field == "keywords" and "required" in e.value.problem
    # null values (IFEval-style kwargs list every key) are ignored; defaults apply.
    inst = make_instruction("length_constraints:number_words", {"num_words": 2, "relation": None, "keywords": None})
    assert inst.relation == "at least"


def test_loose_accepts_a_chatty_first_line_and_markdown():
    inst = make_instruction("detectable_format:json_format", {})
    answer = 'Sure, here it is:\n{"a": 1}'
    assert not inst.check(answer)
    assert any(inst.check(v) for v in loose_variants(answer))
    [r] = check_session([[InstructionSpec("detectable_format:json_format", {}, 1)]], [answer])[0]["results"]
    assert r["strict"] is False and r["loose"] is True
    starts = make_instruction("startend:start_checker", {"start_phrase": "Yes"})
    assert not starts.check("**Yes**, gladly.") and starts.check("**Yes**, gladly.".replace("*", ""))


def spec(iid, turn, **kw):
    return InstructionSpec(iid, kw, turn)


def test_instructions_accumulate_across_turns():
    per_turn = [
        [spec("punctuation:no_comma", 1)],
        [spec("change_case:english_lowercase", 2)],
        [],
        [spec("change_case:english_capital", 4)],  # replaces lowercase (same exclusive group)
        [spec("length_constraints:number_words", 5, num_words=3, relation="less than")],
        [spec("length_constraints:number_words", 6, num_words=10, relation="at least")],  # same id: new arguments
    ]
    active = accumulate(per_turn)
    ids = [[s.instruction_id for s in a] for a in active]
    assert ids[0] == ["punctuation:no_comma"]
    assert ids[1] == ids[2] == ["punctuation:no_comma", "change_case:english_lowercase"]
    assert ids[3] == ["punctuation:no_comma", "change_case:english_capital"]
    assert ids[5] == ["punctuation:no_comma", "change_case:english_capital", "length_constraints:number_words"]
    assert active[5][-1].kwargs == {"num_words": 10, "relation": "at least"}
    answers = ["fine, thanks", "fine thanks", "Fine thanks", "FINE THANKS", "NOT TODAY", "ONE TWO THREE FOUR FIVE SIX "
               "SEVEN EIGHT NINE TEN"]
    res = check_session(per_turn, answers)
    assert [r["prompt_strict"] for r in res] == [False, True, False, True, True, True]
    # turn 3 adds nothing yet is still checked against turns 1-2; the comma rule from turn 1 binds every turn
    assert [x["instruction_id"] for x in res[2]["results"]] == ["punctuation:no_comma", "change_case:english_lowercase"]
    assert res[2]["results"][0]["given_at_turn"] == 1
    assert [len(r["results"]) for r in res] == [1, 2, 2, 2, 3, 3]


def test_instruction_summary_per_turn_accuracy():
    recs = [
        {"category": "a", "turn": 1, "results": [{"strict": True, "loose": True}]},
        {"category": "a", "turn": 1, "results": [{"strict": False, "loose": True}]},
        {"category": "b", "turn": 2, "results": [{"strict": True, "loose": True}, {"strict": False, "loose": False}]},
        {"category": "b", "turn": 2, "results": [{"strict": True, "loose": True}, {"strict": True, "loose": True}]},
        {"category": "b", "turn": 3, "results": []},  # nothing in force: not counted
    ]
    s = instruction_summary(recs)
    t1, t2 = s["per_turn"]["1"], s["per_turn"]["2"]
    assert t1["prompt_strict"]["mean"] == 0.5 and t1["prompt_loose"]["mean"] == 1.0
    assert t2["prompt_strict"]["mean"] == 0.5 and t2["instruction_strict"]["mean"] == 0.75
    assert t2["instruction_strict"]["n"] == 4 and t2["prompt_strict"]["n"] == 2
    assert 0.0 <= t1["prompt_strict"]["low"] <= 0.5 <= t1["prompt_strict"]["high"] <= 1.0
    assert set(s["per_turn"]) == {"1", "2"}
    assert s["turn_over_turn"] == {"2": 0.0} and s["overall"]["prompt_strict"]["n"] == 4
    assert set(s["per_category"]) == {"a", "b"}


def test_session_file_instructions_are_validated_with_file_line_field():
    good = {"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now about rain.", "And snow?"],
            "instructions": [{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, None,
                             {"instruction_id_list": ["keywords:existence"], "kwargs": ['{"keywords": ["snow"]}']}]}
    [q] = load_questions("q.jsonl", json.dumps(good) + "\n")
    assert [[s.instruction_id for s in t] for t in q.instructions] == [["punctuation:no_comma"], [], ["keywords:existence"]]
    assert q.instructions[2][0].turn == 3 and q.instructions[2][0].kwargs == {"keywords": ["snow"]}
    # written back in the same record format, and read again the same
    [q2] = load_questions("q2.jsonl", json.dumps(q.as_record()) + "\n")
    assert q2.instructions == q.instructions

    bad = dict(good, instructions=[None, {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keyword": "x"}]}])
    with pytest.raises(DatasetError) as e:
        load_questions("q.jsonl", "\n" + json.dumps(bad) + "\n")
    assert e.value.line == 2 and e.value.field == "instructions[1].kwargs[0].keyword"
    bad = dict(good, instructions=[{"instruction_id_list": ["made:up"], "kwargs": [{}]}])
    with pytest.raises(DatasetError) as e:
        load_questions("q.jsonl", json.dumps(bad))
    assert e.value.field == "instructions[0].instruction_id_list[0]" and "not a known instruction" in str(e.value)
    bad = dict(good, instructions=[None] * 4)
    with pytest.raises(DatasetError, match="4 entries for 3 turns"):
        load_questions("q.jsonl", json.dumps(bad))
    bad = dict(good, instructions=[{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}])
    with pytest.raises(DatasetError) as e:
        load_questions("q.jsonl", json.dumps(bad))
    assert e.value.field == "instructions[0].kwargs"


def test_flat_per_turn_keys():
    rec = {"turn_1_instruction_id_list": ["punctuation:no_comma"], "turn_1_kwargs": ["{}"],
           "turn_2_instruction_id_list": ["detectable_format:title"], "turn_2_kwargs": [None]}
    per_turn = parse_session_instructions(rec, 3)
    assert [[s.instruction_id for s in t] for t in per_turn] == [["punctuation:no_comma"], ["detectable_format:title"], []]
    with pytest.raises(InstructionError, match="names no turn"):
        parse_session_instructions(dict(rec, turn_9_instruction_id_list=["punctuation:no_comma"]), 3)

"""Published benchmark files as they ship: detection, every loader on our fixtures in the published
record shapes, errors that name the record and field, `parrot bench check`, and the protocol
arithmetic (MT-Bench-101's minimum over turns, Lost in Conversation's aptitude / unreliability,
MultiChallenge's verdicts, pass^k)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parrot.datasets import DatasetError, detect_session_format, load_eval_sessions, load_eval_sessions_file
from services.coordinator import protocols

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"
DETECTED = {"mt-bench_extended.jsonl": "mt-eval", "mtbench101.jsonl": "mtbench101", "multi-if.jsonl": "multi-if",
            "multi-if.csv": "multi-if", "sharded_instructions.json": "lost-in-conversation",
            "benchmark_questions.jsonl": "multichallenge"}


@pytest.mark.parametrize("fixture,fmt", sorted(DETECTED.items()))
def test_each_published_shape_is_detected_and_loads_the_same_as_named(fixture, fmt):
    text = (FIXTURES / fixture).read_text()
    assert detect_session_format(fixture, text) == fmt
    auto, named = load_eval_sessions(fixture, text), load_eval_sessions(fixture, text, fmt)
    assert auto == named and all(q.protocol and q.protocol.benchmark == fmt for q in auto)


def test_mt_eval_turns_and_golden_history():
    qs = load_eval_sessions_file(FIXTURES / "mt-bench_extended.jsonl")
    assert [q.question_id for q in qs] == [901, 902, 903] and all(len(q.turns) == 5 for q in qs)
    assert qs[0].protocol.golden[1] == "(reference answer 2 for item 901)" and qs[0].protocol.default_history == "self"
    assert qs[0].references is None  # golden turns are history, not judge references


def test_mtbench101_scored_turns_prompts_and_references():
    qs = {q.protocol.task: q for q in load_eval_sessions_file(FIXTURES / "mtbench101.jsonl")}
    assert qs["CM"].protocol.scored_turns == (2, 3)  # first turn of CM is context only
    assert qs["TS"].protocol.scored_turns == (1, 2) and qs["TS"].references is None
    assert qs["GR"].references == list(qs["GR"].protocol.golden)  # the reasoning judge compares with the file's answer
    assert qs["SI"].protocol.judge_prompt == "mtbench101-si-v1" and qs["SI"].protocol.default_history == "golden"


def test_multi_if_csv_and_jsonl_agree_and_lists_are_taken_as_in_force():
    csv_qs = load_eval_sessions_file(FIXTURES / "multi-if.csv")
    json_qs = load_eval_sessions_file(FIXTURES / "multi-if.jsonl")
    assert csv_qs == [replace(q, question_id=str(q.question_id)) for q in json_qs[:3]]  # CSV cells are text
    zh = next(q for q in json_qs if q.protocol.language == "Chinese")
    assert zh.turns[0] == "描述一个下雨的早晨。" and zh.protocol.instructions_in_force
    assert [[s.instruction_id for s in t] for t in zh.instructions] == [
        ["punctuation:no_comma"], ["punctuation:no_comma", "language:response_language"],
        ["language:response_language", "detectable_content:postscript"]]
    assert zh.instructions[1][1].kwargs == {"language": "zh"}


def test_multi_if_native_values_and_a_missing_third_turn():
    rec = {"key": "k1", "language": "English", "turn_1_prompt": {"role": "user", "content": "Hi there."},
           "turn_1_instruction_id_list": ["punctuation:no_comma"], "turn_1_kwargs": [{"unused": None}],
           "turn_2_prompt": "Now shorter.", "turn_2_instruction_id_list": [], "turn_2_kwargs": [], "turn_3_prompt": "None"}
    [q] = load_eval_sessions("m.jsonl", json.dumps(rec), "multi-if")
    assert q.turns == ["Hi there.", "Now shorter."] and q.instructions[0][0].kwargs == {}


def test_lost_in_conversation_orders_shards_and_finds_the_full_instruction():
    qs = {q.question_id: q for q in load_eval_sessions_file(FIXTURES / "sharded_instructions.json")}
    code = qs["sharded-code-1"]
    assert code.turns[0] == "write a python function count_even" and code.protocol.full_prompt.startswith("def count_even")
    assert qs["sharded-math-1"].references[-1].endswith("#### 20")
    assert qs["sharded-summary-1"].protocol.full_prompt == ""  # FULL falls back to the concatenated shards


def test_multichallenge_context_and_rubric():
    q = load_eval_sessions_file(FIXTURES / "benchmark_questions.jsonl")[3]
    assert q.turns[-1] == "Now add that it starts at noon." and len(q.protocol.golden) == 2
    assert q.protocol.scored_turns == (3,) and q.protocol.rubric.startswith("Does the response say Sunday")


@pytest.mark.parametrize("fmt,record,field,problem", [
    ("mtbench101", {"task": "XX", "id": 1, "history": [{"user": "a", "bot": "b"}]}, "[1].task", "allowed: CM"),
    ("mtbench101", {"task": "GR", "id": 1, "history": [{"user": "a"}]}, "[1].history[0].bot", "is missing"),
    ("mtbench101", {"task": "CM", "id": 1, "history": [{"user": "a", "bot": "b"}]}, "[1].history", "scores from turn 2"),
    ("mt-eval", {"question_id": 1, "category": "w", "conversation": [{"user": " ", "sys": "x"}]},
     "[1].conversation[0].user", "must not be empty"),
    ("multichallenge", {"QUESTION_ID": "q", "AXIS": "A", "TARGET_QUESTION": "ok?",
                        "CONVERSATION": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "[1].CONVERSATION[1].role", "expected 'assistant'"),
    ("multichallenge", {"QUESTION_ID": "q", "AXIS": "A", "TARGET_QUESTION": "ok?", "PASS_CRITERIA": "MAYBE",
                        "CONVERSATION": [{"role": "user", "content": "a"}]}, "[1].PASS_CRITERIA", "allowed: YES, NO"),
    ("lost-in-conversation", {"task_id": "t", "task": "math", "shards": [{"shard_id": 1, "shard": "a"},
                                                                         {"shard_id": 1, "shard": "b"}]},
     "[1].shards", "repeats a shard_id"),
    ("multi-if", {"key": 2, "language": "French", "turn_1_prompt": "Salut", "turn_1_instruction_id_list": "[oops",
                  "turn_1_kwargs": "[]"}, "[1].turn_1_instruction_id_list", "not valid JSON"),
    ("multi-if", {"key": 2, "language": "French", "turn_1_prompt": "Salut",
                  "turn_1_instruction_id_list": ["no:such"], "turn_1_kwargs": [{}]}, "[1].turn_1_instruction_id_list", ""),
])
def test_a_bad_second_record_is_named_by_line_index_and_field(fmt, record, field, problem):
    good = {"mtbench101": {"task": "TS", "id": 0, "history": [{"user": "a", "bot": "b"}]},
            "mt-eval": {"question_id": 0, "category": "w", "conversation": [{"user": "u", "sys": "s"}]},
            "multichallenge": {"QUESTION_ID": "p", "AXIS": "A", "TARGET_QUESTION": "ok?",
                               "CONVERSATION": [{"role": "user", "content": "a"}]},
            "lost-in-conversation": {"task_id": "s", "task": "math", "shards": [{"shard_id": 1, "shard": "a"}]},
            "multi-if": {"key": 1, "language": "French", "turn_1_prompt": "Salut", "turn_1_instruction_id_list": [],
                         "turn_1_kwargs": []}}[fmt]
    text = json.dumps(good) + "\n" + json.dumps(record) + "\n"
    with pytest.raises(DatasetError) as err:
        load_eval_sessions("f.jsonl", text, fmt)
    assert err.value.line == 2 and err.value.field.startswith(field) and problem in err.value.problem, str(err.value)


def test_unknown_shape_lists_every_accepted_one():
    with pytest.raises(DatasetError, match="MT-Bench-101.*Multi-IF.*MultiChallenge"):
        load_eval_sessions("x.jsonl", '{"prompt": "hi"}\n')


def test_bench_check_reports_the_benchmark_and_names_a_bad_record(tmp_path):
    from parrot.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["bench", "check", str(FIXTURES / "mtbench101.jsonl")])
    assert ok.exit_code == 0 and "benchmark: mtbench101; default history: golden; judged turns: 9" in ok.output
    bad = tmp_path / "sharded.json"
    records = json.loads((FIXTURES / "sharded_instructions.json").read_text())
    records[2]["shards"][1] = {"shard": "no id"}
    bad.write_text(json.dumps(records, indent=1))
    out = runner.invoke(app, ["bench", "check", str(bad)])
    assert out.exit_code != 0 and "field '[2].shards[1].shard_id': must be an integer" in out.output


# ------------------------------------------------------------------------------------- protocols

def test_pass_k_is_the_unbiased_all_k_runs_pass_estimate():
    unit = {"question_id": 1, "expected_verdict": "YES"}
    runs = [{"judgments": [{"score": s}]} for s in (9.0, 9.0, 2.0, 9.0)]  # 3 of 4 pass
    block = protocols.pass_k_block([(unit, d) for d in runs], 4)
    assert block["1"] == pytest.approx(0.75) and block["2"] == pytest.approx(3 / 6)
    assert block["3"] == pytest.approx(1 / 4) and block["4"] == 0.0


def test_mtbench101_dialogue_score_is_the_minimum_and_tasks_are_averaged():
    items = [({"task": "CM"}, {"judgments": [{"score": 8.0}, {"score": 3.0}]}),
             ({"task": "CM"}, {"judgments": [{"score": 7.0}]}),
             ({"task": "GR"}, {"judgments": [{"score": 10.0}, {"score": 6.0}]})]
    out = protocols._mtbench101(items)
    assert out["per_task"]["CM"]["mean"] == 5.0 and out["per_task"]["GR"]["mean"] == 6.0 and out["overall"] == 5.5


def test_lost_in_conversation_aptitude_and_unreliability():
    items = [({"arm": "sharded", "question_id": 1}, {"judgments": [{"score": s}]}) for s in (1.0, 5.0, 9.0, 10.0)]
    arm = protocols._lost_in_conversation(items)["per_arm"]["sharded"]
    # scores x10 = 10, 50, 90, 100: 90th percentile 97, 10th 22 (linear interpolation)
    assert arm["aptitude"] == pytest.approx(97.0) and arm["unreliability"] == pytest.approx(75.0)
    assert arm["mean"] == pytest.approx(62.5)


def test_multichallenge_any_passing_attempt_counts_and_axes_are_averaged():
    items = [({"task": "A", "question_id": 1, "expected_verdict": "YES"}, {"judgments": [{"score": 2.0}]}),
             ({"task": "A", "question_id": 1, "expected_verdict": "YES"}, {"judgments": [{"score": 9.0}]}),
             ({"task": "A", "question_id": 2, "expected_verdict": "YES"}, {"judgments": [{"score": 5.5}]}),
             ({"task": "B", "question_id": 3, "expected_verdict": "NO"}, {"judgments": [{"score": 1.0}]})]
    out = protocols._multichallenge(items)
    assert out["per_axis"]["A"]["pass_rate"] == 0.5 and out["per_axis"]["B"]["pass_rate"] == 1.0
    assert out["overall"] == 0.75


# ----------------------------------------------------------------------- drafts in published shapes

def test_extended_drafts_in_mt_eval_and_mtbench101_shapes_load_back_with_golden_turns(tmp_path):
    from parrot.benchmarks.shapes import write_shapes

    records = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter.", "Now about rain."],
                "extension": {"status": "complete", "context_answers": ["A long poem.", "A short poem."]}},
               {"question_id": "82", "category": "math", "turns": ["1+1?", "And 2+2?"],
                "extension": {"status": "unchanged"}}]
    paths = write_shapes(records, tmp_path / "draft.jsonl", ["mt-eval", "mtbench101"], task="CM")
    assert [p.name for p in paths] == ["draft.mt-eval.jsonl", "draft.mtbench101.jsonl"]
    mteval = load_eval_sessions_file(paths[0])
    assert [q.protocol.benchmark for q in mteval] == ["mt-eval", "mt-eval"]
    assert mteval[0].protocol.golden == ("A long poem.", "A short poem.", "") and mteval[0].turns[2] == "Now about rain."
    mt101 = load_eval_sessions_file(paths[1])
    assert mt101[0].protocol.task == "CM" and mt101[0].protocol.scored_turns == (2, 3)
    assert mt101[1].protocol.golden == ("", "")  # an unchanged session has no drafted answers

"""Published benchmark files run end to end as they ship (echo backend on loopback): MT-Eval and
MT-Bench-101 in self- and golden-history modes, Multi-IF per turn and language, Lost in
Conversation's three arms with repeats, MultiChallenge's rubric verdicts; the summary names the
protocol. Fixtures are ours, in each benchmark's published record shape (tests/fixtures/published)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from parrot.backends.echo_backend import echo_reply
from parrot.conversation import Message, Role
from parrot.v1 import coordinator_pb2 as cpb
from tests.process.test_bench_eval import coordinator, models  # noqa: F401  (module fixtures: echo services + coordinator)
from tests.process.test_coordinator import coord_stub, results, wait_done

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"


def lines(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def run_eval(coordinator, fixture: str, **evaluation) -> tuple[dict, dict[str, bytes]]:
    spec = cpb.RunSpec(name=fixture, concurrency=4, evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name=fixture, content=(FIXTURES / fixture).read_bytes()), model_id="echo", **evaluation))
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        files = results(stub, run.id)
    return json.loads(files["summary.json"]), files


def golden_messages(turns: list[str], golden: list[str], k: int) -> list[Message]:
    out: list[Message] = []
    for u, g in zip(turns[: k - 1], golden):
        out += [Message(Role.USER, u), Message(Role.ASSISTANT, g)]
    return out + [Message(Role.USER, turns[k - 1])]


@pytest.mark.parametrize("history", ["self", "golden"])
def test_mt_eval_file_runs_in_both_history_modes(coordinator, history):
    summary, files = run_eval(coordinator, "mt-bench_extended.jsonl", history=history)
    assert summary["protocol"]["benchmark"] == "mt-eval" and summary["protocol"]["history"] == history
    assert history in summary["protocol"]["name"]
    assert set(summary["scores"]["per_turn"]) == {"1", "2", "3", "4", "5"} and summary["judge_failures"] == 0
    record = json.loads((FIXTURES / "mt-bench_extended.jsonl").read_text().splitlines()[0])
    turns = [c["user"] for c in record["conversation"]]
    golden = [c["sys"] for c in record["conversation"]]
    answers = lines(files["answers.jsonl"])[0]["choices"][0]["turns"]
    # Turn 3 answered against the file's own answers (golden) or the model's (self).
    expected = echo_reply(golden_messages(turns, golden, 3))
    assert (answers[2] == expected) == (history == "golden")


def test_mtbench101_golden_default_task_prompts_and_min_dialogue_score(coordinator):
    summary, files = run_eval(coordinator, "mtbench101.jsonl")
    proto = summary["protocol"]
    assert proto["benchmark"] == "mtbench101" and proto["history"] == "golden"
    judgments = lines(files["judgments.jsonl"])
    # CM skips its first turn (3 turns -> 2 judged), GR / TS / SI judge every turn: 2 + 2 + 2 + 3
    assert len(judgments) == 9
    by_q = {}
    for j in judgments:
        by_q.setdefault(j["question_id"], []).append(j)
    assert [j["turn"] for j in by_q[1]] == [2, 3]
    assert {j["judge"][1].rsplit("-turn", 1)[0] for j in by_q[1]} == {"mtbench101-cm-v1"}
    assert {j["judge"][1].rsplit("-turn", 1)[0] for j in by_q[2]} == {"mtbench101-gr-v1"}  # a reference task
    scores = lines(files["scores.jsonl"])
    for task, block in proto["per_task"].items():
        mins = {}
        for s in scores:
            if s["task"] == task:
                mins[s["question_id"]] = min(mins.get(s["question_id"], 99), s["score"])
        assert block["mean"] == pytest.approx(sum(mins.values()) / len(mins))
    assert set(proto["per_task"]) == {"CM", "GR", "TS", "SI"}


def test_mtbench101_in_self_history_mode(coordinator):
    summary, files = run_eval(coordinator, "mtbench101.jsonl", history="self")
    assert summary["protocol"]["history"] == "self"
    record = json.loads((FIXTURES / "mtbench101.jsonl").read_text().splitlines()[3])  # SI, 3 turns
    turns, golden = [h["user"] for h in record["history"]], [h["bot"] for h in record["history"]]
    answers = {a["question_id"]: a["choices"][0]["turns"] for a in lines(files["answers.jsonl"])}
    assert answers[4][2] != echo_reply(golden_messages(turns, golden, 3))


def test_multi_if_per_turn_and_per_language(coordinator):
    summary, files = run_eval(coordinator, "multi-if.jsonl", skip_judge=True)
    inst = summary["instructions"]
    assert set(inst["per_turn"]) == {"1", "2", "3"}
    langs = inst["per_language"]
    assert set(langs) == {"English", "French", "Spanish", "Italian", "Portuguese", "Russian", "Hindi", "Chinese"}
    for block in langs.values():
        assert set(block["per_turn"]) == {"1", "2", "3"}
        assert {"mean", "low", "high", "n"} <= set(block["per_turn"]["1"]["prompt_strict"])
    checks = lines(files["instructions.jsonl"])
    # Multi-IF lists are what is in force: turn 3 lifts no_comma (2 checks, not 3)
    assert {len(c["results"]) for c in checks if c["turn"] == 3} == {2}
    assert all("punctuation:no_comma" not in [r["instruction_id"] for r in c["results"]] for c in checks if c["turn"] == 3)


def test_lost_in_conversation_arms_repeats_and_pass_k(coordinator):
    summary, files = run_eval(coordinator, "sharded_instructions.json", repeats=2)
    proto = summary["protocol"]
    assert proto["benchmark"] == "lost-in-conversation"
    assert set(proto["per_arm"]) == {"full", "concat", "sharded"}
    for arm in proto["per_arm"].values():
        assert arm["items"] == 3 and arm["runs"] == 6
        assert 0 <= arm["unreliability"] <= 100 and arm["aptitude"] >= arm["mean"] - 1e-9
    answers = lines(files["answers.jsonl"])
    assert len(answers) == 3 * 3 * 2
    assert sorted({len(a["choices"][0]["turns"]) for a in answers}) == [1, 3, 4]  # full/concat 1 turn, shards 3-4
    assert set(proto["pass_k"]) >= {"1", "2", "items"} and proto["pass_k"]["items"] == 9


def test_multichallenge_rubric_verdicts(coordinator):
    summary, files = run_eval(coordinator, "benchmark_questions.jsonl")
    proto = summary["protocol"]
    assert proto["benchmark"] == "multichallenge" and proto["history"] == "golden"
    assert set(proto["per_axis"]) == {"INFERENCE_MEMORY", "INSTRUCTION_RETENTION", "SELF_COHERENCE",
                                      "RELIABLE_VERSION_EDITING"}
    judgments = lines(files["judgments.jsonl"])
    assert len(judgments) == 4 and {j["judge"][1].rsplit("-turn", 1)[0] for j in judgments} == {"multichallenge-rubric-v1"}
    assert [j["turn"] for j in judgments] == [2, 2, 2, 3]  # only the final user turn is judged
    # the echo judge's probability-weighted score is about 7: every verdict reads YES
    assert proto["overall"] == 1.0


def test_cli_eval_takes_the_published_files_with_no_conversion(coordinator, tmp_path):
    import os

    from tests.process.test_bench_eval import run_cli

    env = dict(os.environ, PARROT_COORDINATOR=coordinator.grpc_target)
    for fixture, history in (("mt-bench_extended.jsonl", "golden"), ("mtbench101.jsonl", "self")):
        r = run_cli(["eval", "--questions", str(FIXTURES / fixture), "--history", history,
                     "--out", str(tmp_path / fixture), "--max-tokens", "16"], env)
        name = "mt-eval" if fixture.startswith("mt-bench") else "mtbench101"
        assert f"protocol: {name} ({history} history)" in r.stdout
        assert json.loads((tmp_path / fixture / "summary.json").read_text())["protocol"]["history"] == history
    r = run_cli(["eval", "--questions", str(FIXTURES / "sharded_instructions.json"), "--arm", "sharded", "--arm", "full",
                 "--repeats", "2", "--max-tokens", "16"], env)
    assert "lost-in-conversation (full, sharded arms)" in r.stdout and "pass^k: k=1" in r.stdout
    assert "sharded " in r.stdout and "concat " not in r.stdout


@pytest.mark.parametrize("fixture,evaluation,needle", [
    ("mtbench101.jsonl", {"history": "gold"}, "spec.evaluation.history"),
    ("sharded_instructions.json", {"arms": ["sharded", "shards"]}, "spec.evaluation.arms[1]"),
    ("sharded_instructions.json", {"arms": ["full", "full"]}, "listed twice"),
    ("mt-bench_extended.jsonl", {"repeats": 65}, "spec.evaluation.repeats"),
    ("multi-if.jsonl", {"history": "golden"}, "no reference assistant turn"),  # Multi-IF has no golden turns
])
def test_bad_protocol_settings_are_invalid_argument_naming_the_field(coordinator, fixture, evaluation, needle):
    spec = cpb.RunSpec(name="bad", evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name=fixture, content=(FIXTURES / fixture).read_bytes()), **evaluation))
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def test_a_plain_mtbench_file_in_golden_history_with_repeats(coordinator):
    """MT-Bench's own reference answers serve as golden turns; the summary names the mode and pass^k."""
    questions = [{"question_id": 1, "category": "math", "turns": ["What is 2+2?", "And times 3?"], "reference": ["4", "12"]}]
    spec = cpb.RunSpec(name="plain", evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="q.jsonl", content=json.dumps(questions[0]).encode()), history="golden",
        repeats=3))
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        summary = json.loads(results(stub, run.id)["summary.json"])
    proto = summary["protocol"]
    assert proto["benchmark"] is None and proto["name"] == "sessions (golden history)"
    assert proto["pass_k"]["items"] == 1 and set(proto["pass_k"]) >= {"1", "2", "3"}
    assert summary["finished"] == 3  # one unit per repeat

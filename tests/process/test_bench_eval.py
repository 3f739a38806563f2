"""N-turn benchmark flow on real processes (echo backend on loopback): an 8-turn evaluation with
per-turn instruction checks and a second judge, an instructions-only run, CreateReport over both,
and the CLI session: `parrot bench extend` to 8 turns, `parrot eval` of the result, `parrot report`."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from PIL import Image

from parrot.instructions import make_instruction
from parrot.v1 import coordinator_pb2 as cpb, report_pb2
from tests.conftest import PARROT, start_service
from tests.process.test_coordinator import coord_stub, jsonl, results, start_coordinator, wait_done

INSTRUCTIONS = [
    {"instruction_id_list": ["startend:start_checker"], "kwargs": [{"start_phrase": "And"}]},
    None,
    {"instruction_id_list": ["change_case:english_capital"], "kwargs": [{}]},
    None,
    {"instruction_id_list": ["punctuation:no_comma", "keywords:forbidden_words"],
     "kwargs": [{}, {"forbidden_words": ["zeppelin"]}]},
]
SESSIONS = [
    {"question_id": 201, "category": "planning", "instructions": INSTRUCTIONS,
     "turns": ["Plan a slow Sunday in a seaside town."] + [f"Adjust step {i} of that plan." for i in range(2, 9)]},
    {"question_id": 202, "category": "coding",
     "turns": ["Write a function that reverses a word."] + [f"Extend it for case {i}." for i in range(2, 9)]},
]
TWO_TURN = [
    {"question_id": 301, "category": "writing", "turns": ["Write a note to a neighbour about a parcel.", "Shorter, please."]},
    {"question_id": 302, "category": "stem", "turns": ["Why is the sky blue?", "Explain it to a child."]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("echo"), ["all", "--backend", "echo"], wait_for="parrot.v1.Judge")
    yield sp
    assert sp.stop() == 0


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("coord")
    c = start_coordinator(tmp, (tmp / "store").as_uri(), models.grpc_target)
    c.store_dir = tmp / "store"
    yield c
    assert c.stop() == 0, c.log()[-3000:]


def lines(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def test_eight_turn_evaluation_with_instruction_checks_and_second_judge(coordinator, models):
    spec = cpb.RunSpec(name="eight", evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="mtbench_pp.jsonl", content=jsonl(SESSIONS)), model_id="echo-v1",
        second_judge=models.grpc_target), concurrency=2)
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        assert run.progress.turns == 16
        files = results(stub, run.id)
    answers = lines(files["answers.jsonl"])
    assert [len(a["choices"][0]["turns"]) for a in answers] == [8, 8]
    assert len(lines(files["judgments.jsonl"])) == 16 and len(lines(files["judgments_second.jsonl"])) == 16
    assert len(lines(files["scores.jsonl"])) == 16
    summary = json.loads(files["summary.json"])
    assert set(summary["scores"]["per_turn"]) == {str(t) for t in range(1, 9)}
    assert set(summary["scores"]["turn_over_turn"]) == {str(t) for t in range(2, 9)}
    # instructions: only session 201 carries them; every turn is checked against what is in force
    checks = lines(files["instructions.jsonl"])
    assert [c["turn"] for c in checks] == list(range(1, 9)) and {c["question_id"] for c in checks} == {201}
    assert [len(c["results"]) for c in checks] == [1, 1, 2, 2, 4, 4, 4, 4]
    words = answers[0]["choices"][0]["turns"]
    starts = make_instruction("startend:start_checker", {"start_phrase": "And"})
    for c, answer in zip(checks, words):
        assert c["results"][0]["instruction_id"] == "startend:start_checker"
        assert c["results"][0]["strict"] == starts.check(answer)
        if c["turn"] >= 3:  # echo answers are not all capitals
            assert c["results"][1] == {**c["results"][1], "instruction_id": "change_case:english_capital", "strict": False}
            assert c["prompt_strict"] is False
    inst = summary["instructions"]
    assert set(inst["per_turn"]) == {str(t) for t in range(1, 9)}
    assert inst["per_turn"]["3"]["prompt_strict"]["mean"] == 0.0
    agree = summary["judge_agreement"]
    assert agree["n"] == 16 and agree["pairwise_agreement"] == 1.0  # the same judge twice agrees with itself
    coordinator.eight_run = run.id


def test_instructions_only_run_and_create_report(coordinator, tmp_path):
    spec = cpb.RunSpec(name="inst-only", evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="s.jsonl", content=jsonl(SESSIONS)), model_id="echo-v2", skip_judge=True))
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        bad = cpb.RunSpec(evaluation=cpb.EvaluationSpec(questions=cpb.InputFile(name="t.jsonl", content=jsonl(TWO_TURN)),
                                                        skip_judge=True))
        with pytest.raises(grpc.RpcError) as e:
            stub.StartRun(cpb.StartRunRequest(spec=bad), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "skip_judge" in e.value.details()
        bad_inst = [dict(SESSIONS[0], instructions=[{"instruction_id_list": ["nope:x"], "kwargs": [{}]}])]
        with pytest.raises(grpc.RpcError) as e:
            stub.StartRun(cpb.StartRunRequest(spec=cpb.RunSpec(evaluation=cpb.EvaluationSpec(
                questions=cpb.InputFile(name="bad.jsonl", content=jsonl(bad_inst))))), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad.jsonl:1: field 'instructions[0].instruction_id_list[0]'" in e.value.details()
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        files = results(stub, run.id)
        assert lines(files["judgments.jsonl"]) == [] and len(lines(files["instructions.jsonl"])) == 8
        stub_report = coordinator_stub_report(ch)
        resp = stub_report(report_pb2.CreateReportRequest(run_ids=[coordinator.eight_run, run.id], include_content=True))
        with pytest.raises(grpc.RpcError) as e:
            stub_report(report_pb2.CreateReportRequest(run_ids=["run-20990101-000000-abcdef"]))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    by_name = {f.name: f for f in resp.files}
    assert set(by_name) == {"report.md", "report.html", "per_turn.png", "report.json"}
    img = Image.open(io.BytesIO(by_name["per_turn.png"].content))
    assert img.format == "PNG" and img.text["Turns"] == "8"
    for folder in resp.stored_under:
        assert (coordinator.store_dir / folder / "report.html").is_file()
    assert len(resp.stored_under) == 2


def coordinator_stub_report(ch):
    from parrot.v1 import coordinator_pb2_grpc

    stub = coordinator_pb2_grpc.CoordinatorStub(ch)
    return lambda req: stub.CreateReport(req, timeout=60)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    out = subprocess.run([PARROT, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout}\n{out.stderr[-3000:]}"
    return out


def test_cli_session_extend_eval_report(coordinator, models, tmp_path):
    env = dict(os.environ, PARROT_COORDINATOR=coordinator.grpc_target, PARROT_ASKER=models.grpc_target,
               PARROT_RESPONDER=models.grpc_target)
    src = tmp_path / "two_turn.jsonl"
    src.write_bytes(jsonl(TWO_TURN))
    out = tmp_path / "extended.jsonl"
    r = run_cli(["bench", "extend", str(src), "--out", str(out), "--turns", "8", "--answer-max-tokens", "16",
                 "--also-shape", "mt-eval"], env)
    assert "wrote 2 sessions (12 new turns, 0 incomplete)" in r.stdout
    mt_eval = lines((tmp_path / "extended.mt-eval.jsonl").read_bytes())  # the same draft in MT-Eval's shape
    assert [len(x["conversation"]) for x in mt_eval] == [8, 8] and all(c["sys"] for c in mt_eval[0]["conversation"][:7])
    records = lines(out.read_bytes())
    assert [len(x["turns"]) for x in records] == [8, 8] and records[0]["turns"][:2] == TWO_TURN[0]["turns"]
    for rec in records:
        prov = rec["turn_provenance"]
        assert [p["source"] for p in prov] == ["original"] * 2 + ["asker"] * 6
        assert all(p["review"] == "pending" and p["asker_model"] and p["created_at"] for p in prov[2:])
        assert len(rec["extension"]["context_answers"]) == 7
    assert "**NEW**" in out.with_suffix(".review.md").read_text()
    r = run_cli(["bench", "check", str(out)], env)
    assert "2 sessions, turns 8..8" in r.stdout
    ids = []
    for model_id in ("echo-a", "echo-b"):
        r = run_cli(["eval", "--questions", str(out), "--model-id", model_id, "--out", str(tmp_path / model_id),
                     "--max-tokens", "24"], env)
        ids.append(r.stdout.split()[1])
        assert len(lines((tmp_path / model_id / "answers.jsonl").read_bytes())[0]["choices"][0]["turns"]) == 8
    r = run_cli(["report", *ids, "--out", str(tmp_path / "report"), "--title", "a vs b"], env)
    assert "stored:" in r.stdout
    png = (tmp_path / "report" / "per_turn.png").read_bytes()
    assert Image.open(io.BytesIO(png)).text["Turns"] == "8"
    assert (tmp_path / "report" / "report.md").read_text().startswith("# a vs b")
    # the same from local output folders, and straight from the store
    run_cli(["report", str(tmp_path / "echo-a"), str(tmp_path / "echo-b"), "--out", str(tmp_path / "local")], env)
    assert (tmp_path / "local" / "report.html").is_file()
    r = run_cli(["report", *ids, "--store", coordinator.store_dir.as_uri(), "--out", str(tmp_path / "direct")], env)
    assert Path(tmp_path / "direct" / "per_turn.png").read_bytes()[:4] == b"\x89PNG"

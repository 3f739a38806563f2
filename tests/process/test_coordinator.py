"""The coordinator as real processes on loopback, against model services on the echo backend.

Evaluation and collection runs end to end (outputs in FastChat / ShareGPT formats), bad specs
rejected with nothing half-started, cancellation, round-robin over replicas, the CLI, and the
promise that matters most: SIGKILL the coordinator mid-run, restart it, and the run finishes
with every conversation exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc
from tests.conftest import PARROT, ServiceProcess, free_port, start_service
from tests.helpers.prometheus import requires_prometheus, start_prometheus

QUESTIONS = [
    {"question_id": 101, "category": "writing", "turns": ["Write a short note to a neighbour about a lost cat.",
                                                          "Now make it more formal."]},
    {"question_id": 102, "category": "math", "turns": ["What is 17 times 3?", "And divided by 3 again?"],
     "reference": ["51", "17"]},
    {"question_id": 103, "category": "coding", "turns": [f"Step {i}: extend the function to handle case {i}." for i in range(1, 9)]},
]


def sharegpt(record_id: str, *turns: tuple[str, str]) -> dict:
    """A ShareGPT record (our own text): turns are (speaker, text) with speaker human or gpt."""
    return {"id": record_id, "conversations": [{"from": who, "value": text} for who, text in turns]}


SEEDS = [
    sharegpt("s1", ("human", "How do I keep basil alive indoors?"), ("gpt", "Give it light and water.")),
    sharegpt("s2", ("gpt", "(continued)"), ("human", "Plan a picnic menu for six people.")),  # starts mid-conversation
    sharegpt("s3", ("human", "Explain what a hash map is.")),
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


#: The tests' coordinators may call any service on loopback (they start several); the target policy
#: itself is tested in test_security.py with none allowed.
LOOPBACK_TARGETS = {"PARROT_ALLOWED_TARGETS": "127.0.0.1:*=upstream"}


def start_coordinator(tmp: Path, store: str, models: str, env: dict[str, str] | None = None,
                      args: list[str] | None = None, ports: tuple[int, int] | None = None) -> ServiceProcess:
    """`parrot serve coordinator` on free loopback ports (or ``ports``), with every model role pointing at ``models``."""
    return start_service(tmp, ["coordinator", "--store", store, "--responder", models, "--asker", models, "--judge", models,
                               *(args or [])], env_extra={**LOOPBACK_TARGETS, **(env or {})},
                         wait_for="parrot.v1.Coordinator", ports=ports)


def coord_stub(ch: grpc.Channel) -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(ch)


def kill9(sp: ServiceProcess) -> None:
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait(10)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("echo"), ["all", "--backend", "echo"], wait_for="parrot.v1.Judge",
                       env_extra={"PARROT_ECHO_DELAY_S": "0.05"})
    yield sp
    assert sp.stop() == 0


@pytest.fixture
def coordinator(tmp_path, models):
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target)
    yield c
    assert c.stop() == 0, c.log()[-3000:]


def eval_spec(questions=QUESTIONS, **kw) -> cpb.RunSpec:
    spec = cpb.RunSpec(name="t", evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="questions.jsonl", content=jsonl(questions)), model_id="echo-model"), **kw)
    return spec


def wait_done(stub, run_id: str, timeout: float = 120) -> cpb.Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stub.GetRun(cpb.GetRunRequest(run_id=run_id), timeout=10)
        if run.state in (cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} not done after {timeout}s")


def results(stub, run_id: str) -> dict[str, bytes]:
    r = stub.GetRunResults(cpb.GetRunResultsRequest(run_id=run_id, include_content=True), timeout=30)
    return {a.name: a.content for a in r.artifacts}


def test_evaluation_run_end_to_end(coordinator):
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(concurrency=2)), timeout=30)
        events = list(stub.WatchRun(cpb.WatchRunRequest(run_id=run.id), timeout=120))
        assert events[0].type == cpb.RUN_EVENT_TYPE_SNAPSHOT
        assert events[-1].state == cpb.RUN_STATE_SUCCEEDED
        assert sum(e.type == cpb.RUN_EVENT_TYPE_CONVERSATION_FINISHED for e in events) == 3
        done = stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=10)
        assert done.progress.finished == 3 and done.progress.failed == 0 and done.progress.turns == 12
        assert done.progress.judge_failures == 0
        files = results(stub, run.id)
    answers = [json.loads(x) for x in files["answers.jsonl"].decode().splitlines()]
    assert [a["question_id"] for a in answers] == [101, 102, 103]
    assert [len(a["choices"][0]["turns"]) for a in answers] == [2, 2, 8]
    assert all(a["model_id"] == "echo-model" and a["answer_id"] and a["tstamp"] for a in answers)
    judgments = [json.loads(x) for x in files["judgments.jsonl"].decode().splitlines()]
    assert len(judgments) == 12
    assert {(j["question_id"], j["turn"]) for j in judgments} == {(101, 1), (101, 2), (102, 1), (102, 2)} | {
        (103, t) for t in range(1, 9)}
    assert all(1 <= j["score"] <= 10 and j["model"] == "echo-model" and len(j["judge"]) == 2 for j in judgments)
    # FastChat's loaders key judgments by (judge tuple, question, model): every turn of the 8-turn session survives.
    assert len({(tuple(j["judge"]), j["question_id"], j["model"]) for j in judgments}) == 12
    summary = json.loads(files["summary.json"])
    assert summary["judge_failures"] == 0 and summary["finished"] == 3
    per_turn = summary["scores"]["per_turn"]
    assert set(map(int, per_turn)) == set(range(1, 9))
    assert per_turn["1"]["n"] == 3 and per_turn["8"]["n"] == 1
    assert per_turn["1"]["low"] <= per_turn["1"]["mean"] <= per_turn["1"]["high"]
    # the per-turn means behind the ParrotEvalScoreRegression alert (charts/parrot/files/parrot-alerts.rules.yaml)
    from prometheus_client.parser import text_string_to_metric_families

    metrics = httpx.get(f"{coordinator.http_url}/metrics", timeout=10).text
    samples = {(s.name, s.labels.get("turn")): s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.labels.get("name") == "t" and s.labels.get("model_id") == "echo-model"}
    for turn in ("1", "8"):
        assert samples[("parrot_eval_turn_score", turn)] == pytest.approx(per_turn[turn]["mean"])
    assert samples[("parrot_eval_last_run_timestamp_seconds", None)] > 0


def test_collection_run_end_to_end(coordinator):
    spec = cpb.RunSpec(collection=cpb.CollectionSpec(
        seeds=cpb.InputFile(name="seeds.jsonl", content=jsonl(SEEDS)), min_turns=3, max_turns=3), seed=5)
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        files = results(stub, run.id)
    rows = [json.loads(x) for x in files["dataset.jsonl"].decode().splitlines()]
    assert len(rows) == 3
    first_turns = [r["conversations"][0]["value"] for r in rows]
    assert first_turns == ["How do I keep basil alive indoors?", "Plan a picnic menu for six people.", "Explain what a hash map is."]
    for r in rows:
        roles = [m["from"] for m in r["conversations"]]
        assert roles == ["human", "gpt"] * 3, roles
        assert r["metadata"]["turns"] == 3 and r["metadata"]["models"]["responder"] == "echo"
    stats = json.loads(files["stats.json"])
    assert stats["sessions"] == 3 and stats["turns_per_session"] == 3


@pytest.mark.parametrize("mutate,code,needle", [
    (lambda s: s.ClearField("evaluation"), grpc.StatusCode.INVALID_ARGUMENT, "spec.kind"),
    (lambda s: s.evaluation.questions.CopyFrom(cpb.InputFile(url="file:///nonexistent/q.jsonl")),
     grpc.StatusCode.PERMISSION_DENIED, "file:///nonexistent/q.jsonl is outside the folders"),
    (lambda s: s.evaluation.questions.CopyFrom(cpb.InputFile(name="q.jsonl", content=jsonl(QUESTIONS[:1]) + b"{not json\n")),
     grpc.StatusCode.INVALID_ARGUMENT, "q.jsonl:2"),
    (lambda s: s.targets.CopyFrom(cpb.Targets(responder=f"127.0.0.1:{free_port()}")),
     grpc.StatusCode.FAILED_PRECONDITION, "spec.targets.responder"),
    (lambda s: s.retry.CopyFrom(cpb.RetryPolicy(max_attempts=99)), grpc.StatusCode.INVALID_ARGUMENT, "spec.retry.max_attempts"),
], ids=["no kind", "file outside the input roots", "malformed line", "unreachable endpoint", "bad retry"])
def test_bad_specs_are_rejected_and_nothing_starts(tmp_path, coordinator, mutate, code, needle):
    spec = eval_spec()
    mutate(spec)
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        before = len(stub.ListRuns(cpb.ListRunsRequest(), timeout=10).runs)
        with pytest.raises(grpc.RpcError) as e:
            stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
        assert e.value.code() == code, e.value.details()
        assert needle in e.value.details(), e.value.details()
        assert len(stub.ListRuns(cpb.ListRunsRequest(), timeout=10).runs) == before
    assert not list((tmp_path / "store").glob("runs/*"))


def test_collection_turns_below_one_is_invalid(coordinator):
    spec = cpb.RunSpec(collection=cpb.CollectionSpec(seeds=cpb.InputFile(name="s.jsonl", content=jsonl(SEEDS)), min_turns=0))
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_turns" in e.value.details()


def many_questions(n: int) -> list[dict]:
    return [{"question_id": i, "category": "writing", "turns": [f"Question {i}, part one.", f"Part two of {i}."]}
            for i in range(n)]


def test_cancel_stops_promptly_and_keeps_a_consistent_record(tmp_path, coordinator):
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(200), concurrency=2)), timeout=30)
        time.sleep(1.0)
        t0 = time.monotonic()
        cancelled = stub.CancelRun(cpb.CancelRunRequest(run_id=run.id), timeout=30)
        assert time.monotonic() - t0 < 5
        assert cancelled.state == cpb.RUN_STATE_CANCELLED
        assert 0 < cancelled.progress.finished < 200
        units = list((tmp_path / "store" / "runs" / run.id / "units").glob("*.json"))
        assert len(units) == cancelled.progress.finished + cancelled.progress.failed
        again = stub.CancelRun(cpb.CancelRunRequest(run_id=run.id), timeout=30)  # idempotent
        assert again.state == cpb.RUN_STATE_CANCELLED


def test_sigkill_mid_run_resumes_with_each_conversation_exactly_once(tmp_path, models):
    store = (tmp_path / "store").as_uri()
    c = start_coordinator(tmp_path, store, models.grpc_target)
    n = 60
    with grpc.insecure_channel(c.grpc_target) as ch:
        run = coord_stub(ch).StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=4)), timeout=30)
    units_dir = tmp_path / "store" / "runs" / run.id / "units"
    deadline = time.monotonic() + 60
    while len(list(units_dir.glob("*.json"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    kill9(c)
    done_before = len(list(units_dir.glob("*.json")))
    assert 0 < done_before < n, done_before
    c2 = start_coordinator(tmp_path, store, models.grpc_target)  # resumes by itself
    try:
        with grpc.insecure_channel(c2.grpc_target) as ch:
            final = wait_done(coord_stub(ch), run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert final.progress.finished == n and final.progress.failed == 0
            files = results(coord_stub(ch), run.id)
        ids = [json.loads(x)["question_id"] for x in files["answers.jsonl"].decode().splitlines()]
        assert sorted(ids) == list(range(n))  # each exactly once
        judged = [(json.loads(x)["question_id"], json.loads(x)["turn"]) for x in files["judgments.jsonl"].decode().splitlines()]
        assert len(judged) == len(set(judged)) == 2 * n
        assert "run resumed" in c2.log_path.read_text()
    finally:
        assert c2.stop() == 0


def test_round_robin_over_replicas(tmp_path):
    replicas = [start_service(tmp_path, ["responder", "--backend", "echo"]) for _ in range(2)]
    judge = start_service(tmp_path, ["judge", "--backend", "echo"], wait_for="parrot.v1.Judge")
    try:
        c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), judge.grpc_target)
        spec = eval_spec(many_questions(12), concurrency=4)
        spec.targets.responder = "ipv4:" + ",".join(r.grpc_target for r in replicas)
        spec.targets.judge = judge.grpc_target
        with grpc.insecure_channel(c.grpc_target) as ch:
            run = wait_done(coord_stub(ch), coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED
        counts = []
        for r in replicas:
            text = httpx.get(f"{r.http_url}/metrics", timeout=10).text
            counts.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith('parrot_rpc_requests_total{') and 'method="Respond"' in line))
        assert sum(counts) == 24 and min(counts) >= 4, counts
        assert c.stop() == 0
    finally:
        for sp in [*replicas, judge]:
            sp.stop()


def test_cli_eval_collect_and_runs(tmp_path, coordinator):
    qfile = tmp_path / "q.jsonl"
    qfile.write_bytes(jsonl(QUESTIONS[:2]))
    env = dict(os.environ, PARROT_COORDINATOR=coordinator.grpc_target)
    out = subprocess.run([PARROT, "eval", "--questions", str(qfile), "--model-id", "m1", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "turn  mean" in out.stdout
    assert "2/2 conversations" in out.stderr  # progress lines when not a terminal
    assert (tmp_path / "o" / "answers.jsonl").is_file() and (tmp_path / "o" / "judgments.jsonl").is_file()
    spec_file = tmp_path / "collect.yaml"
    sfile = tmp_path / "seeds.jsonl"
    sfile.write_bytes(jsonl(SEEDS))
    spec_file.write_text(f"name: yaml-run\ncollection:\n  seeds: {sfile}\n  min_turns: 2\nconcurrency: 2\n")
    out = subprocess.run([PARROT, "collect", "--spec", str(spec_file)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([PARROT, "runs", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "yaml-run" in out.stdout and out.stdout.count("succeeded") == 2
    run_id = out.stdout.splitlines()[1].split()[0]
    out = subprocess.run([PARROT, "runs", "show", run_id], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and run_id in out.stdout
    out = subprocess.run([PARROT, "eval", "--questions", str(tmp_path / "missing.jsonl")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "--questions" in out.stderr
    out = subprocess.run([PARROT, "runs", "show", "run-nope"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "NOT_FOUND" in out.stderr


def test_runs_live_in_s3(tmp_path, models, monkeypatch):
    """The coordinator's store on a real S3 protocol (moto on loopback), read back with the unmodified minio client."""
    from minio import Minio

    from tests.helpers.s3server import Moto

    s3 = Moto()
    s3.start()
    env = {"PARROT_S3_ENDPOINT": s3.endpoint, "PARROT_S3_ACCESS_KEY": "test-access", "PARROT_S3_SECRET_KEY": "test-secret-123"}
    c = start_coordinator(tmp_path, "s3://parrot-runs/team-a", models.grpc_target, env=env)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            run = coord_stub(ch).StartRun(cpb.StartRunRequest(spec=eval_spec(QUESTIONS[:2])), timeout=30)
            final = wait_done(coord_stub(ch), run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert final.output_url == f"s3://parrot-runs/team-a/runs/{run.id}"
            files = results(coord_stub(ch), run.id)
        assert len(files["answers.jsonl"].decode().splitlines()) == 2
        client = Minio(s3.endpoint.removeprefix("http://"), access_key="test-access", secret_key="test-secret-123", secure=False)
        keys = {o.object_name for o in client.list_objects("parrot-runs", prefix=f"team-a/runs/{run.id}/", recursive=True)}
        assert {f"team-a/runs/{run.id}/run.json", f"team-a/runs/{run.id}/outputs/answers.jsonl",
                f"team-a/runs/{run.id}/outputs/judgments.jsonl", f"team-a/runs/{run.id}/units/0000000.json"} <= keys
        assert "test-secret-123" not in c.log_path.read_text()
    finally:
        assert c.stop() == 0
        s3.stop()


@requires_prometheus
def test_prometheus_reads_coordinator_turns(tmp_path, models):
    """A real Prometheus on loopback scrapes the coordinator and a model service during a small run."""
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target)
    prom = start_prometheus(tmp_path / "prom", {"coordinator": [c.http_url.removeprefix("http://")],
                                                "models": [models.http_url.removeprefix("http://")]})
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            run = wait_done(coord_stub(ch), coord_stub(ch).StartRun(cpb.StartRunRequest(spec=eval_spec()), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED
        result = prom.wait_for('sum(parrot_coordinator_turns_total{kind="evaluation"})',
                               lambda r: bool(r) and float(r[0]["value"][1]) >= 12, timeout=45)
        assert float(result[0]["value"][1]) == 12
        models_seen = prom.wait_for('sum(parrot_rpc_requests_total{job="models",method="GradeSingle",code="OK"})',
                                    lambda r: bool(r) and float(r[0]["value"][1]) > 0, timeout=45)
        assert float(models_seen[0]["value"][1]) >= 12
    finally:
        prom.stop()
        assert c.stop() == 0


def test_pairwise_and_failed_conversations_are_recorded(coordinator, models):
    questions = QUESTIONS[:2] + [{"question_id": 999, "category": "writing", "turns": ["x" * 250_000]}]  # over the limit
    spec = eval_spec(questions, concurrency=3)
    spec.evaluation.pairwise = True
    spec.evaluation.baseline_model_id = "baseline-echo"
    spec.targets.baseline_responder = models.grpc_target
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        assert run.state == cpb.RUN_STATE_SUCCEEDED and run.progress.finished == 2 and run.progress.failed == 1
        files = results(stub, run.id)
    failures = [json.loads(x) for x in files["failures.jsonl"].decode().splitlines()]
    assert len(failures) == 1 and failures[0]["id"] == "999"
    assert "RESOURCE_EXHAUSTED after 1 attempt(s)" in failures[0]["reason"] and "characters" in failures[0]["reason"]
    pairs = [json.loads(x) for x in files["pairwise.jsonl"].decode().splitlines()]
    assert len(pairs) == 4 and {p["model_2"] for p in pairs} == {"baseline-echo"}
    assert all(p["g1_winner"] in ("model_1", "model_2", "tie") and p["g2_winner"] in ("model_1", "model_2", "tie")
               for p in pairs)
    summary = json.loads(files["summary.json"])
    assert summary["failed"] == 1 and sum(summary["pairwise"][k] for k in ("model_1", "model_2", "tie")) == 4

"""Faults on loopback, each bounded in time: what the platform promises when things break.

- a model service SIGKILLed mid-evaluation and restarted: the run completes, every conversation
  once, no judge score missing;
- the coordinator SIGKILLed mid-run, for every run kind: the resumed run's outputs equal those
  of an uninterrupted run with the same seed (echo backends are deterministic);
- the object store (S3, moto) down for a while: the run pauses, says so in events, run message
  and metrics, and completes when the store is back;
- a slow model service: per-call deadlines fire, retries back off, cancel returns promptly;
- a store that cannot be written (a file where a folder must go; a file-size limit like a full
  disk): the run fails with a clear message and, after the fix, `parrot runs resume` finishes it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import httpx
import pytest

from parrot.v1 import coordinator_pb2 as cpb
from parrot.model_clients import Retry
from tests.conftest import PARROT, REPO, ServiceProcess, free_port, start_service, terminate, wait_serving
from tests.process.test_coordinator import (
    coord_stub,
    eval_spec,
    jsonl,
    kill9,
    many_questions,
    results,
    sharegpt,
    start_coordinator,
    wait_done,
)

pytestmark = pytest.mark.timeout(300)


def metric(http_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a Prometheus metric's samples (matching ``labels``) on a service's /metrics."""
    total = 0.0
    for line in httpx.get(f"{http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in (labels or {}).items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unit_files(store_dir: Path, run_id: str) -> list[Path]:
    return sorted((store_dir / "runs" / run_id / "units").glob("*.json"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("echo"), ["all", "--backend", "echo"], wait_for="parrot.v1.Judge",
                       env_extra={"PARROT_ECHO_DELAY_S": "0.05"})
    yield sp
    assert sp.stop() == 0


# ------------------------------------------------------------------- model service killed


def test_model_service_killed_mid_evaluation_then_restarted(tmp_path):
    ports = (free_port(), free_port())
    env = {"PARROT_ECHO_DELAY_S": "0.05"}
    models = start_service(tmp_path, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge", env_extra=env, ports=ports)
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target)
    n = 40
    spec = eval_spec(many_questions(n), concurrency=4,
                     retry=cpb.RetryPolicy(max_attempts=20, initial_backoff_s=0.2, max_backoff_s=4, call_deadline_s=30))
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            run = coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
            wait_for(lambda: len(unit_files(tmp_path / "store", run.id)) >= 4, 60, "a few conversations")
            kill9(models)
            assert len(unit_files(tmp_path / "store", run.id)) < n
            time.sleep(1.0)  # calls fail (UNAVAILABLE) and are retried meanwhile
            models = start_service(tmp_path, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge", env_extra=env,
                                   ports=ports)
            final = wait_done(coord_stub(ch), run.id, timeout=180)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert (final.progress.finished, final.progress.failed, final.progress.judge_failures) == (n, 0, 0)
            files = results(coord_stub(ch), run.id)
        answers = [json.loads(x) for x in files["answers.jsonl"].decode().splitlines()]
        assert sorted(a["question_id"] for a in answers) == list(range(n))  # each exactly once
        judged = [json.loads(x) for x in files["judgments.jsonl"].decode().splitlines()]
        assert len({(j["question_id"], j["turn"]) for j in judged}) == len(judged) == 2 * n
        assert all(1 <= j["score"] <= 10 for j in judged)  # no judge score missing
        assert metric(c.http_url, "parrot_coordinator_model_retries_total", {"code": "UNAVAILABLE"}) > 0
    finally:
        models.stop()
        assert c.stop() == 0


# ------------------------------------------------------------------- coordinator killed, every kind


def _collection_spec(n: int) -> cpb.RunSpec:
    seeds = [sharegpt(f"s{i}", ("human", f"Seed question number {i}: how do I start a small garden {i}?"))
             for i in range(n)]
    return cpb.RunSpec(collection=cpb.CollectionSpec(seeds=cpb.InputFile(name="seeds.jsonl", content=jsonl(seeds)),
                                                     min_turns=2, max_turns=4), seed=11, concurrency=4)


def _collection_outputs(files: dict[str, bytes]) -> object:
    rows = [json.loads(x) for x in files["dataset.jsonl"].decode().splitlines()]
    return sorted((r["metadata"]["seed_id"], r["conversations"], r["metadata"]["turns"], r["metadata"]["ended"]) for r in rows)


def _evaluation_spec(n: int) -> cpb.RunSpec:
    return eval_spec(many_questions(n), concurrency=4, seed=11)


def _evaluation_outputs(files: dict[str, bytes]) -> object:
    answers = sorted((a["question_id"], a["choices"][0]["turns"])
                     for a in map(json.loads, files["answers.jsonl"].decode().splitlines()))
    scores = sorted((j["question_id"], j["turn"], j["score"])
                    for j in map(json.loads, files["judgments.jsonl"].decode().splitlines()))
    return answers, scores


def _negatives_spec(n: int) -> cpb.RunSpec:
    from tests.process.test_negatives import many_conversations, negatives_spec

    return negatives_spec(many_conversations(n), concurrency=4, seed=11)


def _negatives_outputs(files: dict[str, bytes]) -> object:
    from parrot.datasets.capo import load_preferences

    rows = load_preferences("preferences.jsonl", files["preferences.jsonl"])
    keys = [(r["source_id"], r["turn"], r["strategy"]) for r in rows]
    assert len(keys) == len(set(keys))  # every pair once
    return sorted((r["source_id"], r["turn"], r["strategy"], r["chosen"][0]["content"], r["rejected"][0]["content"])
                  for r in rows)


#: Run kinds: how to build a spec of n conversations, and the deterministic part of its outputs.
RUN_KINDS: dict[str, tuple[Callable[[int], cpb.RunSpec], Callable[[dict[str, bytes]], object]]] = {
    "collection": (_collection_spec, _collection_outputs),
    "evaluation": (_evaluation_spec, _evaluation_outputs),
    "negatives": (_negatives_spec, _negatives_outputs),
}


@pytest.mark.parametrize("kind", sorted(RUN_KINDS))
def test_coordinator_killed_mid_run_matches_an_uninterrupted_run(tmp_path, models, kind):
    make_spec, outputs = RUN_KINDS[kind]
    n = 40
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target)
    with grpc.insecure_channel(c.grpc_target) as ch:
        reference = wait_done(coord_stub(ch), coord_stub(ch).StartRun(cpb.StartRunRequest(spec=make_spec(n)), timeout=30).id)
        assert reference.state == cpb.RUN_STATE_SUCCEEDED, reference.message
        expected = outputs(results(coord_stub(ch), reference.id))
        run = coord_stub(ch).StartRun(cpb.StartRunRequest(spec=make_spec(n)), timeout=30)
    wait_for(lambda: len(unit_files(store_dir, run.id)) >= 6, 60, "a few conversations")
    kill9(c)
    done_before = len(unit_files(store_dir, run.id))
    assert 0 < done_before < n, done_before
    c2 = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target)
    try:
        with grpc.insecure_channel(c2.grpc_target) as ch:
            final = wait_done(coord_stub(ch), run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert final.progress.finished == n and final.progress.failed == 0
            got = outputs(results(coord_stub(ch), run.id))
        assert len(unit_files(store_dir, run.id)) == n  # nothing done twice, nothing lost
        assert got == expected
    finally:
        assert c2.stop() == 0


# ------------------------------------------------------------------- object store down for a while


def test_object_store_outage_pauses_the_run_and_it_completes(tmp_path, models):
    from tests.helpers.s3server import Moto

    s3 = Moto()
    s3.start()
    env = {"PARROT_S3_ENDPOINT": s3.endpoint, "PARROT_S3_ACCESS_KEY": "outage-access", "PARROT_S3_SECRET_KEY": "outage-secret"}
    c = start_coordinator(tmp_path, "s3://parrot-outage/runs-a", models.grpc_target, env=env)
    n = 40
    events: list[cpb.RunEvent] = []
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=2)), timeout=30)

            def watch() -> None:
                for ev in stub.WatchRun(cpb.WatchRunRequest(run_id=run.id), timeout=240):
                    events.append(ev)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            wait_for(lambda: stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=10).progress.finished >= 3, 60,
                     "a few conversations")
            s3.stop()
            paused = wait_for(lambda: (r := stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=10)).message.startswith(
                "paused") and r, 60, "the run to say it is paused")
            assert "object store failing" in paused.message and paused.state == cpb.RUN_STATE_RUNNING
            assert metric(c.http_url, "parrot_coordinator_runs_paused") == 1
            assert metric(c.http_url, "parrot_coordinator_storage_retries_total") > 0
            finished = paused.progress.finished
            time.sleep(1.5)  # paused: nothing is counted that was not persisted
            assert stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=10).progress.finished == finished
            s3.start()
            final = wait_done(stub, run.id, timeout=180)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert final.progress.finished == n and final.progress.failed == 0
            files = results(stub, run.id)
            watcher.join(30)
        assert sorted(json.loads(x)["question_id"] for x in files["answers.jsonl"].decode().splitlines()) == list(range(n))
        retry_events = [e for e in events if e.type == cpb.RUN_EVENT_TYPE_STORAGE_RETRY]
        assert retry_events and "retrying" in retry_events[0].message
        assert any(e.message == "object store is back; run continues" for e in events)
        assert metric(c.http_url, "parrot_coordinator_runs_paused") == 0
        assert "outage-secret" not in c.log()
    finally:
        assert c.stop() == 0
        if s3.running:
            s3.stop()


# ------------------------------------------------------------------- slow model service


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("slow"), ["all", "--backend", "echo", "--grace-s", "1"],
                       wait_for="parrot.v1.Judge", env_extra={"PARROT_ECHO_DELAY_S": "20"})
    yield sp
    sp.stop()


def test_slow_model_service_deadlines_fire_and_retries_back_off(tmp_path, slow_models):
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), slow_models.grpc_target)
    spec = eval_spec(many_questions(2), concurrency=2,
                     retry=cpb.RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=1, call_deadline_s=0.5))
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            run = wait_done(coord_stub(ch), coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id, 60)
            files = results(coord_stub(ch), run.id)
        assert run.progress.failed == 2 and run.progress.finished == 0
        failures = [json.loads(x) for x in files["failures.jsonl"].decode().splitlines()]
        assert all("respond: DEADLINE_EXCEEDED after 3 attempt(s)" in f["reason"] for f in failures), failures
        assert metric(c.http_url, "parrot_coordinator_model_retries_total", {"code": "DEADLINE_EXCEEDED"}) == 4
        retries = [json.loads(line) for line in c.log().splitlines()
                   if line.startswith("{") and "model call failed, retrying" in line]
        assert sorted(r["attempt"] for r in retries) == [1, 1, 2, 2]
        assert all(0 <= r["sleep_s"] <= 0.4 for r in retries if r["attempt"] == 2)  # cap 0.2 * 2
    finally:
        assert c.stop() == 0


def test_backoff_is_jittered_and_capped_exponentially():
    r = Retry(initial_backoff_s=0.5, max_backoff_s=10.0)
    for attempt, cap in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]):
        samples = [r.backoff(attempt) for _ in range(300)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.8  # it does use the room it has
        assert len(set(samples)) > 250  # jittered, so retries of many calls spread out


def test_cancel_returns_promptly_while_calls_hang(tmp_path, slow_models):
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), slow_models.grpc_target)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(8), concurrency=4)), timeout=30)
            wait_for(lambda: stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=10).progress.in_flight == 4, 30,
                     "calls in flight")
            t0 = time.monotonic()
            cancelled = stub.CancelRun(cpb.CancelRunRequest(run_id=run.id), timeout=30)
            took = time.monotonic() - t0
        assert cancelled.state == cpb.RUN_STATE_CANCELLED
        assert took < 10, took  # the model calls in flight would take 20 s
        assert cancelled.progress.in_flight == 0 and cancelled.progress.finished == 0
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- local store cannot be written


def _resume_cli(target: str, run_id: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PARROT_COORDINATOR=target)
    return subprocess.run([PARROT, "runs", "resume", run_id], capture_output=True, text=True, env=env, timeout=60)


def test_store_path_blocked_fails_cleanly_then_resumes_after_the_fix(tmp_path, models):
    """A file where the store needs a folder (works as root too, unlike chmod), for longer than
    the coordinator's --storage-retry-s: the run pauses, then fails with a clear message."""
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, args=["--storage-retry-s", "2"])
    n = 30
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=2)), timeout=30)
            blocker = store_dir / "runs" / run.id / "outputs"
            blocker.write_text("not a folder")
            failed = wait_done(stub, run.id)
            assert failed.state == cpb.RUN_STATE_FAILED
            assert "object store failed" in failed.message and str(blocker) in failed.message, failed.message
            assert "a file stands where the store needs a folder" in failed.message
            assert f"parrot runs resume {run.id}" in failed.message
            assert failed.progress.finished == n  # the conversations themselves are kept
            blocker.unlink()  # the fix
            out = _resume_cli(c.grpc_target, run.id)
            assert out.returncode == 0, out.stderr
            final = wait_done(stub, run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            files = results(stub, run.id)
        assert sorted(json.loads(x)["question_id"] for x in files["answers.jsonl"].decode().splitlines()) == list(range(n))
        assert len(unit_files(store_dir, run.id)) == n
        with grpc.insecure_channel(c.grpc_target) as ch, pytest.raises(grpc.RpcError) as e:
            coord_stub(ch).ResumeRun(cpb.ResumeRunRequest(run_id=run.id), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "succeeded" in e.value.details()
    finally:
        assert c.stop() == 0


def _coordinator_with_file_size_limit(tmp: Path, store: str, models: str, limit: int,
                                      retry_s: float = 2.0) -> ServiceProcess:
    """The coordinator with RLIMIT_FSIZE: writing a file past ``limit`` bytes fails (EFBIG), as on a full disk;
    such a write pauses the run for ``retry_s`` (--storage-retry-s) before the run fails.

    Its log goes through a pipe (pipes are not subject to the limit) to a file.
    """
    gport, hport = free_port(), free_port()
    log_path = tmp / f"coordinator-limited-{gport}.log"

    def limit_writes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = dict(os.environ, PARROT_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    env.pop("PARROT_AUTH_TOKEN", None)
    proc = subprocess.Popen(
        [PARROT, "serve", "coordinator", "--store", store, "--responder", models, "--asker", models, "--judge", models,
         "--host", "127.0.0.1", "--grpc-port", str(gport), "--http-port", str(hport), "--storage-retry-s", str(retry_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=limit_writes)

    def copy() -> None:
        with open(log_path, "ab") as f:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                f.write(chunk)
                f.flush()

    threading.Thread(target=copy, daemon=True).start()
    sp = ServiceProcess(proc, f"127.0.0.1:{gport}", f"http://127.0.0.1:{hport}", log_path, None)
    try:
        wait_serving(sp.grpc_target, "parrot.v1.Coordinator", proc, log_path)
    except BaseException:
        terminate(proc, 30, "coordinator", sp.log)
        raise
    return sp


def test_disk_full_fails_cleanly_then_resumes_after_the_fix(tmp_path, models):
    store_dir = tmp_path / "store"
    n = 60  # answers.jsonl outgrows the limit; each conversation record and run.json fit
    c = _coordinator_with_file_size_limit(tmp_path, store_dir.as_uri(), models.grpc_target, limit=12_000)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=4)),
                                                timeout=30).id)
        assert run.state == cpb.RUN_STATE_FAILED
        assert "File too large" in run.message and "resume" in run.message, run.message
        assert run.progress.finished == n
        assert "Traceback" not in run.message
    finally:
        assert c.stop() == 0
    c2 = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target)  # the fix: no limit
    try:
        out = _resume_cli(c2.grpc_target, run.id)
        assert out.returncode == 0 and run.id in out.stdout, out.stderr
        with grpc.insecure_channel(c2.grpc_target) as ch:
            final = wait_done(coord_stub(ch), run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            files = results(coord_stub(ch), run.id)
        assert sorted(json.loads(x)["question_id"] for x in files["answers.jsonl"].decode().splitlines()) == list(range(n))
        assert len(unit_files(store_dir, run.id)) == n
    finally:
        assert c2.stop() == 0

"""Runs ride out faults: outages pause instead of failing, store faults fail visibly and resume,
failed work retries in place. Real processes on loopback, echo backends, SIGKILL and RLIMIT_FSIZE.

- a model service down for 5 s under the default retry policy: the run pauses (GetRun, events,
  metrics say so), nothing fails, it goes on within seconds of the service's return;
- a role down past the run's outage budget: the run stops as failed, the conversations cut short
  are failures (not short records), and `resume --retry-failed` finishes it when the role is back;
- a full disk (RLIMIT_FSIZE lowered on the live coordinator) for a few seconds: the run pauses and
  finishes without an operator, nothing lost or duplicated;
- a final state the store refuses: GetRun reports it, the coordinator writes it once it can,
  resume works from it;
- a judge score that cannot be had fails the conversation; `resume --retry-failed` reruns exactly
  the failed units of a succeeded run;
- a coordinator killed and restarted: in-flight count and elapsed time right, interrupted writes
  cleaned, and a following `parrot eval` re-attaches and still downloads `--out`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from parrot.v1 import coordinator_pb2 as cpb
from tests.conftest import PARROT, free_port, start_service
from tests.process.test_coordinator import (
    SEEDS,
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
from tests.process.test_faults import _coordinator_with_file_size_limit, metric, unit_files, wait_for

pytestmark = pytest.mark.timeout(300)
ECHO = {"PARROT_ECHO_DELAY_S": "0.05"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Echo model services (every role) shared by the tests that do not kill them."""
    sp = echo_models(tmp_path_factory.mktemp("echo"), (free_port(), free_port()))
    yield sp
    assert sp.stop() == 0


def echo_models(tmp: Path, ports: tuple[int, int]):
    return start_service(tmp, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge", env_extra=ECHO, ports=ports)


def get(stub, run_id: str) -> cpb.Run:
    return stub.GetRun(cpb.GetRunRequest(run_id=run_id), timeout=10)


def records(store_dir: Path, run_id: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in unit_files(store_dir, run_id)]


def cli(*args: str, coordinator: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PARROT_COORDINATOR=coordinator)
    env.pop("PARROT_AUTH_TOKEN", None)
    return subprocess.run([PARROT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def watch_events(stub, run_id: str, into: list) -> threading.Thread:
    def run() -> None:
        try:
            for ev in stub.WatchRun(cpb.WatchRunRequest(run_id=run_id), timeout=240):
                into.append(ev)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------- 1. outages pause


def test_model_service_outage_pauses_the_run_and_nothing_fails(tmp_path):
    """Today's defaults failed 52 of 100 conversations over a 5 s restart; now the run waits."""
    ports = (free_port(), free_port())
    svc = echo_models(tmp_path, ports)
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), svc.grpc_target)
    n = 100
    events: list[cpb.RunEvent] = []
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=16)), timeout=30)
            watcher = watch_events(stub, run.id, events)
            wait_for(lambda: len(unit_files(store_dir, run.id)) >= 10, 60, "a few conversations")
            kill9(svc)
            t_kill = time.monotonic()
            paused = wait_for(lambda: (r := get(stub, run.id)).paused_reason and r, 15, "the run to say it is paused")
            assert paused.state == cpb.RUN_STATE_RUNNING and paused.paused_since > 0
            assert paused.message.startswith("paused: ") and "unavailable since" in paused.message, paused.message
            assert "outage_budget_s" in paused.paused_reason
            assert metric(c.http_url, "parrot_coordinator_runs_paused", {"cause": "model_service"}) >= 1
            done = len(unit_files(store_dir, run.id))
            time.sleep(max(0.0, 5.0 - (time.monotonic() - t_kill)))  # a 5 s outage
            held = get(stub, run.id)
            assert len(unit_files(store_dir, run.id)) == done and held.progress.failed == 0  # nothing ends meanwhile
            svc = echo_models(tmp_path, ports)
            t_back = time.monotonic()
            wait_for(lambda: len(unit_files(store_dir, run.id)) > done, 10, "the run to go on")
            assert time.monotonic() - t_back < 4.0  # reconnects promptly (gRPC's own backoff would wait longer)
            final = wait_done(stub, run.id, timeout=180)
            watcher.join(30)
        assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
        assert (final.progress.finished, final.progress.failed, final.progress.judge_failures) == (n, 0, 0)
        assert final.paused_reason == "" and final.paused_since == 0
        assert sorted(r["data"]["metadata"]["question_id"] for r in records(store_dir, run.id)) == list(range(n))
        assert any(e.type == cpb.RUN_EVENT_TYPE_PAUSED and "unavailable" in e.message for e in events)
        assert any(e.message.endswith("is back; run continues") for e in events)
        assert metric(c.http_url, "parrot_coordinator_runs_paused") == 0
    finally:
        rc = c.stop()
        svc.stop()
        assert rc == 0


def test_role_down_past_the_budget_fails_short_sessions_and_retry_failed_finishes(tmp_path, models):
    """A collection whose asker stays down: sessions cut short are failures with the reason (not
    1-turn records in dataset.jsonl); after the asker is back, resume --retry-failed finishes."""
    asker_ports = (free_port(), free_port())
    asker = echo_models(tmp_path, asker_ports)
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target)
    n = 40
    seeds = [sharegpt(f"s{i}", ("human", f"Seed question {i}: how do I repot a fern number {i}?")) for i in range(n)]
    spec = cpb.RunSpec(collection=cpb.CollectionSpec(seeds=cpb.InputFile(name="seeds.jsonl", content=jsonl(seeds)),
                                                     min_turns=3), concurrency=4,
                       targets=cpb.Targets(asker=asker.grpc_target), retry=cpb.RetryPolicy(outage_budget_s=2))
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
            wait_for(lambda: len(unit_files(store_dir, run.id)) >= 4, 60, "a few conversations")
            kill9(asker)
            stopped = wait_done(stub, run.id, timeout=60)
            assert stopped.state == cpb.RUN_STATE_FAILED
            assert "asker unavailable for more than 2s" in stopped.message and "resume" in stopped.message, stopped.message
            recs = records(store_dir, run.id)
            failed = [r for r in recs if r["status"] == "failed"]
            assert failed and all("ask: UNAVAILABLE" in r["reason"] and "outage budget" in r["reason"] for r in failed)
            finished = [r for r in recs if r["status"] == "finished"]
            assert all(r["data"]["turns"] == 3 and "asker_failed" not in r["data"]["drops"] for r in finished)
            assert len(recs) < n  # the rest were not started: nothing lost, they run on resume
            asker = echo_models(tmp_path, asker_ports)
            out = cli("runs", "resume", run.id, "--retry-failed", coordinator=c.grpc_target)
            assert out.returncode == 0, out.stderr
            final = wait_done(stub, run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED and final.progress.failed == 0, final.message
            files = results(stub, run.id)
        rows = [json.loads(x) for x in files["dataset.jsonl"].decode().splitlines()]
        assert sorted(r["metadata"]["seed_id"] for r in rows) == sorted(f"s{i}" for i in range(n))  # each once
        assert all(r["metadata"]["turns"] == 3 for r in rows)
        assert len(unit_files(store_dir, run.id)) == n
    finally:
        rc = c.stop()
        asker.stop()
        assert rc == 0


# ------------------------------------------------------------------- 2. store faults


def test_disk_full_for_a_while_pauses_and_the_run_finishes_without_an_operator(tmp_path, models):
    store_dir = tmp_path / "store"
    c = _coordinator_with_file_size_limit(tmp_path, store_dir.as_uri(), models.grpc_target,
                                          limit=resource.RLIM_INFINITY, retry_s=600)
    n = 80
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=4)), timeout=30)
            wait_for(lambda: len(unit_files(store_dir, run.id)) >= 5, 60, "a few conversations")
            resource.prlimit(c.proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # the disk is full
            paused = wait_for(lambda: (r := get(stub, run.id)).paused_reason and r, 15, "the run to pause")
            assert "File too large" in paused.paused_reason and paused.state == cpb.RUN_STATE_RUNNING
            assert "goes on by itself" in paused.paused_reason and "resume the run" not in paused.paused_reason
            shown = cli("runs", "show", run.id, coordinator=c.grpc_target).stdout
            assert "running (paused: object store failing" in shown and "  paused since " in shown, shown
            assert metric(c.http_url, "parrot_coordinator_runs_paused", {"cause": "object_store"}) == 1
            done = len(unit_files(store_dir, run.id))
            time.sleep(3)
            assert len(unit_files(store_dir, run.id)) == done and get(stub, run.id).state == cpb.RUN_STATE_RUNNING
            resource.prlimit(c.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            final = wait_done(stub, run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED, final.message
            assert final.progress.finished == n and final.progress.failed == 0 and not final.paused_reason
            files = results(stub, run.id)
        answers = [json.loads(x)["question_id"] for x in files["answers.jsonl"].decode().splitlines()]
        assert sorted(answers) == list(range(n))  # nothing lost, nothing twice
        assert len(unit_files(store_dir, run.id)) == n
        assert not list(store_dir.rglob("*.parrot-tmp"))
    finally:
        assert c.stop() == 0


def test_final_state_the_store_refuses_is_reported_then_written_and_resumable(tmp_path, models):
    """run.json cannot be written (a folder stands in its place) for longer than --storage-retry-s:
    the run fails, GetRun says so (not 'running' forever), the coordinator writes the state once
    the store allows, and resume finishes the run."""
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, args=["--storage-retry-s", "2"])
    n = 60
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=2)), timeout=30)
            wait_for(lambda: len(unit_files(store_dir, run.id)) >= 3, 60, "a few conversations")
            record = store_dir / "runs" / run.id / "run.json"

            def block() -> bool:
                try:
                    record.unlink(missing_ok=True)
                    record.mkdir()
                    return True
                except FileExistsError:  # the coordinator wrote it meanwhile
                    return False

            wait_for(block, 10, "run.json blocked")
            failed = wait_done(stub, run.id, timeout=60)
            assert failed.state == cpb.RUN_STATE_FAILED, failed.message
            assert "not yet recorded in the object store" in failed.message and f"parrot runs resume {run.id}" in failed.message
            out = cli("runs", "show", run.id, coordinator=c.grpc_target)
            assert "failed" in out.stdout.splitlines()[0], out.stdout
            record.rmdir()  # the fix; no operator step for the record itself
            stored = wait_for(lambda: record.is_file() and json.loads(record.read_text()), 40, "the final state written")
            assert stored["state"] == "RUN_STATE_FAILED" and "not yet recorded" not in stored["message"]
            assert "not yet recorded" not in get(stub, run.id).message
            out = cli("runs", "resume", run.id, coordinator=c.grpc_target)
            assert out.returncode == 0, out.stderr
            final = wait_done(stub, run.id)
            assert final.state == cpb.RUN_STATE_SUCCEEDED and final.progress.finished == n, final.message
        assert len(unit_files(store_dir, run.id)) == n
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- 3, 4. honest, retryable failures


def test_missing_judge_score_fails_the_conversation_and_retry_failed_reruns_only_it(tmp_path, models):
    store_dir = tmp_path / "store"
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target)
    questions = many_questions(6)
    questions[2]["reference"] = ["r" * 200_001, "ok"]  # over the judge's --max-input-chars: turn 1 cannot be graded
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=eval_spec(questions, concurrency=3)),
                                                timeout=30).id)
            assert run.state == cpb.RUN_STATE_SUCCEEDED and (run.progress.finished, run.progress.failed) == (5, 1)
            assert run.progress.judge_failures == 0
            files = results(stub, run.id)
            failures = [json.loads(x) for x in files["failures.jsonl"].decode().splitlines()]
            assert len(failures) == 1 and failures[0]["id"] == "2", failures
            assert "turn 1 not graded" in failures[0]["reason"] and "reference_answer" in failures[0]["reason"]
            summary = json.loads(files["summary.json"])
            assert summary["judge_failures"] == 0 and summary["scores"]["overall"]["n"] == 10
            before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in unit_files(store_dir, run.id)}
            out = cli("runs", "resume", run.id, "--retry-failed", coordinator=c.grpc_target)
            assert out.returncode == 0, out.stderr
            again = wait_done(stub, run.id)
            assert again.state == cpb.RUN_STATE_SUCCEEDED and (again.progress.finished, again.progress.failed) == (5, 1)
            after = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in unit_files(store_dir, run.id)}
            assert after.keys() == before.keys()
            redone = [k for k in after if after[k] != before[k]]
            assert redone == [k for k in before if '"status": "failed"' in before[k][1]]  # only the failed one
            answers = [json.loads(x)["question_id"] for x in results(stub, run.id)["answers.jsonl"].decode().splitlines()]
            assert sorted(answers) == [0, 1, 3, 4, 5]
            with pytest.raises(grpc.RpcError) as e:  # nothing to retry in a run with no failures is said so
                clean = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(2))),
                                                      timeout=30).id)
                stub.ResumeRun(cpb.ResumeRunRequest(run_id=clean.id, retry_failed=True), timeout=10)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "nothing to retry" in e.value.details()
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- 6, 7, 9c. coordinator killed


def test_after_a_kill_in_flight_elapsed_and_temporary_files_are_right(tmp_path, models):
    store_dir = tmp_path / "store"
    ports = (free_port(), free_port())
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, ports=ports)
    n, concurrency = 600, 16
    with grpc.insecure_channel(c.grpc_target) as ch:
        stub = coord_stub(ch)
        run = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(many_questions(n), concurrency=concurrency)), timeout=30)
        record = store_dir / "runs" / run.id / "run.json"
        wait_for(lambda: len(unit_files(store_dir, run.id)) >= 20, 60, "some conversations")
        started_at = get(stub, run.id).started_at
        saved = record.stat().st_mtime_ns
        wait_for(lambda: record.stat().st_mtime_ns != saved, 10, "a save of run.json")
        time.sleep(1.8)  # run.json is saved at most every 2 s: kill just before the next save
        t_kill = time.time()
        kill9(c)
    assert len(unit_files(store_dir, run.id)) < n
    leftover = store_dir / "runs" / run.id / "units" / ".0000000.json.deadbeef.parrot-tmp"
    leftover.write_bytes(b'{"half": ')  # a write the kill cut short
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, ports=ports)
    try:
        assert not leftover.exists()
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            first = get(stub, run.id)
            assert first.progress.elapsed_s >= (t_kill - started_at) - 0.6, (first.progress.elapsed_s, t_kill - started_at)
            most = 0
            while (r := get(stub, run.id)).state == cpb.RUN_STATE_RUNNING:
                most = max(most, r.progress.in_flight)
                time.sleep(0.05)
            assert r.state == cpb.RUN_STATE_SUCCEEDED, r.message
        assert 0 < most <= concurrency, most
        assert len(unit_files(store_dir, run.id)) == n
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- 8. the CLI re-attaches


def test_following_cli_reattaches_after_a_coordinator_restart_and_downloads_out(tmp_path, models):
    store_dir = tmp_path / "store"
    ports = (free_port(), free_port())
    c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, ports=ports)
    n = 150
    qfile = tmp_path / "questions.jsonl"
    qfile.write_bytes(jsonl(many_questions(n)))
    out_dir = tmp_path / "out"
    env = dict(os.environ, PARROT_COORDINATOR=c.grpc_target)
    env.pop("PARROT_AUTH_TOKEN", None)
    follower = subprocess.Popen([PARROT, "eval", "--questions", str(qfile), "--concurrency", "4", "--out", str(out_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: any(len(list(d.glob("units/*.json"))) >= 5 for d in (store_dir / "runs").glob("run-*")), 60,
                 "the run under way")
        kill9(c)
        time.sleep(1.0)
        c = start_coordinator(tmp_path, store_dir.as_uri(), models.grpc_target, ports=ports)
        stdout, stderr = follower.communicate(timeout=180)
        assert follower.returncode == 0, stderr[-3000:]
        assert "Reconnecting" in stderr or "re-attached" in stderr, stderr[-2000:]
        assert "succeeded" in stdout
        answers = [json.loads(x)["question_id"] for x in (out_dir / "answers.jsonl").read_text().splitlines()]
        assert sorted(answers) == list(range(n))
    finally:
        if follower.poll() is None:
            follower.kill()
        assert c.stop() == 0


# ------------------------------------------------------------------- 5, 9. input checks as the API's


@pytest.mark.parametrize("flags,needle", [
    (["--turns", "0"], "--turns: is 0; a conversation needs at least 1 user turn"),
    (["--turns", "-3"], "--turns: is -3; a conversation needs at least 1 user turn"),
    (["--min-turns", "4", "--max-turns", "2"], "--max-turns: is 2; it must be >= --min-turns (4)"),
])
def test_collect_turn_flags_are_checked_like_the_api(tmp_path, flags, needle):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(jsonl(SEEDS))
    out = cli("collect", "--seeds", str(seeds), *flags, coordinator=f"127.0.0.1:{free_port()}", timeout=60)
    assert out.returncode == 2 and needle in out.stderr, out.stderr


def test_a_spec_with_two_run_kinds_gets_the_same_answer_from_both_commands(tmp_path):
    spec = tmp_path / "both.yaml"
    spec.write_text("name: both\ncollection:\n  min_turns: 2\nevaluation:\n  model_id: m\n")
    said = []
    for command in ("collect", "eval"):
        out = cli(command, "--spec", str(spec), coordinator=f"127.0.0.1:{free_port()}", timeout=60)
        assert out.returncode == 2, out.stderr
        said.append(out.stderr.strip())
    assert said[0] == said[1] and "has 2 run kinds" in said[0] and "'collection':2" in said[0], said


def test_a_malformed_default_target_stops_the_coordinator_at_start(tmp_path):
    out = subprocess.run([PARROT, "serve", "coordinator", "--responder", "not a host::", "--store",
                          (tmp_path / "s").as_uri(), "--grpc-port", str(free_port()), "--http-port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--responder: 'not a host::' is not a gRPC address" in out.stderr, out.stderr


def test_spec_targets_are_validated_by_the_api(tmp_path, models):
    c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            for targets, where in ((cpb.Targets(responder="not a host::"), "spec.targets.responder"),
                                   (cpb.Targets(baseline_responder="ipv4:127.0.0.1:1,x y"), "spec.targets.baseline_responder")):
                with pytest.raises(grpc.RpcError) as e:
                    coord_stub(ch).StartRun(cpb.StartRunRequest(spec=eval_spec(targets=targets)), timeout=30)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
                assert where in e.value.details() and "is not a gRPC address" in e.value.details()
        qfile = tmp_path / "q.jsonl"
        qfile.write_bytes(jsonl(many_questions(1)))
        out = cli("eval", "--questions", str(qfile), "--responder", "not a host::", coordinator=c.grpc_target)
        assert out.returncode == 2 and "INVALID_ARGUMENT: spec.targets.responder" in out.stderr, out.stderr
        assert not list((tmp_path / "store").glob("runs/*"))
    finally:
        assert c.stop() == 0

"""`parrot up` (model services + coordinator as one local stack) driven by the CLI, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from parrot.client import wait_until_serving
from tests.conftest import PARROT, REPO, free_port


def test_parrot_up_then_eval_and_collect(tmp_path):
    ports = {k: free_port() for k in ("grpc", "http", "coord", "coord_http")}
    env = dict(os.environ, PARROT_HOME=str(tmp_path / "home"), PARROT_LOG_LEVEL="WARNING")
    env.pop("PARROT_AUTH_TOKEN", None)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([PARROT, "up", "--backend", "echo", "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                           "--coordinator-port", str(ports["coord"]), "--coordinator-http-port", str(ports["coord_http"])],
                          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_until_serving(f"127.0.0.1:{ports['coord']}", "parrot.v1.Coordinator", 120,
                           lambda: None if up.poll() is None else f"parrot up exited {up.returncode}")
        wait_until_serving(f"127.0.0.1:{ports['grpc']}", "parrot.v1.Judge", 120)
        questions = tmp_path / "eight_turns.jsonl"
        questions.write_text(json.dumps({"question_id": "q1", "category": "roleplay",
                                         "turns": [f"Turn {i}: continue the story." for i in range(1, 9)]}) + "\n")
        cli_env = dict(env, PARROT_COORDINATOR=f"127.0.0.1:{ports['coord']}")
        out = subprocess.run([PARROT, "eval", "--questions", str(questions), "--out", str(tmp_path / "eval")],
                             capture_output=True, text=True, env=cli_env, timeout=120)
        assert out.returncode == 0, out.stderr
        summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
        assert set(summary["scores"]["per_turn"]) == {str(t) for t in range(1, 9)}
        seeds = tmp_path / "seeds.json"
        seeds.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "What is a B-tree?"}]}]))
        out = subprocess.run([PARROT, "collect", "--seeds", str(seeds), "--turns", "3", "--out", str(tmp_path / "data")],
                             capture_output=True, text=True, env=cli_env, timeout=120)
        assert out.returncode == 0, out.stderr
        row = json.loads((tmp_path / "data" / "dataset.jsonl").read_text().splitlines()[0])
        assert len(row["conversations"]) == 6
        assert (tmp_path / "home" / "store" / "runs").is_dir()  # the embedded default store
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, (tmp_path / "up.log").read_text()[-3000:]
        log.close()


def test_parrot_up_stopped_during_startup_exits_cleanly(tmp_path):
    import socket
    import time

    ports = {k: free_port() for k in ("grpc", "http", "coord", "coord_http")}
    env = dict(os.environ, PARROT_HOME=str(tmp_path / "home"), PARROT_LOG_LEVEL="WARNING")
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen([PARROT, "up", "--backend", "echo", "--grpc-port", str(ports["grpc"]),
                               "--http-port", str(ports["http"]), "--coordinator-port", str(ports["coord"]),
                               "--coordinator-http-port", str(ports["coord_http"])],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the model services have bound their port: `up` is starting
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", ports["grpc"])) == 0:
                break
        time.sleep(0.05)
    up.send_signal(signal.SIGTERM)
    rc = up.wait(60)
    text = (tmp_path / "up.log").read_text()
    assert rc == 0 and "error:" not in text, text[-3000:]

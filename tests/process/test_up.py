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
        clients_work_unmodified(ports["http"], ports["grpc"])
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


def clients_work_unmodified(http_port: int, grpc_port: int) -> None:
    """The clients users pick, unmodified, against `parrot up`: the `openai` SDK, kserve's
    InferenceRESTClient (v2) and InferenceGRPCClient (Open Inference Protocol), and grpcurl's
    procedure over reflection v1 (tests/helpers/reflection_client.py; grpcurl itself cannot be installed here)."""
    import asyncio

    import grpc
    import openai
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    from tests.helpers import reflection_client

    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0, timeout=60)
    reply = sdk.chat.completions.create(model="responder", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="responder", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True))
    assert sdk.models.retrieve("responder").id == "responder"
    try:
        sdk.chat.completions.create(model="responder", messages=[{"role": "user", "content": "hi"}], max_tokens=10**7)
        raise AssertionError("max_tokens over the limit was accepted")
    except openai.APIStatusError as e:  # a 4xx in OpenAI's shape, naming the field
        assert 400 <= e.status_code < 500 and e.body["param"] == "max_tokens", (e.status_code, e.body)
    assert sdk.chat.completions.create(model="responder", messages=[{"role": "user", "content": "again"}], max_tokens=4)

    def request() -> InferRequest:
        body = {"conversation": {"messages": [{"role": "ROLE_USER", "content": "hi"}]}, "params": {"max_tokens": 8}}
        return InferRequest(model_name="responder", infer_inputs=[InferInput("request", [1], "BYTES", [json.dumps(body)])])

    async def kserve_clients() -> None:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        base = f"http://127.0.0.1:{http_port}"
        assert await rest.is_server_ready(base) and await rest.is_model_ready(base, "responder")
        assert json.loads((await rest.infer(base, request(), model_name="responder")).outputs[0].data[0])["text"]
        await rest.close()
        oip = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", timeout=60)
        assert await oip.is_server_live() and await oip.is_model_ready("judge")
        assert json.loads((await oip.infer(request())).outputs[0].data[0])["text"]
        await oip.close()

    asyncio.run(kserve_clients())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:  # grpcurl list / grpcurl -d '{...}' ...
        assert {"parrot.v1.Responder", "parrot.v1.Judge", "parrot.v1.Asker", "inference.GRPCInferenceService",
                "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(reflection_client.list_services(ch))
        out = reflection_client.call_json(ch, "parrot.v1.Responder/Respond", {
            "conversation": {"messages": [{"role": "ROLE_USER", "content": "What is a B-tree?"}]}, "params": {"maxTokens": 8}})
        assert out["text"] and out["finishReason"].startswith("FINISH_REASON_"), out
        try:
            reflection_client.call_json(ch, "parrot.v1.Responder/Respond", {"conversation": {"messages": []}})
            raise AssertionError("an empty conversation was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e


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

"""The real entry point: `parrot serve all` with SmolLM2 on loopback, called as users would.

Every test runs on both engines: llama.cpp's llama-server (the default where it is built) and
the in-process transformers engine.

Checks: gRPC answers are real model text, streaming works, KServe REST v1/v2 and readiness,
the OpenAI endpoint with the official client, the openai backend against it, metrics move,
bad input gives INVALID_ARGUMENT naming the field and the server keeps serving, auth rejects
a missing token, and SIGTERM stops the process cleanly (exit code 0).
"""

from __future__ import annotations

import asyncio
import json
import re

import grpc
import httpx
import pytest

from parrot.v1 import (
    asker_pb2,
    asker_pb2_grpc,
    conversation_pb2 as cpb,
    judge_pb2,
    judge_pb2_grpc,
    responder_pb2,
    responder_pb2_grpc,
)
from tests.conftest import requires_llama_server, requires_model, start_service

pytestmark = [requires_model]

TOKEN = "test-token-7f3a-e2e0"
# A question with a clear first answer token on every engine and GGUF type ("What is the capital of France?"
# alone is a near-tie between "The" and "L" for SmolLM2, which quantization rounding can flip).
CAPITAL = "Which city is the capital of France? Answer in one short sentence."
U, A, S = cpb.ROLE_USER, cpb.ROLE_ASSISTANT, cpb.ROLE_SYSTEM


def conv(*pairs: tuple[int, str]) -> cpb.Conversation:
    return cpb.Conversation(id="c1", messages=[cpb.Message(role=r, content=t) for r, t in pairs])


def greedy(max_tokens: int = 24) -> cpb.GenerationParams:
    return cpb.GenerationParams(max_tokens=max_tokens, temperature=0.0)


@pytest.fixture(scope="module", params=[pytest.param("llamacpp", marks=requires_llama_server), "transformers"])
def stack(request, tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("stack"), ["all", "--backend", request.param], token=TOKEN,
                       env_extra={"PARROT_MAX_INPUT_CHARS": "20000", "PARROT_MAX_NEW_TOKENS": "512"})
    sp.backend = request.param
    yield sp
    rc = sp.stop()
    assert rc == 0, sp.log()[-3000:]
    assert '"msg": "stopped"' in sp.log()


@pytest.fixture
def channel(stack):
    with grpc.insecure_channel(stack.grpc_target) as ch:
        yield ch


def scrape(stack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.http_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_is_open_and_serving(stack, channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    for svc in ("", "parrot.v1.Asker", "parrot.v1.Responder", "parrot.v1.Judge"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"parrot.v1.Asker", "parrot.v1.Responder", "parrot.v1.Judge", "grpc.health.v1.Health"} <= names


def test_respond_gives_real_text_and_metrics_move(stack, channel):
    before = scrape(stack, "parrot_rpc_requests_total", method="Respond", code="OK")
    tokens_before = scrape(stack, "parrot_generated_tokens_total")
    stub = responder_pb2_grpc.ResponderStub(channel)
    r = stub.Respond(responder_pb2.RespondRequest(conversation=conv((U, CAPITAL)), params=greedy()),
                     metadata=stack.metadata(), timeout=120)
    assert "Paris" in r.text
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.finish_reason in (cpb.FINISH_REASON_STOP, cpb.FINISH_REASON_LENGTH)
    assert r.conversation_id == "c1" and r.model
    assert scrape(stack, "parrot_rpc_requests_total", method="Respond", code="OK") == before + 1
    assert scrape(stack, "parrot_generated_tokens_total") >= tokens_before + r.usage.completion_tokens


def test_stream_matches_unary(stack, channel):
    stub = responder_pb2_grpc.ResponderStub(channel)
    req = responder_pb2.RespondRequest(conversation=conv((U, "Name three colors.")), params=greedy(20))
    whole = stub.Respond(req, metadata=stack.metadata(), timeout=120)
    chunks = list(stub.RespondStream(req, metadata=stack.metadata(), timeout=120))
    assert len(chunks) >= 2
    assert "".join(c.delta for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_multi_turn_history_reaches_the_model(stack, channel):
    # Model quality is not under test (135M parameters); the wiring is: the whole history is in the prompt.
    stub = responder_pb2_grpc.ResponderStub(channel)
    last = (U, "What is my name?")
    short = stub.Respond(responder_pb2.RespondRequest(conversation=conv(last), params=greedy(4)),
                         metadata=stack.metadata(), timeout=120)
    c = conv((S, "You are terse."), (U, "My name is Zorblax."), (A, "Nice to meet you, Zorblax."), last)
    long = stub.Respond(responder_pb2.RespondRequest(conversation=c, params=greedy(4)), metadata=stack.metadata(), timeout=120)
    assert long.usage.prompt_tokens >= short.usage.prompt_tokens + 15


def test_asker_writes_a_question(stack, channel):
    stub = asker_pb2_grpc.AskerStub(channel)
    c = conv((U, "How do I sort a list in Python?"), (A, "Use sorted(my_list) or my_list.sort()."))
    r = stub.Ask(asker_pb2.AskRequest(conversation=c, num_candidates=2, params=cpb.GenerationParams(max_tokens=40, seed=7)),
                 metadata=stack.metadata(), timeout=180)
    assert 1 <= len(r.candidates) <= 2
    for cand in r.candidates:
        assert cand.text.strip() and cand.text.strip().lower() != "how do i sort a list in python?"
        assert cand.attempts >= 1


def test_judge_grades_and_compares(stack, channel):
    stub = judge_pb2_grpc.JudgeStub(channel)
    c = conv((U, "What is 2+2?"), (A, "2+2 equals 4."))
    g = stub.GradeSingle(judge_pb2.GradeSingleRequest(conversation=c, params=cpb.GenerationParams(max_tokens=40)),
                         metadata=stack.metadata(), timeout=180)
    assert 1.0 <= g.score <= 10.0
    assert g.method == judge_pb2.SCORE_METHOD_PROBABILITY_WEIGHTED
    assert len(g.rating_probabilities) == 10 and abs(sum(g.rating_probabilities) - 1) < 1e-6
    assert g.turn == 1 and g.raw_output
    b = conv((U, "What is 2+2?"), (A, "It is 5."))
    p = stub.ComparePair(judge_pb2.ComparePairRequest(conversation_a=c, conversation_b=b, params=cpb.GenerationParams(max_tokens=30)),
                         metadata=stack.metadata(), timeout=180)
    assert p.winner in (judge_pb2.PAIR_WINNER_A, judge_pb2.PAIR_WINNER_B, judge_pb2.PAIR_WINNER_TIE)
    assert sorted(v.swapped for v in p.verdicts) == [False, True]


def test_kserve_rest_v1_v2_and_readiness(stack):
    h = {"Authorization": f"Bearer {TOKEN}"}
    for name in ("asker", "responder", "judge"):
        assert httpx.get(f"{stack.http_url}/v2/models/{name}/ready", timeout=10).json()["ready"] is True
    assert httpx.get(f"{stack.http_url}/v2/health/ready", timeout=10).status_code == 200
    instance = {"conversation": {"messages": [{"role": "ROLE_USER", "content": CAPITAL}]},
                "params": {"max_tokens": 16}}
    r1 = httpx.post(f"{stack.http_url}/v1/models/responder:predict", json={"instances": [instance, instance]}, headers=h, timeout=120)
    assert r1.status_code == 200, r1.text
    preds = r1.json()["predictions"]
    assert len(preds) == 2 and all("Paris" in p["text"] for p in preds)
    # Identical greedy requests decoded together give identical text on the in-process engine (its batched
    # output equals unbatched); llama.cpp rounds differently by batch composition and may part at a near-tie.
    same_text = stack.backend == "transformers"
    if same_text:
        assert preds[0]["text"] == preds[1]["text"]
    v2 = {"inputs": [{"name": "request", "shape": [1], "datatype": "BYTES", "data": [json.dumps(instance)]}]}
    r2 = httpx.post(f"{stack.http_url}/v2/models/responder/infer", json=v2, headers=h, timeout=120)
    assert r2.status_code == 200, r2.text
    out = r2.json()["outputs"][0]
    v2_text = json.loads(out["data"][0])["text"]
    assert out["name"] == "response" and "Paris" in v2_text and (v2_text == preds[0]["text"] or not same_text)
    bad = httpx.post(f"{stack.http_url}/v1/models/responder:predict",
                     json={"instances": [{"conversation": {"messages": []}}]}, headers=h, timeout=30)
    assert bad.status_code == 400 and "conversation.messages" in bad.text
    unauth = httpx.post(f"{stack.http_url}/v1/models/responder:predict", json={"instances": [instance]}, timeout=30)
    assert unauth.status_code == 401


def test_openai_client_against_responder(stack):
    import openai

    client = openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key=TOKEN)
    msgs = [{"role": "user", "content": CAPITAL}]
    r = client.chat.completions.create(model="responder", messages=msgs, max_tokens=16, temperature=0)
    assert "Paris" in r.choices[0].message.content and r.usage.completion_tokens > 0
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="responder", messages=msgs, max_tokens=16, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="responder", messages=[{"role": "wizard", "content": "x"}], max_tokens=4)
    assert "messages[0].role" in str(e.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key="wrong").chat.completions.create(
            model="responder", messages=msgs, max_tokens=4)


def test_openai_backend_against_responder_endpoint(stack, channel, monkeypatch):
    from parrot.backends import GenerationRequest, create_backend
    from parrot.conversation import GenerationParams, Message, Role

    monkeypatch.setenv("PARROT_TEST_KEY", TOKEN)
    backend = create_backend("openai", base_url=f"{stack.http_url}/v1", model="responder", api_key_env="PARROT_TEST_KEY")

    async def run():
        await backend.load()
        try:
            req = GenerationRequest([Message(Role.USER, CAPITAL)], GenerationParams(max_tokens=16))
            (res,) = await backend.generate([req])
            streamed = [e async for e in backend.stream(req)]
            return res, streamed
        finally:
            await backend.close()

    res, streamed = asyncio.run(run())
    grpc_text = responder_pb2_grpc.ResponderStub(channel).Respond(
        responder_pb2.RespondRequest(conversation=conv((U, CAPITAL)), params=greedy(16)),
        metadata=stack.metadata(), timeout=120).text
    assert res.text == grpc_text and "Paris" in res.text
    assert "".join(e.delta for e in streamed) == res.text and streamed[-1].result is not None


BAD_REQUESTS = [
    ("empty conversation", cpb.Conversation(), None, "conversation.messages"),
    ("wrong role order", conv((U, "hi"), (U, "again")), None, "conversation.messages[1].role"),
    ("unknown role", cpb.Conversation(messages=[cpb.Message(role=9, content="hi")]), None, "conversation.messages[0].role"),
    ("last is assistant", conv((U, "hi"), (A, "hello")), None, "conversation.messages[1].role"),
    ("over-long input", conv((U, "x" * 25000)), None, "conversation.messages"),
    ("max_tokens out of range", conv((U, "hi")), cpb.GenerationParams(max_tokens=100000), "params.max_tokens"),
    ("temperature out of range", conv((U, "hi")), cpb.GenerationParams(temperature=7.0), "params.temperature"),
]


@pytest.mark.parametrize("label,conversation,params,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_invalid_argument(stack, channel, label, conversation, params, field):
    stub = responder_pb2_grpc.ResponderStub(channel)
    req = responder_pb2.RespondRequest(conversation=conversation, params=params or greedy())
    with pytest.raises(grpc.RpcError) as e:
        stub.Respond(req, metadata=stack.metadata(), timeout=30)
    over_limit = label in ("over-long input", "max_tokens out of range")  # configured limits
    expected = grpc.StatusCode.RESOURCE_EXHAUSTED if over_limit else grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.code() == expected, e.value.details()
    assert e.value.details().startswith(field), e.value.details()
    with pytest.raises(grpc.RpcError) as e2:  # the streaming RPC validates the same way
        list(stub.RespondStream(req, metadata=stack.metadata(), timeout=30))
    assert e2.value.code() == expected


def test_bad_input_on_asker_and_judge(stack, channel):
    with pytest.raises(grpc.RpcError) as e:
        asker_pb2_grpc.AskerStub(channel).Ask(asker_pb2.AskRequest(conversation=conv((U, "hi"))), metadata=stack.metadata(), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "role" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        judge_pb2_grpc.JudgeStub(channel).GradeSingle(
            judge_pb2.GradeSingleRequest(conversation=conv((U, "q"), (A, "a")), turn=5), metadata=stack.metadata(), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "turn" in e.value.details()
    # ...and the server keeps serving
    r = responder_pb2_grpc.ResponderStub(channel).Respond(
        responder_pb2.RespondRequest(conversation=conv((U, "Say yes.")), params=greedy(4)), metadata=stack.metadata(), timeout=60)
    assert r.text


def test_auth_rejects_missing_and_wrong_token(stack, channel):
    stub = responder_pb2_grpc.ResponderStub(channel)
    req = responder_pb2.RespondRequest(conversation=conv((U, "hi")), params=greedy(4))
    for md in ([], [("authorization", "Bearer nope")], [("authorization", TOKEN)]):
        with pytest.raises(grpc.RpcError) as e:
            stub.Respond(req, metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        list(stub.RespondStream(req, timeout=30))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert scrape(stack, "parrot_rpc_requests_total", code="UNAUTHENTICATED") >= 4


def test_cli_clients(stack, tmp_path):
    import subprocess

    from tests.conftest import PARROT

    env = {"PARROT_AUTH_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([PARROT, "chat", CAPITAL, "-t", stack.grpc_target, "--max-tokens", "16"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "Paris" in out.stdout, out.stderr
    out = subprocess.run([PARROT, "ask", "-q", "How do I sort a list in Python?", "-a", "Use sorted().", "-t", stack.grpc_target,
                          "--seed", "3"], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    conv_file = tmp_path / "conv.json"
    conv_file.write_text(json.dumps([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]))
    out = subprocess.run([PARROT, "judge", str(conv_file), "-t", stack.grpc_target, "--max-tokens", "24", "--json"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    assert 1 <= json.loads(out.stdout)["score"] <= 10
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('[{"role": "wizard", "content": "x"}]')
    out = subprocess.run([PARROT, "judge", str(bad_file), "-t", stack.grpc_target], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "messages[0].role" in out.stderr and str(bad_file) in out.stderr
    out = subprocess.run([PARROT, "chat", "hi", "-t", stack.grpc_target], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr
    assert re.search(r"error: ", out.stderr)

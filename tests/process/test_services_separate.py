"""Each model service as its own real process (`parrot serve asker|responder|judge`) on loopback."""

from __future__ import annotations

import grpc
import httpx
import pytest

from parrot.v1 import asker_pb2, asker_pb2_grpc, conversation_pb2 as cpb, judge_pb2, judge_pb2_grpc
from parrot.v1 import responder_pb2, responder_pb2_grpc
from tests.conftest import requires_model, start_service

pytestmark = [requires_model]

CONV = cpb.Conversation(messages=[cpb.Message(role=cpb.ROLE_USER, content="What is 2+2?"),
                                  cpb.Message(role=cpb.ROLE_ASSISTANT, content="4.")])
QUESTION = cpb.Conversation(messages=[cpb.Message(role=cpb.ROLE_USER, content="What is 2+2?")])
PARAMS = cpb.GenerationParams(max_tokens=16, seed=1)


def call(name: str, ch: grpc.Channel):
    if name == "asker":
        return asker_pb2_grpc.AskerStub(ch).Ask(asker_pb2.AskRequest(conversation=CONV, params=PARAMS), timeout=120)
    if name == "responder":
        return responder_pb2_grpc.ResponderStub(ch).Respond(
            responder_pb2.RespondRequest(conversation=QUESTION, params=PARAMS), timeout=120)
    return judge_pb2_grpc.JudgeStub(ch).GradeSingle(judge_pb2.GradeSingleRequest(conversation=CONV, params=PARAMS), timeout=120)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    # Started together so that their model loads overlap.
    procs = {}
    try:
        for name in ("asker", "responder", "judge"):
            procs[name] = start_service(tmp_path_factory.mktemp(name), [name], wait_for=None)
        from tests.conftest import wait_serving

        for name, sp in procs.items():
            wait_serving(sp.grpc_target, f"parrot.v1.{name.capitalize()}", sp.proc, sp.log_path)
        yield procs
    finally:
        for sp in procs.values():
            assert sp.stop() == 0, sp.log()[-2000:]


@pytest.mark.parametrize("name", ["asker", "responder", "judge"])
def test_each_service_serves_only_itself(services, name):
    sp = services[name]
    with grpc.insecure_channel(sp.grpc_target) as ch:
        response = call(name, ch)
        assert response.ByteSize() > 0
        for other in {"asker", "responder", "judge"} - {name}:
            with pytest.raises(grpc.RpcError) as e:
                call(other, ch)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert httpx.get(f"{sp.http_url}/v2/models/{name}/ready", timeout=10).json()["ready"] is True
    assert httpx.get(f"{sp.http_url}/v2/models/responder-x/ready", timeout=10).status_code == 404
    assert "parrot_model_ready" in httpx.get(f"{sp.http_url}/metrics", timeout=10).text
    openai_route = httpx.post(f"{sp.http_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                         "max_tokens": 4}, timeout=60)
    assert (openai_route.status_code == 200) == (name == "responder")


def test_message_size_limit_is_resource_exhausted(services):
    sp = services["responder"]
    huge = cpb.Conversation(messages=[cpb.Message(role=cpb.ROLE_USER, content="x" * (17 * 1024 * 1024))])
    with grpc.insecure_channel(sp.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            responder_pb2_grpc.ResponderStub(ch).Respond(responder_pb2.RespondRequest(conversation=huge), timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call("responder", ch).text  # still serving

"""The server bootstrap in process: UNAVAILABLE while the model loads, INTERNAL without detail,
health transitions, graceful stop; and `parrot serve` configuration errors."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parrot.backends.registry import register_backend
from parrot.conversation import InputLimits
from services.model_server import ModelServiceProcess, ServeConfig
from parrot.v1 import conversation_pb2 as cpb, responder_pb2, responder_pb2_grpc
from tests.conftest import PARROT, free_port
from tests.helpers.fakes import ScriptedBackend


@dataclass(frozen=True)
class GatedConfig:
    pass


GATE: dict[str, asyncio.Event] = {}


@register_backend("test-gated", GatedConfig)
class GatedBackend(ScriptedBackend):
    """Loads only when the test opens the gate; replies 'boom' by raising a plain exception."""

    def __init__(self, config: GatedConfig) -> None:
        super().__init__(reply=self._reply_fn)
        self.ready = False

    @staticmethod
    def _reply_fn(request, index):
        if request.messages[-1].content == "boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        return f"echo: {request.messages[-1].content}"

    async def load(self) -> None:
        await GATE["open"].wait()
        self.ready = True

    async def generate(self, requests):
        from parrot.errors import NotReady

        if not self.ready:
            raise NotReady("model test-gated is loading")
        return await super().generate(requests)


async def test_unavailable_while_loading_then_serving_then_graceful_stop():
    GATE["open"] = asyncio.Event()
    port = free_port()
    proc = ModelServiceProcess(ServeConfig(services=("responder",), host="127.0.0.1", grpc_port=port,
                                           http_port=free_port(), backend="test-gated", grace_s=2, limits=InputLimits()))
    task = asyncio.create_task(proc.run())
    req = responder_pb2.RespondRequest(conversation=cpb.Conversation(
        messages=[cpb.Message(role=cpb.ROLE_USER, content="hello")]))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        stub = responder_pb2_grpc.ResponderStub(ch)
        for _ in range(100):
            try:
                status = (await health.Check(health_pb2.HealthCheckRequest(service="parrot.v1.Responder"))).status
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await health.Check(health_pb2.HealthCheckRequest(service=""))).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Respond(req)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in e.value.details()

        GATE["open"].set()
        for _ in range(100):
            if (await health.Check(health_pb2.HealthCheckRequest(service="parrot.v1.Responder"))).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert (await stub.Respond(req)).text == "echo: hello"

        boom = responder_pb2.RespondRequest(conversation=cpb.Conversation(
            messages=[cpb.Message(role=cpb.ROLE_USER, content="boom")]))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Respond(boom)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "passwd" not in e.value.details() and "secret" not in e.value.details()
        assert (await stub.Respond(req)).text == "echo: hello"  # still serving

    proc._on_signal(15)  # what SIGTERM does
    assert await asyncio.wait_for(task, 30) == 0


@pytest.mark.parametrize("args,expected", [
    (["serve", "responder", "--backend", "nope"], "unknown backend 'nope'; allowed: echo, engine, llamacpp, openai, tgi, transformers"),
    (["serve", "responder", "--backend", "openai"], "--base-url / PARROT_BASE_URL is required"),
    (["serve", "responder", "--backend", "engine"], "--base-url / PARROT_BASE_URL is required for the engine backend"),
    (["serve", "responder", "--auth-token-file", "/nonexistent/token"], "cannot read /nonexistent/token"),
    (["serve", "wizard"], "Invalid value"),
])
def test_serve_config_errors_are_clear(args, expected):
    out = subprocess.run([PARROT, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr, out.stderr

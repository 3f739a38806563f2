"""The HTTP surfaces keep the gRPC promises (issue 19): one error map, readiness that does not lie,
cancellation on hang-up, HTTP metrics, OpenAI's model routes, the Open Inference Protocol over gRPC
and reflection v1.

The whole model-service process (`ModelServiceProcess`: parrot.v1 gRPC + KServe REST + the OpenAI
routes) runs in the test's event loop on free loopback ports, over a test backend that loads in a
set time, generates token by token (counting what it generated) and fails on request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent
from parrot.backends.registry import register_backend
from parrot.conversation import InputLimits
from parrot.errors import NotReady
from services.model_server import ModelServiceProcess, ServeConfig
from tests.conftest import free_port

MAX_NEW = 400  # --max-new-tokens of the test servers


@dataclass(frozen=True)
class PacedConfig:
    load_s: float = 0.0


@register_backend("test-paced", PacedConfig)
class PacedBackend(Backend):
    """Loads in ``load_s``; answers ``slow:N`` with N tokens, one per 10 ms (counted in ``tokens``),
    ``boom`` with a plain exception (a bug), anything else with a short echo."""

    name = "test-paced"
    supports_scoring = False
    last: "PacedBackend | None" = None

    def __init__(self, config: PacedConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = 0
        self.streams_closed = 0
        self.name_now = "paced-loading"
        PacedBackend.last = self

    @property
    def model_name(self) -> str:
        return self.name_now

    async def load(self) -> None:
        await asyncio.sleep(self.config.load_s)
        self.name_now = "paced-model"  # like llamacpp: the name is known once the model is
        self.ready = True

    async def _tokens(self, request: GenerationRequest) -> AsyncIterator[str]:
        if not self.ready:
            raise NotReady("model test-paced is loading")
        text = request.messages[-1].content
        if text == "boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        n = int(text.split(":")[1]) if text.startswith("slow:") else 3
        for i in range(min(n, request.params.max_tokens)):
            if n > 3:
                await asyncio.sleep(0.01)
            self.tokens += 1
            yield f" t{i}"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            parts = [t async for t in self._tokens(r)]
            out.append(GenerationResult("".join(parts), "stop", 5, len(parts)))
        return out

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        parts = []
        try:
            async for t in self._tokens(request):
                parts.append(t)
                yield StreamEvent(delta=t)
            yield StreamEvent(delta="", result=GenerationResult("".join(parts), "stop", 5, len(parts)))
        finally:
            self.streams_closed += 1


class Served:
    def __init__(self, services: tuple[str, ...] = ("responder",), load_s: float = 0.0, token_env: str = "PARROT_NO_TOKEN"):
        self.gport, self.hport = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.hport}"
        self.target = f"127.0.0.1:{self.gport}"
        self.proc = ModelServiceProcess(ServeConfig(
            services=services, host="127.0.0.1", grpc_port=self.gport, http_port=self.hport,
            backend="test-paced", backend_config=PacedConfig(load_s=load_s), grace_s=1,
            limits=InputLimits(max_new_tokens=MAX_NEW), auth_token_env=token_env))
        self.backend: PacedBackend = self.proc.backend  # type: ignore[assignment]

    async def __aenter__(self) -> "Served":
        self.task = asyncio.create_task(self.proc.run())
        await self.wait_http()
        return self

    async def wait_http(self) -> None:
        async with httpx.AsyncClient() as c:
            for _ in range(400):
                try:
                    await c.get(f"{self.url}/", timeout=1)
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.01)
        raise AssertionError("HTTP port never opened")

    async def wait_ready(self) -> None:
        for _ in range(400):
            if self.backend.ready and all(m.ready for m in self.proc.kserve_models):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("never ready")

    async def __aexit__(self, *exc: Any) -> None:
        self.proc._on_signal(15)
        assert await asyncio.wait_for(self.task, 30) == 0


def chat(content: str, **extra: Any) -> dict:
    return {"model": "responder", "messages": [{"role": "user", "content": content}], **extra}


def v1_instance(content: str, max_tokens: int = 4) -> dict:
    return {"conversation": {"messages": [{"role": "ROLE_USER", "content": content}]}, "params": {"max_tokens": max_tokens}}


def local_port(r: httpx.Response) -> int:
    return r.extensions["network_stream"].get_extra_info("socket").getsockname()[1]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err


# -- points 1, 2, 6: one error map, keep-alive kept, HTTP metrics ------------------------------------


async def test_errors_are_mapped_and_the_connection_survives():
    async with Served() as s:
        await s.wait_ready()
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:  # one keep-alive connection throughout
            ok = await c.post("/v1/chat/completions", json=chat("hi"))
            assert ok.status_code == 200, ok.text
            port = local_port(ok)
            before_500 = counter("parrot_http_requests_total", route="/v1/chat/completions", method="POST", code="500")
            before_200 = counter("parrot_http_requests_total", route="/v1/chat/completions", method="POST", code="200")

            for stream in (False, True):  # over --max-new-tokens: 400 naming the field, never retried 5xx/429
                err = openai_error(await c.post("/v1/chat/completions", json=chat("hi", max_tokens=MAX_NEW + 1, stream=stream)), 400)
                assert err["code"] == "limit_exceeded" and "max_tokens" in err["message"] and err["param"] == "max_tokens"
                assert (await c.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
            err = openai_error(await c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
            assert err["type"] == "invalid_request_error"
            err = openai_error(await c.post("/v1/chat/completions", json=chat("boom")), 500)
            assert err["type"] == "server_error" and "passwd" not in err["message"] and "secret" not in err["message"]
            assert (await c.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
            bad_stream = await c.post("/v1/chat/completions", json=chat("boom", stream=True))
            assert bad_stream.status_code == 500 and "passwd" not in bad_stream.text

            # KServe v1 / v2: KServe's error shape, the right 4xx
            over = await c.post("/v1/models/responder:predict", json={"instances": [v1_instance("hi", MAX_NEW + 1)]})
            assert over.status_code == 400 and "max_tokens" in over.json()["error"], over.text
            v2 = {"inputs": [{"name": "request", "shape": [1], "datatype": "BYTES", "data": ["{not json"]}]}
            nonjson = await c.post("/v2/models/responder/infer", json=v2)
            assert nonjson.status_code == 400 and "inputs[0].data[0]" in nonjson.json()["error"], nonjson.text
            v2["inputs"][0]["data"] = [json.dumps(v1_instance("hi", MAX_NEW + 1))]
            assert (await c.post("/v2/models/responder/infer", json=v2)).status_code == 400
            boom = await c.post("/v1/models/responder:predict", json={"instances": [v1_instance("boom")]})
            assert boom.status_code == 500 and "passwd" not in boom.text and isinstance(boom.json()["error"], str)
            assert (await c.post("/v1/models/responder:predict", content=b"\xff\xfe")).status_code == 400
            v2["inputs"][0]["data"] = [json.dumps(v1_instance("hi"))]
            good = await c.post("/v2/models/responder/infer", json=v2)
            assert good.status_code == 200, good.text
            assert local_port(good) == port  # the same connection answered everything: never reset

        assert counter("parrot_http_requests_total", route="/v1/chat/completions", method="POST", code="500") == before_500 + 2
        assert counter("parrot_http_requests_total", route="/v1/chat/completions", method="POST", code="200") >= before_200 + 3
        assert counter("parrot_http_requests_total", route="/v2/models/{model_name}/infer", method="POST", code="400") >= 2
        # one ready series per loaded model: the name the backend had while loading is gone
        assert counter("parrot_model_ready", model="paced-model", service="responder") == 1
        assert REGISTRY.get_sample_value("parrot_model_ready", {"model": "paced-loading", "service": "responder"}) is None


# -- point 3: readiness is true only when the model answers ---------------------------------------


async def _poll_start(s: Served) -> tuple[int, list[int]]:
    """Polls every readiness signal and the chat route until ready; returns (polls, statuses after ready)."""
    after_ready: list[int] = []
    said_ready = False
    async with httpx.AsyncClient(base_url=s.url, timeout=10) as c, grpc.aio.insecure_channel(s.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        polls = 0
        while len(after_ready) < 3:
            polls += 1
            ready = [
                (await c.get("/v2/health/ready")).status_code == 200 and (await c.get("/v2/health/ready")).json()["ready"],
                (await c.get("/v2/models/responder/ready")).status_code == 200,
                (await c.get("/v1/models/responder")).status_code == 200,
            ]
            try:
                ready.append((await health.Check(health_pb2.HealthCheckRequest(service="parrot.v1.Responder"))).status
                             == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                ready.append(False)
            said_ready = said_ready or any(ready)
            if said_ready:
                r = await c.post("/v1/chat/completions", json=chat("hi"))
                after_ready.append(r.status_code)
            else:
                await asyncio.sleep(0.005)
    return polls, after_ready


async def test_readiness_is_true_only_when_the_model_answers_across_restarts():
    for _ in range(20):
        async with Served(load_s=0.15) as s:
            polls, statuses = await _poll_start(s)
            assert polls > 1, "never saw the model loading: the test proves nothing"
            assert statuses == [200, 200, 200], statuses


# -- points 4, 5: hang-ups cancel the generation, and leave no task behind -------------------------


async def test_client_hang_up_cancels_generation_and_leaks_no_task():
    async with Served() as s:
        await s.wait_ready()
        baseline = len(asyncio.all_tasks())
        async with httpx.AsyncClient(base_url=s.url) as c:
            with pytest.raises(httpx.ReadTimeout):  # non-streaming: 300 tokens would take 3 s
                await c.post("/v1/chat/completions", json=chat("slow:300", max_tokens=MAX_NEW), timeout=0.3)
            await asyncio.sleep(0.3)
            stopped_at = s.backend.tokens
            assert stopped_at < 50, f"generation went on after the hang-up: {stopped_at} tokens"
            await asyncio.sleep(0.2)
            assert s.backend.tokens == stopped_at
            with pytest.raises(httpx.ReadTimeout):  # KServe v1 predict too
                await c.post("/v1/models/responder:predict", json={"instances": [v1_instance("slow:300", MAX_NEW)]},
                             timeout=0.3)
            await asyncio.sleep(0.3)
            assert s.backend.tokens - stopped_at < 50

            for _ in range(3):  # streams closed early by the client
                async with c.stream("POST", "/v1/chat/completions", json=chat("slow:300", max_tokens=MAX_NEW, stream=True),
                                    timeout=10) as r:
                    lines = r.aiter_lines()
                    for _ in range(4):
                        await anext(lines)
            for _ in range(100):
                if s.backend.streams_closed == 3:
                    break
                await asyncio.sleep(0.02)
            assert s.backend.streams_closed == 3  # each backend stream closed right away, not at garbage collection
            assert (await c.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
        await asyncio.sleep(0.1)
        leftover = [t for t in asyncio.all_tasks() if not t.done()]
        assert len(leftover) <= baseline, [t.get_coro() for t in leftover]
        assert counter("parrot_http_requests_total", route="/v1/chat/completions", method="POST", code="499") >= 1


# -- point 7: OpenAI's model routes, unknown models, response_format ---------------------------------


async def test_openai_model_routes_unknown_models_and_response_format():
    import openai

    async with Served(services=("responder", "judge")) as s:
        await s.wait_ready()
        client = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0)
        m = await client.models.retrieve("responder")
        assert m.id == "responder" and m.object == "model"
        assert {x.id async for x in client.models.list()} == {"responder", "judge"}
        with pytest.raises(openai.NotFoundError) as e:
            await client.models.retrieve("gpt-17")
        assert "gpt-17" in str(e.value)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="responder", messages=[{"role": "user", "content": "hi"}],
                                                 response_format={"type": "json_object"})
        assert e.value.body["param"] == "response_format"
        ok = await client.chat.completions.create(model="responder", messages=[{"role": "user", "content": "hi"}],
                                                  response_format={"type": "text"})
        assert ok.choices[0].message.content
        await client.close()
        async with httpx.AsyncClient(base_url=s.url) as c:  # KServe v1 readiness on the same path
            for name in ("responder", "judge"):
                r = await c.get(f"/v1/models/{name}")
                assert r.status_code == 200 and r.json()["name"] == name and r.json()["ready"] is True
            assert (await c.get("/v1/models")).json()["models"] == ["responder", "judge"]


# -- point 8: Open Inference Protocol over gRPC, tensor metadata, reflection v1 ---------------------


async def test_open_inference_protocol_grpc_metadata_and_reflection_v1():
    from grpc_reflection.v1alpha import reflection_pb2
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    async with Served() as s:
        await s.wait_ready()
        oip = InferenceGRPCClient(s.target, timeout=30)
        assert await oip.is_server_live() and await oip.is_server_ready()
        assert await oip.is_model_ready("responder")
        def request(max_tokens: int = 4) -> InferRequest:
            return InferRequest(model_name="responder", infer_inputs=[
                InferInput("request", [1], "BYTES", [json.dumps(v1_instance("hi", max_tokens))])])

        response = await oip.infer(request())
        out = response.outputs[0]
        assert out.name == "response" and json.loads(out.data[0])["text"] == " t0 t1 t2"
        with pytest.raises(grpc.aio.AioRpcError) as e:  # the gRPC error map covers it: not INTERNAL
            await oip.infer(request(MAX_NEW + 1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await oip.is_model_ready("nope")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        await oip.close()

        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        assert await rest.is_server_ready(s.url) and await rest.is_model_ready(s.url, "responder")
        rest_out = await rest.infer(s.url, request(), model_name="responder")
        assert json.loads(rest_out.outputs[0].data[0])["text"] == " t0 t1 t2"
        await rest.close()
        async with httpx.AsyncClient(base_url=s.url) as c:
            meta = (await c.get("/v2/models/responder")).json()
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("request", "BYTES")]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("response", "BYTES")]

        async with grpc.aio.insecure_channel(s.target) as ch:
            for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
                call = ch.stream_stream(f"/{package}.ServerReflection/ServerReflectionInfo",
                                        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
                replies = [r async for r in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
                names = {x.name for x in replies[0].list_services_response.service}
                assert {"parrot.v1.Responder", "inference.GRPCInferenceService", "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection"} <= names, (package, names)
                file = [r async for r in call(iter([reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=f"{package}.ServerReflection")]))]
                assert file[0].file_descriptor_response.file_descriptor_proto, package


def test_queue_depth_is_read_when_scraped():
    """parrot_queue_depth is what waits now (inbox + taken by the worker, not yet in a slot), not the
    value at the last event: it drops to 0 as soon as the queue drains."""
    from parrot.backends.transformers.backend import TransformersBackend, TransformersBackendConfig

    b = TransformersBackend(TransformersBackendConfig(model="qd-test"))
    b.watch_queue_depth()
    depth = lambda: REGISTRY.get_sample_value("parrot_queue_depth", {"model": "qd-test"})  # noqa: E731
    assert depth() == 0
    b._inbox.put("row-1")
    b._inbox.put("row-2")
    assert depth() == 2
    b._waiting = [b._inbox.get_nowait()]
    assert depth() == 2
    b._waiting.clear()
    b._inbox.get_nowait()
    assert depth() == 0


async def test_token_on_every_inference_surface_probes_open(monkeypatch):
    """With a token: POSTs on the OpenAI and KServe routes and Open Inference Protocol inference need it
    (401 / UNAUTHENTICATED in each surface's shape, counted); readiness and liveness stay open."""
    from kserve import InferenceGRPCClient
    from kserve.protocol.infer_type import InferInput, InferRequest

    monkeypatch.setenv("PARROT_TEST_HTTP_TOKEN", "t0ken-for-the-http-surface-test")
    async with Served(token_env="PARROT_TEST_HTTP_TOKEN") as s:
        await s.wait_ready()
        before = counter("parrot_auth_failures_total", transport="http", reason="missing")
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            err = openai_error(await c.post("/v1/chat/completions", json=chat("hi")), 401)
            assert err["type"] == "authentication_error"
            r = await c.post("/v1/models/responder:predict", json={"instances": [v1_instance("hi")]})
            assert r.status_code == 401 and isinstance(r.json()["error"], str)
            assert (await c.post("/v1/chat/completions", json=chat("hi"),
                                 headers={"authorization": "Bearer nope"})).status_code == 401
            ok = await c.post("/v1/chat/completions", json=chat("hi"),
                              headers={"authorization": "Bearer t0ken-for-the-http-surface-test"})
            assert ok.status_code == 200, ok.text
            assert (await c.get("/v2/health/ready")).status_code == 200
        assert counter("parrot_auth_failures_total", transport="http", reason="missing") == before + 2
        oip = InferenceGRPCClient(s.target, timeout=30)
        assert await oip.is_server_ready() and await oip.is_model_ready("responder")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await oip.infer(InferRequest(model_name="responder", infer_inputs=[
                InferInput("request", [1], "BYTES", [json.dumps(v1_instance("hi"))])]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await oip.close()

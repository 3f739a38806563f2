"""The openai and tgi HTTP backends against real (fake) servers on loopback.

Each fake is a small FastAPI app under uvicorn on 127.0.0.1 (port chosen by the OS), run in
a background thread. Tests script failures (status codes, delays) per call and inspect the
requests the server saw.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import REGISTRY

from parrot.backends.base import GenerationRequest
from parrot.backends.registry import create_backend
from parrot.backends.http.chat_completions import PrefillStripper
from parrot.backends.http.client import HttpRetry, iter_sse_data, parse_retry_after
from parrot.backends.http.openai_backend import OpenAIBackend, OpenAIBackendConfig
from parrot.backends.http.tgi_backend import TGIBackend, TGIBackendConfig
from parrot.conversation import GenerationParams, Message, Role
from parrot.errors import ConfigError, DeadlineExceeded, InvalidArgument, Unavailable, Unsupported

SECRET = "sk-test-very-secret-0123456789"


# --------------------------------------------------------------------------------------------
# Fake upstream servers
# --------------------------------------------------------------------------------------------


@dataclass
class Failure:
    """A scripted non-success answer to one chat call."""

    status: int = 503
    body: dict[str, Any] = field(default_factory=lambda: {"error": {"message": "overloaded"}})
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (to trigger client timeouts)


@dataclass
class UpstreamState:
    """What the fake server does next and what it has seen."""

    failures: list[Failure] = field(default_factory=list)
    chat_calls: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    echo_prefill: bool = False
    send_stream_usage: bool = True
    models_status: int = 200
    health_failures: int = 0
    stream_error_after: int | None = None  # send an error event after this many content chunks
    health_calls: int = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def make_app(state: UpstreamState, flavor: str) -> FastAPI:
    """An OpenAI-compatible (``flavor="openai"``) or TGI-like (``"tgi"``) fake server."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> Response:
        if flavor != "openai" or state.models_status != 200:
            return JSONResponse({"error": "not found"}, status_code=state.models_status if flavor == "openai" else 404)
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    @app.get("/health")
    async def health() -> Response:
        state.health_calls += 1
        if flavor != "tgi":
            return JSONResponse({}, status_code=404)
        if state.health_failures > 0:
            state.health_failures -= 1
            return JSONResponse({"error": "loading"}, status_code=503)
        return Response(status_code=200)

    @app.get("/info")
    async def info() -> Response:
        return JSONResponse({"model_id": "org/fake-tgi-model", "max_total_tokens": 4096})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        state.chat_calls.append(body)
        state.auth_headers.append(request.headers.get("authorization"))
        if state.failures:
            failure = state.failures.pop(0)
            if failure.delay_s:
                await asyncio.sleep(failure.delay_s)
            if failure.status != 200:  # status 200 = a slow success
                return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)
        text, reason = _answer(body, state)
        if body.get("stream"):
            return StreamingResponse(_sse(body, text, reason, state), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
                "usage": {"prompt_tokens": 11, "completion_tokens": len(text.split()), "total_tokens": 11 + len(text.split())},
            }
        )

    return app


def _answer(body: dict[str, Any], state: UpstreamState) -> tuple[str, str]:
    """The fake model's reply: echoes the last user message; honours max_tokens and prefill."""
    messages = body["messages"]
    if body.get("continue_final_message"):
        prefill = messages[-1]["content"]
        text = " and more"
        return (prefill + text if state.echo_prefill else text), "stop"
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    words = f"You said: {last_user}".split()
    max_tokens = int(body.get("max_tokens") or 256)
    if len(words) > max_tokens:
        return " ".join(words[:max_tokens]), "length"
    return " ".join(words), "stop"


async def _sse(body: dict[str, Any], text: str, reason: str, state: UpstreamState) -> AsyncIterator[str]:
    """OpenAI-style stream: a role chunk, one chunk per word, a finish chunk, usage, [DONE]."""
    pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []
    yield _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for i, piece in enumerate(pieces):
        if i == state.stream_error_after:
            yield _event({"error": {"message": "engine died", "code": 500}})
            return
        yield _event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    wants_usage = (body.get("stream_options") or {}).get("include_usage")
    if wants_usage and state.send_stream_usage:
        yield _event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 42, "total_tokens": 53}})
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 (OS-chosen port) in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fake-upstream", daemon=True)

    def start(self) -> int:
        """Starts serving; returns the bound port."""
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Upstream:
    url: str
    state: UpstreamState


def _serve(flavor: str) -> Iterator[Upstream]:
    state = UpstreamState()
    server = ServerThread(make_app(state, flavor))
    port = server.start()
    try:
        yield Upstream(url=f"http://127.0.0.1:{port}", state=state)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def openai_server() -> Iterator[Upstream]:
    yield from _serve("openai")


@pytest.fixture(scope="module")
def tgi_server() -> Iterator[Upstream]:
    yield from _serve("tgi")


@pytest.fixture
def openai_up(openai_server: Upstream, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    openai_server.state.reset()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return openai_server


@pytest.fixture
def tgi_up(tgi_server: Upstream) -> Upstream:
    tgi_server.state.reset()
    return tgi_server


def openai_config(up: Upstream, **kw: Any) -> OpenAIBackendConfig:
    base = dict(
        base_url=f"{up.url}/v1", model="fake-model", timeout_s=5.0, max_retries=3,
        backoff_initial_s=0.01, backoff_max_s=0.05, max_concurrency=4,
    )
    base.update(kw)
    return OpenAIBackendConfig(**base)


def tgi_config(up: Upstream, **kw: Any) -> TGIBackendConfig:
    base = dict(url=up.url, timeout_s=5.0, max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.05, max_concurrency=4)
    base.update(kw)
    return TGIBackendConfig(**base)


async def loaded(backend: Any) -> Any:
    await backend.load()
    assert backend.ready
    return backend


def req(text: str = "hello there", *, prefill: str = "", **params: Any) -> GenerationRequest:
    msgs = [Message(Role.SYSTEM, "Be brief."), Message(Role.USER, text)]
    return GenerationRequest(messages=msgs, params=GenerationParams(**params), prefill=prefill)


def retries_count(backend: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("parrot_backend_retries_total", {"backend": backend, "reason": reason})
    return value or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# openai backend
# --------------------------------------------------------------------------------------------


async def test_openai_generate_text_usage_and_params(openai_up: Upstream) -> None:
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        assert backend.model_name == "fake-model"
        assert backend.supports_scoring is False
        (result,) = await backend.generate([req("hi", temperature=0.7, top_p=0.9, seed=5, stop=("\n\n",))])
        assert result.text == "You said: hi"
        assert result.finish_reason == "stop"
        assert (result.prompt_tokens, result.completion_tokens) == (11, 3)
        body = openai_up.state.chat_calls[-1]
        assert body["model"] == "fake-model"
        assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["stop"]) == (256, 0.7, 0.9, 5, ["\n\n"])
        assert "stream" not in body and "continue_final_message" not in body

        (cut,) = await backend.generate([req("one two three four", max_tokens=2)])
        assert cut.finish_reason == "length" and cut.text == "You said:"
        body = openai_up.state.chat_calls[-1]
        assert "stop" not in body and "seed" not in body
    finally:
        await backend.close()


async def test_openai_generate_many_concurrently(openai_up: Upstream) -> None:
    backend = await loaded(OpenAIBackend(openai_config(openai_up, max_concurrency=2)))
    try:
        results = await backend.generate([req(f"n{i}") for i in range(6)])
        assert [r.text for r in results] == [f"You said: n{i}" for i in range(6)]
    finally:
        await backend.close()


async def test_openai_stream_deltas_and_final_result(openai_up: Upstream) -> None:
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        events = [e async for e in backend.stream(req("stream me please"))]
        assert events[-1].result is not None
        assert all(e.result is None for e in events[:-1])
        text = "".join(e.delta for e in events)
        assert text == "You said: stream me please" == events[-1].result.text
        assert len(events) - 1 == 5  # one event per word chunk
        assert events[-1].result.completion_tokens == 42  # from the usage chunk
        assert events[-1].result.prompt_tokens == 11
        body = openai_up.state.chat_calls[-1]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}

        openai_up.state.send_stream_usage = False
        events = [e async for e in backend.stream(req("a b", max_tokens=3))]
        final = events[-1].result
        assert final is not None and final.finish_reason == "length"
        assert final.text == "You said: a" and final.completion_tokens == 3  # counted chunks
    finally:
        await backend.close()


async def test_openai_retries_429_and_503_then_succeeds(openai_up: Upstream) -> None:
    before_429, before_503 = retries_count("openai", "http_429"), retries_count("openai", "http_503")
    # Our own backoff would be 5 s; the server's Retry-After: 0 must win.
    openai_up.state.failures = [
        Failure(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
        Failure(503, headers={"Retry-After": "0"}),
    ]
    backend = await loaded(OpenAIBackend(openai_config(openai_up, backoff_initial_s=5.0, backoff_max_s=5.0)))
    try:
        t0 = time.monotonic()
        (result,) = await backend.generate([req("x")])
        assert time.monotonic() - t0 < 2.0
        assert result.text == "You said: x"
        assert len(openai_up.state.chat_calls) == 3
        assert retries_count("openai", "http_429") == before_429 + 1
        assert retries_count("openai", "http_503") == before_503 + 1
        assert backend.stats()["retries"] == 2
    finally:
        await backend.close()


async def test_openai_stream_retries_before_first_event(openai_up: Upstream) -> None:
    openai_up.state.failures = [Failure(502), Failure(429, headers={"Retry-After": "0"})]
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        events = [e async for e in backend.stream(req("again"))]
        assert "".join(e.delta for e in events) == "You said: again"
        assert len(openai_up.state.chat_calls) == 3
    finally:
        await backend.close()


async def test_openai_stream_error_event_unavailable(openai_up: Upstream) -> None:
    openai_up.state.stream_error_after = 2
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        seen: list[str] = []
        with pytest.raises(Unavailable, match="engine died"):
            async for event in backend.stream(req("a b c d")):
                seen.append(event.delta)
        assert "".join(seen) == "You said:"
        assert len(openai_up.state.chat_calls) == 1  # not retried once text was passed on
    finally:
        await backend.close()


async def test_openai_exhausted_retries_unavailable(openai_up: Upstream) -> None:
    openai_up.state.failures = [Failure(503, {"error": {"message": "x" * 5000}}) for _ in range(3)]
    backend = await loaded(OpenAIBackend(openai_config(openai_up, max_retries=2)))
    try:
        with pytest.raises(Unavailable) as err:
            await backend.generate([req()])
        msg = str(err.value)
        assert "503" in msg and "3 attempts" in msg
        assert len(msg) < 400  # body detail is shortened
        assert len(openai_up.state.chat_calls) == 3
    finally:
        await backend.close()


async def test_openai_400_is_invalid_argument_without_retry(openai_up: Upstream) -> None:
    openai_up.state.failures = [Failure(400, {"error": {"message": "max_tokens is too large: 99999"}})]
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        with pytest.raises(InvalidArgument) as err:
            await backend.generate([req()])
        assert err.value.field == "params"
        assert "max_tokens is too large" in str(err.value) and "400" in str(err.value)
        assert len(openai_up.state.chat_calls) == 1
    finally:
        await backend.close()


async def test_openai_timeout_retried_then_fails(openai_up: Upstream) -> None:
    before = retries_count("openai", "timeout")
    openai_up.state.failures = [Failure(200, delay_s=1.0), Failure(200, delay_s=1.0)]
    backend = await loaded(OpenAIBackend(openai_config(openai_up, timeout_s=0.3, max_retries=1)))
    try:
        t0 = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)) as err:
            await backend.generate([req()])
        assert time.monotonic() - t0 < 2.0
        assert "within 0.3 s" in str(err.value)
        assert len(openai_up.state.chat_calls) == 2
        assert retries_count("openai", "timeout") == before + 1
    finally:
        await backend.close()


async def test_openai_connection_refused(openai_up: Upstream) -> None:
    cfg = OpenAIBackendConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=1, backoff_initial_s=0.01)
    backend = OpenAIBackend(cfg)
    try:
        with pytest.raises(Unavailable) as err:
            await backend.load()
        assert "connection failed" in str(err.value)
        assert not backend.ready
    finally:
        await backend.close()


async def test_openai_load_accepts_missing_models_route(openai_up: Upstream) -> None:
    openai_up.state.models_status = 404
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    await backend.close()


async def test_openai_api_key_from_env_never_leaks(openai_up: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARROT_TEST_KEY", SECRET)
    backend = await loaded(OpenAIBackend(openai_config(openai_up, api_key_env="PARROT_TEST_KEY", max_retries=1)))
    try:
        await backend.generate([req()])
        assert openai_up.state.auth_headers[-1] == f"Bearer {SECRET}"
        # A server that echoes the key in its error messages: our errors must not repeat it.
        openai_up.state.failures = [Failure(400, {"error": {"message": f"bad key {SECRET} here"}})]
        with pytest.raises(InvalidArgument) as bad:
            await backend.generate([req()])
        openai_up.state.failures = [Failure(500, {"error": {"message": f"Bearer {SECRET}"}}) for _ in range(2)]
        with pytest.raises(Unavailable) as down:
            await backend.generate([req()])
        openai_up.state.failures = [Failure(401, {"error": {"message": f"invalid key {SECRET}"}})]
        with pytest.raises(Unavailable) as denied:
            await backend.generate([req()])
        for err in (bad.value, down.value, denied.value):
            assert SECRET not in str(err) and SECRET not in repr(err)
        assert "***" in str(bad.value)
    finally:
        await backend.close()


async def test_openai_api_key_file_wins(openai_up: Upstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-not-used")
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    backend = await loaded(OpenAIBackend(openai_config(openai_up, api_key_file=str(key_file))))
    try:
        await backend.generate([req()])
        assert openai_up.state.auth_headers[-1] == f"Bearer {SECRET}"
    finally:
        await backend.close()


async def test_openai_unreadable_api_key_file(openai_up: Upstream, tmp_path: Any) -> None:
    backend = OpenAIBackend(openai_config(openai_up, api_key_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="api_key_file"):
        await backend.load()
    await backend.close()


async def test_openai_no_key_sends_no_authorization(openai_up: Upstream) -> None:
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        await backend.generate([req()])
        assert openai_up.state.auth_headers[-1] is None
    finally:
        await backend.close()


@pytest.mark.parametrize("echo", [False, True])
async def test_openai_prefill(openai_up: Upstream, echo: bool) -> None:
    openai_up.state.echo_prefill = echo
    backend = await loaded(OpenAIBackend(openai_config(openai_up)))
    try:
        (result,) = await backend.generate([req(prefill="Sure, here")])
        assert result.text == " and more"
        body = openai_up.state.chat_calls[-1]
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["messages"][-1] == {"role": "assistant", "content": "Sure, here"}
        events = [e async for e in backend.stream(req(prefill="Sure, here"))]
        assert "".join(e.delta for e in events) == " and more" == events[-1].result.text
    finally:
        await backend.close()


# --------------------------------------------------------------------------------------------
# tgi backend
# --------------------------------------------------------------------------------------------


async def test_tgi_generate_and_stream(tgi_up: Upstream) -> None:
    backend = await loaded(TGIBackend(tgi_config(tgi_up)))
    try:
        assert backend.model_name == "tgi"
        (result,) = await backend.generate([req("hey")])
        assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("You said: hey", "stop", 11, 3)
        body = tgi_up.state.chat_calls[-1]
        assert "temperature" not in body and "top_p" not in body  # greedy, top_p=1 omitted for TGI
        await backend.generate([req("hey", temperature=0.5, top_p=0.8)])
        body = tgi_up.state.chat_calls[-1]
        assert (body["temperature"], body["top_p"]) == (0.5, 0.8)

        events = [e async for e in backend.stream(req("one two"))]
        assert "".join(e.delta for e in events) == "You said: one two"
        final = events[-1].result
        assert final is not None and final.completion_tokens == 4  # no usage chunk: chunk count
        assert "stream_options" not in tgi_up.state.chat_calls[-1]
    finally:
        await backend.close()


async def test_tgi_waits_for_health_and_reads_info(tgi_up: Upstream) -> None:
    tgi_up.state.health_failures = 2
    backend = await loaded(TGIBackend(tgi_config(tgi_up, model_name="")))
    try:
        assert tgi_up.state.health_calls == 3
        assert backend.model_name == "org/fake-tgi-model"
    finally:
        await backend.close()


async def test_tgi_unhealthy_load_unavailable(tgi_up: Upstream) -> None:
    tgi_up.state.health_failures = 1000
    backend = TGIBackend(tgi_config(tgi_up, timeout_s=0.3))
    try:
        with pytest.raises(Unavailable) as err:
            await backend.load()
        assert "/health" in str(err.value) and "503" in str(err.value)
        assert not backend.ready
    finally:
        await backend.close()


async def test_tgi_prefill_unsupported(tgi_up: Upstream) -> None:
    backend = await loaded(TGIBackend(tgi_config(tgi_up)))
    try:
        with pytest.raises(Unsupported, match="prefill"):
            await backend.generate([req(), req(prefill="Sure")])
        with pytest.raises(Unsupported):
            [e async for e in backend.stream(req(prefill="Sure"))]
        assert tgi_up.state.chat_calls == []
    finally:
        await backend.close()


async def test_tgi_retries_and_error_mapping(tgi_up: Upstream) -> None:
    before = retries_count("tgi", "http_503")
    tgi_up.state.failures = [Failure(503, {"error": "Model is overloaded", "error_type": "overloaded"})]
    backend = await loaded(TGIBackend(tgi_config(tgi_up)))
    try:
        (result,) = await backend.generate([req("ok")])
        assert result.text == "You said: ok"
        assert retries_count("tgi", "http_503") == before + 1
        tgi_up.state.failures = [Failure(422, {"error": "Input validation error: `max_new_tokens` too big", "error_type": "validation"})]
        with pytest.raises(InvalidArgument, match="Input validation error"):
            await backend.generate([req()])
    finally:
        await backend.close()


# --------------------------------------------------------------------------------------------
# registry and helpers
# --------------------------------------------------------------------------------------------


def test_create_backend_by_name_and_unknown_name() -> None:
    backend = create_backend("openai", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1", model="m"))
    assert isinstance(backend, OpenAIBackend) and backend.model_name == "m"
    assert isinstance(create_backend("tgi", model_name="x"), TGIBackend)
    with pytest.raises(InvalidArgument) as err:
        create_backend("nope")
    assert err.value.field == "backend"
    for name in ("openai", "tgi"):
        assert name in str(err.value)


def test_retry_policy_and_retry_after() -> None:
    policy = HttpRetry(max_retries=5, backoff_initial_s=0.5, backoff_max_s=2.0)
    for i, cap in enumerate([0.5, 1.0, 2.0, 2.0]):
        assert cap / 2 <= policy.delay(i) <= cap
    assert policy.delay(3, retry_after=0.0) == 0.0
    assert policy.delay(0, retry_after=1e6) == 60.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_sse_parsing_and_prefill_stripper() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": comment", "data: a", "data: b", "", "event: x", "data:c", "", "data: [DONE]"]:
            yield line

    assert [d async for d in iter_sse_data(lines())] == ["a\nb", "c", "[DONE]"]
    s = PrefillStripper("Sure")
    assert [s.feed(x) for x in ["S", "ur", "e, ", "ok"]] + [s.flush()] == ["", "", ", ", "ok", ""]
    s = PrefillStripper("Sure")
    assert [s.feed(x) for x in ["Su", "n"]] == ["", "Sun"]
    s = PrefillStripper("Sure")
    assert s.feed("Su") == "" and s.flush() == "Su"

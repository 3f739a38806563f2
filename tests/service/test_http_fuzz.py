"""Fuzzing every HTTP route of a model service (hypothesis, bounded in time).

A model-service process (asker, responder and judge over the test backend of test_http_surface)
runs in a thread on loopback. Every route gets generated bodies: random JSON of any shape, raw
bytes, and valid requests with one field replaced by junk. The promises (issue 19): no answer is a
5xx, no connection is broken (one keep-alive connection serves the whole run), and afterwards
the server answers a normal request promptly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parrot.server.http_surface import is_openai_path
from tests.service.test_http_surface import MAX_NEW, Served, chat, local_port, v1_instance

BUDGET = settings(max_examples=100, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25)
JUNK = JSON | st.sampled_from([-1, 0, 10**12, 1e308, "", "x" * 5000, [], {}, [None], "\ud800", MAX_NEW + 1])


@st.composite
def chat_bodies(draw) -> dict:
    body = chat(draw(st.text(max_size=50)), max_tokens=draw(st.integers(1, 8)))
    field = draw(st.sampled_from(["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                                  "stop", "seed", "n", "stream", "stream_options", "response_format",
                                  "continue_final_message", "logprobs"]))
    body[field] = draw(JUNK)
    if draw(st.booleans()):
        body["messages"] = [{"role": draw(st.sampled_from(["user", "assistant", "system", "tool", ""])),
                             "content": draw(JUNK)}]
    return body


@st.composite
def kserve_bodies(draw) -> tuple[str, dict]:
    instance = v1_instance(draw(st.text(max_size=40)))
    where = draw(st.sampled_from(["conversation", "params", "turn", "extra"]))
    instance[where] = draw(JUNK)
    if draw(st.booleans()):
        return "v1", {"instances": draw(st.sampled_from([[instance], instance, None, [instance, 1]])),
                      "method": draw(st.sampled_from(["Respond", "Ask", "GradeSingle", "Nope", 3]))}
    data = draw(st.sampled_from([[json.dumps(instance)], [draw(st.text(max_size=30))], json.dumps(instance), None]))
    return "v2", {"inputs": [{"name": "request", "shape": draw(st.sampled_from([[1], [-1], [], [2, 2]])),
                              "datatype": draw(st.sampled_from(["BYTES", "FP32", "nope"])), "data": data}],
                  "parameters": {"method": draw(st.sampled_from(["Respond", "Ask", "Compare", 7]))}}


class ThreadServed:
    """The service in its own event loop on a thread, so a synchronous client can drive it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.add_signal_handler = lambda *args: None  # type: ignore[method-assign]  # main thread only
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()

        async def build() -> Served:  # the gRPC server binds to the loop it is made in
            return Served(services=("asker", "responder", "judge"))

        self.served = asyncio.run_coroutine_threadsafe(build(), self.loop).result(60)
        asyncio.run_coroutine_threadsafe(self.served.__aenter__(), self.loop).result(60)
        asyncio.run_coroutine_threadsafe(self.served.wait_ready(), self.loop).result(60)
        return self.served

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.served.__aexit__(None, None, None), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def client():
    with ThreadServed() as s, httpx.Client(base_url=s.url, timeout=30) as c:
        first = c.get("/v2/health/ready")
        c.port = local_port(first)  # type: ignore[attr-defined]
        yield c
        started = time.monotonic()
        ok = c.post("/v1/chat/completions", json=chat("hi"))
        assert ok.status_code == 200 and time.monotonic() - started < 2, ok.text
        assert local_port(ok) == c.port, "a connection was broken during the fuzzing"


def post_json(c: httpx.Client, path: str, body: object) -> httpx.Response:
    """JSON with non-ASCII escaped: lone surrogates ("\\ud800") reach the server as JSON escapes."""
    return c.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def check(r: httpx.Response, c: httpx.Client) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.request.content[:300], r.status_code, r.text[:500])
    assert local_port(r) == c.port, "the server closed the keep-alive connection"  # type: ignore[attr-defined]
    if r.status_code >= 400:  # each surface's own error shape
        error = r.json()["error"]
        if is_openai_path(r.request.url.path):
            assert set(error) == {"message", "type", "param", "code"}, r.text
        else:
            assert isinstance(error, str), r.text


@BUDGET
@given(body=chat_bodies())
def test_chat_completions_with_bad_fields(client, body):
    check(post_json(client, "/v1/chat/completions", body), client)


@BUDGET
@given(body=JSON, raw=st.binary(max_size=200), use_raw=st.booleans(),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models/responder:predict",
                             "/v1/models/judge:predict", "/v2/models/asker/infer", "/v2/models/nope/infer",
                             "/v1/models/nope:predict", "/v2/repository/models/responder/load"]))
def test_every_post_route_with_any_body(client, body, raw, use_raw, path):
    content = raw if use_raw else json.dumps(body).encode()
    check(client.post(path, content=content, headers={"content-type": "application/json"}), client)


@BUDGET
@given(request=kserve_bodies())
def test_kserve_v1_v2_with_bad_requests(client, request):
    version, body = request
    path = "/v1/models/responder:predict" if version == "v1" else "/v2/models/responder/infer"
    check(post_json(client, path, body), client)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=30),
       route=st.sampled_from(["/v1/models/{}", "/v2/models/{}", "/v2/models/{}/ready", "/v2/models/{}/versions/1",
                              "/v2/health/{}", "/{}", "/v1/{}"]))
def test_every_get_route_with_any_name(client, name, route):
    from urllib.parse import quote

    check(client.get(route.format(quote(name, safe=""))), client)

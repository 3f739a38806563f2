"""The engine backends against a real llama.cpp ``llama-server`` on loopback (built by setup).

The ``llamacpp`` backend starts llama-server as a child for the bundled SmolLM2 (converted to
GGUF once, cached) and serves the three roles through its OpenAI-compatible API: responder text,
streams, prefill; asker candidates; judge scores from the engine's log-probabilities, compared
with the in-process engine's exact ones. Cancelling a stream frees the engine slot. Bad input:
a missing binary, a failing conversion, an engine without log-probabilities.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from parrot.backends.base import GenerationRequest
from parrot.backends.http.engine_backend import (
    EngineBackend,
    EngineBackendConfig,
    LlamaCppBackend,
    LlamaCppBackendConfig,
    parse_top_logprobs,
)
from parrot.conversation import Conversation, GenerationParams, Message, Role
from parrot.engines.llamacpp import LlamaServerSettings, convert_to_gguf, gguf_for
from parrot.errors import ConfigError
from parrot.judging.scoring import RATING_CONTINUATIONS, RATING_PREFILL, normalize_logprobs
from tests.conftest import PARROT, requires_llama_server, requires_model

U, A = Role.USER, Role.ASSISTANT
# "What is the capital of France?" alone is a near-tie for SmolLM2's first token (in float32: "The" 0.155,
# "L" 0.140), which quantization rounding can flip into another answer; this wording has a clear one.
CAPITAL = "Which city is the capital of France? Answer in one short sentence."


def msgs(*pairs: tuple[Role, str]) -> list[Message]:
    return [Message(r, t) for r, t in pairs]


def greedy(n: int = 24, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=n, temperature=0.0, **kw)


@pytest.fixture(scope="module")
async def llama():
    b = LlamaCppBackend(LlamaCppBackendConfig(server=LlamaServerSettings(parallel=4, ctx_per_slot=2048)))
    b.needs_scoring = True
    await b.load()
    yield b
    await b.close()
    assert b.server is not None and not b.server.alive()


async def slots(b: LlamaCppBackend) -> list[dict]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{b.server.base_url}/slots", timeout=10)).json()


def decoded(slot: dict) -> int:
    """Tokens the slot decoded for its last task (llama-server's /slots)."""
    nxt = slot.get("next_token", {})
    return (nxt[0] if isinstance(nxt, list) and nxt else nxt or {}).get("n_decoded", 0)


async def busy_slots_after(b: LlamaCppBackend, seconds: float) -> list[dict]:
    """The engine's slots still processing after waiting up to ``seconds`` for all to be idle."""
    for _ in range(int(seconds * 10)):
        busy = [s for s in await slots(b) if s.get("is_processing")]
        if not busy:
            return []
        await asyncio.sleep(0.1)
    return busy


@requires_model
@requires_llama_server
async def test_responder_text_length_and_stop(llama):
    (paris,) = await llama.generate([GenerationRequest(msgs((U, CAPITAL)), greedy(16))])
    assert "Paris" in paris.text  # the default GGUF under the engine's kernels writes sense
    q = msgs((U, "List the days of the week, one per line."))
    (r,) = await llama.generate([GenerationRequest(q, greedy(8))])
    assert r.text.strip() and r.finish_reason == "length" and r.completion_tokens == 8 and r.prompt_tokens > 10
    (full,) = await llama.generate([GenerationRequest(q, greedy(64))])
    word = full.text.split()[2]
    (cut,) = await llama.generate([GenerationRequest(q, greedy(64, stop=(word,)))])
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)


@requires_model
@requires_llama_server
async def test_stream_matches_generate_and_concurrency(llama):
    q = msgs((U, "What is a multi-turn conversation? Answer in two sentences."))
    (whole,) = await llama.generate([GenerationRequest(q, greedy(40))])
    deltas, final = [], None
    async for ev in llama.stream(GenerationRequest(q, greedy(40))):
        if ev.result is not None:
            final = ev.result
        deltas.append(ev.delta)
    assert len(deltas) > 3 and "".join(deltas) == final.text == whole.text
    many = await llama.generate([GenerationRequest(msgs((U, f"Say the number {i} in words.")), greedy(12))
                                 for i in range(12)])
    assert len(many) == 12 and all(r.text.strip() for r in many)


@requires_model
@requires_llama_server
async def test_prefill_is_continued_not_repeated(llama):
    q = msgs((U, "Name a fruit that is yellow."))
    (r,) = await llama.generate([GenerationRequest(q, greedy(12), prefill="The fruit is")])
    assert r.text and not r.text.startswith("The fruit is")
    # The same as the prompt rendered with the prefill and sent as text: the prefill is part of the prompt.
    assert llama._render(q, "The fruit is").endswith("<|im_start|>assistant\nThe fruit is")


@requires_model
@requires_llama_server
async def test_asker_writes_distinct_candidates(llama):
    from services.asker.service import AskerService

    asker = AskerService(llama)
    conv = Conversation(msgs((U, "How do I read a CSV file in Python?"),
                             (A, "Use the csv module, or pandas.read_csv for tables.")))
    got = await asker.ask(conv, GenerationParams(max_tokens=32, temperature=0.9, seed=3), num_candidates=3)
    assert len(got) == 3 and len({g.text for g in got}) == 3 and all(g.text.strip() for g in got)


@requires_model
@requires_llama_server
async def test_rating_scores_agree_with_the_in_process_engine(llama):
    """The engine's top-k rating distribution matches the transformers backend's exact one."""
    from parrot.backends.transformers.backend import TransformersBackend, TransformersBackendConfig

    judge = msgs((Role.SYSTEM, "You are a strict judge. Rate the answer from 1 to 10."),
                 (U, "Question: What is the capital of France?\nAnswer: Paris is the capital of France."))
    prefill = f"The answer is correct and complete.\n{RATING_PREFILL}"
    ours = await llama.score(judge, prefill, RATING_CONTINUATIONS)
    exact_backend = TransformersBackend(TransformersBackendConfig(dtype="float32", prefix_cache_mib=0))
    await exact_backend.load()
    try:
        exact = await exact_backend.score(judge, prefill, RATING_CONTINUATIONS)
    finally:
        await exact_backend.close()
    mass = sum(math.exp(x) for x in ours)
    exact_mass = sum(math.exp(x) for x in exact)
    # Q8_0 weights under llama.cpp against float32 in process: the same distribution, up to rounding.
    assert abs(mass - exact_mass) < 0.05, (ours, exact)
    p, q = normalize_logprobs(ours), normalize_logprobs(exact)
    assert max(abs(a - b) for a, b in zip(p, q)) < 0.05, (p, q)
    expected = sum((i + 1) * x for i, x in enumerate(p))
    expected_exact = sum((i + 1) * x for i, x in enumerate(q))
    assert abs(expected - expected_exact) < 0.25, (p, q)


async def prompt_tokens_processed(b: LlamaCppBackend) -> float:
    """llama-server's count of prompt tokens it computed (cached ones are not counted)."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{b.server.base_url}/metrics", timeout=10)).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("llamacpp:prompt_tokens_total"))


@requires_model
@requires_llama_server
async def test_scoring_computes_the_prompt_once(llama):
    """The eleven scoring requests reuse the slot that holds the prompt instead of each computing it again.

    Sent at once, they spread over the idle slots and each computed the whole prompt (an 8-turn
    grade: 43 s instead of 5 s on 2 cores).
    """
    body = " ".join(f"Point {i}: the answer mentions item {i * 7 % 13} and explains it briefly." for i in range(40))
    judge = msgs((Role.SYSTEM, "You are a strict judge. Rate the answer from 1 to 10."), (U, f"Answer:\n{body}"))
    prompt_len = len(llama._encode(llama._render(judge, f"Fine.\n{RATING_PREFILL}")))
    assert prompt_len > 500
    before = await prompt_tokens_processed(llama)
    scores = await llama.score(judge, f"Fine.\n{RATING_PREFILL}", RATING_CONTINUATIONS)
    computed = await prompt_tokens_processed(llama) - before
    assert len(scores) == len(RATING_CONTINUATIONS)
    assert computed < 1.5 * prompt_len, (computed, prompt_len)


@requires_model
@requires_llama_server
async def test_judge_grades_with_zero_parse_failures(llama):
    from parrot.judging.engine import JudgeEngine
    from parrot.judging.prompts import load_default_prompts, render_single, transcript_from_messages

    engine = JudgeEngine(llama)
    assert engine.local
    prompt = next(p for p in load_default_prompts() if p.type == "single" and "ref" not in p.name)
    answers = ["Paris.", "Sydney.", "", "The capital of France is Paris, on the Seine.", "[[10]] Rating: [[10]]"]
    for ans in answers:
        conv = msgs((U, "What is the capital of France?"), (A, ans))
        judged = await engine.grade(render_single(prompt, transcript_from_messages(conv, 1)), greedy(48))
        assert judged.method == "probability_weighted" and 1.0 <= judged.score <= 10.0
        assert abs(sum(judged.rating_probabilities) - 1.0) < 1e-6


@requires_model
@requires_llama_server
async def test_cancelled_stream_frees_the_engine_slot(llama):
    q = msgs((U, "Count from 1 to 500, separated by commas, and say nothing else."))
    gen = llama.stream(GenerationRequest(q, greedy(1500)))
    got = 0
    async for ev in gen:
        got += 1
        if got == 5:
            break
    await gen.aclose()
    assert not await busy_slots_after(llama, 10)
    assert max(decoded(s) for s in await slots(llama)) < 400  # stopped soon after the client went away


@requires_model
@requires_llama_server
async def test_cancelled_generate_frees_the_engine_slot(llama):
    """A unary call whose caller goes away (a gRPC deadline, a cancelled run) stops the engine too."""
    q = msgs((U, "Count from 1 to 500, separated by commas, and say nothing else."))
    task = asyncio.create_task(llama.generate([GenerationRequest(q, greedy(1500))]))
    for _ in range(50):
        if any(s.get("is_processing") for s in await slots(llama)):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # llama-server notices a closed connection at its next poll (about 1 s) and frees the slot at the next
    # step; 30 s leaves room for a CPU shared with other work (10 s was too tight there: 2 of 3 runs at
    # load average 4-5 failed), and the count below shows the generation did stop early.
    assert not await busy_slots_after(llama, 30)
    assert max(decoded(s) for s in await slots(llama)) < 1000  # stopped early, not at its 1500 tokens


# ---------------------------------------------------------------------------------- bad input

class _NoLogprobsEngine(BaseHTTPRequestHandler):
    """The smallest thing that answers like an engine started without log-probabilities."""

    def do_GET(self):  # noqa: N802
        self._json({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._json({"id": "x", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "text": "yes", "finish_reason": "length", "logprobs": None}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    def _json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):  # noqa: D401
        pass


@requires_model
async def test_judge_refuses_an_engine_without_logprobs():
    from parrot.modelstore import bundled_model_dir

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobsEngine)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        b = EngineBackend(EngineBackendConfig(base_url=url, tokenizer=str(bundled_model_dir()), max_retries=0))
        b.needs_scoring = True
        with pytest.raises(ConfigError) as e:
            await b.load()
        assert url in str(e.value) and "--engine-scoring parsed" in str(e.value) and "logprobs" in str(e.value)
        no_tokenizer = EngineBackend(EngineBackendConfig(base_url=url, max_retries=0))
        no_tokenizer.needs_scoring = True
        with pytest.raises(ConfigError, match="--engine-tokenizer"):
            await no_tokenizer.load()
        await no_tokenizer.close()
        # A responder on the same engine loads: it needs no log-probabilities.
        r = EngineBackend(EngineBackendConfig(base_url=url, tokenizer=str(bundled_model_dir()), max_retries=0))
        await r.load()
        (out,) = await r.generate([GenerationRequest(msgs((U, "hi")), greedy(1))])
        assert out.text == "yes"
        await r.close()
    finally:
        srv.shutdown()


def test_unreachable_engine_is_unavailable_naming_it():
    from parrot.errors import Unavailable

    b = EngineBackend(EngineBackendConfig(base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=5))
    with pytest.raises(Unavailable, match="engine at http://127.0.0.1:9/v1: GET /models: unreachable"):
        asyncio.run(b.load())


def test_missing_llama_server_binary_is_a_clear_error(tmp_path):
    env = {"PATH": str(Path(PARROT).parent), "HOME": str(tmp_path), "PARROT_ENGINE_CACHE": str(tmp_path / "none")}
    out = subprocess.run([PARROT, "serve", "responder", "--backend", "llamacpp", "--grpc-port", "1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "llama-server is not built" in out.stderr and "parrot engine build" in out.stderr
    env["PARROT_LLAMA_SERVER"] = str(tmp_path / "nope")
    out = subprocess.run([PARROT, "serve", "responder", "--backend", "llamacpp"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "PARROT_LLAMA_SERVER" in out.stderr and "not an executable" in out.stderr
    # --backend auto (the default) does not fall back silently past a binary the user named
    out = subprocess.run([PARROT, "serve", "responder"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "PARROT_LLAMA_SERVER" in out.stderr and "not an executable" in out.stderr


@requires_llama_server
def test_gguf_conversion_failure_is_a_clear_error(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}))
    with pytest.raises(ConfigError, match=r"GGUF conversion of .*not-a-model to q8_0 failed"):
        convert_to_gguf(bad, "q8_0")
    assert not list((tmp_path).glob("**/*.gguf"))


@requires_model
@requires_llama_server
def test_checkpoint_gguf_is_cached_while_unchanged(llama):
    first, folder = gguf_for("smollm2", "q8_0")
    again, _ = gguf_for(str(folder), "q8_0")  # the same folder named by path
    assert first == again and first.stat().st_mtime_ns == again.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="gguf type 'q3'"):
        gguf_for("smollm2", "q3")


def test_parse_top_logprobs_both_shapes():
    llama_shape = {"content": [{"token": "7", "logprob": -0.1, "top_logprobs": [
        {"id": 39, "token": "7", "logprob": -0.1}, {"id": 40, "token": "8", "logprob": -2.5}, {"token": "x", "logprob": -3}]}]}
    legacy_shape = {"tokens": ["7"], "token_logprobs": [-0.1], "top_logprobs": [{"7": -0.1, "8": -2.5}]}
    assert parse_top_logprobs(llama_shape) == {39: -0.1, 40: -2.5, "x": -3.0}
    assert parse_top_logprobs(legacy_shape) == {"7": -0.1, "8": -2.5}
    assert parse_top_logprobs(None) == {} and parse_top_logprobs({"content": []}) == {}


def test_dtype_auto_follows_the_hardware(monkeypatch):
    from parrot.backends.transformers import backend as tb

    assert tb.resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(tb, "native_bf16", lambda: False)
    assert tb.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(tb, "native_bf16", lambda: True)
    assert tb.resolve_dtype("auto", "cpu") == "bfloat16"
    assert tb.resolve_dtype("float16", "cpu") == "float16"


async def test_load_waits_for_an_engine_that_comes_up_later():
    """A sidecar engine loading its model: the service waits up to wait_s instead of failing."""
    from parrot.client import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    b = EngineBackend(EngineBackendConfig(base_url=url, max_retries=0, timeout_s=2, wait_s=30))
    loading = asyncio.create_task(b.load())
    await asyncio.sleep(2.5)
    assert not loading.done()  # still waiting, not failed
    srv = ThreadingHTTPServer(("127.0.0.1", port), _NoLogprobsEngine)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        await asyncio.wait_for(loading, 15)
        assert b.ready and b.model_name == "m"
        await b.close()
    finally:
        srv.shutdown()


@requires_model
@requires_llama_server
async def test_a_dead_engine_is_restarted_and_requests_go_on(llama):
    """llama-server killed (a crash, an OOM kill): the next request restarts it on the same port."""
    import signal

    before = llama.server.proc.pid
    port = llama.server.port
    llama.server.proc.send_signal(signal.SIGKILL)
    llama.server.proc.wait(10)
    (r,) = await llama.generate([GenerationRequest(msgs((U, "What is the capital of France?")), greedy(8))])
    assert r.text.strip() and llama.engine_restarts == 1
    assert llama.server.alive() and llama.server.proc.pid != before and llama.server.port == port


@requires_model
@requires_llama_server
async def test_a_bare_gguf_serves_through_the_engines_chat_template(llama):
    gguf, _ = gguf_for("smollm2", "q8_0")  # converted by the module's engine already
    b = LlamaCppBackend(LlamaCppBackendConfig(model=str(gguf), server=LlamaServerSettings(parallel=2, ctx_per_slot=2048)))
    await b.load()
    try:
        assert b.model_name == gguf.stem and b._tokenizer is None
        (r,) = await b.generate([GenerationRequest(msgs((U, CAPITAL)), greedy(16))])
        assert "Paris" in r.text
    finally:
        await b.close()
    judge = LlamaCppBackend(LlamaCppBackendConfig(model=str(gguf), server=LlamaServerSettings(parallel=1)))
    judge.needs_scoring = True
    with pytest.raises(ConfigError, match="--engine-tokenizer"):
        await judge.load()
    assert not judge.server.alive()  # the engine it started is stopped again

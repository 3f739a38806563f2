"""The transformers backend on the real SmolLM2 model, in process: batching, decoding controls, scoring."""

from __future__ import annotations

import asyncio
import math

import pytest

from parrot.backends import GenerationRequest, create_backend
from parrot.conversation import GenerationParams, Message, Role
from parrot.errors import InvalidArgument, NotReady
from tests.conftest import requires_model

pytestmark = [requires_model]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain recursion in one sentence.",
    "List three fruits.",
    "What is 2+2?",
    "Name a famous painter and one of their works, and say why it matters.",
]


def req(text: str, **params) -> GenerationRequest:
    return GenerationRequest([Message(Role.USER, text)], GenerationParams(**{"max_tokens": 24, **params}))


@pytest.fixture(scope="module")
def backend():
    # float32 so that "identical to unbatched greedy" is a property of the batcher, not of bf16 rounding.
    b = create_backend("transformers", model="smollm2", dtype="float32", batch_wait_ms=20)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(b.load())
    yield b, loop
    loop.run_until_complete(b.close())
    loop.close()


def run(backend, coro):
    return backend[1].run_until_complete(coro)


def test_not_ready_before_load():
    b = create_backend("transformers", model="smollm2")
    with pytest.raises(NotReady):
        asyncio.run(b.generate([req("hi")]))


def test_concurrent_requests_share_steps_and_match_unbatched_greedy(backend):
    b, _ = backend
    requests = [req(p) for p in PROMPTS]

    async def sequential():
        return [(await b.generate([r]))[0] for r in requests]

    s0 = b.steps
    seq = run(backend, sequential())
    seq_steps = b.steps - s0

    async def concurrent():
        return await asyncio.gather(*(b.generate([r]) for r in requests))

    s1 = b.steps
    par = [r[0] for r in run(backend, concurrent())]
    par_steps = b.steps - s1
    assert par_steps < seq_steps / 2, (par_steps, seq_steps)
    assert b.max_rows_seen >= 2
    assert [r.text for r in par] == [r.text for r in seq]
    assert [r.completion_tokens for r in par] == [r.completion_tokens for r in seq]

    # ...and equal to Hugging Face's own greedy generate, one prompt at a time.
    import torch

    for r, got in zip(requests, seq):
        ids = torch.tensor([b._prompt_ids(r)])
        out = b._model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert b.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == got.text


def test_late_requests_join_a_running_batch(backend):
    b, _ = backend

    async def staggered():
        first = asyncio.ensure_future(b.generate([req(PROMPTS[1], max_tokens=40)]))
        await asyncio.sleep(0.3)  # the first is decoding by now
        second = await b.generate([req(PROMPTS[2], max_tokens=8)])
        return (await first)[0], second[0]

    b.max_rows_seen = 0
    first, second = run(backend, staggered())
    assert b.max_rows_seen == 2, "the late request should have joined the running batch"
    alone = run(backend, b.generate([req(PROMPTS[2], max_tokens=8)]))[0]
    assert second.text == alone.text
    assert first.completion_tokens == 40 and first.finish_reason == "length"


def test_max_tokens_stop_sequences_and_eos(backend):
    b, _ = backend
    (r,) = run(backend, b.generate([req("Count from 1 to 20, separated by commas.", max_tokens=5)]))
    assert r.finish_reason == "length" and r.completion_tokens == 5
    (full,) = run(backend, b.generate([req("Count from 1 to 20, separated by commas.", max_tokens=40)]))
    assert "3" in full.text
    (stopped,) = run(backend, b.generate([req("Count from 1 to 20, separated by commas.", max_tokens=40, stop=("3",))]))
    assert stopped.finish_reason == "stop" and "3" not in stopped.text and full.text.startswith(stopped.text)
    (short,) = run(backend, b.generate([req("What is the capital of France? Answer in one word.", max_tokens=40)]))
    assert short.finish_reason == "stop" and short.completion_tokens < 40  # ended by <|im_end|>


def test_sampling_is_reproducible_with_a_seed(backend):
    b, _ = backend
    params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 16}
    a = run(backend, b.generate([req(PROMPTS[1], seed=11, **params)]))[0].text
    again = run(backend, b.generate([req(PROMPTS[1], seed=11, **params)]))[0].text
    others = {run(backend, b.generate([req(PROMPTS[1], seed=s, **params)]))[0].text for s in (12, 13, 14)}
    assert a == again
    assert others - {a}, "different seeds should give some different samples"


def test_stream_deltas_add_up_to_the_text(backend):
    b, _ = backend

    async def collect():
        return [e async for e in b.stream(req(PROMPTS[3], max_tokens=20))]

    events = run(backend, collect())
    (whole,) = run(backend, b.generate([req(PROMPTS[3], max_tokens=20)]))
    assert len(events) > 2 and events[-1].result is not None
    assert "".join(e.delta for e in events) == whole.text == events[-1].result.text


def test_score_continuations(backend):
    b, _ = backend
    msgs = [Message(Role.USER, "What is the capital of France? Reply with the city only.")]
    scores = run(backend, b.score(msgs, "The capital of France is", [" Paris.", " Berlin.", " banana"]))
    assert all(math.isfinite(s) and s < 0 for s in scores)
    assert scores[0] > scores[1] and scores[0] > scores[2]
    ratings = run(backend, b.score(msgs, "Rating: [[", [f"{i}]]" for i in range(1, 11)]))
    assert len(ratings) == 10 and all(math.isfinite(s) for s in ratings)


def test_context_overflow_is_invalid_argument(backend):
    b, _ = backend
    with pytest.raises(InvalidArgument) as e:
        run(backend, b.generate([req("word " * 9000, max_tokens=8)]))
    assert "context" in str(e.value)


def test_generate_scored_reuses_the_prompt_and_matches_generate_then_score(backend):
    b, _ = backend
    msgs = [Message(Role.USER, "Rate the answer '2+2=4' from 1 to 10 and explain briefly.")]
    r = GenerationRequest(msgs, GenerationParams(max_tokens=16))
    conts = [f"{i}]]" for i in range(1, 11)]

    def prefix(text: str) -> str:
        return text.strip() + "\nRating: [["

    (fused,) = run(backend, b.generate_scored([r], prefix, conts))
    (plain,) = run(backend, b.generate([r]))
    assert fused.text == plain.text and fused.scores is not None and len(fused.scores) == 10
    separate = run(backend, b.score(msgs, prefix(plain.text), conts))
    assert max(abs(x - y) for x, y in zip(fused.scores, separate)) < 1e-3


def test_later_turns_reuse_the_previous_turns_kv_and_match_a_full_prefill(backend):
    import torch

    b, _ = backend
    first = [Message(Role.USER, "Describe a lighthouse keeper's morning in two sentences.")]
    (t1,) = run(backend, b.generate([GenerationRequest(first, GenerationParams(max_tokens=24))]))
    second = first + [Message(Role.ASSISTANT, t1.text), Message(Role.USER, "Now make it sadder.")]
    r2 = GenerationRequest(second, GenerationParams(max_tokens=24))
    before = b.stats()["prefix_hit_tokens"]
    (t2,) = run(backend, b.generate([r2]))
    reused = b.stats()["prefix_hit_tokens"] - before
    # At least the whole first-turn prompt came from the cache (the answer too, when it round-trips).
    assert reused >= t1.prompt_tokens, (reused, t1.prompt_tokens)
    assert reused < t2.prompt_tokens
    ids = torch.tensor([b._prompt_ids(r2)])
    out = b._model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert b.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == t2.text


@pytest.fixture(scope="module")
def chunked():
    """Prompts fed 7 tokens per step, and no prefix cache: every prompt is computed from scratch."""
    b = create_backend("transformers", model="smollm2", dtype="float32", prefill_chunk_tokens=7, prefix_cache_mib=0)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(b.load())
    yield b, loop
    loop.run_until_complete(b.close())
    loop.close()


async def gather(*coros):
    return await asyncio.gather(*coros)


SHARED_SYSTEM = ("You are a careful assistant for a gardening shop. Answer in plain words, keep answers short, "
                 "never invent prices, and say when you do not know something. Customers often ask about soil, "
                 "watering, light and pests; mention safety for children and pets where it matters. If a question "
                 "is about a plant you do not recognise, ask for its full name or a photo before you answer.")


def test_prompts_fed_in_chunks_give_the_same_text(backend, chunked):
    requests = [req(p) for p in PROMPTS[:3]] + [
        GenerationRequest([Message(Role.SYSTEM, SHARED_SYSTEM), Message(Role.USER, "How often should I water a cactus?")],
                          GenerationParams(max_tokens=24))]
    whole = run(backend, gather(*(backend[0].generate([r]) for r in requests)))
    steps = chunked[0].steps
    pieces = run(chunked, gather(*(chunked[0].generate([r]) for r in requests)))
    assert [r[0].text for r in pieces] == [r[0].text for r in whole]
    assert chunked[0].steps - steps > 24 + 100 // 7  # the long prompt alone took many steps


def test_concurrent_prompts_share_a_prefix_being_computed(backend, chunked):
    """Two prompts with the same long system message arrive together: the second waits a step and
    copies the first one's KV states instead of computing them again; texts are unchanged."""
    b, _ = backend
    b._prefix_cache.clear()
    requests = [GenerationRequest([Message(Role.SYSTEM, SHARED_SYSTEM), Message(Role.USER, q)],
                                  GenerationParams(max_tokens=16))
                for q in ("Which plants like shade?", "Is mint safe for cats?")]
    before = b.stats()["prefix_hit_tokens"]
    together = run(backend, gather(*(b.generate([r]) for r in requests)))
    shared = len(b._encode(b.render_prompt(requests[0].messages[:1])))
    assert b.stats()["prefix_hit_tokens"] - before >= shared - 8, "the second prompt should reuse the system prompt"
    alone = [run(chunked, chunked[0].generate([r]))[0].text for r in requests]
    assert [r[0].text for r in together] == alone


def test_a_cancelled_request_frees_its_slot(backend):
    b, loop = backend

    async def cancel_one():
        doomed = asyncio.ensure_future(b.generate([req(PROMPTS[5], max_tokens=200)]))
        other = asyncio.ensure_future(b.generate([req(PROMPTS[0], max_tokens=12)]))
        await asyncio.sleep(0.5)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return (await other)[0]

    other = run(backend, cancel_one())
    assert other.completion_tokens > 0
    run(backend, asyncio.sleep(0.3))
    assert b._rows == [], "no row should be left in a slot"
    assert b._kv.pools[0].slots == 0 and b._kv.pools[1].slots == 0, "idle pools give their memory back"


def test_rows_of_very_different_lengths_decode_in_different_pools(backend):
    b, _ = backend
    long_prompt = GenerationRequest([Message(Role.SYSTEM, SHARED_SYSTEM * 4), Message(Role.USER, "Summarize the rules.")],
                                    GenerationParams(max_tokens=12))
    seen: list[set[int]] = []
    original = b._step

    def spy():
        seen.append({r.pool for r in b._rows})
        original()

    b._step = spy
    try:
        run(backend, gather(b.generate([req(PROMPTS[4], max_tokens=12)]), b.generate([long_prompt])))
    finally:
        del b._step
    assert {0, 1} in seen

"""The ``echo`` backend: unit tests, the real services on top of it in-process, and the real
entry point `parrot serve all --backend echo` on loopback (no model needed, so never skipped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import httpx
import pytest

from parrot.backends import backend_config_class, backend_names, create_backend
from parrot.backends import echo_backend
from parrot.backends.base import GenerationRequest
from parrot.backends.echo_backend import EchoBackend, EchoBackendConfig, apply_limits, continuation_logprob, tail_phrase
from parrot.conversation import Conversation, GenerationParams, Message, Role
from parrot.errors import ConfigError, InvalidArgument, NotReady
from parrot.judging.scoring import PAIR_CONTINUATIONS, RATING_CONTINUATIONS, pair_from_logprobs, rating_from_logprobs
from parrot.asking.prompting import normalize, rejection_reason
from services.asker.service import AskerConfig, AskerService
from tests.conftest import start_service

U, A = Role.USER, Role.ASSISTANT
QUESTION = "How do I read a CSV file in Python?"


def msgs(*pairs: tuple[Role, str]) -> list[Message]:
    return [Message(r, t) for r, t in pairs]


def req(messages: list[Message], prefill: str = "", **params) -> GenerationRequest:
    return GenerationRequest(messages, GenerationParams(**params), prefill)


@pytest.fixture
async def echo() -> EchoBackend:
    backend = create_backend("echo")
    await backend.load()
    yield backend
    await backend.close()


# --------------------------------------------------------------------------- registry and config


def test_registered_with_a_config_that_has_help_text():
    assert "echo" in backend_names()
    assert backend_config_class("echo") is EchoBackendConfig
    for f in dataclasses.fields(EchoBackendConfig):
        assert f.metadata.get("help"), f.name
    backend = create_backend("echo", delay_s=0.5, model_name="fake-13b")
    assert isinstance(backend, EchoBackend) and backend.name == "echo"
    assert backend.model_name == "fake-13b" and backend.config.delay_s == 0.5
    assert backend.supports_scoring


@pytest.mark.parametrize("kwargs", [{"delay_s": -1.0}, {"delay_s": float("nan")}, {"model_name": " "}])
def test_config_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        EchoBackendConfig(**kwargs)


async def test_calls_before_load_are_not_ready():
    backend = create_backend("echo")
    with pytest.raises(NotReady):
        await backend.generate([req(msgs((U, QUESTION)))])
    with pytest.raises(NotReady):
        await backend.score(msgs((U, QUESTION)), "", ["1]]"])
    await backend.load()
    assert backend.ready
    await backend.close()
    assert not backend.ready


# --------------------------------------------------------------------------- generation


async def test_reply_is_a_question_about_the_last_message(echo):
    (r,) = await echo.generate([req(msgs((U, QUESTION)))])
    assert r.text.startswith("And what about CSV file in Python for ") and r.text.endswith("?")
    assert r.finish_reason == "stop"
    assert r.prompt_tokens == len(QUESTION.split())
    assert r.completion_tokens == len(r.text.split())
    assert echo.stats() == {"generate_calls": 1, "requests": 1, "score_calls": 0}


async def test_deterministic_and_batch_independent_when_greedy(echo):
    a = msgs((U, QUESTION))
    b = msgs((U, "Tell me about the moon landing."))
    (alone,) = await echo.generate([req(a)])
    batch = await echo.generate([req(b), req(a), req(a)])
    assert batch[1] == alone and batch[2] == alone
    assert batch[0].text != alone.text
    fresh = await create_and_load()
    assert (await fresh.generate([req(a)]))[0] == alone  # a fresh backend gives the same text


async def create_and_load() -> EchoBackend:
    backend = create_backend("echo")
    await backend.load()
    return backend


async def test_sampled_requests_differ_by_seed_and_within_a_batch(echo):
    a = msgs((U, QUESTION))
    texts = [r.text for r in await echo.generate([req(a, temperature=0.7) for _ in range(4)])]
    assert len(set(texts)) == 4
    again = [r.text for r in await echo.generate([req(a, temperature=0.7) for _ in range(4)])]
    assert again == texts  # deterministic given the batch
    seeded = {(await echo.generate([req(a, temperature=0.7, seed=s)]))[0].text for s in range(4)}
    assert len(seeded) == 4


def test_tail_phrase():
    assert tail_phrase(QUESTION) == "CSV file in Python"
    # The asker's prompted format ends with a fixed question: the line before it is used.
    assert tail_phrase("Conversation so far:\n\nUser: hi\n\nAssistant: Use pandas.read_csv(path).\n\nWhat does the user ask next?") == (
        "Use pandas.read_csv path"
    )
    assert tail_phrase("And what about sorting with keys?") == "sorting with keys"  # leading "about" dropped
    assert tail_phrase("?!") == "that"


async def test_max_tokens_counts_whitespace_words(echo):
    (r,) = await echo.generate([req(msgs((U, QUESTION)), max_tokens=3)])
    assert r.text == "And what about" and r.finish_reason == "length" and r.completion_tokens == 3
    (whole,) = await echo.generate([req(msgs((U, QUESTION)), max_tokens=100)])
    assert whole.finish_reason == "stop" and whole.text.endswith("?")


async def test_stop_sequences_cut_before_the_stop(echo):
    (r,) = await echo.generate([req(msgs((U, QUESTION)), stop=("Python", "zzz"))])
    assert r.text == "And what about CSV file in " and r.finish_reason == "stop"
    assert r.completion_tokens == 6
    # A stop past the max_tokens limit is never reached.
    (r,) = await echo.generate([req(msgs((U, QUESTION)), max_tokens=2, stop=("about",))])
    assert r.text == "And what" and r.finish_reason == "length"


def test_apply_limits_keeps_leading_space():
    assert apply_limits(" a b c", 2, ()) == (" a b", "length")
    assert apply_limits(" a b c", 5, ("c",)) == (" a b ", "stop")


async def test_prefill_is_continued_not_repeated(echo):
    prefill = "Follow-up question:"
    (r,) = await echo.generate([req(msgs((U, QUESTION)), prefill=prefill)])
    assert r.text.startswith(" And what about ") and prefill not in r.text
    assert r.prompt_tokens == len(QUESTION.split()) + 2
    (plain,) = await echo.generate([req(msgs((U, QUESTION)))])
    assert r.text.strip() != plain.text  # the prefill is part of the prompt


async def test_never_repeats_text_of_the_prompt(echo, monkeypatch):
    # With two possible replies and one of them already in the prompt, the other comes back.
    monkeypatch.setattr(echo_backend, "ADJECTIVES", ("red", "blue"))
    monkeypatch.setattr(echo_backend, "NOUNS", ("cats",))
    for earlier in ("And what about the garden for red cats?", "And what about the garden for blue cats?"):
        history = msgs((U, earlier), (A, "In the garden"))
        (r,) = await echo.generate([req(history)])
        assert normalize(r.text) != normalize(earlier)
        assert r.text in ("And what about the garden for red cats?", "And what about the garden for blue cats?")


async def test_delay_is_per_call():
    backend = create_backend("echo", delay_s=0.2)
    await backend.load()
    t0 = time.perf_counter()
    results = await backend.generate([req(msgs((U, QUESTION)))] * 5)
    elapsed = time.perf_counter() - t0
    assert len(results) == 5 and 0.2 <= elapsed < 0.9  # one sleep per call (5 x 0.2 s would be 1.0 s)
    t0 = time.perf_counter()
    await asyncio.gather(*(backend.generate([req(msgs((U, QUESTION)))]) for _ in range(20)))
    assert time.perf_counter() - t0 < 2.0  # concurrent calls sleep concurrently (in sequence: 4.0 s)


async def test_stream_yields_word_by_word(echo):
    r = req(msgs((U, QUESTION)), prefill="Answer:")
    (whole,) = await echo.generate([r])
    events = [e async for e in echo.stream(r)]
    assert len(events) == len(whole.text.split()) >= 5
    assert "".join(e.delta for e in events) == whole.text
    assert all(e.result is None for e in events[:-1]) and events[-1].result == whole
    assert all(len(e.delta.split()) == 1 for e in events)


async def test_stream_of_an_empty_reply(echo):
    events = [e async for e in echo.stream(req(msgs((U, QUESTION)), stop=("And",)))]
    assert len(events) == 1 and events[0].delta == "" and events[0].result.finish_reason == "stop"


async def test_empty_prompt_is_invalid(echo):
    with pytest.raises(InvalidArgument):
        await echo.generate([req([])])


# --------------------------------------------------------------------------- scoring


async def test_rating_distribution_peaks_at_seven(echo):
    logprobs = await echo.score(msgs((U, QUESTION)), "Fine.\nRating: [[", RATING_CONTINUATIONS)
    assert all(lp < 0 for lp in logprobs)
    score, probs = rating_from_logprobs(logprobs)
    assert score == pytest.approx(7.0, abs=0.01)
    assert max(range(10), key=probs.__getitem__) == 6  # rating 7
    # Stable: another prompt, another prefix, the same number.
    other = await echo.score(msgs((U, "x"), (A, "y"), (U, "z")), "Rating: [[", RATING_CONTINUATIONS)
    assert rating_from_logprobs(other)[0] == score
    assert echo.stats()["score_calls"] == 2


async def test_pair_labels_favour_a_tie(echo):
    winner, probs = pair_from_logprobs(await echo.score(msgs((U, QUESTION)), "Verdict: [[", PAIR_CONTINUATIONS))
    assert winner == "tie" and probs[2] > probs[0] == probs[1]


async def test_other_continuations_get_deterministic_logprobs(echo):
    a = await echo.score(msgs((U, QUESTION)), "", ["yes", "no", "a longer continuation", "11]]"])
    assert a == await echo.score(msgs((U, "other")), "", ["yes", "no", "a longer continuation", "11]]"])
    assert all(x < 0 for x in a) and a[2] < a[0]
    assert continuation_logprob("7]]") > continuation_logprob("6]]") > continuation_logprob("1]]")
    with pytest.raises(InvalidArgument):
        await echo.score(msgs((U, QUESTION)), "", [])


# --------------------------------------------------------------------------- services in-process


@pytest.mark.parametrize("fmt", ["prompted", "role-swapped"])
async def test_asker_service_accepts_every_follow_up_over_many_turns(echo, fmt):
    asker = AskerService(echo, AskerConfig(format=fmt))
    conversation = Conversation(messages=msgs((U, QUESTION)))
    for _ in range(12):
        (answer,) = await echo.generate([req(conversation.messages)])
        conversation.messages.append(Message(A, answer.text))
        questions = await asker.ask(conversation, num_candidates=3)
        assert len(questions) == 3 and len({normalize(q.text) for q in questions}) == 3
        for q in questions:
            assert q.attempts == 1, q  # accepted on the first sample
            assert q.text.endswith("?") and rejection_reason(q.text, conversation.messages) is None
        earlier = {normalize(t) for t in conversation.user_turns()}
        assert normalize(questions[0].text) not in earlier
        conversation.messages.append(Message(U, questions[0].text))
    assert len(set(conversation.user_turns())) == 13


async def test_judge_service_scores_about_seven(echo):
    from parrot.v1 import conversation_pb2 as cpb
    from parrot.v1 import judge_pb2
    from services.judge.service import JudgeConfig, JudgeService

    judge = JudgeService(echo, JudgeConfig())
    c = cpb.Conversation(messages=[cpb.Message(role=cpb.ROLE_USER, content=QUESTION),
                                   cpb.Message(role=cpb.ROLE_ASSISTANT, content="Use pandas.read_csv.")])
    g = await judge.GradeSingle(judge_pb2.GradeSingleRequest(conversation=c), None)
    assert g.score == pytest.approx(7.0, abs=0.01) and g.method == judge_pb2.SCORE_METHOD_PROBABILITY_WEIGHTED
    assert g.model == "echo" and g.raw_output
    p = await judge.ComparePair(judge_pb2.ComparePairRequest(conversation_a=c, conversation_b=c), None)
    assert p.winner == judge_pb2.PAIR_WINNER_TIE


# --------------------------------------------------------------------------- the real entry point


def test_parrot_serve_all_with_the_echo_backend(tmp_path):
    from parrot.v1 import asker_pb2, asker_pb2_grpc, judge_pb2, judge_pb2_grpc, responder_pb2, responder_pb2_grpc
    from parrot.v1 import conversation_pb2 as cpb

    sp = start_service(tmp_path, ["all", "--backend", "echo"])
    try:
        first = cpb.Message(role=cpb.ROLE_USER, content=QUESTION)
        with grpc.insecure_channel(sp.grpc_target) as ch:
            r = responder_pb2_grpc.ResponderStub(ch).Respond(
                responder_pb2.RespondRequest(conversation=cpb.Conversation(id="c1", messages=[first])), timeout=30)
            assert r.text.startswith("And what about CSV file in Python") and r.text.endswith("?")
            assert r.model == "echo" and r.conversation_id == "c1"
            assert r.usage.prompt_tokens == len(QUESTION.split()) and r.usage.completion_tokens == len(r.text.split())
            chunks = list(responder_pb2_grpc.ResponderStub(ch).RespondStream(
                responder_pb2.RespondRequest(conversation=cpb.Conversation(messages=[first])), timeout=30))
            assert len(chunks) >= 2 and "".join(c.delta for c in chunks) == r.text

            answered = cpb.Conversation(messages=[first, cpb.Message(role=cpb.ROLE_ASSISTANT, content=r.text)])
            a = asker_pb2_grpc.AskerStub(ch).Ask(asker_pb2.AskRequest(conversation=answered, num_candidates=2), timeout=30)
            assert len(a.candidates) == 2
            for cand in a.candidates:
                assert cand.text.endswith("?") and cand.text != QUESTION and cand.attempts == 1

            g = judge_pb2_grpc.JudgeStub(ch).GradeSingle(judge_pb2.GradeSingleRequest(conversation=answered), timeout=30)
            assert 1.0 <= g.score <= 10.0 and g.score == pytest.approx(7.0, abs=0.01)
            assert g.method == judge_pb2.SCORE_METHOD_PROBABILITY_WEIGHTED and g.model == "echo"
        metrics = httpx.get(f"{sp.http_url}/metrics", timeout=10).text
        assert 'parrot_generated_tokens_total{backend="echo",model="echo"}' in metrics
        assert 'parrot_rpc_requests_total{code="OK",method="Respond",service="parrot.v1.Responder"}' in metrics
    finally:
        rc = sp.stop()
    assert rc == 0, sp.log()[-3000:]

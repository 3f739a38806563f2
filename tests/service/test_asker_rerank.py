"""The asker service's reranking (``--rerank-samples``): hand-made candidates with known winners."""

from __future__ import annotations

import pytest

from parrot.asking.prompting import END_OF_CONVERSATION
from parrot.asking.rerank import RerankSettings
from parrot.backends import create_backend
from parrot.conversation import Conversation, GenerationParams, Message, Role
from parrot.errors import ConfigError
from services.asker.service import ASKER_SAMPLES, AskerConfig, AskerService, best_index, candidate_score
from tests.conftest import requires_model
from tests.helpers.fakes import ScriptedBackend

U, A = Role.USER, Role.ASSISTANT
FIRST = "How do I reverse a list in JavaScript quickly?"
HISTORY = [Message(U, FIRST), Message(A, "Use arr.reverse(): it reverses the array in place and returns it.")]
PLAIN = "What is the capital city of France?"  # no cue of depending on the earlier turns
DEPENDENT = "Why does it change the original one?"  # anaphora: "it", "the original one"
NEAR_REPEAT = "How do I reverse a list in JavaScript quickly"  # the first user turn again, nearly


def reranker(samples: list[str], logprob_per_token: dict[str, float], k: int | None = None, **settings):
    """An asker drawing ``samples`` in order; a sample's log-probability is its words x its per-token figure."""
    backend = ScriptedBackend(lambda req, i: samples[i % len(samples)],
                              scorer=lambda msgs, prefill, conts: [logprob_per_token[c] * len(c.split()) for c in conts])
    rerank = RerankSettings(samples=k or len(samples), **settings)
    return backend, AskerService(backend, AskerConfig(format="prompted", rerank=rerank))


def test_candidate_score_adds_the_scorecards_signals():
    s = RerankSettings(samples=4, context_bonus=0.5, repeat_penalty=2.0)
    turns = [FIRST]
    assert candidate_score(PLAIN, -4.0, 8, turns, s) == pytest.approx(-0.5)
    assert candidate_score(DEPENDENT, -4.0, 8, turns, s) == pytest.approx(0.0)
    assert candidate_score(NEAR_REPEAT, -4.0, 8, turns, s) == pytest.approx(-2.5)
    assert best_index([1.0, 2.0, 2.0]) == 1  # ties: the earliest


async def test_a_context_dependent_candidate_wins_at_equal_likelihood():
    backend, asker = reranker([PLAIN, DEPENDENT], {PLAIN: -1.0, DEPENDENT: -1.0})
    (q,) = await asker.ask(Conversation(messages=list(HISTORY)), GenerationParams(max_tokens=32, temperature=0.0))
    assert q.text == DEPENDENT and q.attempts == 2
    assert len(backend.requests) == 2  # both samples in one generate call
    assert backend.requests[0].params.temperature == 0.0  # the greedy sample stays one of them
    assert backend.requests[1].params.temperature == asker.config.retry_temperature
    assert backend.score_calls[0][2] == [PLAIN, DEPENDENT]


async def test_a_near_repeat_loses_even_when_the_model_prefers_it():
    _, asker = reranker([NEAR_REPEAT, PLAIN], {NEAR_REPEAT: -0.5, PLAIN: -1.5})
    (q,) = await asker.ask(Conversation(messages=list(HISTORY)))
    assert q.text == PLAIN


async def test_likelihood_decides_between_otherwise_equal_candidates_and_losers_are_counted():
    before = ASKER_SAMPLES.labels("scripted-test-model", "outranked")._value.get()
    _, asker = reranker([PLAIN, "Which city is the capital of Italy?"], {PLAIN: -3.0, "Which city is the capital of Italy?": -0.2})
    (q,) = await asker.ask(Conversation(messages=list(HISTORY)))
    assert q.text == "Which city is the capital of Italy?"
    assert ASKER_SAMPLES.labels("scripted-test-model", "outranked")._value.get() == before + 1


async def test_only_the_first_sample_may_end_the_conversation():
    _, asker = reranker([END_OF_CONVERSATION, PLAIN], {PLAIN: -1.0})
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), allow_end=True)
    assert outcome.ended and not outcome.questions
    _, asker = reranker([PLAIN, END_OF_CONVERSATION], {PLAIN: -1.0})
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), allow_end=True)
    assert not outcome.ended and outcome.questions[0].text == PLAIN


def ender(p_end: float, samples: list[str], threshold: float, k: int = 0):
    """An asker drawing ``samples`` in order, whose model gives the end marker probability ``p_end``."""
    import math

    backend = ScriptedBackend(lambda req, i: samples[min(i, len(samples) - 1)],
                              scorer=lambda msgs, prefill, conts: [math.log(p_end) if c == END_OF_CONVERSATION else -1.0
                                                                   for c in conts])
    return backend, AskerService(backend, AskerConfig(format="prompted",
                                                      rerank=RerankSettings(samples=k, end_threshold=threshold)))


@pytest.mark.parametrize("k", [0, 3])
async def test_the_end_threshold_refuses_an_unlikely_end_and_asks_instead(k):
    before = ASKER_SAMPLES.labels("scripted-test-model", "end_below_threshold")._value.get()
    backend, asker = ender(0.3, [END_OF_CONVERSATION, END_OF_CONVERSATION, PLAIN], threshold=0.5, k=k)
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), GenerationParams(max_tokens=32, temperature=0.0),
                                     allow_end=True)
    assert not outcome.ended and outcome.questions[0].text == PLAIN
    assert [c[2] for c in backend.score_calls].count([END_OF_CONVERSATION]) == 1  # scored once per request
    assert ASKER_SAMPLES.labels("scripted-test-model", "end_below_threshold")._value.get() == before + 1


async def test_the_end_threshold_keeps_a_likely_end_and_off_changes_nothing():
    backend, asker = ender(0.8, [END_OF_CONVERSATION, PLAIN], threshold=0.5)
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), allow_end=True)
    assert outcome.ended and not outcome.questions
    backend, asker = ender(0.01, [END_OF_CONVERSATION, PLAIN], threshold=0.0)
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), allow_end=True)
    assert outcome.ended and not backend.score_calls  # off: greedy ends, nothing scored
    backend, asker = ender(0.01, [PLAIN], threshold=0.5)
    outcome = await asker.ask_or_end(Conversation(messages=list(HISTORY)), allow_end=True)
    assert outcome.questions[0].text == PLAIN and not backend.score_calls  # no ending sample: nothing scored


def test_the_end_threshold_is_checked_and_needs_a_scoring_backend():
    class NoScores(ScriptedBackend):
        supports_scoring = False

    with pytest.raises(ConfigError, match="end-threshold is 1.5"):
        RerankSettings(end_threshold=1.5)
    with pytest.raises(ConfigError, match="--end-threshold 0.5"):
        AskerService(NoScores(lambda req, i: PLAIN), AskerConfig(rerank=RerankSettings(end_threshold=0.5)))


async def test_candidates_stay_distinct_when_reranked():
    _, asker = reranker([DEPENDENT, PLAIN], {PLAIN: -1.0, DEPENDENT: -1.0})
    questions = await asker.ask(Conversation(messages=list(HISTORY)), num_candidates=2)
    assert [q.text for q in questions] == [DEPENDENT, PLAIN]


def test_a_backend_that_cannot_score_fails_at_start_naming_the_setting():
    class NoScores(ScriptedBackend):
        supports_scoring = False

    with pytest.raises(ConfigError, match="--rerank-samples 4"):
        AskerService(NoScores(lambda req, i: PLAIN), AskerConfig(rerank=RerankSettings(samples=4)))
    with pytest.raises(ConfigError, match="rerank-samples"):
        RerankSettings(samples=-1)
    AskerService(NoScores(lambda req, i: PLAIN), AskerConfig(rerank=RerankSettings(samples=1)))  # 1 = off


async def test_reranks_through_the_echo_backend():
    echo = create_backend("echo")
    await echo.load()
    try:
        asker = AskerService(echo, AskerConfig(format="prompted", rerank=RerankSettings(samples=3)))
        conversation = Conversation(messages=list(HISTORY))
        questions = await asker.ask(conversation, GenerationParams(max_tokens=32, temperature=0.0, seed=7),
                                    num_candidates=2)
        assert len(questions) == 2 and all(q.attempts >= 3 for q in questions)
        assert echo.score_calls >= 1
    finally:
        await echo.close()


def test_serve_flags_build_the_rerank_settings_and_refuse_bad_ones():
    from typer.testing import CliRunner

    from parrot.backends.flags import settings_from_flags
    from parrot.cli import app
    from parrot.cli.serve import ASKER_FLAGS

    values = {"rerank_samples": 4, "rerank_context_bonus": None, "rerank_repeat_penalty": 3.0}
    assert settings_from_flags("asker", RerankSettings, values, ASKER_FLAGS) == RerankSettings(samples=4, repeat_penalty=3.0)
    result = CliRunner().invoke(app, ["serve", "asker", "--backend", "echo", "--rerank-samples", "99"])
    assert result.exit_code != 0 and "--rerank-samples is 99" in result.output


@requires_model
async def test_reranks_with_the_bundled_model():
    backend = create_backend("transformers", model="smollm2", dtype="float32")
    await backend.load()
    try:
        asker = AskerService(backend, AskerConfig(format="prompted", max_attempts=2, rerank=RerankSettings(samples=3)))
        (q,) = await asker.ask(Conversation(messages=list(HISTORY)), GenerationParams(max_tokens=24, temperature=0.0, seed=1))
        assert q.text and q.attempts >= 3
    finally:
        await backend.close()

"""Unit tests of the asker: prompt formats, degeneracy checks, re-sampling, validation.

All generation goes through tests.helpers.fakes.ScriptedBackend; nothing here depends on a model.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import grpc
import pytest

from parrot.backends.base import GenerationRequest
from parrot.conversation import Conversation, GenerationParams, InputLimits, Message, Role
from parrot.errors import ConfigError, InvalidArgument, LimitExceeded, NoAcceptableOutput
from parrot.protoconv import messages_to_pb
from parrot.v1 import asker_pb2, conversation_pb2
from parrot.asking.prompting import (
    PROMPTED_PREFILL,
    PROMPTED_SYSTEM,
    clean_question,
    has_next_turn,
    normalize,
    rejection_reason,
    render_transcript,
    resolve_format,
    to_prompted,
    to_role_swapped,
)
from services.asker.service import AskerConfig, AskerService
from tests.helpers.fakes import ScriptedBackend

U, A, S = Role.USER, Role.ASSISTANT, Role.SYSTEM

HISTORY = [
    Message(U, "How do I reverse a list in JavaScript?"),
    Message(A, "Use the reverse method: arr.reverse() reverses the array in place and returns it."),
]


def conv(messages: Sequence[Message] = HISTORY, id: str = "c1") -> Conversation:
    return Conversation(messages=list(messages), id=id)


def scripted(outputs: Sequence[str] | Callable[[GenerationRequest, int], str]) -> ScriptedBackend:
    if callable(outputs):
        return ScriptedBackend(outputs)
    seq = list(outputs)
    return ScriptedBackend(lambda req, i: seq[i] if i < len(seq) else seq[-1])


def service(backend: ScriptedBackend, **cfg) -> AskerService:
    cfg.setdefault("format", "prompted")
    return AskerService(backend, AskerConfig(**cfg))


# --------------------------------------------------------------------------- formats


def test_role_swapped_swaps_every_role_and_drops_system():
    msgs = [Message(S, "You are terse."), *HISTORY, Message(U, "and in Python?"), Message(A, "lst[::-1]")]
    out = to_role_swapped(msgs, persona="", topic="")
    assert out == [
        Message(A, HISTORY[0].content),
        Message(U, HISTORY[1].content),
        Message(A, "and in Python?"),
        Message(U, "lst[::-1]"),
    ]


def test_role_swapped_system_message_states_persona_and_topic():
    out = to_role_swapped(HISTORY, persona=" a student new to JS ", topic="performance")
    assert out[0] == Message(S, "Persona: a student new to JS\nTopic: performance")
    assert [m.role for m in out[1:]] == [A, U]
    assert to_role_swapped(HISTORY, topic="performance")[0] == Message(S, "Topic: performance")
    assert to_role_swapped(HISTORY, persona="a teacher")[0] == Message(S, "Persona: a teacher")
    assert to_role_swapped(HISTORY, persona="  ", topic="")[0].role is A


async def test_role_swapped_service_sends_swapped_messages_without_prefill():
    backend = scripted(["what about sorting it?"])
    svc = service(backend, format="role-swapped")
    out = await svc.ask(conv(), persona="a student")
    assert [q.text for q in out] == ["what about sorting it?"]
    (req,) = backend.requests
    assert req.prefill == ""
    assert list(req.messages) == [Message(S, "Persona: a student"), Message(A, HISTORY[0].content), Message(U, HISTORY[1].content)]


async def test_prompted_format_builds_instruction_transcript_and_prefill():
    backend = scripted(["Does it copy the array?"])
    svc = service(backend, format="prompted")
    history = [Message(S, "secret responder instructions"), *HISTORY]
    await svc.ask(conv(history), persona="a student new to JS", topic="performance")
    (req,) = backend.requests
    assert req.prefill == PROMPTED_PREFILL
    assert [m.role for m in req.messages] == [S, U]
    assert req.messages[0].content == PROMPTED_SYSTEM
    body = req.messages[1].content
    assert f"User: {HISTORY[0].content}" in body
    assert f"Assistant: {HISTORY[1].content}" in body
    assert body.index("User:") < body.index("Assistant:")
    assert "a student new to JS" in body and "performance" in body
    assert "secret responder instructions" not in body
    assert to_prompted(HISTORY) == svc.build_prompt(conv())


def test_prompted_format_shortens_very_long_messages():
    long = "x" * 10_000 + "THE END"
    body = to_prompted([Message(U, "hi"), Message(A, long)], max_message_chars=300).messages[1].content
    assert len(body) < 1000 and "[...]" in body and "THE END" in body


def test_prompted_format_leaves_out_old_messages_of_long_conversations():
    msgs = []
    for i in range(20):
        msgs += [Message(U, f"question {i} " + "q" * 200), Message(A, f"answer {i} " + "a" * 400)]
    text = render_transcript(msgs, max_total_chars=3000)
    assert len(text) <= 3000
    assert text.startswith("User: question 0 ")
    assert text.rstrip().endswith("a" * 50) and "answer 19 " in text and "question 19 " in text
    assert "earlier messages left out]" in text and "answer 0 " not in text
    short = render_transcript(HISTORY, max_total_chars=3000)
    assert "left out" not in short


def test_auto_format_detects_parrot_model_json(tmp_path):
    assert resolve_format("auto", None) == "prompted"
    assert resolve_format("auto", str(tmp_path)) == "prompted"
    (tmp_path / "parrot_model.json").write_text(json.dumps({"role": "asker", "base": "SmolLM2"}))
    assert resolve_format("auto", str(tmp_path)) == "role-swapped"
    assert AskerService(scripted(["x?"]), AskerConfig(model_dir=str(tmp_path))).format == "role-swapped"
    (tmp_path / "parrot_model.json").write_text(json.dumps({"role": "responder"}))
    assert resolve_format("auto", str(tmp_path)) == "prompted"
    assert resolve_format("prompted", str(tmp_path)) == "prompted"
    (tmp_path / "parrot_model.json").write_text("{not json")
    with pytest.raises(ConfigError, match="parrot_model.json"):
        resolve_format("auto", str(tmp_path))


def test_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="format"):
        AskerConfig(format="swapped")
    with pytest.raises(ConfigError, match="max_attempts"):
        AskerConfig(max_attempts=0)
    with pytest.raises(ConfigError, match="default_temperature"):
        AskerConfig(default_temperature=3.0)


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("User: and in Python?", "and in Python?"),
        ("  **User:** shorter please", "shorter please"),
        ("Q: why?", "why?"),
        ("Question: what about the second one?", "what about the second one?"),
        ("Next question: and in Python?", "and in Python?"),
        ('"Why?"', "Why?"),
        ("\u201cmake it shorter\u201d", "make it shorter"),
        ('"Is it fast?', "Is it fast?"),
        ("User: \"Does it copy?\"", "Does it copy?"),
        ("What about it?\nAssistant: It reverses in place.", "What about it?"),
        ("What about it?\n\n**Assistant:** Sure", "What about it?"),
        ("Why?\nUser: and how?", "Why?"),
        ("Can you explain that? Assistant: Of course.", "Can you explain that?"),
        ("How?<|im_end|>\n<|im_start|>assistant", "How?"),
        ("  Does it mutate the array?  \n", "Does it mutate the array?"),
        ("Your next message: is it fast?", "is it fast?"),
        ("User's follow-up question: is it fast?", "is it fast?"),
        ("\n\nUser: Is it fast?\n\nUser: And slow?", "Is it fast?"),
        ("Is it fast?\nUser's response: yes", "Is it fast?"),
        ("Is it fast?\n\nThe year exhales slow\n\nThe year exhales slow", "Is it fast?"),
        ("A follow-up question: is it fast?", "A follow-up question: is it fast?"),
        ("The user asks: is it fast?", "is it fast?"),
        ('"And is it fast too?" The user might ask this because speed matters.', "And is it fast too?"),
        (" is it fast?\n\nThe user asks: and slow?", "is it fast?"),
    ],
)
def test_clean_question(raw, clean):
    assert clean_question(raw) == clean


def test_clean_question_keeps_inner_quotes_and_code():
    assert clean_question("'map' or 'forEach'?") == "'map' or 'forEach'?"
    code = "```js\nconst a = [1, 2];\n```\nwhy does it print 2,1?"
    assert clean_question(code) == code
    # A blank line inside a code block does not end the turn; the first one after it does.
    fenced = "why does this fail?\n```js\nconst a = 1;\n\nconst a = 2;\n```"
    assert clean_question(fenced + "\n\nAnd then more text.") == fenced


def test_has_next_turn():
    assert has_next_turn("Why?\nAssistant: because")
    assert has_next_turn("Why?<|im_end|>")
    assert has_next_turn("Why?\n\nBecause.")
    assert not has_next_turn("User: Why?")
    assert not has_next_turn("Why does it\nmutate")


# --------------------------------------------------------------------------- degeneracy rules


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("?", "too_short"),
        ("1. ?", "too_short"),
        ("How do I reverse a list in JavaScript?", "repeat"),
        ("  how do i REVERSE a list in javascript ", "repeat"),
        ("reverses the array in place and returns it", "copies_assistant"),
        ("Sure! Here's a version in Python:", "assistant_style"),
        ("Certainly. The reverse method mutates.", "assistant_style"),
        ("As an AI language model, I cannot run code.", "assistant_style"),
        ("I'd be happy to explain further.", "assistant_style"),
        ("Here is the code you asked for.", "assistant_style"),
        ("Here are three other ways.", "assistant_style"),
        ("Great question! Arrays are objects.", "assistant_style"),
        ("Of course, I can show that.", "assistant_style"),
        ("Assistant: The reverse method works in place.", "assistant_style"),
        ("word " * 151, "answer_like"),
        ("Other options:\n- slice().reverse()\n- spread then reverse\n- a for loop", "answer_like"),
        ("2. A pizza-making party with popcorn.", "answer_like"),
        ("A: The reverse method.", "assistant_style"),
        ("What is the way to reverse a list in JavaScript?", None),
        ("How do I reverse a list in JavaScript", "repeat"),
        ("how do i reverse a list in javascript", "repeat"),
        ("The user wants to know whether it copies.", "narration"),
        ("The user is asking about speed.", "narration"),
        ("The user interface freezes when I call it, why?", None),
        ("Your next question could be: does it copy?", "narration"),
    ],
)
def test_rejection_rules(text, reason):
    assert rejection_reason(text, HISTORY) == reason


@pytest.mark.parametrize(
    "text",
    [
        "and in Python?",
        "why?",
        "make it shorter",
        "Shorter please.",
        "ok",
        "what about the second one?",
        "Sure, go ahead.",
        "Does it copy the array?",
        "Is reverse() faster than these?\n- a loop\n- reduce\n- spread",
        "reverse method?",  # a few words of the answer, too short to be a copy
    ],
)
def test_real_follow_ups_pass(text):
    assert rejection_reason(text, HISTORY) is None


def test_copying_a_short_answer_whole_is_rejected():
    history = [Message(U, "How long should I boil an egg?"), Message(A, "10 to 12 minutes.")]
    assert rejection_reason("10 to 12 minutes", history) == "copies_assistant"
    assert rejection_reason("12 minutes?", history) is None


def test_repeat_ignores_contractions():
    history = [Message(U, "What's a tuple?"), Message(A, "An immutable sequence.")]
    assert rejection_reason("what is a tuple", history) == "repeat"
    assert rejection_reason("That's a great question! Tuples are fixed.", history) == "assistant_style"


def test_normalize():
    assert normalize("  Why?!  It's   FAST. ") == "why it is fast"
    assert normalize("What's that? I can't, I’m sure") == normalize("what is that i cannot i am sure")


# --------------------------------------------------------------------------- sampling


async def test_resamples_after_degenerate_sample():
    backend = scripted(["Sure! Here's the code:", "does it mutate the original?"])
    svc = service(backend)
    (q,) = await svc.ask(conv(), GenerationParams(max_tokens=32, temperature=0.2, seed=11))
    assert q.text == "does it mutate the original?"
    assert q.attempts == 2
    assert q.completion_tokens == len("Sure! Here's the code:".split()) + 5
    assert q.prompt_tokens == 20
    first, second = backend.requests
    assert (first.params.temperature, first.params.seed) == (0.2, 11)
    assert second.params.temperature == 0.7 and second.params.seed == 12
    assert second.params.max_tokens == 32


async def test_all_attempts_degenerate_raise_no_acceptable_output():
    """ABORTED, not UNAVAILABLE: the service is up, so callers must not hold their calls as in an outage."""
    backend = scripted(["How do I reverse a list in JavaScript?"])
    svc = service(backend, max_attempts=3)
    with pytest.raises(NoAcceptableOutput, match="3 attempts") as e:
        await svc.ask(conv())
    assert e.value.code == grpc.StatusCode.ABORTED
    assert len(backend.requests) == 3


async def test_candidates_are_distinct_and_first_attempts_are_one_batch():
    calls: list[int] = []

    class BatchRecorder(ScriptedBackend):
        async def generate(self, requests):
            calls.append(len(requests))
            return await super().generate(requests)

    outputs = ["why?", "why?", "and in Python?", "User: why", "is it fast?"]
    backend = BatchRecorder(lambda req, i: outputs[i])
    svc = service(backend)
    out = await svc.ask(conv(), num_candidates=3)
    # Candidate 1 drew "why?" (a duplicate of candidate 0), then "why" (the same after
    # normalizing), then "is it fast?"; candidates keep their order.
    assert [q.text for q in out] == ["why?", "is it fast?", "and in Python?"]
    assert [q.attempts for q in out] == [1, 3, 1]
    # Three first attempts in one call, then one call per retry round.
    assert calls == [3, 1, 1]
    seeds = [r.params.seed for r in backend.requests]
    assert seeds == [None] * 5  # no seed given: none invented


async def test_seeds_differ_per_candidate_and_attempt():
    backend = scripted(lambda req, i: f"question number {req.params.seed}?")
    svc = service(backend, max_attempts=4)
    out = await svc.ask(conv(), GenerationParams(max_tokens=16, temperature=0.0, seed=100), num_candidates=3)
    assert [q.text for q in out] == ["question number 100?", "question number 104?", "question number 108?"]
    temps = [r.params.temperature for r in backend.requests]
    assert temps == [0.0, 0.7, 0.7]  # greedy honoured for the first candidate only


async def test_fewer_candidates_when_model_keeps_repeating_itself():
    backend = scripted(["why?"])
    svc = service(backend, max_attempts=2)
    out = await svc.ask(conv(), num_candidates=2)
    assert [q.text for q in out] == ["why?"]


async def test_default_params_sample():
    backend = scripted(["why?"])
    await service(backend).ask(conv())
    (req,) = backend.requests
    assert req.params.max_tokens == 64 and req.params.temperature == 0.7


# --------------------------------------------------------------------------- gRPC


def ask_request(messages: Sequence[Message] = HISTORY, **kw) -> asker_pb2.AskRequest:
    return asker_pb2.AskRequest(conversation=messages_to_pb(list(messages), id="conv-7"), **kw)


async def test_grpc_ask_returns_candidates():
    backend = scripted(["User: why?\nAssistant: because", "and in Python?"])
    svc = service(backend)
    resp = await svc.Ask(ask_request(num_candidates=2, persona="a student"), None)
    assert resp.model == "scripted-test-model"
    assert resp.conversation_id == "conv-7"
    assert [c.text for c in resp.candidates] == ["why?", "and in Python?"]
    assert resp.candidates[0].finish_reason == conversation_pb2.FINISH_REASON_STOP
    assert resp.candidates[0].attempts == 1
    assert resp.candidates[0].usage.prompt_tokens == 10


async def test_grpc_unset_temperature_takes_service_default_and_explicit_zero_is_greedy():
    backend = scripted(["why?"])
    svc = service(backend, default_temperature=0.9)
    await svc.Ask(ask_request(), None)
    await svc.Ask(ask_request(params=conversation_pb2.GenerationParams(temperature=0.0, max_tokens=8)), None)
    assert [r.params.temperature for r in backend.requests] == [0.9, 0.0]
    assert [r.params.max_tokens for r in backend.requests] == [64, 8]


@pytest.mark.parametrize(
    "request_factory, field",
    [
        (lambda: ask_request([]), "conversation.messages"),
        (lambda: ask_request(HISTORY[:1]), "conversation.messages[0].role"),
        (lambda: ask_request([*HISTORY, Message(U, "and?")]), "conversation.messages[2].role"),
        (lambda: ask_request(num_candidates=99), "num_candidates"),
        (lambda: ask_request(params=conversation_pb2.GenerationParams(max_tokens=10**6)), "params.max_tokens"),
        (lambda: ask_request(params=conversation_pb2.GenerationParams(temperature=5.0)), "params.temperature"),
        (lambda: ask_request(persona="x" * 501), "persona"),
        (lambda: ask_request(topic="y" * 501), "topic"),
    ],
)
async def test_grpc_bad_input_names_the_field(request_factory, field):
    backend = scripted(["why?"])
    with pytest.raises((InvalidArgument, LimitExceeded)) as err:  # a configured limit: RESOURCE_EXHAUSTED
        await service(backend).Ask(request_factory(), None)
    assert err.value.field == field
    assert backend.requests == []


async def test_grpc_unknown_role_value_is_rejected():
    request = ask_request()
    request.conversation.messages[1].role = 7
    with pytest.raises(InvalidArgument) as err:
        await service(scripted(["why?"])).Ask(request, None)
    assert err.value.field == "conversation.messages[1].role"
    assert "unknown role value 7" in str(err.value)


async def test_plain_ask_validates_too():
    svc = service(scripted(["why?"]), limits=InputLimits(max_messages=1))
    with pytest.raises(LimitExceeded) as err:
        await svc.ask(conv())
    assert err.value.field == "conversation.messages"
    with pytest.raises(InvalidArgument) as err:
        await service(scripted(["why?"])).ask(conv(), num_candidates=9)
    assert err.value.field == "num_candidates"

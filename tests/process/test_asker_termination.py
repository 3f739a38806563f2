"""The end-of-conversation marker round-trips: asker training data (an example where the real session
ended), the asker API (a typed ``end_of_conversation`` result, only when the caller allows it),
collection (a session ends there once it has ``min_turns`` user turns) and the scorecard's context."""

from __future__ import annotations

from typing import Any

from parrot.asking.prompting import END_OF_CONVERSATION, ends_conversation
from parrot.asking.scorecard_io import context_of
from parrot.asking.training_data import AskerDataConfig, build_asker_dataset, example_to_conversation
from parrot.conversation import Conversation, GenerationParams, Message, Role
from parrot.datasets import ShareGPTRecord
from parrot.protoconv import messages_to_pb
from parrot.v1 import asker_pb2, conversation_pb2, coordinator_pb2 as cpb, responder_pb2
from services.asker.service import AskerConfig, AskerService
from services.coordinator.kinds import KINDS, UnitContext, resolve
from services.coordinator.kinds.collection import SeedUnit
from tests.helpers.fakes import ScriptedBackend

U, A = Role.USER, Role.ASSISTANT


def record(rid: str, *turns: str) -> ShareGPTRecord:
    return ShareGPTRecord(id=rid, messages=[Message(U if i % 2 == 0 else A, t) for i, t in enumerate(turns)], line=1)


RECORDS = [
    record("abc_0", "How do I parse JSON in Go?", "Use encoding/json.", "And for YAML?", "Use a yaml package."),
    record("abc_1", "Which yaml package is best?", "gopkg.in/yaml.v3 is common.", "Does it support anchors?", "Yes."),
    record("solo", "What is a goroutine?", "A lightweight thread.", "How many can I start?", "Millions."),
]


def test_training_data_has_an_end_example_where_the_real_session_ended():
    rows, report = build_asker_dataset([("f.jsonl", RECORDS)], AskerDataConfig(end_examples=True))
    ends = [r for r in rows if r["end_of_conversation"]]
    # abc_0 is continued by abc_1 (same session): only abc_1 and solo end their sessions
    assert sorted(r["id"] for r in ends) == ["abc_1:3", "solo:3"]
    assert report.end_examples == 2 and report.as_dict()["end_examples"] == 2
    assert report.targets == 3  # the real follow-ups; end examples are not user turns
    end = next(r for r in ends if r["id"] == "solo:3")
    assert end["messages"][-1] == {"role": "assistant", "content": END_OF_CONVERSATION}
    assert end["context_dependent"] is False
    conversation = example_to_conversation(end)
    assert conversation[:-1] == RECORDS[2].messages  # the whole real session is the context
    assert conversation[-1] == Message(U, END_OF_CONVERSATION)
    ctx = context_of(end)
    assert ctx.human is None and ctx.session == "solo" and list(ctx.messages) == RECORDS[2].messages
    assert context_of(next(r for r in rows if r["id"] == "solo:2")).human == "How many can I start?"
    # off by default: training data without the flag is what it was
    plain, _ = build_asker_dataset([("f.jsonl", RECORDS)])
    assert not any(r["end_of_conversation"] for r in plain) and len(plain) == len(rows) - 2


HISTORY = [Message(U, "How do I reverse a list in JavaScript?"), Message(A, "Use arr.reverse(); it works in place.")]


def asker(outputs: list[str]) -> AskerService:
    return AskerService(ScriptedBackend(lambda req, i: outputs[min(i, len(outputs) - 1)]), AskerConfig(format="role-swapped"))


def request(allow_end: bool) -> asker_pb2.AskRequest:
    return asker_pb2.AskRequest(conversation=messages_to_pb(HISTORY), allow_end=allow_end,
                                params=conversation_pb2.GenerationParams(temperature=0.0, max_tokens=16))


async def test_the_api_returns_the_end_as_a_typed_result_only_when_allowed():
    assert ends_conversation(f"{END_OF_CONVERSATION}<|im_end|>") and not ends_conversation("and in Python?")
    resp = await asker([END_OF_CONVERSATION]).Ask(request(allow_end=True), None)
    assert resp.end_of_conversation and not resp.candidates
    # not allowed: the marker is an unusable sample, re-drawn
    resp = await asker([END_OF_CONVERSATION, "And in Python?"]).Ask(request(allow_end=False), None)
    assert not resp.end_of_conversation and [c.text for c in resp.candidates] == ["And in Python?"]
    assert resp.candidates[0].attempts == 2
    outcome = await asker(["And in Python?"]).ask_or_end(Conversation(HISTORY), GenerationParams(), allow_end=True)
    assert not outcome.ended and outcome.questions[0].text == "And in Python?"


class FakeClients:
    """A responder that always answers and an asker that ends whenever it is allowed to."""

    def __init__(self) -> None:
        self.allowed: list[bool] = []

    async def respond(self, messages: list[Message], params: Any, role: str = "responder") -> Any:
        return responder_pb2.RespondResponse(text=f"Answer number {len(messages)}.", model="fake-responder",
                                             usage=conversation_pb2.Usage(completion_tokens=3))

    async def ask(self, messages: list[Message], params: Any, persona: str = "", topic: str = "",
                  allow_end: bool = False) -> Any:
        self.allowed.append(allow_end)
        if allow_end:
            return asker_pb2.AskResponse(model="fake-asker", end_of_conversation=True)
        return asker_pb2.AskResponse(model="fake-asker", candidates=[
            asker_pb2.AskCandidate(text=f"What about variant {len(messages)} of that?")])


async def test_collection_ends_a_session_where_the_asker_ends_it_after_min_turns():
    spec = cpb.RunSpec(collection=cpb.CollectionSpec(min_turns=2, max_turns=6), seed=1)
    clients = FakeClients()
    ctx = UnitContext(resolve(spec), clients, 0, lambda tokens: None)  # type: ignore[arg-type]
    out = await KINDS["collection"].run_unit(ctx, SeedUnit("s1", "How do I center a div?"))
    assert clients.allowed == [False, True]  # not before min_turns user turns
    assert out["turns"] == 2 and out["metadata"]["ended"] == "asker_ended"
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant"]


def test_cli_data_asker_end_examples_and_their_stats(tmp_path):
    import json
    import subprocess

    from tests.conftest import PARROT

    src = tmp_path / "logs.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "conversations": [
        {"from": "human" if m.role is U else "gpt", "value": m.content} for m in r.messages]}) + "\n" for r in RECORDS))
    out = tmp_path / "asker.jsonl"
    r = subprocess.run([PARROT, "data", "asker", "--input", str(src), "--output", str(out), "--tokenizer", "whitespace",
                        "--end-examples"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in rows if x["end_of_conversation"]) == ["abc_1:3", "solo:3"]
    report = json.loads((tmp_path / "asker.jsonl.report.json").read_text())
    assert report["end_examples"] == 2 and report["config"]["end_examples"] is True
    # read back as conversations, an end example is the session as it ended: no marker as a user turn
    r = subprocess.run([PARROT, "data", "stats", "--format", "asker", str(out), "--tokenizer", "whitespace", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)["asker.jsonl"]
    # every fixture session has 2 user turns; an end example read with the marker would count 3
    assert stats["sessions"] == len(rows) == 5 and stats["user_turns"] == 10

"""`bench extend` logic with scripted model clients: turns up to N with provenance, rejected follow-ups
re-asked, sessions that cannot go on marked incomplete, and resume after an interruption."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from parrot.benchmarks.extend import ExtendConfig, ExtendIncomplete, extend_file, review_sheet
from parrot.datasets import load_questions
from parrot.errors import ConfigError, Unavailable

QUESTIONS = load_questions("q.jsonl", "".join(json.dumps(r) + "\n" for r in [
    {"question_id": 1, "category": "writing", "turns": ["Write a poem about a lighthouse.", "Make it sadder."],
     "instructions": [{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, None]},
    {"question_id": 2, "category": "math", "turns": ["What is 3 + 4?", "Times two?"]},
    {"question_id": 3, "category": "stem", "turns": [f"Turn {i} about tides." for i in range(1, 6)]},
]))


FOLLOW_UPS = ["", "", "And how would that look in winter?", "Could you shorten it for a postcard?",
              "What would a child make of it?", "Why does that part matter most?", "Which line would you cut first?",
              "Can it rhyme instead?", "Now give it a title."]


class FakeClients:
    """Responder says 'answer N'; asker writes a numbered follow-up, with scripted bad ones first."""

    def __init__(self, bad_first: int = 0, fail_for: str | None = None, never_ok_for: str | None = None):
        self.asks: list[tuple[int, str, str]] = []
        self.responds = 0
        self.bad_first = bad_first
        self.fail_for = fail_for
        self.never_ok_for = never_ok_for

    async def respond(self, messages, params, role="responder"):
        self.responds += 1
        if self.fail_for and messages[0].content.startswith(self.fail_for):
            raise Unavailable("responder down")
        return SimpleNamespace(text=f"answer {self.responds}", model="fake-responder")

    async def ask(self, messages, params, persona="", topic=""):
        n = sum(1 for m in messages if m.role.value == "user")
        self.asks.append((n, topic, messages[0].content))
        if self.never_ok_for and messages[0].content.startswith(self.never_ok_for):
            text = "ok"  # too short: always rejected
        elif len([a for a in self.asks if a[0] == n and a[2] == messages[0].content]) <= self.bad_first:
            text = messages[-2].content  # a repeat of the last user turn: rejected
        else:
            text = FOLLOW_UPS[n]
        return SimpleNamespace(candidates=[SimpleNamespace(text=text)], model="fake-asker")


async def test_extend_to_n_turns_with_provenance(tmp_path):
    clients = FakeClients(bad_first=1)
    out = tmp_path / "ext.jsonl"
    recs = await extend_file(QUESTIONS, out, ExtendConfig(turns=6, concurrency=2), clients)
    assert [len(r["turns"]) for r in recs] == [6, 6, 6]
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == [1, 2, 3]  # input order
    r1 = recs[0]
    assert r1["turns"][:2] == QUESTIONS[0].turns
    prov = r1["turn_provenance"]
    assert [p["source"] for p in prov] == ["original", "original", "asker", "asker", "asker", "asker"]
    assert prov[2]["attempts"] == 2 and prov[2]["rejected"] == {"repetitive": 1}
    assert prov[2]["context_dependent"] is True and "that" in " ".join(prov[2]["context_cues"])
    assert prov[2]["asker_model"] == "fake-asker" and prov[2]["context_answers_by"] == "fake-responder"
    assert r1["instructions"][0] == {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert r1["instructions"][1:] == [None] * 5
    assert len(r1["extension"]["context_answers"]) == 5 and r1["extension"]["status"] == "complete"
    # topic hint keeps the asker on the session's subject
    assert all(topic.startswith("writing: Write a poem about a lighthouse.") for _, topic, first in clients.asks
               if first.startswith("Write a poem"))
    assert [p["source"] for p in recs[2]["turn_provenance"]] == ["original"] * 5 + ["asker"]
    # the file loads back as an N-turn question file, ready for evaluation
    qs = load_questions("ext.jsonl", out.read_text())
    assert [len(q.turns) for q in qs] == [6, 6, 6] and qs[0].extra["turn_provenance"][2]["source"] == "asker"
    sheet = review_sheet(recs)
    assert sum(1 for line in sheet.splitlines() if line.endswith(")_") and "**NEW**" in line) == 4 + 4 + 1


async def test_incomplete_and_unchanged_sessions(tmp_path):
    clients = FakeClients(never_ok_for="What is")
    recs = await extend_file(QUESTIONS, tmp_path / "e.jsonl", ExtendConfig(turns=5, max_asks_per_turn=2), clients)
    assert recs[1]["extension"]["status"] == "incomplete" and len(recs[1]["turns"]) == 2
    assert "after 2 asks" in recs[1]["extension"]["reason"]
    assert recs[2]["extension"]["status"] == "unchanged" and len(recs[2]["turns"]) == 5


async def test_resume_after_interruption_does_not_redo_sessions(tmp_path):
    out = tmp_path / "ext.jsonl"
    failing = FakeClients(fail_for="What is")
    with pytest.raises(ExtendIncomplete) as e:
        await extend_file(QUESTIONS, out, ExtendConfig(turns=4), failing)
    assert list(e.value.failures) == ["2"] and len(e.value.records) == 2
    done = out.read_text()
    with out.open("a") as f:
        f.write('{"question_id": 2, "turns": ["cut sh')  # a torn line from a kill mid-write
    again = FakeClients()
    recs = await extend_file(QUESTIONS, out, ExtendConfig(turns=4), again)
    assert [r["question_id"] for r in recs] == [1, 2, 3]
    assert {first for _, _, first in again.asks} == {"What is 3 + 4?"}  # only the missing session was asked
    kept = {json.loads(x)["question_id"]: x for x in done.splitlines()}
    assert json.dumps(recs[0], ensure_ascii=False) == kept[1]


def test_config_is_validated():
    with pytest.raises(ConfigError, match="turns"):
        ExtendConfig(turns=1)

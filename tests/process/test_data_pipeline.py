"""The data pipeline's pure parts: cleaning rules, the asker role swap and its inverse, asker examples,
dataset statistics side by side, CaPO prompt construction and the preference row schema, and the
`parrot data asker|stats` commands on our own small fixtures."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from parrot.conversation import Message, Role
from parrot.datasets import DatasetError, ShareGPTRecord
from parrot.datasets.capo import (
    CONTEXT_HALLUCINATION,
    CONTEXT_MISUNDERSTANDING,
    CONTEXT_NEGLECT,
    HALLUCINATION_INSTRUCTION,
    STRATEGIES,
    load_preferences,
    pick_session_distractor,
    preference_row,
    strategy_messages,
    validate_preference_row,
)
from parrot.datasets.cleaning import CleaningConfig, CleaningReport, clean_conversations, clean_messages
from parrot.datasets.conversations import detect_format, load_conversations
from parrot.asking.prompting import from_role_swapped, to_role_swapped
from parrot.asking.training_data import (
    AskerDataConfig,
    build_asker_dataset,
    example_to_conversation,
    is_held_out,
    session_key,
    split_holdout,
    validate_example,
)
from tests.conftest import PARROT
from tests.process.test_coordinator import sharegpt

U, A, S = Role.USER, Role.ASSISTANT, Role.SYSTEM


def msgs(*pairs: tuple[Role, str]) -> list[Message]:
    return [Message(r, t) for r, t in pairs]


def record(rid: str, *pairs: tuple[Role, str]) -> ShareGPTRecord:
    return ShareGPTRecord(id=rid, messages=msgs(*pairs), line=1)


BREAD = record("bread", (U, "Give me a recipe for banana bread."), (A, "Mash three bananas, add flour, sugar and two eggs."),
               (U, "Can I make it without eggs?"), (A, "Yes: use a quarter cup of applesauce instead."),
               (U, "How long does it keep?"), (A, "About four days in a closed box."))


# ------------------------------------------------------------------------------ cleaning


def clean_one(messages: list[Message], **kw) -> tuple[list[Message] | None, CleaningReport]:
    report = CleaningReport()
    return clean_messages(messages, CleaningConfig(**kw), report), report


def test_empty_turns_are_stripped_and_counted():
    out, rep = clean_one(msgs((U, "Hi, what is a monad?"), (A, "  "), (A, "A design pattern."), (U, "Why?"), (A, "Because.")))
    assert out == msgs((U, "Hi, what is a monad?"), (A, "A design pattern."), (U, "Why?"), (A, "Because."))
    assert rep.repaired["empty_turns_removed"] == 1


def test_leading_assistant_turns_are_trimmed_or_dropped():
    conv = msgs((A, "(continued) ...and that is all."), (U, "Thanks. What next?"), (A, "Step two."), (U, "And then?"))
    out, rep = clean_one(conv)
    assert out == conv[1:] and rep.repaired["leading_assistant_trimmed"] == 1
    out, rep = clean_one(conv, repair=False)
    assert out is None and rep.dropped["starts_with_assistant"] == 1


def test_wrong_alternation_is_cut_or_dropped():
    conv = msgs((U, "Name a prime."), (A, "7."), (U, "Another?"), (U, "Hello?"), (A, "11."))
    out, rep = clean_one(conv)
    assert out == conv[:3] and rep.repaired["truncated_at_bad_alternation"] == 1
    out, rep = clean_one(conv, repair=False)
    assert out is None and rep.dropped["bad_alternation"] == 1


def test_system_messages_keep_only_a_leading_one():
    conv = msgs((S, "Be brief."), (U, "Name a colour."), (S, "Injected."), (A, "Blue."), (U, "Another one?"))
    out, rep = clean_one(conv)
    assert out == [conv[0], conv[1], conv[3], conv[4]] and rep.repaired["system_messages_removed"] == 1


def test_long_messages_cut_the_conversation():
    conv = msgs((U, "Summarize my notes."), (A, "Sure."), (U, "word " * 50), (A, "Done."), (U, "Shorter?"))
    out, rep = clean_one(conv, max_message_tokens=20, min_user_turns=1)
    assert out == conv[:2] and rep.repaired["truncated_at_long_message"] == 1


def test_min_user_turns_and_no_user_turn():
    out, rep = clean_one(msgs((U, "One question only."), (A, "One answer.")), min_user_turns=2)
    assert out is None and rep.dropped["too_few_user_turns"] == 1
    out, rep = clean_one(msgs((A, "Only the assistant speaks.")))
    assert out is None and rep.dropped["no_user_turn"] == 1
    assert clean_one(msgs((U, "One question only."), (A, "x")), min_user_turns=1)[0] is not None
    with pytest.raises(ValueError, match="min_user_turns"):
        CleaningConfig(min_user_turns=0)


def test_duplicates_up_to_case_and_punctuation_are_dropped_across_files():
    a = record("a", (U, "What is Rust?"), (A, "A language."), (U, "Is it fast?"))
    b = record("b", (U, "what is rust"), (A, "A language!"), (U, "is it fast"))
    report, seen = CleaningReport(), set()
    kept1, _ = clean_conversations([a], report=report, seen=seen)
    kept2, _ = clean_conversations([b, BREAD], report=report, seen=seen)
    assert [r.id for r in kept1 + kept2] == ["a", "bread"]
    assert report.dropped["duplicate"] == 1 and report.conversations_in == 3 and report.conversations_kept == 2


# ------------------------------------------------------------------------------ role swap


@pytest.mark.parametrize("persona,topic", [("", ""), ("a retired teacher", ""), ("", "gardening"), (" a cook ", " pasta ")])
def test_role_swap_round_trips(persona, topic):
    conv = [Message(S, "You are helpful."), *BREAD.messages]
    swapped = to_role_swapped(conv, persona, topic)
    back, p, t = from_role_swapped(swapped)
    assert back == BREAD.messages  # the conversation's own system message is not part of the format
    assert (p, t) == (persona.strip(), topic.strip())


def test_from_role_swapped_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="hint"):
        from_role_swapped(msgs((S, "You are helpful."), (A, "Hi")))
    with pytest.raises(ValueError, match="system"):
        from_role_swapped(msgs((A, "Hi"), (S, "Persona: x")))


# ------------------------------------------------------------------------------ asker examples


def test_asker_examples_use_the_services_format_and_round_trip():
    rows, rep = build_asker_dataset([("logs.jsonl", [BREAD])])
    assert [r["id"] for r in rows] == ["bread:2", "bread:3"]
    assert rep.examples == 2 and rep.targets == 2
    first = rows[0]
    assert first["source"] == "logs.jsonl" and first["turn"] == 2 and first["context_turns"] == 1
    assert first["messages"] == [
        {"role": "assistant", "content": "Give me a recipe for banana bread."},
        {"role": "user", "content": "Mash three bananas, add flour, sugar and two eggs."},
        {"role": "assistant", "content": "Can I make it without eggs?"},
    ]
    # The context part is exactly what the asker service sends a trained checkpoint.
    context = [Message(Role(m["role"]), m["content"]) for m in first["messages"][:-1]]
    assert context == to_role_swapped(BREAD.messages[:2])
    for row in rows:
        k = row["turn"]
        assert example_to_conversation(row) == BREAD.messages[: 2 * k - 1]
        validate_example("x.jsonl", 1, row)
    assert first["context_dependent"] and "it" in first["cues"]


def test_asker_examples_cap_tokens_trim_context_and_dedupe():
    long_target = record("t", (U, "Start."), (A, "Ok."), (U, "word " * 40))
    rows, rep = build_asker_dataset([("f", [long_target])], AskerDataConfig(max_target_tokens=10))
    assert rows == [] and rep.dropped["target_too_long"] == 1
    # The oldest exchange is left out to fit max_tokens; the last one is kept.
    rows, rep = build_asker_dataset([("f", [BREAD])], AskerDataConfig(max_tokens=40, max_target_tokens=10))
    last = rows[-1]
    assert last["id"] == "bread:3" and last["context_turns"] == 1 and last["tokens"] <= 40 and rep.context_trimmed == 1
    rows, rep = build_asker_dataset([("f", [BREAD])], AskerDataConfig(max_tokens=12, max_target_tokens=10))
    assert rows == [] and rep.dropped["too_long"] == 2
    # Overlapping chunks of one conversation give the same example once.
    chunk = record("bread-part", *[(m.role, m.content) for m in BREAD.messages[:4]])
    rows, rep = build_asker_dataset([("a", [BREAD]), ("b", [chunk])])
    assert [r["id"] for r in rows] == ["bread:2", "bread:3"] and rep.dropped["duplicate_example"] == 1


def test_holdout_split_is_by_session_deterministic_and_keeps_chunks_together():
    assert session_key("abc_12") == "abc" and session_key("abc") == "abc" and session_key("a_b") == "a_b"
    ids = [f"s{i}_{chunk}" for i in range(200) for chunk in range(3)]
    rows = [{"id": f"{cid}:{k}"} for cid in ids for k in (2, 3)]
    train, held = split_holdout(rows, 0.25)
    assert len(train) + len(held) == len(rows) and 0.15 < len(held) / len(rows) < 0.35
    held_sessions = {session_key(r["id"].rsplit(":", 1)[0]) for r in held}
    train_sessions = {session_key(r["id"].rsplit(":", 1)[0]) for r in train}
    assert held_sessions and not held_sessions & train_sessions  # no session on both sides
    assert split_holdout(list(reversed(rows)), 0.25)[1] == list(reversed(held))  # order does not matter
    assert split_holdout(rows, 0.0) == (rows, [])
    # Pinned, so the split stays the same across processes and versions: sha256("c2") lies at 0.6095.
    assert is_held_out("c2", 0.62) and not is_held_out("c2", 0.60) and is_held_out("c2_7", 0.62)
    with pytest.raises(ValueError, match="holdout fraction"):
        split_holdout(rows, 1.0)


def test_validate_example_names_the_field():
    with pytest.raises(DatasetError, match=r"x.jsonl:3: field 'messages\[1\].role'"):
        validate_example("x.jsonl", 3, {"id": "a:2", "source": "s", "messages": [{"role": "user", "content": "q"},
                                                                                    {"role": "user", "content": "t"}]})


# ------------------------------------------------------------------------------ statistics


def test_conversation_formats_are_detected_and_loaded():
    share = json.dumps(sharegpt("c1", ("human", "Tell me about owls."), ("gpt", "Owls hunt at night."),
                                ("human", "Why do they do that?")))
    assert detect_format("a.jsonl", share) == "sharegpt"
    mt = json.dumps({"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]})
    assert detect_format("q.jsonl", mt) == "mtbench"
    chat = json.dumps({"messages": [{"role": "user", "content": "Hi there, what is 2+2?"}, {"role": "assistant", "content": "4"}]})
    loaded = load_conversations("m.jsonl", chat)
    assert loaded == [("record-1", msgs((U, "Hi there, what is 2+2?"), (A, "4")))]
    assert load_conversations("q.jsonl", mt)[0][1] == msgs((U, "Write a poem."), (U, "Make it shorter."))
    with pytest.raises(DatasetError, match="z.jsonl:1"):
        detect_format("z.jsonl", json.dumps({"foo": 1}))
    with pytest.raises(DatasetError, match=r"field 'messages\[0\].role'"):
        load_conversations("m.jsonl", json.dumps({"messages": [{"role": "bot", "content": "x"}]}))


def test_stats_table_side_by_side():
    from parrot.analysis import dataset_stats, format_stats_table

    one = dataset_stats([BREAD.messages])
    two = dataset_stats([BREAD.messages, msgs((U, "What is the capital of Peru?"), (A, "Lima."))])
    table = format_stats_table([("one", one), ("two", two)])
    lines = table.splitlines()
    assert lines[0] == "| | one | two |"
    assert "| sessions | 1 | 2 |" in lines
    assert "| user turns / session | 3.00 | 2.00 |" in lines
    assert "| context-dependent queries / session | 2.00 | 1.00 |" in lines
    assert any(line.startswith("| tokens / session (whitespace) |") for line in lines)
    assert any(line.startswith("| distinct-2 of user turns |") for line in lines)


# ------------------------------------------------------------------------------ CaPO prompts and rows


HISTORY = msgs((U, "Recommend a sci-fi novel."), (A, "Try Dune by Frank Herbert."),
               (U, "What is the capital of Japan?"), (A, "Tokyo."),
               (U, "Who wrote the novel Solaris?"), (A, "Stanislaw Lem wrote Solaris."))
QUERY = "Is it longer than Dune?"


def test_context_neglect_removes_the_history():
    assert strategy_messages(CONTEXT_NEGLECT, HISTORY, QUERY) == msgs((U, QUERY))


def test_context_hallucination_asks_to_assume_the_referents():
    out = strategy_messages(CONTEXT_HALLUCINATION, HISTORY, QUERY)
    assert out == [Message(S, HALLUCINATION_INSTRUCTION), Message(U, QUERY)]
    assert "assume what the references" in HALLUCINATION_INSTRUCTION


def test_context_misunderstanding_uses_an_irrelevant_earlier_exchange():
    out = strategy_messages(CONTEXT_MISUNDERSTANDING, HISTORY, QUERY)
    # Not the latest exchange (the referent), and of the earlier ones the one that shares no words
    # with it or the query: the Japan exchange (the Dune one shares "Dune" and "novel").
    assert out == msgs((U, "What is the capital of Japan?"), (A, "Tokyo."), (U, QUERY))
    assert pick_session_distractor(HISTORY[:2], QUERY) is None


def test_context_misunderstanding_falls_back_to_a_distractor_from_another_session():
    distractor = msgs((U, "How do I boil an egg?"), (A, "Ten minutes in boiling water."))
    out = strategy_messages(CONTEXT_MISUNDERSTANDING, HISTORY[:2], "How long is it?", distractor)
    assert out == [*distractor, Message(U, "How long is it?")]
    with pytest.raises(ValueError, match="distractor"):
        strategy_messages(CONTEXT_MISUNDERSTANDING, HISTORY[:2], "How long is it?")
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_messages("context_other", HISTORY, QUERY)


def test_preference_rows_are_trl_conversational_and_validated():
    row = preference_row(HISTORY, QUERY, "No, Solaris is shorter.", "Is what longer?", strategy=CONTEXT_NEGLECT,
                         source_id="c7", turn=4, models={"chosen": "m", "rejected": "m"})
    assert set(row) == {"prompt", "chosen", "rejected", "strategy", "source_id", "turn", "models"}
    assert row["prompt"][-1] == {"role": "user", "content": QUERY} and len(row["prompt"]) == 7
    assert row["chosen"] == [{"role": "assistant", "content": "No, Solaris is shorter."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Is what longer?"}]
    text = json.dumps(row) + "\n"
    assert load_preferences("p.jsonl", text) == [row]
    for mutate, field in [
        (lambda r: r.update(strategy="other"), "strategy"),
        (lambda r: r.update(chosen=[{"role": "user", "content": "x"}]), "chosen"),
        (lambda r: r["prompt"].pop(), "prompt[5].role"),
        (lambda r: r.update(turn=1), "turn"),
        (lambda r: r.update(models={"chosen": 3}), "models"),
        (lambda r: r["rejected"][0].update(content=" "), "rejected[0].content"),
    ]:
        bad = json.loads(text)
        mutate(bad)
        with pytest.raises(DatasetError, match=re.escape(f"p.jsonl:2: field '{field}'")):
            validate_preference_row("p.jsonl", 2, bad)
    assert set(STRATEGIES) == {"context_neglect", "context_hallucination", "context_misunderstanding"}


# ------------------------------------------------------------------------------ the CLI


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


LOGS = [
    sharegpt("c1", ("human", "Give me a recipe for banana bread."), ("gpt", "Mash bananas, add flour and eggs."),
             ("human", "Can I make it without eggs?"), ("gpt", "Yes, use applesauce."),
             ("human", "And how long does it keep?"), ("gpt", "Four days.")),
    sharegpt("c2", ("gpt", "(continued) ...so that is a heap."), ("human", "What is a binary search tree?"),
             ("gpt", "A tree where smaller keys go left."), ("human", "Show me how to implement that in Python."),
             ("gpt", "class Node: ...")),
    sharegpt("c3", ("human", "Only one question here?"), ("gpt", "Yes.")),
    sharegpt("c1-dup", ("human", "give me a recipe for banana bread"), ("gpt", "Mash bananas, add flour and eggs!"),
             ("human", "Can I make it without eggs"), ("gpt", "Yes, use applesauce"),
             ("human", "And how long does it keep"), ("gpt", "Four days")),
]


def test_cli_data_asker_writes_examples_and_a_report(tmp_path):
    src = tmp_path / "logs.jsonl"
    write_jsonl(src, LOGS)
    out = tmp_path / "asker.jsonl"
    r = subprocess.run([PARROT, "data", "asker", "--input", str(src), "--output", str(out), "--tokenizer", "whitespace"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["c1:2", "c1:3", "c2:2"]
    assert all(x["source"] == "logs.jsonl" and x["messages"][-1]["role"] == "assistant" for x in rows)
    report = json.loads((tmp_path / "asker.jsonl.report.json").read_text())
    assert report["cleaning"]["conversations_in"] == 4 and report["cleaning"]["conversations_kept"] == 2
    assert report["cleaning"]["dropped"]["too_few_user_turns"] == 1 and report["cleaning"]["dropped"]["duplicate"] == 1
    assert report["cleaning"]["repaired"]["leading_assistant_trimmed"] == 1
    assert report["examples"] == 3 and report["token_counter"] == "whitespace"
    assert "3 written" in r.stdout
    # A held-out split: no conversation on both sides, together the same examples.
    r = subprocess.run([PARROT, "data", "asker", "--input", str(src), "--output", str(tmp_path / "train.jsonl"),
                        "--holdout", "0.7", "--tokenizer", "whitespace"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    train = [json.loads(x)["id"] for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x)["id"] for x in (tmp_path / "train.heldout.jsonl").read_text().splitlines()]
    # sha256 puts c2 at 0.61 and c1 at 0.82 of the hash range: c2 is held out at 0.7
    assert train == ["c1:2", "c1:3"] and held == ["c2:2"]
    summary = json.loads((tmp_path / "train.jsonl.report.json").read_text())["holdout"]
    assert summary["examples"] == len(held) and summary["training_examples"] == len(train)
    r = subprocess.run([PARROT, "data", "asker", "--input", str(src), "--output", str(out), "--holdout", "1.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--holdout" in r.stderr
    # Stats of the raw logs and of the examples read back as conversations, side by side.
    r = subprocess.run([PARROT, "data", "stats", str(src), "--tokenizer", "whitespace"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "| | logs.jsonl |" and "| sessions | 4 |" in r.stdout
    r = subprocess.run([PARROT, "data", "stats", "--format", "asker", str(out), "--tokenizer", "whitespace", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["asker.jsonl"]["sessions"] == 3


def test_cli_data_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(LOGS[0]) + "\n" + json.dumps({"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}) + "\n")
    r = subprocess.run([PARROT, "data", "asker", "-i", str(bad), "-o", str(tmp_path / "o.jsonl"), "--tokenizer", "whitespace"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "conversations[0].from" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    r = subprocess.run([PARROT, "data", "stats", str(bad), "--format", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--format" in r.stderr


def test_cli_data_stats_with_the_bundled_tokenizer(tmp_path):
    from tests.conftest import model_available

    if not model_available():
        pytest.skip("bundled model not prepared")
    src = tmp_path / "logs.jsonl"
    write_jsonl(src, LOGS[:2])
    r = subprocess.run([PARROT, "data", "stats", str(src), "--json"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)["logs.jsonl"]
    assert stats["token_counter"] == "tokenizer" and stats["tokens_per_session"] > 10

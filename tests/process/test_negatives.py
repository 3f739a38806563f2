"""CaPO negatives as a coordinator run kind, end to end against real services on loopback.

The model services run the echo backend (fast, deterministic) except in one small test on the
bundled SmolLM2. Covered: the preference rows (TRL's conversational format, validated), which
queries are selected, every strategy's input as the responder received it (the echo reply is a
deterministic function of its whole input, replayed in process), judge confirmation, near-identical pairs dropped and
counted, bad specs, the CLI, and SIGKILL mid-run with every pair exactly once after the resume.
"""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest

from parrot.conversation import Message, Role
from parrot.datasets.capo import STRATEGIES, load_preferences, strategy_messages
from parrot.v1 import coordinator_pb2 as cpb
from tests.conftest import PARROT, free_port, requires_model, start_service
from tests.process.test_coordinator import coord_stub, jsonl, results, sharegpt, start_coordinator, wait_done

CONVERSATIONS = [
    sharegpt("bread", ("human", "Give me a recipe for banana bread."), ("gpt", "Mash three bananas, add flour and two eggs."),
             ("human", "Can I make it without eggs?"), ("gpt", "Yes, use a quarter cup of applesauce."),
             ("human", "And how long does it keep?"), ("gpt", "About four days in a closed box.")),
    sharegpt("bst", ("gpt", "(continued) ...and that is a heap."), ("human", "What is a binary search tree?"),
             ("gpt", "A tree where smaller keys go left and larger keys go right."),
             ("human", "Show me how to implement that in Python."), ("gpt", "class Node: ...")),
    sharegpt("facts", ("human", "Tell me a fact about Mars."), ("gpt", "Mars has the tallest volcano."),
             ("human", "What is the capital of France?"), ("gpt", "Paris.")),
    sharegpt("books", ("human", "Recommend a sci-fi novel."), ("gpt", "Try Dune by Frank Herbert."),
             ("human", "What is the capital of Japan?"), ("gpt", "Tokyo."),
             ("human", "Who wrote the novel Solaris?"), ("gpt", "Stanislaw Lem wrote Solaris."),
             ("human", "Is it longer than Dune?"), ("gpt", "No, it is much shorter.")),
]
SELECTED = {("bread", 2), ("bread", 3), ("bst", 2), ("books", 4)}
DISTRACTORS = {
    "bread": [Message(Role.USER, "What is a binary search tree?"),
              Message(Role.ASSISTANT, "A tree where smaller keys go left and larger keys go right.")],
    "bst": [Message(Role.USER, "Tell me a fact about Mars."), Message(Role.ASSISTANT, "Mars has the tallest volcano.")],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sp = start_service(tmp_path_factory.mktemp("echo"), ["all", "--backend", "echo"], wait_for="parrot.v1.Judge",
                       env_extra={"PARROT_ECHO_DELAY_S": "0.02"})
    yield sp
    assert sp.stop() == 0


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("coord")
    c = start_coordinator(tmp, (tmp / "store").as_uri(), models.grpc_target)
    yield c
    assert c.stop() == 0, c.log()[-3000:]


def negatives_spec(conversations=CONVERSATIONS, **kw) -> cpb.RunSpec:
    section = {k: kw.pop(k) for k in list(kw) if k in cpb.NegativesSpec.DESCRIPTOR.fields_by_name}
    return cpb.RunSpec(name="neg", negatives=cpb.NegativesSpec(
        conversations=cpb.InputFile(name="convs.jsonl", content=jsonl(conversations)), **section), **kw)


def echo_reply(messages: list[Message]) -> str:
    """What the echo responder answers to ``messages`` with the run's (default, greedy) settings."""
    import asyncio

    from parrot.backends.base import GenerationRequest
    from parrot.backends.echo_backend import EchoBackend
    from parrot.conversation import GenerationParams

    async def go() -> str:
        backend = EchoBackend()
        await backend.load()
        (result,) = await backend.generate([GenerationRequest(messages=messages, params=GenerationParams())])
        return result.text

    return asyncio.run(go())


def to_messages(pairs: list[tuple[str, str]]) -> list[Message]:
    return [Message(Role(r), t) for r, t in pairs]


def run_to_end(target: str, spec: cpb.RunSpec) -> tuple[cpb.Run, dict[str, bytes]]:
    with grpc.insecure_channel(target) as ch:
        stub = coord_stub(ch)
        run = wait_done(stub, stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=30).id)
        return run, results(stub, run.id)


def lines(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines()]


def test_negatives_run_end_to_end(coordinator):
    run, files = run_to_end(coordinator.grpc_target, negatives_spec(concurrency=2))
    assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
    assert run.progress.total == 3 and run.progress.finished == 3 and run.progress.failed == 0  # "facts" has no query
    rows = load_preferences("preferences.jsonl", files["preferences.jsonl"])  # schema checked row by row
    assert {(r["source_id"], r["turn"]) for r in rows} == SELECTED
    assert len(rows) == 3 * len(SELECTED)
    source = {c["id"]: c["conversations"] for c in CONVERSATIONS}
    for r in rows:
        assert r["strategy"] in STRATEGIES and r["models"] == {"chosen": "echo", "rejected": "echo"}
        turns = [t for t in source[r["source_id"]] if not t["value"].startswith("(continued)")]
        expected = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                    for t in turns[: 2 * r["turn"] - 1]]
        assert r["prompt"] == expected  # full history (cleaned) + the query
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    # The echo reply is a deterministic function of the whole input (greedy), so replaying each
    # strategy's expected input through an in-process echo backend must give the stored text: the
    # responder saw exactly the perturbed context, and the chosen answer the full history.
    for r in rows:
        prompt = [Message(Role(m["role"]), m["content"]) for m in r["prompt"]]
        history, query = prompt[:-1], prompt[-1].content
        # With a single earlier exchange, the first exchange of the next (cleaned) conversation.
        distractor = DISTRACTORS.get(r["source_id"])
        assert r["rejected"][0]["content"] == echo_reply(strategy_messages(r["strategy"], history, query, distractor))
        assert r["chosen"][0]["content"] == echo_reply(prompt)
    books = [r for r in rows if r["source_id"] == "books" and r["strategy"] == "context_misunderstanding"]
    assert echo_reply(to_messages([("user", "What is the capital of Japan?"), ("assistant", "Tokyo."),
                                   ("user", "Is it longer than Dune?")])) == books[0]["rejected"][0]["content"]
    selected = lines(files["selected.jsonl"])
    assert {(s["source_id"], s["turn"]) for s in selected} == SELECTED
    assert next(s for s in selected if s["source_id"] == "books")["cues"]  # the detector's reasons are kept
    stats = json.loads(files["stats.json"])
    assert stats["pairs"] == 12 and stats["queries_selected"] == 4 and stats["queries_used"] == 4
    assert stats["conversations_without_selected_query"] == 1
    assert stats["cleaning"]["repaired"]["leading_assistant_trimmed"] == 1
    assert {s: v["pairs"] for s, v in stats["per_strategy"].items()} == dict.fromkeys(STRATEGIES, 4)
    summary = json.loads(files["summary.json"])
    assert summary["kind"] == "negatives" and summary["models"]["responder"] == "echo"


def test_judge_confirmation_and_near_identical_pairs_are_counted(coordinator):
    # The echo judge rates about 7: confirmed at the default threshold (6), rejected at 8.
    run, files = run_to_end(coordinator.grpc_target, negatives_spec(judge_confirm=True, near_identical_threshold=0.2,
                                                                    strategies=["context_neglect", "context_misunderstanding"]))
    assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
    stats = json.loads(files["stats.json"])
    assert stats["queries_used"] == 4 and stats["pairs"] == 0
    assert set(stats["per_strategy"]) == {"context_neglect", "context_misunderstanding"}
    assert all(v["near_identical"] == 4 for v in stats["per_strategy"].values())
    assert dict(run.progress.dropped) == {"context_neglect:near_identical": 4, "context_misunderstanding:near_identical": 4}
    assert all(6 <= s["judge_score"] <= 8 for s in lines(files["selected.jsonl"]))
    assert files["preferences.jsonl"] == b""
    run, files = run_to_end(coordinator.grpc_target, negatives_spec(judge_confirm=True, judge_threshold=8.5))
    stats = json.loads(files["stats.json"])
    assert stats["queries_skipped"]["judge_rejected"] == 4 and stats["pairs"] == 0
    assert all(s["skipped"] == "judge_rejected" for s in lines(files["selected.jsonl"]))


def test_chosen_from_the_dataset_and_limits(coordinator):
    run, files = run_to_end(coordinator.grpc_target, negatives_spec(chosen_source="dataset", max_queries_per_conversation=1,
                                                                    max_history_turns=1, strategies=["context_neglect"]))
    assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
    rows = load_preferences("p", files["preferences.jsonl"])
    assert {(r["source_id"], r["turn"]) for r in rows} == {("bread", 2), ("bst", 2), ("books", 4)}
    books = next(r for r in rows if r["source_id"] == "books")
    assert books["chosen"] == [{"role": "assistant", "content": "No, it is much shorter."}]
    assert books["models"]["chosen"] == "dataset"
    assert books["prompt"] == [{"role": "user", "content": "Who wrote the novel Solaris?"},
                               {"role": "assistant", "content": "Stanislaw Lem wrote Solaris."},
                               {"role": "user", "content": "Is it longer than Dune?"}]


@pytest.mark.parametrize("mutate,code,needle", [
    (lambda s: s.negatives.strategies.append("context_other"), grpc.StatusCode.INVALID_ARGUMENT, "spec.negatives.strategies[0]"),
    (lambda s: s.negatives.conversations.CopyFrom(cpb.InputFile(name="c.jsonl", content=jsonl(CONVERSATIONS[2:3]))),
     grpc.StatusCode.INVALID_ARGUMENT, "no context-dependent follow-up"),
    (lambda s: s.negatives.conversations.CopyFrom(cpb.InputFile(name="c.jsonl", content=b'{"id": "x"}\n')),
     grpc.StatusCode.INVALID_ARGUMENT, "c.jsonl:1: field 'conversations'"),
    (lambda s: setattr(s.negatives, "chosen_source", "oracle"), grpc.StatusCode.INVALID_ARGUMENT, "chosen_source"),
    (lambda s: (setattr(s.negatives, "judge_confirm", True), s.targets.CopyFrom(cpb.Targets(judge=f"127.0.0.1:{free_port()}"))),
     grpc.StatusCode.FAILED_PRECONDITION, "spec.targets.judge"),
], ids=["bad strategy", "nothing selected", "malformed record", "bad chosen source", "unreachable judge"])
def test_bad_negatives_specs_are_rejected(coordinator, mutate, code, needle):
    spec = negatives_spec()
    mutate(spec)
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            coord_stub(ch).StartRun(cpb.StartRunRequest(spec=spec), timeout=30)
    assert e.value.code() == code, e.value.details()
    assert needle in e.value.details(), e.value.details()


def many_conversations(n: int) -> list[dict]:
    return [sharegpt(f"conv{i}", ("human", f"Describe city number {i} in one line."), ("gpt", f"City {i} is by a river."),
                     ("human", f"How old is it, roughly, given fact {i}?"), ("gpt", f"About {i} hundred years."),
                     ("human", f"And what is it known for ({i})?"), ("gpt", "Bridges."))
            for i in range(n)]


# The coordinator killed mid-run: tests/process/test_faults.py (every run kind, compared to an uninterrupted run).


def test_cli_negatives(tmp_path, coordinator):
    src = tmp_path / "convs.jsonl"
    src.write_bytes(jsonl(CONVERSATIONS))
    env = dict(os.environ, PARROT_COORDINATOR=coordinator.grpc_target)
    out = subprocess.run([PARROT, "negatives", "--conversations", str(src), "--strategy", "context_neglect",
                          "--strategy", "context_hallucination", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "context_hallucination" in out.stdout and "pairs=8" in out.stdout
    rows = load_preferences("p", (tmp_path / "o" / "preferences.jsonl").read_bytes())
    assert {r["strategy"] for r in rows} == {"context_neglect", "context_hallucination"}
    spec = tmp_path / "neg.yaml"
    spec.write_text(f"negatives:\n  conversations: {src}\n  strategies: [context_bogus]\n")
    out = subprocess.run([PARROT, "negatives", "--spec", str(spec)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "INVALID_ARGUMENT" in out.stderr and "context_bogus" in out.stderr
    spec.write_text(f"collection:\n  seeds: {src}\n")
    out = subprocess.run([PARROT, "negatives", "--spec", str(spec)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "parrot collect" in out.stderr


@requires_model
def test_negatives_with_the_bundled_model(tmp_path):
    """One conversation, one query, three strategies, on SmolLM2 (short answers)."""
    models = start_service(tmp_path, ["all"], wait_for="parrot.v1.Judge")
    try:
        c = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target)
        try:
            spec = negatives_spec(CONVERSATIONS[:1], max_queries_per_conversation=1)
            spec.params.max_tokens = 12
            run, files = run_to_end(c.grpc_target, spec)
        finally:
            assert c.stop() == 0
    finally:
        assert models.stop() == 0
    assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
    stats = json.loads(files["stats.json"])
    rows = load_preferences("p", files["preferences.jsonl"])
    assert stats["queries_used"] == 1
    # A single conversation with a single earlier exchange: no distractor for context_misunderstanding.
    assert stats["per_strategy"]["context_misunderstanding"]["no_distractor"] == 1
    assert len(rows) + sum(v["near_identical"] + v["empty"] for v in stats["per_strategy"].values()) == 2
    assert all(r["models"]["chosen"] != "echo" and r["turn"] == 2 for r in rows)

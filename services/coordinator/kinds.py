"""What one conversation of each run kind does. Each returns a JSON-able record of the unit.

Collection (Parrot-Ask): the seed query, then responder answer / asker follow-up until the
sampled number of user turns; follow-ups that the filters reject are re-asked (up to
max_asks_per_turn), and counted by reason.

Evaluation: the model under test answers turn by turn with its own earlier answers in context;
then the judge grades every turn (concurrently, so a batching judge decodes them together).
Pairwise: the baseline answers the same turns, and the judge compares each turn in both orders.
A second judge (``second_judge``) grades every turn as well, for the judge agreement check.
Sessions that carry per-turn instructions get the instruction checks (accumulated across
turns, strict and loose); with ``skip_judge`` they are the only grading.
An empty answer is stored as it is and shown to the judge and in later context as
"(empty answer)", since a conversation message cannot be empty.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from parrot.conversation import Message, Role
from parrot.v1 import conversation_pb2, coordinator_pb2 as cpb, judge_pb2
from services.coordinator.clients import CallFailed, ModelClients

EMPTY_ANSWER = "(empty answer)"


class UnitFailed(Exception):
    """The conversation cannot go on; recorded as failed with this reason."""


@dataclass
class UnitContext:
    spec: cpb.RunSpec
    clients: ModelClients
    index: int
    on_turn: Callable[[int], None]  # called with tokens of each finished turn
    models: dict[str, str] = field(default_factory=dict)


def _params(spec: cpb.RunSpec, seed: int, max_tokens: int = 0) -> conversation_pb2.GenerationParams:
    """The run's generation settings with a per-call seed (offset by the spec's own seed, if any)."""
    p = conversation_pb2.GenerationParams()
    p.CopyFrom(spec.params)
    if max_tokens:
        p.max_tokens = max_tokens
    p.seed = (spec.params.seed + seed) % (2**63)
    return p


async def collect_conversation(ctx: UnitContext, unit: dict[str, Any]) -> dict[str, Any]:
    from parrot.analysis import FollowUpFilter

    c = ctx.spec.collection
    rng = random.Random(f"{ctx.spec.seed}:{ctx.index}")
    n_turns = rng.randint(c.min_turns, max(c.min_turns, c.max_turns))
    flt = FollowUpFilter(min_chars=c.min_query_chars or 8, near_dup_threshold=c.near_duplicate_threshold or 0.8)
    max_asks = c.max_asks_per_turn or 3
    messages = [Message(Role.USER, unit["query"])]
    drops: dict[str, int] = {}
    tokens, t0, ended = 0, time.monotonic(), "target_turns"
    base_seed = (ctx.spec.seed * 1_000_003 + ctx.index * 1009) % (2**62)
    for turn in range(1, n_turns + 1):
        resp = await ctx.clients.respond(messages, _params(ctx.spec, base_seed + turn))
        ctx.models["responder"] = resp.model
        if not resp.text.strip():
            if turn == 1:
                raise UnitFailed("responder returned an empty answer to the seed query")
            messages.pop()  # drop the unanswered follow-up
            ended = "empty_answer"
            break
        messages.append(Message(Role.ASSISTANT, resp.text))
        used = resp.usage.completion_tokens
        tokens += used
        ctx.on_turn(used)
        if turn == n_turns:
            break
        question = None
        for attempt in range(max_asks):
            try:
                a = await ctx.clients.ask(messages, _params(ctx.spec, base_seed + turn * 100 + attempt, 64), c.persona)
            except CallFailed as e:
                drops["asker_failed"] = drops.get("asker_failed", 0) + 1
                if e.status.name != "UNAVAILABLE":
                    raise
                continue
            ctx.models["asker"] = a.model
            text = a.candidates[0].text if a.candidates else ""
            reason = flt.check(text, [m.content for m in messages if m.role is Role.USER])
            if reason is None:
                question = text
                break
            drops[reason] = drops.get(reason, 0) + 1
        if question is None:
            ended = "no_acceptable_follow_up"
            break
        messages.append(Message(Role.USER, question))
    user_turns = sum(1 for m in messages if m.role is Role.USER)
    return {
        "messages": [m.as_dict() for m in messages],
        "turns": user_turns,
        "tokens": tokens,
        "drops": drops,
        "metadata": {"seed_id": unit["id"], "target_turns": n_turns, "turns": user_turns, "ended": ended,
                     "models": dict(ctx.models), "elapsed_s": round(time.monotonic() - t0, 3)},
    }


async def _answer_all(ctx: UnitContext, turns: list[str], role: str, seed: int) -> tuple[list[str], list[Message], int]:
    messages: list[Message] = []
    answers: list[str] = []
    tokens = 0
    for i, q in enumerate(turns, 1):
        messages.append(Message(Role.USER, q))
        resp = await ctx.clients.respond(messages, _params(ctx.spec, seed + i), role=role)
        ctx.models[role] = resp.model
        answers.append(resp.text)
        messages.append(Message(Role.ASSISTANT, resp.text if resp.text.strip() else EMPTY_ANSWER))
        tokens += resp.usage.completion_tokens
        ctx.on_turn(resp.usage.completion_tokens)
    return answers, messages, tokens


def check_instructions(per_turn: list[list[dict[str, Any]]], answers: list[str]) -> list[dict[str, Any]]:
    """Instruction checks of every answered turn against the instructions in force (accumulated)."""
    from parrot.instructions import InstructionSpec, check_session

    specs = [[InstructionSpec(i["instruction_id"], i["kwargs"], i["turn"]) for i in turn] for turn in per_turn]
    return check_session(specs, answers)


async def evaluate_question(ctx: UnitContext, unit: dict[str, Any]) -> dict[str, Any]:
    e = ctx.spec.evaluation
    turns: list[str] = unit["turns"]
    refs: list[str] = unit.get("references") or []
    seed = (ctx.spec.seed * 1_000_003 + ctx.index * 1009) % (2**62)
    t0 = time.monotonic()
    answers, messages, tokens = await _answer_all(ctx, turns, "responder", seed)
    judge_params = conversation_pb2.GenerationParams(max_tokens=e.judge_max_tokens, temperature=0.0)

    async def grade(t: int, role: str = "judge") -> dict[str, Any]:
        ref = refs[t - 1] if t - 1 < len(refs) else ""
        try:
            g = await ctx.clients.grade(messages[: 2 * t], t, ref, e.judge_prompt, judge_params, role=role)
        except CallFailed as err:
            return {"turn": t, "score": None, "error": str(err)}
        ctx.models[role] = g.model
        return {"turn": t, "score": g.score, "explanation": g.explanation, "raw_output": g.raw_output,
                "prompt_name": g.prompt_name, "judge_model": g.model,
                "method": judge_pb2.ScoreMethod.Name(g.method), "reference": ref}

    n = len(turns)
    judgments = [] if e.skip_judge else list(await asyncio.gather(*(grade(t) for t in range(1, n + 1))))
    record: dict[str, Any] = {"answers": answers, "judgments": judgments, "turns": n, "tokens": tokens,
                              "judge_failures": sum(1 for j in judgments if j["score"] is None)}
    if e.second_judge:
        second = list(await asyncio.gather(*(grade(t, "second_judge") for t in range(1, n + 1))))
        record["second_judgments"] = second
        record["judge_failures"] += sum(1 for j in second if j["score"] is None)
    if unit.get("instructions"):
        record["instruction_checks"] = check_instructions(unit["instructions"], answers)
    if e.pairwise:
        base_answers, base_messages, base_tokens = await _answer_all(ctx, turns, "baseline_responder", seed)
        record["baseline_answers"] = base_answers
        record["tokens"] += base_tokens

        async def compare(t: int) -> dict[str, Any]:
            ref = refs[t - 1] if t - 1 < len(refs) else ""
            try:
                p = await ctx.clients.compare(messages[: 2 * t], base_messages[: 2 * t], t, ref, "", judge_params)
            except CallFailed as err:
                return {"turn": t, "winner": None, "error": str(err)}
            names = {judge_pb2.PAIR_WINNER_A: "model_1", judge_pb2.PAIR_WINNER_B: "model_2", judge_pb2.PAIR_WINNER_TIE: "tie"}
            return {"turn": t, "winner": names.get(p.winner), "prompt_name": p.prompt_name, "judge_model": p.model,
                    "verdicts": [{"swapped": v.swapped, "winner": names.get(v.winner), "raw_output": v.raw_output}
                                 for v in p.verdicts]}

        record["pairwise"] = list(await asyncio.gather(*(compare(t) for t in range(1, len(turns) + 1))))
        record["judge_failures"] += sum(1 for p in record["pairwise"] if p["winner"] is None)
    record["metadata"] = {"question_id": unit["question_id"], "category": unit["category"], "models": dict(ctx.models),
                          "elapsed_s": round(time.monotonic() - t0, 3)}
    return record

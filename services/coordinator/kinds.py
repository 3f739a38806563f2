"""What one conversation of each run kind does. Each returns a JSON-able record of the unit.

Collection (Parrot-Ask): the seed query, then responder answer / asker follow-up until the
sampled number of user turns; follow-ups that the filters reject are re-asked (up to
max_asks_per_turn), and counted by reason. Once the session has ``min_turns`` user turns, the
asker may end it (``AskRequest.allow_end``; a trained asker ends where people ended): the
session is then finished with ``ended: "asker_ended"``.

Evaluation: the model under test answers turn by turn with its own earlier answers in context;
then the judge grades every turn (concurrently, so a batching judge decodes them together).
Pairwise: the baseline answers the same turns, and the judge compares each turn in both orders.
A second judge (``second_judge``) grades every turn as well, for the judge agreement check.
Sessions that carry per-turn instructions get the instruction checks (accumulated across
turns, strict and loose); with ``skip_judge`` they are the only grading.
A turn the judge could not grade (after retries) fails the conversation with the reason, as does
a collection session cut short because the asker could not answer: failures are retried with
``resume --retry-failed``, never counted as finished.
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
from parrot.model_clients import CallFailed, ModelClients

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
            # An asker that cannot answer (after retries, or an outage past its budget) fails the
            # conversation: a session cut short by a fault is not a finished record.
            a = await ctx.clients.ask(messages, _params(ctx.spec, base_seed + turn * 100 + attempt, 64), c.persona,
                                      allow_end=turn >= c.min_turns)
            ctx.models["asker"] = a.model
            if a.end_of_conversation:
                ended = "asker_ended"
                break
            text = a.candidates[0].text if a.candidates else ""
            reason = flt.check(text, [m.content for m in messages if m.role is Role.USER])
            if reason is None:
                question = text
                break
            drops[reason] = drops.get(reason, 0) + 1
        if ended == "asker_ended":
            break
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


async def _answer_all(ctx: UnitContext, turns: list[str], role: str, seed: int,
                      on_answer: Callable[[int, list[Message]], None] | None = None,
                      ) -> tuple[list[str], list[Message], int]:
    """Answers the turns in order, each with the earlier answers in context; ``on_answer(turn,
    conversation so far)`` runs as soon as a turn is answered (so its grading overlaps the next turn)."""
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
        if on_answer is not None:
            on_answer(i, list(messages))
    return answers, messages, tokens


async def _answer_golden(ctx: UnitContext, turns: list[str], golden: list[str], role: str, seed: int,
                         on_answer: Callable[[int, list[Message]], None]) -> tuple[list[str], int]:
    """Answers every turn with the file's reference assistant turns as the history before it
    (golden history); ``on_answer(turn, graded conversation)`` as in ``_answer_all``."""
    answers: list[str] = []
    tokens = 0
    for i, q in enumerate(turns, 1):
        messages: list[Message] = []
        for u, g in zip(turns[: i - 1], golden):
            messages += [Message(Role.USER, u), Message(Role.ASSISTANT, g if g.strip() else EMPTY_ANSWER)]
        messages.append(Message(Role.USER, q))
        resp = await ctx.clients.respond(messages, _params(ctx.spec, seed + i), role=role)
        ctx.models[role] = resp.model
        answers.append(resp.text)
        tokens += resp.usage.completion_tokens
        ctx.on_turn(resp.usage.completion_tokens)
        on_answer(i, messages + [Message(Role.ASSISTANT, resp.text if resp.text.strip() else EMPTY_ANSWER)])
    return answers, tokens


def check_instructions(per_turn: list[list[dict[str, Any]]], answers: list[str],
                       in_force: bool = False) -> list[dict[str, Any]]:
    """Instruction checks of every answered turn against the instructions in force (accumulated
    across turns, or as listed per turn when ``in_force``: Multi-IF's lists are cumulative)."""
    from parrot.instructions import InstructionSpec, check_session

    specs = [[InstructionSpec(i["instruction_id"], i["kwargs"], i["turn"]) for i in turn] for turn in per_turn]
    return check_session(specs, answers, accumulated=not in_force)


async def evaluate_question(ctx: UnitContext, unit: dict[str, Any]) -> dict[str, Any]:
    e = ctx.spec.evaluation
    turns: list[str] = unit["turns"]
    refs: list[str] = unit.get("references") or []
    seed = (ctx.spec.seed * 1_000_003 + ctx.index * 1009) % (2**62)
    t0 = time.monotonic()
    judge_params = conversation_pb2.GenerationParams(max_tokens=e.judge_max_tokens, temperature=0.0)

    scored = set(unit.get("scored_turns") or range(1, len(turns) + 1))
    prompt_name = e.judge_prompt or unit.get("judge_prompt", "")

    async def grade(t: int, conversation: list[Message], role: str = "judge") -> dict[str, Any]:
        ref = refs[t - 1] if t - 1 < len(refs) else ""
        try:
            g = await ctx.clients.grade(conversation, t, ref, prompt_name, judge_params, role=role)
        except CallFailed as err:  # a missing score fails the conversation (resume --retry-failed redoes it)
            raise UnitFailed(f"turn {t} not graded: {err}") from err
        ctx.models[role] = g.model
        return {"turn": t, "score": g.score, "explanation": g.explanation, "raw_output": g.raw_output,
                "prompt_name": g.prompt_name, "judge_model": g.model,
                "method": judge_pb2.ScoreMethod.Name(g.method), "reference": ref}

    # Each turn is graded as soon as it is answered: the judge works while later turns are
    # answered, and turn t+1's judge prompt finds turn t's conversation in the judge's KV cache.
    n = len(turns)
    grading: list[asyncio.Future] = []
    graded: dict[int, list[Message]] = {}

    def on_answer(t: int, conversation: list[Message]) -> None:
        if t in scored:
            graded[t] = conversation
            if not e.skip_judge:
                grading.append(asyncio.ensure_future(grade(t, conversation)))

    try:
        if unit.get("history") == "golden":
            answers, tokens = await _answer_golden(ctx, turns, unit["golden"], "responder", seed, on_answer)
        else:
            answers, _, tokens = await _answer_all(ctx, turns, "responder", seed, on_answer)
        judgments = list(await asyncio.gather(*grading))
    finally:
        for task in grading:
            task.cancel()
        await asyncio.gather(*grading, return_exceptions=True)  # no exception left unretrieved
    record: dict[str, Any] = {"answers": answers, "judgments": judgments, "turns": n, "tokens": tokens,
                              "judge_failures": sum(1 for j in judgments if j["score"] is None)}
    if e.second_judge:
        second = list(await asyncio.gather(*(grade(t, graded[t], "second_judge") for t in sorted(graded))))
        record["second_judgments"] = second
        record["judge_failures"] += sum(1 for j in second if j["score"] is None)
    if unit.get("instructions"):
        record["instruction_checks"] = check_instructions(unit["instructions"], answers,
                                                          bool(unit.get("instructions_in_force")))
    if e.pairwise:
        base_answers, base_messages, base_tokens = await _answer_all(ctx, turns, "baseline_responder", seed)
        record["baseline_answers"] = base_answers
        record["tokens"] += base_tokens

        async def compare(t: int) -> dict[str, Any]:
            ref = refs[t - 1] if t - 1 < len(refs) else ""
            try:
                p = await ctx.clients.compare(graded[t], base_messages[: 2 * t], t, ref, "", judge_params)
            except CallFailed as err:
                raise UnitFailed(f"turn {t} not compared: {err}") from err
            names = {judge_pb2.PAIR_WINNER_A: "model_1", judge_pb2.PAIR_WINNER_B: "model_2", judge_pb2.PAIR_WINNER_TIE: "tie"}
            return {"turn": t, "winner": names.get(p.winner), "prompt_name": p.prompt_name, "judge_model": p.model,
                    "verdicts": [{"swapped": v.swapped, "winner": names.get(v.winner), "raw_output": v.raw_output}
                                 for v in p.verdicts]}

        record["pairwise"] = list(await asyncio.gather(*(compare(t) for t in sorted(graded))))
        record["judge_failures"] += sum(1 for p in record["pairwise"] if p["winner"] is None)
    record["metadata"] = {"question_id": unit["question_id"], "category": unit["category"], "models": dict(ctx.models),
                          "history": unit.get("history", "self"), "elapsed_s": round(time.monotonic() - t0, 3),
                          **{k: unit[k] for k in ("benchmark", "task", "language", "arm", "repeat") if unit.get(k)}}
    return record


async def negatives_conversation(ctx: UnitContext, unit: dict[str, Any]) -> dict[str, Any]:
    """CaPO pairs for the selected queries of one conversation (strategies in parrot.datasets.capo).

    Per query, in order: the chosen answer (responder with the full history, or the dataset's own
    answer); the optional judge confirmation (GradeSingle on the query's turn with the
    context-dependence prompt); then one rejected answer per strategy, concurrently. Skipped
    queries and dropped pairs are counted in ``drops`` ("judge_rejected", "empty_chosen",
    "<strategy>:empty", "<strategy>:near_identical", "<strategy>:no_distractor").
    """
    from parrot.analysis import near_duplicate
    from parrot.datasets.capo import STRATEGIES, chosen_messages, preference_row, strategy_messages
    from parrot.judging.prompts import CONTEXT_DEPENDENCE_PROMPT

    n = ctx.spec.negatives
    strategies = list(n.strategies) or list(STRATEGIES)
    similar = n.near_identical_threshold or 0.9
    messages = [Message(Role(m["role"]), m["content"]) for m in unit["messages"]]
    system = messages[:1] if messages and messages[0].role is Role.SYSTEM else []
    body = messages[len(system):]
    users = [i for i, m in enumerate(body) if m.role is Role.USER]
    distractor = [Message(Role(m["role"]), m["content"]) for m in (unit.get("distractor") or {}).get("messages", [])]
    base_seed = (ctx.spec.seed * 1_000_003 + ctx.index * 1009) % (2**62)
    pairs: list[dict[str, Any]] = []
    selected: list[dict[str, Any]] = []
    drops: dict[str, int] = {}
    tokens = turns = 0
    t0 = time.monotonic()

    def drop(reason: str) -> None:
        drops[reason] = drops.get(reason, 0) + 1

    async def respond(msgs: list[Message], seed: int) -> tuple[str, str]:
        nonlocal tokens
        resp = await ctx.clients.respond(msgs, _params(ctx.spec, seed))
        tokens += resp.usage.completion_tokens
        ctx.on_turn(resp.usage.completion_tokens)
        return resp.text, resp.model

    for q, sel in enumerate(unit["selected"]):
        k = int(sel["turn"])
        pos = users[k - 1]
        history_body = body[:pos]
        if n.max_history_turns:
            history_body = history_body[-2 * n.max_history_turns:]
        history = system + history_body
        query = body[pos].content
        info: dict[str, Any] = {"turn": k, "cues": sel.get("cues", []), "history_turns": len(history_body) // 2, "pairs": 0}
        selected.append(info)
        seed = base_seed + q * 16
        existing = body[pos + 1].content if pos + 1 < len(body) and body[pos + 1].role is Role.ASSISTANT else ""
        if n.chosen_source == "dataset" and existing.strip():
            chosen, chosen_model = existing, "dataset"
        else:
            chosen, chosen_model = await respond(chosen_messages(history, query), seed)
            ctx.models["responder"] = chosen_model
        if not chosen.strip():
            drop("empty_chosen")
            info["skipped"] = "empty_chosen"
            continue
        if n.judge_confirm:
            graded = [*history, Message(Role.USER, query), Message(Role.ASSISTANT, chosen)]
            g = await ctx.clients.grade(graded, len(history_body) // 2 + 1, "", n.judge_prompt or CONTEXT_DEPENDENCE_PROMPT,
                                        conversation_pb2.GenerationParams(max_tokens=64, temperature=0.0))
            ctx.models["judge"] = g.model
            info["judge_score"] = round(g.score, 4)
            if g.score < (n.judge_threshold or 6.0):
                drop("judge_rejected")
                info["skipped"] = "judge_rejected"
                continue

        async def rejected(i: int, strategy: str) -> tuple[str, str | None, str]:
            try:
                # The whole session's earlier exchanges are candidates, even beyond max_history_turns.
                msgs = strategy_messages(strategy, system + body[:pos], query, distractor)
            except ValueError:
                return strategy, None, "no_distractor"
            text, model = await respond(msgs, seed + 1 + i)
            return strategy, text, model

        for strategy, text, model_or_reason in await asyncio.gather(*(rejected(i, s) for i, s in enumerate(strategies))):
            if text is None:
                drop(f"{strategy}:{model_or_reason}")
            elif not text.strip():
                drop(f"{strategy}:empty")
            elif near_duplicate(chosen, text, similar):
                drop(f"{strategy}:near_identical")
            else:
                pairs.append(preference_row(history, query, chosen, text, strategy=strategy, source_id=unit["id"], turn=k,
                                            models={"chosen": chosen_model, "rejected": model_or_reason}))
                info["pairs"] += 1
        turns += 1
    return {"pairs": pairs, "selected": selected, "drops": drops, "turns": turns, "tokens": tokens,
            "metadata": {"source_id": unit["id"], "models": dict(ctx.models),
                         "distractor_source": (unit.get("distractor") or {}).get("source_id"),
                         "elapsed_s": round(time.monotonic() - t0, 3)}}

"""Evaluation: a model under test answers multi-turn questions; a judge grades every turn.

The model under test answers turn by turn with its own earlier answers in context (or, with golden
history, the file's reference answers); each turn is graded as soon as it is answered.
Pairwise: the baseline answers the same turns, and the judge compares each turn in both orders.
A second judge (``second_judge``) grades every turn as well, for the judge agreement check.
Sessions that carry per-turn instructions get the instruction checks (accumulated across turns,
strict and loose); with ``skip_judge`` they are the only grading. A turn the judge could not grade
(after retries) fails the conversation with the reason (``resume --retry-failed`` redoes it).
An empty answer is stored as it is and shown to the judge and in later context as
"(empty answer)", since a conversation message cannot be empty. Published benchmarks' protocols
(units per arm and repeat, how they are scored) are in ``services/coordinator/protocols.py``.

Outputs: ``answers.jsonl`` (FastChat answer records), ``judgments.jsonl`` (FastChat single
judgment records, one per turn), ``scores.jsonl`` (question, category, turn, score; None for a
judge failure: what reports read), ``pairwise.jsonl`` (pairwise mode), ``summary.json`` (mean
score per turn / category / overall with bootstrap 95% CIs, judge failures), and where they apply
``instructions.jsonl`` (per-turn instruction checks; accuracy in the summary) and
``judgments_second.jsonl`` (a second judge; agreement in the summary).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from parrot.conversation import Message, Role
from parrot.errors import InvalidArgument
from parrot.model_clients import CallFailed
from parrot.v1 import conversation_pb2, coordinator_pb2 as cpb, judge_pb2
from services.coordinator.kinds.base import EMPTY_ANSWER, RunKind, Unit, UnitContext, UnitFailed, jsonl
from services.coordinator.protocols import check_fields, protocol_summary, question_units
from services.coordinator.spec import (InputReader, Plan, RunLimits, RunSettings, check_new_tokens, limit_exceeded,
                                      parse_input)

DEFAULT_MODEL_ID = "model"  # what the outputs call the model under test when spec.evaluation.model_id is empty
DEFAULT_BASELINE_MODEL_ID = "baseline"


@dataclass(frozen=True)
class QuestionUnit(Unit):
    """One session to answer and grade (one per question, arm and repeat: ``protocols.question_units``)."""

    question_id: Any = None  # as the file gives it (int or str)
    category: str = ""
    turns: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # per turn, "" where none; a rubric on the judged turn
    instructions: list[list[dict[str, Any]]] | None = None  # per turn, where the session carries instructions
    provenance: list[dict[str, Any]] | None = None  # drafted turns (`bench extend`)
    history: str = "self"  # or "golden"
    golden: list[str] | None = None  # the reference assistant turns (golden history)
    benchmark: str | None = None
    task: str | None = None
    language: str | None = None
    judge_prompt: str | None = None
    instructions_in_force: bool | None = None
    scored_turns: list[int] | None = None  # None: every turn
    expected_verdict: str | None = None
    arm: str | None = None  # Lost in Conversation
    full_from: str | None = None
    repeat: int | None = None  # 1-based, with spec.evaluation.repeats > 1


@dataclass(frozen=True)
class EvaluationSettings:
    """``spec.evaluation`` with its defaults settled."""

    model_id: str
    baseline_model_id: str
    judge_max_tokens: int  # 0: the judge's own default
    judge_prompt: str  # empty: each unit's own, else the judge's default
    pairwise: bool
    second_judge: str
    skip_judge: bool
    history: str  # empty: the benchmark's own protocol
    arms: tuple[str, ...]
    repeats: int
    questions_format: str


class Evaluation(RunKind):
    name = "evaluation"
    inputs = ("questions", "reference_answers")
    scored = True

    def settings(self, spec: cpb.RunSpec, limits: RunLimits) -> EvaluationSettings:
        from parrot.datasets import SESSION_FORMATS

        e = spec.evaluation
        check_new_tokens("spec.evaluation.judge_max_tokens", e.judge_max_tokens, limits)
        if e.pairwise and not spec.targets.baseline_responder:
            raise InvalidArgument("spec.targets.baseline_responder", "is required when evaluation.pairwise is set")
        if e.questions_format not in ("",) + SESSION_FORMATS:
            raise InvalidArgument("spec.evaluation.questions_format",
                                  f"is {e.questions_format!r}; allowed: {', '.join(SESSION_FORMATS)}")
        if e.skip_judge and (e.pairwise or e.second_judge):
            raise InvalidArgument("spec.evaluation.skip_judge", "cannot be combined with pairwise or second_judge")
        history, arms, repeats = check_fields(e)
        return EvaluationSettings(
            model_id=e.model_id or DEFAULT_MODEL_ID, baseline_model_id=e.baseline_model_id or DEFAULT_BASELINE_MODEL_ID,
            judge_max_tokens=e.judge_max_tokens, judge_prompt=e.judge_prompt, pairwise=e.pairwise,
            second_judge=e.second_judge, skip_judge=e.skip_judge, history=history, arms=tuple(arms), repeats=repeats,
            questions_format=e.questions_format or "auto")

    async def plan(self, settings: RunSettings, reader: InputReader, inputs: dict[str, tuple[str, bytes]],
                   limits: RunLimits) -> tuple[list[Unit], dict[str, Any]]:
        from parrot.datasets import load_eval_sessions, load_references

        e, s = settings.spec.evaluation, settings.section
        name, data = await reader.read(e.questions, "spec.evaluation.questions")
        inputs["questions"] = (name, data)
        questions = parse_input("spec.evaluation.questions", load_eval_sessions, name, data, s.questions_format)
        questions = questions[: settings.limit] if settings.limit else questions
        if not questions:
            raise InvalidArgument("spec.evaluation.questions", f"{name} has no questions")
        refs: dict[Any, list[str]] = {}
        if e.reference_answers.content or e.reference_answers.url:
            rname, rdata = await reader.read(e.reference_answers, "spec.evaluation.reference_answers")
            inputs["reference_answers"] = (rname, rdata)
            refs = parse_input("spec.evaluation.reference_answers", load_references, rname, rdata)
        units: list[Unit] = []
        for q in questions:
            if len(q.turns) > limits.max_turns:
                raise limit_exceeded("spec.evaluation.questions", f"{name}: question {q.question_id} has {len(q.turns)} "
                                     f"turns; at most {limits.max_turns} user turns per conversation", "max_turns")
            references = list(q.references or refs.get(q.question_id) or refs.get(str(q.question_id)) or [])
            units += [QuestionUnit.of(u) for u in question_units(q, references, s.history, list(s.arms), s.repeats, name)]
        if s.skip_judge and not any("instructions" in u for u in units):
            raise InvalidArgument("spec.evaluation.skip_judge", f"{name} carries no per-turn instructions, so there "
                                                                "would be nothing to grade; drop skip_judge or add instructions")
        return units, {"max_turns": max(len(u["turns"]) for u in units), "repeats": s.repeats}

    def roles(self, section: EvaluationSettings) -> list[str]:
        roles = ["responder"] if section.skip_judge else ["responder", "judge"]
        if section.pairwise:
            roles.append("baseline_responder")
        if section.second_judge:
            roles.append("second_judge")
        return roles

    def targets(self, spec: cpb.RunSpec) -> dict[str, str]:
        return {"second_judge": spec.evaluation.second_judge}

    def target_field(self, role: str) -> str:
        return "spec.evaluation.second_judge" if role == "second_judge" else super().target_field(role)


    async def run_unit(self, ctx: UnitContext, unit: QuestionUnit) -> dict[str, Any]:
        e: EvaluationSettings = ctx.settings.section
        turns, refs = unit.turns, unit.references
        seed = ctx.seed
        t0 = time.monotonic()
        judge_params = conversation_pb2.GenerationParams(max_tokens=e.judge_max_tokens, temperature=0.0)

        scored = set(unit.scored_turns or range(1, len(turns) + 1))
        prompt_name = e.judge_prompt or unit.judge_prompt or ""

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
            if unit.history == "golden":
                answers, tokens = await _answer_golden(ctx, turns, unit.golden or [], "responder", seed, on_answer)
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
        if unit.instructions:
            record["instruction_checks"] = check_instructions(unit.instructions, answers, bool(unit.instructions_in_force))
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
        record["metadata"] = {"question_id": unit.question_id, "category": unit.category, "models": dict(ctx.models),
                              "history": unit.history, "elapsed_s": round(time.monotonic() - t0, 3),
                              **{k: unit[k] for k in ("benchmark", "task", "language", "arm", "repeat") if unit.get(k)}}
        return record

    def outputs(self, run_id: str, plan: Plan, done: list[dict[str, Any]]) -> dict[str, bytes]:
        from parrot.analysis import score_summary
        from parrot.datasets import fastchat

        e: EvaluationSettings = plan.settings.section
        model_id = e.model_id
        answers, judgments, pairwise, scores = [], [], [], []
        failures = 0
        units = plan.by_id()
        for rec in done:
            data, unit = rec["data"], units[rec["id"]]
            qid = unit["question_id"]
            tstamp = time.time()
            answers.append(fastchat.answer_record(question_id=qid, model_id=model_id, turns=data["answers"],
                                                  answer_id=f"{run_id}-{rec['index']}", tstamp=tstamp))
            for j in data["judgments"]:
                t = j["turn"]
                scores.append({"question_id": qid, "category": unit["category"], "turn": t, "score": j["score"],
                               **{k: unit[k] for k in ("task", "language", "arm", "repeat") if unit.get(k)}})
                if j["score"] is None:  # recorded by older runs; written as FastChat's -1, as documented
                    failures += 1
                judgments.append(fastchat.single_judgment_record(
                    question_id=qid, model=model_id, judge_model=j["judge_model"], prompt_name=j["prompt_name"],
                    user_prompt=unit["turns"][t - 1], judgment=j.get("raw_output", ""), score=j["score"], turn=t,
                    tstamp=tstamp))
            for p in data.get("pairwise", []):
                if p["winner"] is None:
                    continue
                v = {x["swapped"]: x for x in p["verdicts"]}
                pairwise.append(fastchat.pairwise_judgment_record(
                    question_id=qid, model_1=model_id, model_2=e.baseline_model_id,
                    g1_winner=(v.get(False) or {}).get("winner") or "tie", g2_winner=(v.get(True) or {}).get("winner") or "tie",
                    judge_model=p["judge_model"], prompt_name=p["prompt_name"], g1_user_prompt=unit["turns"][p["turn"] - 1],
                    g1_judgment=(v.get(False) or {}).get("raw_output", ""), g2_user_prompt=unit["turns"][p["turn"] - 1],
                    g2_judgment=(v.get(True) or {}).get("raw_output", ""), turn=p["turn"], tstamp=tstamp))
        summary: dict[str, Any] = {"model_id": model_id, "scores": score_summary(scores), "judge_failures": failures,
                                   "judge_model": next((j["judge_model"] for rec in done for j in rec["data"]["judgments"]
                                                        if j.get("judge_model")), None)}
        extra_files = _instruction_and_second_judge(plan, done, summary, model_id)
        summary["protocol"] = protocol_summary(plan, done, e.repeats)
        if e.pairwise:
            wins = {"model_1": 0, "model_2": 0, "tie": 0}
            for rec in done:
                for p in rec["data"].get("pairwise", []):
                    if p["winner"]:
                        wins[p["winner"]] += 1
            summary["pairwise"] = {"baseline_model_id": e.baseline_model_id, **wins}
        files = {"answers.jsonl": jsonl(answers), "judgments.jsonl": jsonl(judgments),
                 "scores.jsonl": jsonl(scores), "summary.json": json.dumps(summary).encode()}
        if e.pairwise:
            files["pairwise.jsonl"] = jsonl(pairwise)
        files.update(extra_files)
        return files


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
        resp = await ctx.clients.respond(messages, ctx.settings.generation(seed + i), role=role)
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
        resp = await ctx.clients.respond(messages, ctx.settings.generation(seed + i), role=role)
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


def _instruction_and_second_judge(plan: Plan, done: list[dict[str, Any]], summary: dict[str, Any],
                                  model_id: str) -> dict[str, bytes]:
    """``instructions.jsonl`` + summary["instructions"] (per-turn accuracy) where sessions carry
    instructions; ``judgments_second.jsonl`` + summary["judge_agreement"] with a second judge."""
    from parrot.analysis import judge_agreement, score_summary
    from parrot.datasets import fastchat
    from parrot.instructions import instruction_summary

    units = plan.by_id()
    files: dict[str, bytes] = {}
    checks: list[dict[str, Any]] = []
    for rec in done:
        unit = units[rec["id"]]
        for c in rec["data"].get("instruction_checks") or []:
            if c["results"]:
                checks.append({"question_id": unit["question_id"], "category": unit["category"], "model_id": model_id,
                               **{k: unit[k] for k in ("language", "repeat") if unit.get(k)}, **c})
    if checks:
        files["instructions.jsonl"] = jsonl(checks)
        summary["instructions"] = instruction_summary(checks)
        languages = sorted({c["language"] for c in checks if c.get("language")})
        if languages:  # Multi-IF: per-turn accuracy per language, with bootstrap CIs
            summary["instructions"]["per_language"] = {
                lang: {k: v for k, v in instruction_summary([c for c in checks if c.get("language") == lang]).items()
                       if k in ("overall", "per_turn")} for lang in languages}
    if plan.settings.section.second_judge:
        first: dict[Any, float | None] = {}
        second: dict[Any, float | None] = {}
        rows, scores = [], []
        tstamp = time.time()
        for rec in done:
            unit = units[rec["id"]]
            qid = unit["question_id"]
            for j in rec["data"]["judgments"]:
                first[(str(qid), j["turn"])] = j["score"]
            for j in rec["data"].get("second_judgments") or []:
                second[(str(qid), j["turn"])] = j["score"]
                scores.append({"question_id": qid, "category": unit["category"], "turn": j["turn"], "score": j["score"]})
                if j["score"] is not None:
                    rows.append(fastchat.single_judgment_record(
                        question_id=qid, model=model_id, judge_model=j["judge_model"], prompt_name=j["prompt_name"],
                        user_prompt=unit["turns"][j["turn"] - 1], judgment=j.get("raw_output", ""), score=j["score"],
                        turn=j["turn"], tstamp=tstamp))
        files["judgments_second.jsonl"] = jsonl(rows)
        summary["second_judge"] = {"judge_model": rows[0]["judge"][0] if rows else None,
                                   "scores": score_summary(scores)}
        summary["judge_agreement"] = {"judge_a": summary.get("judge_model"),
                                      "judge_b": summary["second_judge"]["judge_model"],
                                      **judge_agreement(first, second)}
    return files

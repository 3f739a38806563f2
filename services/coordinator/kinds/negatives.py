"""Negatives (CaPO): preference pairs for the context-dependent follow-up queries of conversations.

Planning cleans the ShareGPT conversations and keeps one unit per conversation with at least one
selected follow-up query: the conversation, the selected queries (1-based user-turn index and
the detector's cues) and a distractor exchange from the next cleaned conversation.

Outputs: ``preferences.jsonl`` (CaPO pairs in TRL's conversational preference format,
``parrot.datasets.capo``), ``selected.jsonl`` (every selected query: cues, judge score, pairs
kept or why it was skipped), ``stats.json`` and ``summary.json`` (pairs and drops per strategy,
cleaning counts).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from parrot.conversation import Message, Role
from parrot.errors import InvalidArgument
from parrot.v1 import conversation_pb2, coordinator_pb2 as cpb
from services.coordinator.kinds.base import RunKind, Unit, UnitContext, jsonl
from services.coordinator.spec import MAX_TURNS, InputReader, Plan, RunLimits, RunSettings, distinct_choices, parse_input

CHOSEN_SOURCES = ("responder", "dataset")


@dataclass(frozen=True)
class ConversationUnit(Unit):
    """One cleaned conversation: its messages (as dicts), the selected follow-up queries (1-based
    user-turn index and the detector's cues) and a distractor exchange from another conversation
    (``{"source_id", "messages"}``; None when there is none)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    selected: list[dict[str, Any]] = field(default_factory=list)
    distractor: dict[str, Any] | None = None


@dataclass(frozen=True)
class NegativesSettings:
    """``spec.negatives`` with its defaults settled."""

    strategies: tuple[str, ...]  # empty in the spec: all of parrot.datasets.capo.STRATEGIES
    chosen_source: str = "responder"
    judge_confirm: bool = False
    judge_prompt: str = ""  # empty in the spec: parrot.judging.prompts.CONTEXT_DEPENDENCE_PROMPT
    judge_threshold: float = 6.0
    near_identical_threshold: float = 0.9
    max_history_turns: int = 0  # 0: all
    all_follow_ups: bool = False
    max_queries_per_conversation: int = 0  # 0: all


class Negatives(RunKind):
    name = "negatives"
    inputs = ("conversations",)

    def settings(self, spec: cpb.RunSpec, limits: RunLimits) -> NegativesSettings:
        from parrot.datasets.capo import STRATEGIES
        from parrot.judging.prompts import CONTEXT_DEPENDENCE_PROMPT

        n, d = spec.negatives, NegativesSettings(())
        strategies = distinct_choices("spec.negatives.strategies", n.strategies, STRATEGIES)
        if n.chosen_source not in ("", *CHOSEN_SOURCES):
            raise InvalidArgument("spec.negatives.chosen_source", f"is {n.chosen_source!r}; allowed: "
                                  f"{', '.join(CHOSEN_SOURCES)} (empty = {d.chosen_source})")
        if not 0 <= n.judge_threshold <= 10 or n.judge_threshold != n.judge_threshold:
            raise InvalidArgument("spec.negatives.judge_threshold",
                                  f"is {n.judge_threshold}; allowed 0..10 (0 = {d.judge_threshold:g})")
        if not 0 <= n.near_identical_threshold <= 1 or n.near_identical_threshold != n.near_identical_threshold:
            raise InvalidArgument("spec.negatives.near_identical_threshold",
                                  f"is {n.near_identical_threshold}; allowed 0..1 (0 = {d.near_identical_threshold:g})")
        if n.max_history_turns > MAX_TURNS:
            raise InvalidArgument("spec.negatives.max_history_turns", f"is {n.max_history_turns}; allowed 0..{MAX_TURNS}")
        return NegativesSettings(
            strategies=tuple(strategies or STRATEGIES), chosen_source=n.chosen_source or d.chosen_source,
            judge_confirm=n.judge_confirm, judge_prompt=n.judge_prompt or CONTEXT_DEPENDENCE_PROMPT,
            judge_threshold=n.judge_threshold or d.judge_threshold,
            near_identical_threshold=n.near_identical_threshold or d.near_identical_threshold,
            max_history_turns=n.max_history_turns, all_follow_ups=n.all_follow_ups,
            max_queries_per_conversation=n.max_queries_per_conversation)

    async def plan(self, settings: RunSettings, reader: InputReader, inputs: dict[str, tuple[str, bytes]],
                   limits: RunLimits) -> tuple[list[Unit], dict[str, Any]]:
        """One unit per cleaned conversation with at least one selected follow-up query.

        A unit holds the conversation, the selected queries (1-based user-turn index and the
        detector's cues) and a distractor exchange from the next cleaned conversation (used by
        context_misunderstanding when the history has a single exchange).
        """
        from parrot.analysis import is_context_dependent
        from parrot.datasets import load_sharegpt
        from parrot.datasets.capo import exchanges
        from parrot.datasets.cleaning import CleaningConfig, clean_conversations

        n = settings.spec.negatives
        name, data = await reader.read(n.conversations, "spec.negatives.conversations")
        inputs["conversations"] = (name, data)
        records = parse_input("spec.negatives.conversations", load_sharegpt, name, data)
        records = records[: settings.limit] if settings.limit else records
        cleaned, report = clean_conversations(records, CleaningConfig(min_user_turns=2))
        units: list[Unit] = []
        without = 0
        for pos, record in enumerate(cleaned):
            users = [m for m in record.messages if m.role is Role.USER]
            selected = []
            for k, message in enumerate(users[1:], start=2):
                verdict = is_context_dependent(message.content, k - 1)
                if verdict.dependent or n.all_follow_ups:
                    selected.append({"turn": k, "cues": verdict.cues})
            if n.max_queries_per_conversation:
                selected = selected[: n.max_queries_per_conversation]
            if not selected:
                without += 1
                continue
            distractor = None
            if len(cleaned) > 1:
                other = cleaned[(pos + 1) % len(cleaned)]
                first = exchanges(other.messages)[:1]
                if first:
                    distractor = {"source_id": other.id, "messages": [m.as_dict() for m in first[0]]}
            units.append(ConversationUnit(str(record.id), [m.as_dict() for m in record.messages], selected, distractor))
        if not units:
            raise InvalidArgument("spec.negatives.conversations",
                                  f"{name} has no context-dependent follow-up query ({report.conversations_kept} of "
                                  f"{report.conversations_in} conversations left after cleaning)")
        notes = {"cleaning": report.as_dict(), "conversations_without_selected_query": without,
                 "queries_selected": sum(len(u.selected) for u in units)}
        return units, notes

    def roles(self, section: NegativesSettings) -> list[str]:
        return ["responder", "judge"] if section.judge_confirm else ["responder"]

    async def run_unit(self, ctx: UnitContext, unit: ConversationUnit) -> dict[str, Any]:
        """CaPO pairs for the selected queries of one conversation (strategies in parrot.datasets.capo).

        Per query, in order: the chosen answer (responder with the full history, or the dataset's own
        answer); the optional judge confirmation (GradeSingle on the query's turn with the
        context-dependence prompt); then one rejected answer per strategy, concurrently. Skipped
        queries and dropped pairs are counted in ``drops`` ("judge_rejected", "empty_chosen",
        "<strategy>:empty", "<strategy>:near_identical", "<strategy>:no_distractor").
        """
        from parrot.analysis import near_duplicate
        from parrot.datasets.capo import chosen_messages, preference_row, strategy_messages

        n: NegativesSettings = ctx.settings.section
        strategies = list(n.strategies)
        similar = n.near_identical_threshold
        messages = [Message(Role(m["role"]), m["content"]) for m in unit.messages]
        system = messages[:1] if messages and messages[0].role is Role.SYSTEM else []
        body = messages[len(system):]
        users = [i for i, m in enumerate(body) if m.role is Role.USER]
        distractor = [Message(Role(m["role"]), m["content"]) for m in (unit.distractor or {}).get("messages", [])]
        base_seed = ctx.seed
        pairs: list[dict[str, Any]] = []
        selected: list[dict[str, Any]] = []
        drops: dict[str, int] = {}
        tokens = turns = 0
        t0 = time.monotonic()

        def drop(reason: str) -> None:
            drops[reason] = drops.get(reason, 0) + 1

        async def respond(msgs: list[Message], seed: int) -> tuple[str, str]:
            nonlocal tokens
            resp = await ctx.clients.respond(msgs, ctx.settings.generation(seed))
            tokens += resp.usage.completion_tokens
            ctx.on_turn(resp.usage.completion_tokens)
            return resp.text, resp.model

        for q, sel in enumerate(unit.selected):
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
                g = await ctx.clients.grade(graded, len(history_body) // 2 + 1, "", n.judge_prompt,
                                            conversation_pb2.GenerationParams(max_tokens=64, temperature=0.0))
                ctx.models["judge"] = g.model
                info["judge_score"] = round(g.score, 4)
                if g.score < n.judge_threshold:
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
                    pairs.append(preference_row(history, query, chosen, text, strategy=strategy, source_id=unit.id, turn=k,
                                                models={"chosen": chosen_model, "rejected": model_or_reason}))
                    info["pairs"] += 1
            turns += 1
        return {"pairs": pairs, "selected": selected, "drops": drops, "turns": turns, "tokens": tokens,
                "metadata": {"source_id": unit.id, "models": dict(ctx.models),
                             "distractor_source": (unit.distractor or {}).get("source_id"),
                             "elapsed_s": round(time.monotonic() - t0, 3)}}

    def outputs(self, run_id: str, plan: Plan, done: list[dict[str, Any]]) -> dict[str, bytes]:
        strategies = list(plan.settings.section.strategies)
        rows, selected = [], []
        for rec in done:
            rows.extend(rec["data"].get("pairs", []))
            for info in rec["data"].get("selected", []):
                selected.append({"source_id": rec["id"], **info})
        stats = negatives_stats(plan, done, strategies)
        models = {}
        for rec in done:
            models.update(rec["data"].get("metadata", {}).get("models", {}))
        return {"preferences.jsonl": jsonl(rows), "selected.jsonl": jsonl(selected),
                "stats.json": json.dumps(stats, indent=2).encode(),
                "summary.json": json.dumps({"stats": stats, "strategies": strategies, "models": models}).encode()}



def negatives_stats(plan: Any, done: list[dict[str, Any]], strategies: list[str]) -> dict[str, Any]:
    """Pairs and drops per strategy, skipped queries by reason, and the plan's cleaning counts."""
    per: dict[str, dict[str, int]] = {s: {"pairs": 0, "near_identical": 0, "empty": 0, "no_distractor": 0} for s in strategies}
    skipped: dict[str, int] = {"judge_rejected": 0, "empty_chosen": 0}
    queries = pairs = 0
    for rec in done:
        data = rec["data"]
        queries += len(data.get("selected", []))
        for row in data.get("pairs", []):
            per.setdefault(row["strategy"], {"pairs": 0, "near_identical": 0, "empty": 0, "no_distractor": 0})
            per[row["strategy"]]["pairs"] += 1
            pairs += 1
        for reason, count in (data.get("drops") or {}).items():
            strategy, sep, what = reason.partition(":")
            if sep:
                per.setdefault(strategy, {})[what] = per.get(strategy, {}).get(what, 0) + int(count)
            else:
                skipped[reason] = skipped.get(reason, 0) + int(count)
    used = queries - sum(skipped.values())
    return {"conversations": len(done), "queries_selected": queries, "queries_used": used, "queries_skipped": skipped,
            "pairs": pairs, "pairs_per_query": pairs / used if used else None, "per_strategy": per,
            "conversations_without_selected_query": plan.notes.get("conversations_without_selected_query", 0),
            "cleaning": plan.notes.get("cleaning", {})}

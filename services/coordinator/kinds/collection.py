"""Collection (Parrot-Ask): multi-turn conversations grown from seed queries.

The seed query, then responder answer / asker follow-up until the sampled number of user turns;
follow-ups that the filters reject are re-asked (up to max_asks_per_turn), and counted by reason; so
is an ask the asker gave up on (ABORTED: none of its samples passed its checks, ``asker_no_question``),
which is not an outage (the service answered) and so never holds the run's calls.
Once the session has ``min_turns`` user turns, the asker may end it (``AskRequest.allow_end``; a
trained asker ends where people ended): the session is then finished with ``ended: "asker_ended"``.
A session cut short because the asker could not answer (after retries, or an outage past its
budget) fails, to be retried with ``resume --retry-failed``, never counted as finished.

Outputs: ``dataset.jsonl`` (ShareGPT records with per-conversation metadata), ``stats.json``,
``summary.json`` (statistics and filter drop counts).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from parrot.conversation import Message, Role
from parrot.errors import InvalidArgument
from parrot.model_clients import CallFailed
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.kinds.base import RunKind, Unit, UnitContext, UnitFailed, add_counts, jsonl
from services.coordinator.spec import InputReader, Plan, RunLimits, RunSettings, limit_exceeded, parse_input

SEED_FORMATS = ("auto", "sharegpt", "queries")
# Drop reason of an ask the asker gave up on (ABORTED: none of its samples passed its own checks).
NO_QUESTION = "asker_no_question"


@dataclass(frozen=True)
class SeedUnit(Unit):
    """One conversation to grow: its first-turn query."""

    query: str = ""


@dataclass(frozen=True)
class CollectionSettings:
    """``spec.collection`` with its defaults settled."""

    min_turns: int
    max_turns: int  # at least min_turns
    persona: str
    seed_format: str = "auto"
    min_query_chars: int = 8
    near_duplicate_threshold: float = 0.8
    max_asks_per_turn: int = 3


class Collection(RunKind):
    name = "collection"
    inputs = ("seeds",)

    def settings(self, spec: cpb.RunSpec, limits: RunLimits) -> CollectionSettings:
        c = spec.collection
        if c.min_turns < 1:
            raise InvalidArgument("spec.collection.min_turns", f"is {c.min_turns}; a conversation needs at least 1 user turn")
        if c.max_turns and c.max_turns < c.min_turns:
            raise InvalidArgument("spec.collection.max_turns",
                                  f"is {c.max_turns}; it must be 0 or >= min_turns ({c.min_turns})")
        if max(c.min_turns, c.max_turns) > limits.max_turns:
            raise limit_exceeded("spec.collection.max_turns", f"is {max(c.min_turns, c.max_turns)}; at most "
                                 f"{limits.max_turns} user turns per conversation", "max_turns")
        if c.seed_format not in ("", *SEED_FORMATS):
            raise InvalidArgument("spec.collection.seed_format", f"is {c.seed_format!r}; allowed: {', '.join(SEED_FORMATS)}")
        d = CollectionSettings(0, 0, "")
        if not 0 <= c.near_duplicate_threshold <= 1:
            raise InvalidArgument("spec.collection.near_duplicate_threshold",
                                  f"allowed range is 0..1 (0 = default {d.near_duplicate_threshold})")
        return CollectionSettings(
            min_turns=c.min_turns, max_turns=max(c.min_turns, c.max_turns), persona=c.persona,
            seed_format=c.seed_format or d.seed_format, min_query_chars=c.min_query_chars or d.min_query_chars,
            near_duplicate_threshold=c.near_duplicate_threshold or d.near_duplicate_threshold,
            max_asks_per_turn=c.max_asks_per_turn or d.max_asks_per_turn)

    async def plan(self, settings: RunSettings, reader: InputReader, inputs: dict[str, tuple[str, bytes]],
                   limits: RunLimits) -> tuple[list[Unit], dict[str, Any]]:
        from parrot.datasets import load_seeds

        name, data = await reader.read(settings.spec.collection.seeds, "spec.collection.seeds")
        inputs["seeds"] = (name, data)
        seedset = parse_input("spec.collection.seeds", load_seeds, name, data, settings.section.seed_format)
        seeds = seedset.seeds[: settings.limit] if settings.limit else seedset.seeds
        if not seeds:
            raise InvalidArgument("spec.collection.seeds", f"{name} has no usable first-turn queries")
        return [SeedUnit(str(s.id), s.query) for s in seeds], {"seeds_skipped": dict(seedset.skipped)}

    def roles(self, section: CollectionSettings) -> list[str]:
        return ["responder", "asker"]

    async def run_unit(self, ctx: UnitContext, unit: SeedUnit) -> dict[str, Any]:
        from parrot.analysis import FollowUpFilter

        c: CollectionSettings = ctx.settings.section
        rng = random.Random(f"{ctx.settings.seed}:{ctx.index}")
        n_turns = rng.randint(c.min_turns, c.max_turns)
        flt = FollowUpFilter(min_chars=c.min_query_chars, near_dup_threshold=c.near_duplicate_threshold)
        max_asks = c.max_asks_per_turn
        messages = [Message(Role.USER, unit.query)]
        drops: dict[str, int] = {}
        tokens, t0, ended = 0, time.monotonic(), "target_turns"
        base_seed = ctx.seed
        for turn in range(1, n_turns + 1):
            resp = await ctx.clients.respond(messages, ctx.settings.generation(base_seed + turn))
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
                try:
                    a = await ctx.clients.ask(messages, ctx.settings.generation(base_seed + turn * 100 + attempt, 64),
                                              c.persona, allow_end=turn >= c.min_turns)
                except CallFailed as err:
                    if err.status != grpc.StatusCode.ABORTED:
                        raise
                    # the asker is up but none of its samples passed its own checks: a dropped follow-up
                    drops[NO_QUESTION] = drops.get(NO_QUESTION, 0) + 1
                    continue
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
            "metadata": {"seed_id": unit.id, "target_turns": n_turns, "turns": user_turns, "ended": ended,
                         "models": dict(ctx.models), "elapsed_s": round(time.monotonic() - t0, 3)},
        }

    def outputs(self, run_id: str, plan: Plan, done: list[dict[str, Any]]) -> dict[str, bytes]:
        from parrot.analysis import dataset_stats
        from parrot.datasets import to_sharegpt_record

        rows, conversations = [], []
        drops: dict[str, int] = {}
        for rec in done:
            data = rec["data"]
            messages = [Message(Role(m["role"]), m["content"]) for m in data["messages"]]
            conversations.append(messages)
            rows.append(to_sharegpt_record(f"{run_id}-{rec['index']}", messages, {"metadata": data["metadata"]}))
            add_counts(drops, data.get("drops", {}))
        stats = dataset_stats(conversations)
        return {"dataset.jsonl": jsonl(rows), "stats.json": json.dumps(stats, indent=2).encode(),
                "summary.json": json.dumps({"stats": stats, "dropped": drops,
                                            "seeds_skipped": plan.notes.get("seeds_skipped", {})}).encode()}

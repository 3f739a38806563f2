"""Extend short benchmark sessions (MT-Bench's 2 turns) to N turns with the asker: a first draft
of an MT-Bench++-style file, for human review.

For each session the responder answers the turns so far (its answers are the context the asker
sees), then the asker writes the next user turn, with the session's first question as its topic
hint so it stays on the subject, and is free to refer back ("it", "that one") as users do.
Follow-ups that are too short or repeat an earlier turn are re-asked (``FollowUpFilter``);
a session whose asker keeps failing stops early and is marked ``incomplete``.

Output: the sessions in the MT-Bench question format (so ``parrot eval`` reads the file as it
is), every turn with provenance in ``turn_provenance`` (``original``, or ``asker`` with the
asker and responder models, seed, attempts, time, the context-dependence cues found, and
``review: "pending"``), plus an ``extension`` block with the status and the context answers.
Finished sessions are appended to the output as they complete, so an interrupted extension
resumes where it stopped (sessions already in the output are kept, not asked again); the file
is rewritten in input order at the end. A Markdown review sheet lists new turns for reviewers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from parrot.analysis import FollowUpFilter, is_context_dependent
from parrot.conversation import Message, Role
from parrot.datasets.mtbench import Question
from parrot.datasets.mtbench import instructions_record
from parrot.errors import ConfigError
from parrot.errors import ParrotError
from parrot.v1 import conversation_pb2

log = logging.getLogger(__name__)

STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"
STATUS_UNCHANGED = "unchanged"  # the session already had enough turns


@dataclass(frozen=True)
class ExtendConfig:
    """Settings of ``parrot bench extend``."""

    turns: int = field(default=8, metadata={"help": "User turns per session after extension (MT-Bench++: 8)."})
    answer_max_tokens: int = field(default=256, metadata={"help": "Most new tokens per context answer."})
    ask_max_tokens: int = field(default=64, metadata={"help": "Most new tokens per follow-up question."})
    ask_temperature: float | None = field(default=None, metadata={"help": "Asker temperature (None = its default)."})
    max_asks_per_turn: int = field(default=3, metadata={"help": "Asker calls per turn before the session stops."})
    min_query_chars: int = field(default=8, metadata={"help": "Drop shorter follow-ups."})
    near_duplicate_threshold: float = field(default=0.8, metadata={"help": "Drop follow-ups this similar to an earlier turn."})
    persona: str = field(default="", metadata={"help": "Asker persona hint."})
    concurrency: int = field(default=4, metadata={"help": "Sessions extended at once."})
    seed: int = field(default=0, metadata={"help": "Base seed of the generation calls."})

    def __post_init__(self) -> None:
        if not 2 <= self.turns <= 64:
            raise ConfigError(f"turns is {self.turns}; allowed 2..64")
        if self.concurrency < 1 or self.max_asks_per_turn < 1:
            raise ConfigError("concurrency and max_asks_per_turn must be at least 1")
        if not 0 <= self.near_duplicate_threshold <= 1:
            raise ConfigError(f"near_duplicate_threshold is {self.near_duplicate_threshold}; allowed 0..1")


class ExtendIncomplete(ParrotError):
    """Some sessions could not be extended (model calls failed); the others are written."""

    def __init__(self, records: list[dict[str, Any]], failures: dict[str, str]):
        self.records, self.failures = records, failures
        first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} session(s) not extended (first: {first[0]}: {first[1]}); "
                         "run the same command again to retry them")


def _params(max_tokens: int, seed: int, temperature: float | None = None) -> Any:
    p = conversation_pb2.GenerationParams(max_tokens=max_tokens, seed=seed % (2**62))
    if temperature is not None:
        p.temperature = temperature
    return p


def _topic(q: Question) -> str:
    first = " ".join(q.turns[0].split())
    return f"{q.category}: {first[:200]}" + ("…" if len(first) > 200 else "")


async def extend_session(q: Question, index: int, cfg: ExtendConfig, clients: Any) -> dict[str, Any]:
    """One session extended to ``cfg.turns`` user turns, as an output record."""

    record = q.as_record()
    record.pop("turn_provenance", None)
    provenance: list[dict[str, Any]] = [{"turn": t, "source": "original"} for t in range(1, len(q.turns) + 1)]
    if len(q.turns) >= cfg.turns:
        record["turn_provenance"] = (q.extra or {}).get("turn_provenance") or provenance
        record["extension"] = {"status": STATUS_UNCHANGED, "target_turns": cfg.turns}
        return record
    flt = FollowUpFilter(min_chars=cfg.min_query_chars, near_dup_threshold=cfg.near_duplicate_threshold)
    base = (cfg.seed * 1_000_003 + index * 7919) % (2**61)
    messages: list[Message] = []
    turns = list(q.turns)
    answers: list[str] = []
    models: dict[str, str] = {}
    status, reason = STATUS_COMPLETE, ""
    t = 0
    while True:
        t += 1
        messages.append(Message(Role.USER, turns[t - 1]))
        if len(turns) >= cfg.turns:
            break
        resp = await clients.respond(messages, _params(cfg.answer_max_tokens, base + t))
        models["responder"] = resp.model
        answer = resp.text.strip() or "(empty answer)"
        answers.append(resp.text)
        messages.append(Message(Role.ASSISTANT, answer))
        if t < len(turns):
            continue
        question, attempts, drops = None, 0, {}
        for attempt in range(cfg.max_asks_per_turn):
            attempts += 1
            a = await clients.ask(messages, _params(cfg.ask_max_tokens, base + 100 * t + attempt, cfg.ask_temperature),
                                  cfg.persona, _topic(q))
            models["asker"] = a.model
            text = (a.candidates[0].text if a.candidates else "").strip()
            why = flt.check(text, turns)
            if why is None:
                question = text
                break
            drops[why] = drops.get(why, 0) + 1
        if question is None:
            status, reason = STATUS_INCOMPLETE, f"no acceptable follow-up for turn {t + 1} after {attempts} asks ({drops})"
            break
        verdict = is_context_dependent(question, history_len=t)
        turns.append(question)
        provenance.append({"turn": t + 1, "source": "asker", "asker_model": models.get("asker", ""),
                           "context_answers_by": models.get("responder", ""), "seed": base + 100 * t + attempts - 1,
                           "attempts": attempts, "rejected": drops, "context_dependent": verdict.dependent,
                           "context_cues": list(verdict.cues), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "review": "pending"})
    record["turns"] = turns
    if q.instructions is not None:
        record["instructions"] = [instructions_record(s) for s in q.instructions] + [None] * (len(turns) - len(q.turns))
    record["turn_provenance"] = provenance
    record["extension"] = {"status": status, "target_turns": cfg.turns, "reason": reason, "models": models,
                           "context_answers": answers}
    return record


def _read_done(out: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not out.exists():
        return done
    for line in out.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short by a kill: that session is done again
            continue
        if isinstance(rec, dict) and "question_id" in rec and "extension" in rec:
            done[str(rec["question_id"])] = rec
    return done


async def extend_file(questions: Sequence[Question], out: Path, cfg: ExtendConfig, clients: Any,
                      on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Extends every session into ``out`` (JSONL), resuming from what ``out`` already holds."""
    done = _read_done(out)
    if done:
        log.info("resuming extension", extra={"done": len(done), "file": str(out)})
    # Rewrite what survives (drops a torn last line), then append as sessions finish.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()), encoding="utf-8")
    sem = asyncio.Semaphore(cfg.concurrency)
    lock = asyncio.Lock()

    failures: dict[str, str] = {}

    async def one(i: int, q: Question) -> None:
        if str(q.question_id) in done:
            return
        async with sem:
            try:
                rec = await extend_session(q, i, cfg, clients)
            except ParrotError as e:  # a model call failed for good: not written, so a rerun retries it
                failures[str(q.question_id)] = str(e)
                log.warning("session not extended", extra={"question_id": str(q.question_id), "error": str(e)})
                return
        async with lock:
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            done[str(q.question_id)] = rec
        if on_done:
            on_done(rec)

    await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    ordered = [done[str(q.question_id)] for q in questions if str(q.question_id) in done]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
    os.replace(tmp, out)
    if failures:
        raise ExtendIncomplete(ordered, failures)
    return ordered


def review_sheet(records: Sequence[dict[str, Any]], title: str = "") -> str:
    """A Markdown sheet for reviewers: each session's turns, new ones marked with their cues."""
    lines = [f"# {title or 'Extended sessions for review'}", "",
             "Turns marked **NEW** were written by the asker; check each one stays on topic, reads like a user, "
             "and refers back where it should. Set `review` in `turn_provenance` to `accepted`, `edited` or "
             "`rejected` in the JSONL file.", ""]
    for rec in records:
        ext = rec.get("extension") or {}
        prov = {p["turn"]: p for p in rec.get("turn_provenance") or []}
        lines.append(f"## {rec['question_id']} ({rec.get('category', '')}) — {ext.get('status', '')}"
                     + (f": {ext['reason']}" if ext.get("reason") else ""))
        lines.append("")
        for t, text in enumerate(rec["turns"], 1):
            p = prov.get(t, {})
            mark = ""
            if p.get("source") == "asker":
                cues = ", ".join(p.get("context_cues") or []) or "none"
                mark = f" **NEW** _(context cues: {cues})_"
            lines.append(f"{t}. {' '.join(text.split())}{mark}")
        lines.append("")
    return "\n".join(lines)

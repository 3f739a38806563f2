"""Run specs: defaults, validation, and reading input files into a plan of units.

Everything is checked at StartRun, before anything is stored: a bad spec is rejected with
INVALID_ARGUMENT naming the field (or the file, line and field of a malformed input record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parrot.errors import InvalidArgument
from parrot.v1 import coordinator_pb2 as cpb

MAX_TURNS = 64
MAX_CONCURRENCY = 1024
DEFAULT_CONCURRENCY = 16


@dataclass
class Plan:
    """What a run does: its kind and one JSON-able unit per conversation, in input order."""

    kind: str  # "collection" | "evaluation"
    units: list[dict[str, Any]]
    notes: dict[str, Any]


def kind_of(spec: cpb.RunSpec) -> str:
    which = spec.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("spec.kind", "set exactly one of 'collection' or 'evaluation'")
    return which


async def read_input(f: cpb.InputFile, field: str, store: Any) -> tuple[str, bytes]:
    """Returns (name, bytes) of an input file given inline or by URL."""
    if f.content:
        return f.name or field, bytes(f.content)
    if not f.url:
        raise InvalidArgument(field, "give the file inline (content) or a url (file:///..., s3://bucket/key, or a store key)")
    name = f.name or f.url.rsplit("/", 1)[-1]
    if f.url.startswith("file://") or f.url.startswith("/"):
        path = Path(f.url[len("file://"):] if f.url.startswith("file://") else f.url)
        try:
            return name, path.read_bytes()
        except OSError as e:
            raise InvalidArgument(f"{field}.url", f"cannot read {path}: {e.strerror}") from e
    if f.url.startswith("s3://"):
        from parrot.storage import open_store

        bucket, _, key = f.url[len("s3://"):].partition("/")
        other = open_store(f"s3://{bucket}")
        try:
            return name, await other.get(key)
        except Exception as e:
            raise InvalidArgument(f"{field}.url", f"cannot read {f.url}: {e}") from e
    try:
        return name, await store.get(f.url)
    except Exception as e:
        raise InvalidArgument(f"{field}.url", f"no object {f.url!r} in the coordinator's store ({e})") from e


def check_common(spec: cpb.RunSpec) -> None:
    if spec.concurrency > MAX_CONCURRENCY:
        raise InvalidArgument("spec.concurrency", f"is {spec.concurrency}; allowed 1..{MAX_CONCURRENCY} (0 = {DEFAULT_CONCURRENCY})")
    r = spec.retry
    if r.max_attempts > 20:
        raise InvalidArgument("spec.retry.max_attempts", f"is {r.max_attempts}; allowed 1..20 (0 = 4)")
    for name in ("initial_backoff_s", "max_backoff_s", "call_deadline_s"):
        v = getattr(r, name)
        if v < 0 or v > 3600 or v != v:
            raise InvalidArgument(f"spec.retry.{name}", f"is {v}; allowed 0..3600 (0 = default)")
    if len(spec.name) > 200:
        raise InvalidArgument("spec.name", "is longer than 200 characters")


async def plan_run(spec: cpb.RunSpec, store: Any) -> tuple[Plan, dict[str, tuple[str, bytes]]]:
    """Validates the spec and parses its inputs. Returns the plan and the input files read."""
    check_common(spec)
    kind = kind_of(spec)
    inputs: dict[str, tuple[str, bytes]] = {}
    if kind == "collection":
        return await _plan_collection(spec, store, inputs), inputs
    return await _plan_evaluation(spec, store, inputs), inputs


def _parse(field: str, fn: Any, *args: Any) -> Any:
    """Runs a loader; a malformed record becomes INVALID_ARGUMENT naming the spec field, file, line and field."""
    from parrot.datasets import DatasetError

    try:
        return fn(*args)
    except DatasetError as e:
        raise InvalidArgument(field, str(e)) from e


async def _plan_collection(spec: cpb.RunSpec, store: Any, inputs: dict) -> Plan:
    from parrot.datasets import load_seeds

    c = spec.collection
    if c.min_turns < 1:
        raise InvalidArgument("spec.collection.min_turns", f"is {c.min_turns}; a conversation needs at least 1 user turn")
    if c.max_turns and c.max_turns < c.min_turns:
        raise InvalidArgument("spec.collection.max_turns", f"is {c.max_turns}; it must be 0 or >= min_turns ({c.min_turns})")
    if max(c.min_turns, c.max_turns) > MAX_TURNS:
        raise InvalidArgument("spec.collection.max_turns", f"at most {MAX_TURNS} turns per conversation")
    if c.seed_format not in ("", "auto", "sharegpt", "queries"):
        raise InvalidArgument("spec.collection.seed_format", f"is {c.seed_format!r}; allowed: auto, sharegpt, queries")
    if not 0 <= c.near_duplicate_threshold <= 1:
        raise InvalidArgument("spec.collection.near_duplicate_threshold", "allowed range is 0..1 (0 = default 0.8)")
    name, data = await read_input(c.seeds, "spec.collection.seeds", store)
    inputs["seeds"] = (name, data)
    seedset = _parse("spec.collection.seeds", load_seeds, name, data, c.seed_format or "auto")
    seeds = seedset.seeds[: spec.limit] if spec.limit else seedset.seeds
    if not seeds:
        raise InvalidArgument("spec.collection.seeds", f"{name} has no usable first-turn queries")
    units = [{"id": str(s.id), "query": s.query} for s in seeds]
    return Plan("collection", units, {"seeds_skipped": dict(seedset.skipped)})


async def _plan_evaluation(spec: cpb.RunSpec, store: Any, inputs: dict) -> Plan:
    from parrot.datasets import SESSION_FORMATS, load_eval_sessions, load_references

    e = spec.evaluation
    if e.pairwise and not spec.targets.baseline_responder:
        raise InvalidArgument("spec.targets.baseline_responder", "is required when evaluation.pairwise is set")
    if e.questions_format not in ("",) + SESSION_FORMATS:
        raise InvalidArgument("spec.evaluation.questions_format",
                              f"is {e.questions_format!r}; allowed: {', '.join(SESSION_FORMATS)}")
    if e.skip_judge and (e.pairwise or e.second_judge):
        raise InvalidArgument("spec.evaluation.skip_judge", "cannot be combined with pairwise or second_judge")
    name, data = await read_input(e.questions, "spec.evaluation.questions", store)
    inputs["questions"] = (name, data)
    questions = _parse("spec.evaluation.questions", load_eval_sessions, name, data, e.questions_format or "auto")
    questions = questions[: spec.limit] if spec.limit else questions
    if not questions:
        raise InvalidArgument("spec.evaluation.questions", f"{name} has no questions")
    refs: dict[Any, list[str]] = {}
    if e.reference_answers.content or e.reference_answers.url:
        rname, rdata = await read_input(e.reference_answers, "spec.evaluation.reference_answers", store)
        inputs["reference_answers"] = (rname, rdata)
        refs = _parse("spec.evaluation.reference_answers", load_references, rname, rdata)
    units = []
    for q in questions:
        references = list(q.references or refs.get(q.question_id) or refs.get(str(q.question_id)) or [])
        unit = {"id": str(q.question_id), "question_id": q.question_id, "category": q.category,
                "turns": list(q.turns), "references": references}
        if q.instructions:
            unit["instructions"] = [[i.as_dict() for i in turn] for turn in q.instructions]
        units.append(unit)
    if e.skip_judge and not any("instructions" in u for u in units):
        raise InvalidArgument("spec.evaluation.skip_judge", f"{name} carries no per-turn instructions, so there would be "
                                                            "nothing to grade; drop skip_judge or add instructions")
    return Plan("evaluation", units, {"max_turns": max(len(u["turns"]) for u in units)})

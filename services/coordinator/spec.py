"""Run specs: defaults, validation, and reading input files into a plan of units.

Everything is checked at StartRun, before anything is stored: a bad spec is rejected with
INVALID_ARGUMENT naming the field (or the file, line and field of a malformed input record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parrot.errors import InvalidArgument, LimitExceeded
from parrot.v1 import coordinator_pb2 as cpb

MAX_TURNS = 64
MAX_CONCURRENCY = 1024
DEFAULT_CONCURRENCY = 16
MAX_INPUT_BYTES = 1 << 30  # an input file read by URL


@dataclass(frozen=True)
class RunLimits:
    """Coordinator-wide limits on what one run may ask for. Exceeding one at StartRun is
    RESOURCE_EXHAUSTED naming the field, the limit and the setting that raises it."""

    max_turns: int = field(default=MAX_TURNS, metadata={"help": "User turns per conversation (PARROT_MAX_TURNS)."})
    max_concurrency: int = field(default=MAX_CONCURRENCY, metadata={
        "help": "Conversations in flight at once in one run (PARROT_MAX_CONCURRENCY)."})
    max_conversations: int = field(default=1_000_000, metadata={
        "help": "Conversations in one run (PARROT_MAX_CONVERSATIONS)."})
    max_new_tokens: int = field(default=2048, metadata={
        "help": "Largest params.max_tokens / judge_max_tokens a run may ask for (PARROT_MAX_NEW_TOKENS)."})

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_concurrency", "max_conversations", "max_new_tokens"):
            if getattr(self, name) < 1:
                from parrot.errors import ConfigError

                raise ConfigError(f"--{name.replace('_', '-')} / PARROT_{name.upper()} is {getattr(self, name)}; it must be >= 1")


def _limit(field_name: str, problem: str, setting: str) -> LimitExceeded:
    return LimitExceeded(field_name, problem, f"coordinator --{setting.replace('_', '-')} / PARROT_{setting.upper()}")


@dataclass
class Plan:
    """What a run does: its kind and one JSON-able unit per conversation, in input order."""

    kind: str  # "collection" | "evaluation" | "negatives"
    units: list[dict[str, Any]]
    notes: dict[str, Any]


def kind_of(spec: cpb.RunSpec) -> str:
    which = spec.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("spec.kind", "set exactly one of 'collection', 'evaluation' or 'negatives'")
    return which


class InputReader:
    """Reads a run's input files: inline, by URL (``file://``, ``s3://``; confined by the coordinator's
    InputPolicy when it has one, before anything is touched), or a key of the coordinator's store."""

    def __init__(self, store: Any, policy: Any = None) -> None:
        self.store, self.policy = store, policy

    async def read(self, f: cpb.InputFile, field: str) -> tuple[str, bytes]:
        """Returns (name, bytes) of an input file given inline or by URL."""
        if f.content:
            return f.name or field, bytes(f.content)
        if not f.url:
            raise InvalidArgument(field, "give the file inline (content) or a url (file:///..., s3://bucket/key, or a store key)")
        name = f.name or f.url.rsplit("/", 1)[-1]
        if f.url.startswith("file://") or f.url.startswith("/"):
            return name, self._read_path(Path(f.url[len("file://"):] if f.url.startswith("file://") else f.url), field)
        if f.url.startswith("s3://"):
            return name, await self._read_s3(f.url, field)
        try:
            return name, await self.store.get(f.url)
        except Exception as e:
            raise InvalidArgument(f"{field}.url", f"no object {f.url!r} in the coordinator's store ({e})") from e

    def _read_path(self, path: Path, field: str) -> bytes:
        if self.policy is not None:
            path = self.policy.check_path(field, path)
        try:
            if not path.is_file():  # a device or FIFO could block or never end
                raise InvalidArgument(f"{field}.url", f"{path} is not a regular file")
            with open(path, "rb") as fh:
                data = fh.read(MAX_INPUT_BYTES + 1)
            if len(data) > MAX_INPUT_BYTES:
                raise LimitExceeded(f"{field}.url", f"{path} is larger than {MAX_INPUT_BYTES} bytes; split it",
                                    "the coordinator's MAX_INPUT_BYTES")
            return data
        except OSError as e:
            raise InvalidArgument(f"{field}.url", f"cannot read {path}: {e.strerror}") from e

    async def _read_s3(self, url: str, field: str) -> bytes:
        from parrot.errors import ConfigError
        from parrot.storage import open_store

        bucket, _, key = url[len("s3://"):].partition("/")
        if self.policy is not None:
            self.policy.check_s3(field, bucket, key)
        try:
            other = open_store(f"s3://{bucket}")
        except ConfigError as e:
            raise InvalidArgument(f"{field}.url", f"cannot read {url}: {e}") from e
        try:
            return await other.get(key)
        except Exception as e:
            raise InvalidArgument(f"{field}.url", f"cannot read {url}: {e}") from e


def target_field(field_name: str, target: str) -> None:
    """INVALID_ARGUMENT naming the field when a (non-empty) target is not a gRPC address."""
    from parrot.client import target_problem

    problem = target_problem(target) if target else None
    if problem:
        raise InvalidArgument(field_name, problem)


def check_common(spec: cpb.RunSpec, limits: RunLimits) -> None:
    if spec.concurrency > limits.max_concurrency:
        raise _limit("spec.concurrency", f"is {spec.concurrency}; at most {limits.max_concurrency} conversations may be "
                     f"in flight in one run (0 = {min(DEFAULT_CONCURRENCY, limits.max_concurrency)})", "max_concurrency")
    for name, value in (("spec.params.max_tokens", spec.params.max_tokens),
                        ("spec.evaluation.judge_max_tokens", spec.evaluation.judge_max_tokens)):
        if value > limits.max_new_tokens:
            raise _limit(name, f"is {value}; at most {limits.max_new_tokens} new tokens per call", "max_new_tokens")
    r = spec.retry
    if r.max_attempts > 20:
        raise InvalidArgument("spec.retry.max_attempts", f"is {r.max_attempts}; allowed 1..20 (0 = 4)")
    for name, top in (("initial_backoff_s", 3600), ("max_backoff_s", 3600), ("call_deadline_s", 3600),
                      ("outage_budget_s", 86400)):
        v = getattr(r, name)
        if v < 0 or v > top or v != v:
            raise InvalidArgument(f"spec.retry.{name}", f"is {v}; allowed 0..{top} (0 = default)")
    for role in ("responder", "asker", "judge", "baseline_responder"):
        target_field(f"spec.targets.{role}", getattr(spec.targets, role))
    if spec.WhichOneof("kind") == "evaluation":
        target_field("spec.evaluation.second_judge", spec.evaluation.second_judge)
    if len(spec.name) > 200:
        raise InvalidArgument("spec.name", "is longer than 200 characters")


async def plan_run(spec: cpb.RunSpec, store: Any, limits: RunLimits | None = None,
                   input_policy: Any = None) -> tuple[Plan, dict[str, tuple[str, bytes]]]:
    """Validates the spec and parses its inputs. Returns the plan and the input files read.

    ``limits`` None (a resumed run, already accepted once) checks no coordinator limits;
    ``input_policy`` (services.coordinator.policy.InputPolicy) confines input URLs.
    """
    reader = InputReader(store, input_policy)
    lim = limits or RunLimits(max_turns=10**6, max_concurrency=10**6, max_conversations=10**9, max_new_tokens=10**9)
    check_common(spec, lim)
    kind = kind_of(spec)
    inputs: dict[str, tuple[str, bytes]] = {}
    if kind == "collection":
        plan = await _plan_collection(spec, reader, inputs, lim)
    elif kind == "negatives":
        plan = await _plan_negatives(spec, reader, inputs)
    else:
        plan = await _plan_evaluation(spec, reader, inputs, lim)
    if len(plan.units) > lim.max_conversations:
        raise _limit(f"spec.{kind}", f"has {len(plan.units)} conversations; at most {lim.max_conversations} per run "
                     "(use spec.limit or split the input)", "max_conversations")
    return plan, inputs


def _parse(field: str, fn: Any, *args: Any) -> Any:
    """Runs a loader; a malformed record becomes INVALID_ARGUMENT naming the spec field, file, line and field."""
    from parrot.datasets import DatasetError

    try:
        return fn(*args)
    except DatasetError as e:
        raise InvalidArgument(field, str(e)) from e


async def _plan_collection(spec: cpb.RunSpec, reader: InputReader, inputs: dict, lim: RunLimits) -> Plan:
    from parrot.datasets import load_seeds

    c = spec.collection
    if c.min_turns < 1:
        raise InvalidArgument("spec.collection.min_turns", f"is {c.min_turns}; a conversation needs at least 1 user turn")
    if c.max_turns and c.max_turns < c.min_turns:
        raise InvalidArgument("spec.collection.max_turns", f"is {c.max_turns}; it must be 0 or >= min_turns ({c.min_turns})")
    if max(c.min_turns, c.max_turns) > lim.max_turns:
        raise _limit("spec.collection.max_turns", f"is {max(c.min_turns, c.max_turns)}; at most {lim.max_turns} user turns "
                     "per conversation", "max_turns")
    if c.seed_format not in ("", "auto", "sharegpt", "queries"):
        raise InvalidArgument("spec.collection.seed_format", f"is {c.seed_format!r}; allowed: auto, sharegpt, queries")
    if not 0 <= c.near_duplicate_threshold <= 1:
        raise InvalidArgument("spec.collection.near_duplicate_threshold", "allowed range is 0..1 (0 = default 0.8)")
    name, data = await reader.read(c.seeds, "spec.collection.seeds")
    inputs["seeds"] = (name, data)
    seedset = _parse("spec.collection.seeds", load_seeds, name, data, c.seed_format or "auto")
    seeds = seedset.seeds[: spec.limit] if spec.limit else seedset.seeds
    if not seeds:
        raise InvalidArgument("spec.collection.seeds", f"{name} has no usable first-turn queries")
    units = [{"id": str(s.id), "query": s.query} for s in seeds]
    return Plan("collection", units, {"seeds_skipped": dict(seedset.skipped)})


async def _plan_evaluation(spec: cpb.RunSpec, reader: InputReader, inputs: dict, lim: RunLimits) -> Plan:
    from parrot.datasets import SESSION_FORMATS, load_eval_sessions, load_references
    from services.coordinator.protocols import check_fields, question_units

    e = spec.evaluation
    if e.pairwise and not spec.targets.baseline_responder:
        raise InvalidArgument("spec.targets.baseline_responder", "is required when evaluation.pairwise is set")
    if e.questions_format not in ("",) + SESSION_FORMATS:
        raise InvalidArgument("spec.evaluation.questions_format",
                              f"is {e.questions_format!r}; allowed: {', '.join(SESSION_FORMATS)}")
    if e.skip_judge and (e.pairwise or e.second_judge):
        raise InvalidArgument("spec.evaluation.skip_judge", "cannot be combined with pairwise or second_judge")
    name, data = await reader.read(e.questions, "spec.evaluation.questions")
    inputs["questions"] = (name, data)
    questions = _parse("spec.evaluation.questions", load_eval_sessions, name, data, e.questions_format or "auto")
    questions = questions[: spec.limit] if spec.limit else questions
    if not questions:
        raise InvalidArgument("spec.evaluation.questions", f"{name} has no questions")
    refs: dict[Any, list[str]] = {}
    if e.reference_answers.content or e.reference_answers.url:
        rname, rdata = await reader.read(e.reference_answers, "spec.evaluation.reference_answers")
        inputs["reference_answers"] = (rname, rdata)
        refs = _parse("spec.evaluation.reference_answers", load_references, rname, rdata)
    history, arms, repeats = check_fields(e)
    units = []
    for q in questions:
        if len(q.turns) > lim.max_turns:
            raise _limit("spec.evaluation.questions", f"{name}: question {q.question_id} has {len(q.turns)} turns; at most "
                         f"{lim.max_turns} user turns per conversation", "max_turns")
        references = list(q.references or refs.get(q.question_id) or refs.get(str(q.question_id)) or [])
        units += question_units(q, references, history, arms, repeats, name)
    if e.skip_judge and not any("instructions" in u for u in units):
        raise InvalidArgument("spec.evaluation.skip_judge", f"{name} carries no per-turn instructions, so there would be "
                                                            "nothing to grade; drop skip_judge or add instructions")
    return Plan("evaluation", units, {"max_turns": max(len(u["turns"]) for u in units), "repeats": repeats})


NEGATIVES_CHOSEN_SOURCES = ("responder", "dataset")


def distinct_choices(field_name: str, values: Any, allowed: tuple[str, ...]) -> list[str]:
    """A repeated field's values, each one of ``allowed`` and none twice; INVALID_ARGUMENT names the item."""
    out: list[str] = []
    for i, v in enumerate(values):
        if v not in allowed:
            raise InvalidArgument(f"{field_name}[{i}]", f"is {v!r}; allowed: {', '.join(allowed)}")
        if v in out:
            raise InvalidArgument(f"{field_name}[{i}]", f"{v!r} is listed twice")
        out.append(v)
    return out


def check_negatives(spec: cpb.RunSpec) -> list[str]:
    """Validates the negatives section; returns the strategies to use."""
    from parrot.datasets.capo import STRATEGIES

    n = spec.negatives
    strategies = distinct_choices("spec.negatives.strategies", n.strategies, STRATEGIES)
    if n.chosen_source not in ("", *NEGATIVES_CHOSEN_SOURCES):
        raise InvalidArgument("spec.negatives.chosen_source",
                              f"is {n.chosen_source!r}; allowed: {', '.join(NEGATIVES_CHOSEN_SOURCES)} (empty = responder)")
    if not 0 <= n.judge_threshold <= 10 or n.judge_threshold != n.judge_threshold:
        raise InvalidArgument("spec.negatives.judge_threshold", f"is {n.judge_threshold}; allowed 0..10 (0 = 6)")
    if not 0 <= n.near_identical_threshold <= 1 or n.near_identical_threshold != n.near_identical_threshold:
        raise InvalidArgument("spec.negatives.near_identical_threshold",
                              f"is {n.near_identical_threshold}; allowed 0..1 (0 = 0.9)")
    if n.max_history_turns > MAX_TURNS:
        raise InvalidArgument("spec.negatives.max_history_turns", f"is {n.max_history_turns}; allowed 0..{MAX_TURNS}")
    return strategies or list(STRATEGIES)


async def _plan_negatives(spec: cpb.RunSpec, reader: InputReader, inputs: dict) -> Plan:
    """One unit per cleaned conversation with at least one selected follow-up query.

    A unit holds the conversation, the selected queries (1-based user-turn index and the
    detector's cues) and a distractor exchange from the next cleaned conversation (used by
    context_misunderstanding when the history has a single exchange).
    """
    from parrot.analysis import is_context_dependent
    from parrot.conversation import Role
    from parrot.datasets import load_sharegpt
    from parrot.datasets.capo import exchanges
    from parrot.datasets.cleaning import CleaningConfig, clean_conversations

    n = spec.negatives
    check_negatives(spec)
    name, data = await reader.read(n.conversations, "spec.negatives.conversations")
    inputs["conversations"] = (name, data)
    records = _parse("spec.negatives.conversations", load_sharegpt, name, data)
    records = records[: spec.limit] if spec.limit else records
    cleaned, report = clean_conversations(records, CleaningConfig(min_user_turns=2))
    units: list[dict[str, Any]] = []
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
        units.append({"id": record.id, "messages": [m.as_dict() for m in record.messages], "selected": selected,
                      "distractor": distractor})
    if not units:
        raise InvalidArgument("spec.negatives.conversations",
                              f"{name} has no context-dependent follow-up query ({report.conversations_kept} of "
                              f"{report.conversations_in} conversations left after cleaning)")
    notes = {"cleaning": report.as_dict(), "conversations_without_selected_query": without,
             "queries_selected": sum(len(u["selected"]) for u in units)}
    return Plan("negatives", units, notes)

"""Run specs: a RunSpec resolved once into RunSettings, validated, and read into a plan.

Everything is checked at StartRun, before anything is stored: a bad spec is rejected with
INVALID_ARGUMENT naming the field (or the file, line and field of a malformed input record).
Every "0 = default" of the spec is settled once, when the spec becomes :class:`RunSettings` (the
common fields here, a kind's own section in its module under ``kinds/``); the rest of the
coordinator reads the settings, not the proto.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parrot.errors import InvalidArgument, LimitExceeded
from parrot.model_clients import Retry
from parrot.v1 import conversation_pb2, coordinator_pb2 as cpb

if TYPE_CHECKING:
    from services.coordinator.kinds.base import RunKind

MAX_TURNS = 64
MAX_CONCURRENCY = 1024
DEFAULT_CONCURRENCY = 16
MAX_INPUT_BYTES = 1 << 30  # an input file read by URL
MAX_RETRY_ATTEMPTS = 20
TARGET_ROLES = ("responder", "asker", "judge", "baseline_responder")


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


#: The limits of a resumed run (accepted once already): none of the coordinator's apply.
NO_LIMITS = RunLimits(max_turns=10**6, max_concurrency=10**6, max_conversations=10**9, max_new_tokens=10**9)


def limit_exceeded(field_name: str, problem: str, setting: str) -> LimitExceeded:
    return LimitExceeded(field_name, problem, f"coordinator --{setting.replace('_', '-')} / PARROT_{setting.upper()}")


@dataclass(frozen=True)
class RunSettings:
    """A RunSpec resolved once: its kind, and every "0 = default" settled. ``spec`` is the proto as
    given (stored in run.json; its input files are read from it); ``section`` is the kind's own
    settings (``kind.settings``)."""

    spec: cpb.RunSpec
    kind: "RunKind"
    section: Any
    concurrency: int
    retry: Retry
    params: conversation_pb2.GenerationParams
    seed: int
    limit: int

    @classmethod
    def resolve(cls, spec: cpb.RunSpec, kind: "RunKind", limits: RunLimits = NO_LIMITS,
                retry: Retry | None = None) -> "RunSettings":
        """Checks the spec (INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the field) and settles its
        defaults; ``retry`` holds the coordinator's defaults for the unset retry fields."""
        check_common(spec, kind, limits)
        params = conversation_pb2.GenerationParams()
        params.CopyFrom(spec.params)
        return cls(spec=spec, kind=kind, section=kind.settings(spec, limits),
                   concurrency=spec.concurrency or DEFAULT_CONCURRENCY,
                   retry=Retry.from_policy(spec.retry, retry), params=params, seed=spec.seed, limit=spec.limit)

    def stored_as(self, spec: cpb.RunSpec) -> "RunSettings":
        """The same settings over the spec as stored (input contents replaced by their keys), so a
        running run does not hold its inputs in memory."""
        return replace(self, spec=spec)

    @property
    def targets(self) -> dict[str, str]:
        """The targets the spec names, by role (empty: the coordinator's own)."""
        t = self.spec.targets
        return {**{role: getattr(t, role) for role in TARGET_ROLES}, **self.kind.targets(self.spec)}

    def roles(self) -> list[str]:
        """The roles the run calls."""
        return self.kind.roles(self.section)

    def unit_seed(self, index: int) -> int:
        """The base seed of the unit at ``index`` (each call offsets it)."""
        return (self.seed * 1_000_003 + index * 1009) % (2**62)

    def generation(self, seed: int, max_tokens: int = 0) -> conversation_pb2.GenerationParams:
        """The run's generation settings with a per-call seed (offset by the spec's own seed, if any)."""
        p = conversation_pb2.GenerationParams()
        p.CopyFrom(self.params)
        if max_tokens:
            p.max_tokens = max_tokens
        p.seed = (self.params.seed + seed) % (2**63)
        return p


@dataclass(frozen=True)
class Plan:
    """What a run does: its settings (and so its kind), one unit per conversation in input order,
    and the notes of the planning (counts its summary reports)."""

    settings: RunSettings
    units: list[Any]  # kinds.base.Unit
    notes: dict[str, Any]

    @property
    def kind(self) -> "RunKind":
        return self.settings.kind

    def stored_as(self, spec: cpb.RunSpec) -> "Plan":
        """The plan over the spec as stored (``RunSettings.stored_as``)."""
        return replace(self, settings=self.settings.stored_as(spec))

    def by_id(self) -> dict[str, Any]:
        """The units by id."""
        return {u.id: u for u in self.units}


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


def check_common(spec: cpb.RunSpec, kind: "RunKind", limits: RunLimits) -> None:
    """The checks every kind shares (its own are in ``kind.settings``)."""
    if spec.concurrency > limits.max_concurrency:
        raise limit_exceeded("spec.concurrency", f"is {spec.concurrency}; at most {limits.max_concurrency} conversations "
                             f"may be in flight in one run (0 = {min(DEFAULT_CONCURRENCY, limits.max_concurrency)})",
                             "max_concurrency")
    check_new_tokens("spec.params.max_tokens", spec.params.max_tokens, limits)
    r = spec.retry
    if r.max_attempts > MAX_RETRY_ATTEMPTS:
        raise InvalidArgument("spec.retry.max_attempts",
                              f"is {r.max_attempts}; allowed 1..{MAX_RETRY_ATTEMPTS} (0 = {Retry().max_attempts})")
    for name, top in (("initial_backoff_s", 3600), ("max_backoff_s", 3600), ("call_deadline_s", 3600),
                      ("outage_budget_s", 86400)):
        v = getattr(r, name)
        if v < 0 or v > top or v != v:
            raise InvalidArgument(f"spec.retry.{name}", f"is {v}; allowed 0..{top} (0 = default)")
    for role in TARGET_ROLES:
        target_field(f"spec.targets.{role}", getattr(spec.targets, role))
    for role, target in kind.targets(spec).items():
        target_field(kind.target_field(role), target)
    if len(spec.name) > 200:
        raise InvalidArgument("spec.name", "is longer than 200 characters")


def check_new_tokens(field_name: str, value: int, limits: RunLimits) -> None:
    """RESOURCE_EXHAUSTED when a call may generate more than the coordinator allows."""
    if value > limits.max_new_tokens:
        raise limit_exceeded(field_name, f"is {value}; at most {limits.max_new_tokens} new tokens per call", "max_new_tokens")


def parse_input(field: str, fn: Any, *args: Any) -> Any:
    """Runs a loader; a malformed record becomes INVALID_ARGUMENT naming the spec field, file, line and field."""
    from parrot.datasets import DatasetError

    try:
        return fn(*args)
    except DatasetError as e:
        raise InvalidArgument(field, str(e)) from e


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

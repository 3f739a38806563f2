"""What a run kind is: the interface every kind implements, and the unit and record it deals in.

A kind (collection, evaluation, negatives) lives entirely in one module of this package: how its
spec section is checked and settled (:meth:`RunKind.settings`), how its inputs become units
(:meth:`RunKind.plan`), which model roles it calls (:meth:`RunKind.roles`), what one conversation
does (:meth:`RunKind.run_unit`) and how the finished records become output files
(:meth:`RunKind.outputs`). The executor, the service and the outputs writer only call these.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from parrot.model_clients import ModelClients
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.spec import InputReader, Plan, RunLimits, RunSettings

EMPTY_ANSWER = "(empty answer)"
FINISHED, FAILED = "finished", "failed"


class UnitFailed(Exception):
    """The conversation cannot go on; recorded as failed with this reason."""


@dataclass(frozen=True)
class Unit(Mapping[str, Any]):
    """One conversation of a plan. Each kind subclasses it with its typed fields; an optional
    field (default None) left None is absent. Also read like the dict it is planned from
    (``unit["turns"]``, ``unit.get("arm")``, ``"instructions" in unit``), as the run browser and
    protocols do."""

    id: str

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> "Unit":
        """A unit from its dict form (``{"id": ..., ...}``); a key that is not a field is a TypeError."""
        return cls(**{**fields, "id": str(fields["id"])})

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if not self._absent(f)]

    def _absent(self, f: dataclasses.Field) -> bool:
        return f.default is None and getattr(self, f.name) is None

    def __getitem__(self, key: str) -> Any:
        f = self.__dataclass_fields__.get(key)
        if f is None or self._absent(f):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


@dataclass(frozen=True)
class Record:
    """A finished or failed unit, as stored in ``runs/<id>/units/<index>.json`` (:meth:`as_json`)."""

    index: int
    id: str
    status: str  # FINISHED | FAILED
    data: Mapping[str, Any]
    reason: str = ""
    elapsed_s: float = 0.0
    run_elapsed_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.status != FINISHED:
            out["reason"] = self.reason
        out.update(data=dict(self.data), elapsed_s=self.elapsed_s, run_elapsed_s=self.run_elapsed_s)
        return out


@dataclass
class UnitContext:
    """What one conversation is run with."""

    settings: RunSettings
    clients: ModelClients
    index: int
    on_turn: Callable[[int], None]  # called with tokens of each finished turn
    models: dict[str, str] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """This unit's base seed."""
        return self.settings.unit_seed(self.index)


class RunKind(abc.ABC):
    """One kind of run. Implementations are stateless; the registry (``kinds/__init__.py``) holds one of each."""

    #: The RunSpec ``kind`` oneof field this kind answers to.
    name: ClassVar[str]
    #: The section's input files (fields of its spec section), stored under ``runs/<id>/inputs/``.
    inputs: ClassVar[tuple[str, ...]]
    #: Whether a succeeded run's summary feeds the score board (``scores.py``).
    scored: ClassVar[bool] = False

    def section(self, spec: cpb.RunSpec) -> Any:
        """The kind's section of the spec (``spec.<name>``)."""
        return getattr(spec, self.name)

    @abc.abstractmethod
    def settings(self, spec: cpb.RunSpec, limits: RunLimits) -> Any:
        """Checks the kind's section (INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the field) and
        settles its defaults: the frozen settings ``run_unit`` and ``outputs`` read."""

    @abc.abstractmethod
    async def plan(self, settings: RunSettings, reader: InputReader, inputs: dict[str, tuple[str, bytes]],
                   limits: RunLimits) -> tuple[list[Unit], dict[str, Any]]:
        """Reads the inputs (recording each in ``inputs`` by field) into units, in input order, and notes."""

    @abc.abstractmethod
    def roles(self, section: Any) -> list[str]:
        """The model roles the run calls, given its settled section."""

    def targets(self, spec: cpb.RunSpec) -> dict[str, str]:
        """Targets the kind's section names besides ``spec.targets`` (role -> address)."""
        return {}

    def target_field(self, role: str) -> str:
        """The spec field that names ``role``'s target."""
        return f"spec.targets.{role}"

    @abc.abstractmethod
    async def run_unit(self, ctx: UnitContext, unit: Unit) -> dict[str, Any]:
        """Runs one conversation; returns its record's data (raise UnitFailed / CallFailed to fail it)."""

    @abc.abstractmethod
    def outputs(self, run_id: str, plan: Plan, done: list[dict[str, Any]]) -> dict[str, bytes]:
        """The output files of the finished records (stored JSON, in input order), by name;
        ``summary.json`` among them (the writer adds the run's counts to it)."""


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def add_counts(into: dict[str, int], counts: Mapping[str, Any]) -> None:
    """Adds ``counts`` (reason -> n) into ``into``."""
    for k, v in counts.items():
        into[k] = into.get(k, 0) + int(v)

"""The run kinds, one module each, and the registry: the only place that lists them.

Adding a kind: a module here with a :class:`~services.coordinator.kinds.base.RunKind` subclass
(and its section in ``coordinator.proto``'s RunSpec ``kind`` oneof), plus its line in ``KINDS``.
"""

from __future__ import annotations

from typing import Any

from parrot.errors import InvalidArgument
from parrot.model_clients import Retry
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.kinds.base import FAILED, FINISHED, Record, RunKind, Unit, UnitContext, UnitFailed
from services.coordinator.kinds.collection import Collection
from services.coordinator.kinds.evaluation import Evaluation
from services.coordinator.kinds.negatives import Negatives
from services.coordinator.spec import NO_LIMITS, InputReader, Plan, RunLimits, RunSettings, limit_exceeded

KINDS: dict[str, RunKind] = {k.name: k for k in (Collection(), Evaluation(), Negatives())}

__all__ = ["FAILED", "FINISHED", "KINDS", "Record", "RunKind", "Unit", "UnitContext", "UnitFailed", "kind_of",
           "plan_run", "resolve"]


def kind_of(spec: cpb.RunSpec) -> RunKind:
    """The spec's kind; INVALID_ARGUMENT when it sets none."""
    which = spec.WhichOneof("kind")
    if which not in KINDS:
        names = [f"'{k}'" for k in KINDS]
        raise InvalidArgument("spec.kind", f"set exactly one of {', '.join(names[:-1])} or {names[-1]}")
    return KINDS[which]


def resolve(spec: cpb.RunSpec, limits: RunLimits = NO_LIMITS, retry: Retry | None = None) -> RunSettings:
    """The spec checked and resolved into settings (see ``RunSettings.resolve``)."""
    return RunSettings.resolve(spec, kind_of(spec), limits, retry)


async def plan_run(settings: RunSettings, store: Any, limits: RunLimits = NO_LIMITS,
                   input_policy: Any = None) -> tuple[Plan, dict[str, tuple[str, bytes]]]:
    """Reads the run's inputs into its plan. Returns the plan and the input files read (by field).

    ``limits`` NO_LIMITS (a resumed run, already accepted once) checks no coordinator limits;
    ``input_policy`` (services.coordinator.policy.InputPolicy) confines input URLs.
    """
    kind = settings.kind
    inputs: dict[str, tuple[str, bytes]] = {}
    units, notes = await kind.plan(settings, InputReader(store, input_policy), inputs, limits)
    if len(units) > limits.max_conversations:
        raise limit_exceeded(f"spec.{kind.name}", f"has {len(units)} conversations; at most {limits.max_conversations} "
                             "per run (use spec.limit or split the input)", "max_conversations")
    return Plan(settings, units, notes), inputs

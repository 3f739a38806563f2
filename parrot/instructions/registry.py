"""The registry of verifiable instructions and the typed parameters they take.

An instruction is identified by an id such as ``"length_constraints:number_words"`` (the ids
IFEval-style data uses) and configured by keyword arguments (``{"num_words": 50, "relation":
"at least"}``). ``make_instruction(id, kwargs)`` validates both and returns an object whose
``check(response)`` says whether a response follows it.

Keyword arguments whose value is ``null`` are ignored (IFEval-style files often list every
possible key with ``null``); unknown keys, missing required keys and values of the wrong type
raise ``InstructionError`` naming the key and what is allowed.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

RELATIONS = ("less than", "at most", "exactly", "at least", "more than")


class InstructionError(ValueError):
    """An instruction id or its keyword arguments are invalid; ``field`` names the offending key."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Param:
    """One keyword argument of an instruction."""

    name: str
    kind: str  # "int" | "str" | "str_list" | "relation"
    required: bool = True
    minimum: int | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None

    def parse(self, value: Any) -> Any:
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InstructionError(self.name, f"expected an integer, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise InstructionError(self.name, f"is {value}; it must be >= {self.minimum}")
            return value
        if self.kind == "str_list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise InstructionError(self.name, "expected a non-empty list of non-empty strings")
            return tuple(value)
        if not isinstance(value, str) or not value.strip():
            raise InstructionError(self.name, f"expected a non-empty string, got {value!r}")
        if self.kind == "relation":
            value = value.strip().lower()
            if value not in RELATIONS:
                raise InstructionError(self.name, f"is {value!r}; allowed: {', '.join(RELATIONS)}")
        elif self.choices is not None and value not in self.choices:
            raise InstructionError(self.name, f"is {value!r}; allowed: {', '.join(self.choices)}")
        return value


def compare(count: int, relation: str, target: int) -> bool:
    """Whether ``count`` stands in ``relation`` (one of RELATIONS) to ``target``."""
    return {
        "less than": count < target,
        "at most": count <= target,
        "exactly": count == target,
        "at least": count >= target,
        "more than": count > target,
    }[relation]


class Instruction(abc.ABC):
    """A verifiable instruction. Subclasses set ``id``, ``params`` and implement ``check``."""

    id: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    # Instructions of the same non-empty group cannot hold together: a later one replaces an
    # earlier one when instructions accumulate across turns (e.g. all-lowercase vs all-capitals).
    group: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = dict(kwargs)
        for k, v in kwargs.items():
            setattr(self, k, v)

    @abc.abstractmethod
    def check(self, response: str) -> bool:
        """True when ``response`` follows the instruction."""

    def describe(self) -> str:
        """A short human-readable statement of the instruction with its arguments."""
        try:
            return self.description.format(**self.kwargs)
        except (KeyError, IndexError):
            return self.id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kwargs!r})"


REGISTRY: dict[str, type[Instruction]] = {}


def register(cls: type[Instruction]) -> type[Instruction]:
    if cls.id in REGISTRY:
        raise RuntimeError(f"instruction {cls.id!r} is registered twice")
    REGISTRY[cls.id] = cls
    return cls


def instruction_ids() -> list[str]:
    return sorted(REGISTRY)


def make_instruction(instruction_id: Any, kwargs: Mapping[str, Any] | None = None) -> Instruction:
    """A validated instruction object from an id and its keyword arguments."""
    if not isinstance(instruction_id, str) or instruction_id not in REGISTRY:
        raise InstructionError("instruction_id", f"{instruction_id!r} is not a known instruction; "
                                                 f"known: {', '.join(instruction_ids())}")
    cls = REGISTRY[instruction_id]
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise InstructionError("kwargs", f"expected an object, got {type(kwargs).__name__}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    known = {p.name: p for p in cls.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise InstructionError(unknown[0], f"is not an argument of {instruction_id} (allowed: {allowed})")
    values: dict[str, Any] = {}
    for p in cls.params:
        if p.name in given:
            values[p.name] = p.parse(given[p.name])
        elif p.required:
            raise InstructionError(p.name, f"is required by {instruction_id}")
        else:
            values[p.name] = p.default
    return cls(**values)

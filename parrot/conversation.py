"""Conversation domain types, validation, and conversion from/to the parrot.v1 protos.

Services validate every request here, so that bad input gets an INVALID_ARGUMENT naming
the field, what was wrong and what is allowed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from parrot.errors import InvalidArgument, LimitExceeded


class Role(str, enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


# Speaker names of ShareGPT-style files and chat messages, each to its role.
SPEAKER_ROLES: dict[str, Role] = {
    "human": Role.USER,
    "user": Role.USER,
    "gpt": Role.ASSISTANT,
    "chatgpt": Role.ASSISTANT,
    "bard": Role.ASSISTANT,
    "bing": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
}


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role.value, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    """Resolved generation settings (defaults applied, ranges checked)."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class InputLimits:
    """Per-service request limits (set from the service config). Exceeding one is
    RESOURCE_EXHAUSTED (:class:`~parrot.errors.LimitExceeded`) naming the setting to raise."""

    max_messages: int = 256
    max_input_chars: int = 200_000
    max_new_tokens: int = 2048
    max_stop_sequences: int = 8
    max_stop_chars: int = 64


MAX_SEED = 2**63 - 1


def validate_messages(
    messages: Sequence[Message],
    *,
    last_role: Role | None,
    limits: InputLimits,
    field_name: str = "conversation.messages",
) -> list[Message]:
    """Checks the shape of a conversation.

    Allowed: an optional first system message, then user and assistant messages strictly
    alternating, starting with user. ``last_role`` is the role the last message must have.
    """
    msgs = list(messages)
    if not msgs:
        raise InvalidArgument(field_name, "is empty; a conversation needs at least one user message")
    if len(msgs) > limits.max_messages:
        raise LimitExceeded(field_name, f"has {len(msgs)} messages; at most {limits.max_messages} are allowed",
                            "--max-messages / PARROT_MAX_MESSAGES")
    total = 0
    expected = Role.USER
    for i, m in enumerate(msgs):
        where = f"{field_name}[{i}]"
        if not m.content.strip():
            raise InvalidArgument(f"{where}.content", "is empty; every message needs text")
        total += len(m.content)
        if m.role is Role.SYSTEM:
            if i != 0:
                raise InvalidArgument(f"{where}.role", "system is only allowed as the first message")
            continue
        if m.role is not expected:
            raise InvalidArgument(
                f"{where}.role",
                f"is {m.role.value} but {expected.value} was expected: after an optional system message, "
                "user and assistant messages must alternate, starting with user",
            )
        expected = Role.ASSISTANT if expected is Role.USER else Role.USER
    if total > limits.max_input_chars:
        raise LimitExceeded(field_name, f"has {total} characters in all; at most {limits.max_input_chars} are allowed",
                            "--max-input-chars / PARROT_MAX_INPUT_CHARS")
    if not any(m.role is Role.USER for m in msgs):
        raise InvalidArgument(field_name, "has no user message")
    if last_role is not None and msgs[-1].role is not last_role:
        raise InvalidArgument(
            f"{field_name}[{len(msgs) - 1}].role",
            f"the last message is {msgs[-1].role.value}; this call needs it to be {last_role.value}",
        )
    return msgs


def resolve_params(
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: Iterable[str],
    seed: int | None,
    default_max_tokens: int,
    limits: InputLimits,
    field_name: str = "params",
) -> GenerationParams:
    """Applies defaults and checks ranges of generation parameters. Errors name ``<field_name>.<param>``,
    or the bare parameter when ``field_name`` is empty (a top-level field, as in an OpenAI request body)."""
    at = (lambda name: f"{field_name}.{name}") if field_name else (lambda name: name)  # noqa: E731
    mt = default_max_tokens if not max_tokens else int(max_tokens)
    if mt > limits.max_new_tokens:
        raise LimitExceeded(at("max_tokens"), f"is {mt}; at most {limits.max_new_tokens} new tokens are allowed",
                            "--max-new-tokens / PARROT_MAX_NEW_TOKENS")
    if mt < 1:
        raise InvalidArgument(at("max_tokens"), f"is {mt}; allowed range is 1..{limits.max_new_tokens} (0 = default)")
    t = 0.0 if temperature is None else float(temperature)
    if not math.isfinite(t) or t < 0.0 or t > 2.0:
        raise InvalidArgument(at("temperature"), f"is {t}; allowed range is 0..2 (0 = greedy)")
    p = 1.0 if top_p is None else float(top_p)
    if not math.isfinite(p) or p <= 0.0 or p > 1.0:
        raise InvalidArgument(at("top_p"), f"is {p}; allowed range is (0, 1]")
    stops = tuple(stop)
    if len(stops) > limits.max_stop_sequences:
        raise InvalidArgument(at("stop"), f"has {len(stops)} entries; at most {limits.max_stop_sequences} are allowed")
    for i, s in enumerate(stops):
        if not s or len(s) > limits.max_stop_chars:
            raise InvalidArgument(at(f"stop[{i}]"), f"must be 1..{limits.max_stop_chars} characters long")
    if seed is not None and (seed < 0 or seed > MAX_SEED):
        raise InvalidArgument(at("seed"), f"is {seed}; allowed range is 0..{MAX_SEED}")
    return GenerationParams(max_tokens=mt, temperature=t, top_p=p, stop=stops, seed=seed)


@dataclass
class Conversation:
    messages: list[Message]
    id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def user_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role is Role.USER]

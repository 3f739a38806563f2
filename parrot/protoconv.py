"""Conversion between parrot.v1 protos and the domain types in parrot.conversation."""

from __future__ import annotations

from parrot.conversation import (
    Conversation,
    GenerationParams,
    InputLimits,
    Message,
    Role,
    resolve_params,
    validate_messages,
)
from parrot.errors import InvalidArgument
from parrot.v1 import conversation_pb2 as pb

_ROLE_FROM_PB = {pb.ROLE_SYSTEM: Role.SYSTEM, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_ROLE_TO_PB = {v: k for k, v in _ROLE_FROM_PB.items()}
_FINISH_TO_PB = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
MAX_METADATA_ENTRIES = 64
MAX_ID_CHARS = 256


def conversation_from_pb(
    conv: pb.Conversation,
    *,
    last_role: Role | None,
    limits: InputLimits,
    field_name: str = "conversation",
) -> Conversation:
    messages = []
    for i, m in enumerate(conv.messages):
        role = _ROLE_FROM_PB.get(m.role)
        if role is None:
            raise InvalidArgument(
                f"{field_name}.messages[{i}].role",
                f"unknown role value {m.role}; allowed: ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT",
            )
        messages.append(Message(role, m.content))
    if len(conv.id) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field_name}.id", f"is {len(conv.id)} characters; at most {MAX_ID_CHARS} are allowed")
    if len(conv.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"{field_name}.metadata", f"has {len(conv.metadata)} entries; at most {MAX_METADATA_ENTRIES} are allowed")
    msgs = validate_messages(messages, last_role=last_role, limits=limits, field_name=f"{field_name}.messages")
    return Conversation(messages=msgs, id=conv.id, metadata=dict(conv.metadata))


def conversation_to_pb(conv: Conversation) -> pb.Conversation:
    return pb.Conversation(
        id=conv.id,
        messages=[pb.Message(role=_ROLE_TO_PB[m.role], content=m.content) for m in conv.messages],
        metadata=conv.metadata,
    )


def messages_to_pb(messages: list[Message], id: str = "") -> pb.Conversation:
    return conversation_to_pb(Conversation(messages=messages, id=id))


def params_from_pb(
    p: pb.GenerationParams, *, default_max_tokens: int, limits: InputLimits, field_name: str = "params"
) -> GenerationParams:
    return resolve_params(
        max_tokens=p.max_tokens,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        stop=list(p.stop),
        seed=p.seed if p.HasField("seed") else None,
        default_max_tokens=default_max_tokens,
        limits=limits,
        field_name=field_name,
    )


def finish_reason_to_pb(reason: str) -> int:
    return _FINISH_TO_PB.get(reason, pb.FINISH_REASON_UNSPECIFIED)


def usage_to_pb(prompt_tokens: int, completion_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

"""The scorecard's inputs: held-out contexts from a file, a spread sample of them, and an asker's follow-ups.

``load_contexts`` reads either a ShareGPT file (JSON array or JSONL; its conversations become asker
examples exactly as ``parrot data asker`` makes them, and ``holdout`` keeps the same by-session
held-out split, so a checkpoint trained on ``parrot data asker --holdout F`` never saw them) or an
asker-examples file (``parrot data asker`` output, e.g. its ``.heldout.jsonl``). Each example is
one context: the conversation up to an answer, and the person's real next user turn, or, for an
end-of-conversation example (the marker as target), None: the person ended the session there.

``sample_contexts`` picks up to ``limit`` contexts spread over as many sessions as possible: the
sessions in a seeded hash order, one context from each per round. ``ask_followups`` asks a running
``parrot.v1.Asker`` for each context's next user turn, allowing it to end the conversation; an RPC error (for example UNAVAILABLE when
every sample failed the asker's checks) is a context with no follow-up.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Sequence

import grpc

from parrot.asking.prompting import END_OF_CONVERSATION
from parrot.asking.scorecard import Context, FollowUp
from parrot.asking.training_data import (
    AskerDataConfig,
    build_asker_dataset,
    example_to_conversation,
    session_key,
    split_holdout,
    validate_example,
)
from parrot.client import channel
from parrot.datasets import DatasetError, load_sharegpt
from parrot.datasets.jsonio import iter_records, read_file
from parrot.protoconv import messages_to_pb
from parrot.v1 import asker_pb2, asker_pb2_grpc, conversation_pb2


def load_contexts(path: str, holdout: float = 0.0, config: AskerDataConfig | None = None) -> list[Context]:
    """The contexts of a ShareGPT or asker-examples file (``holdout`` > 0: only its held-out sessions)."""
    name, text = read_file(path)
    return contexts_from_text(name, text, holdout, config)


def contexts_from_text(name: str, text: str, holdout: float = 0.0, config: AskerDataConfig | None = None) -> list[Context]:
    """See ``load_contexts``; ShareGPT sessions also give an ended context where each session ended
    (``AskerDataConfig(end_examples=True)`` unless ``config`` says otherwise)."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout is {holdout}; allowed 0 <= x < 1")
    records = list(iter_records(name, text))
    if not records:
        raise DatasetError(name, None, None, "holds no records")
    first = records[0][1]
    if isinstance(first, dict) and "conversations" in first:
        rows, _ = build_asker_dataset([(name, load_sharegpt(name, text))], config or AskerDataConfig(end_examples=True))
    else:
        rows = []
        for line, row in records:
            validate_example(name, line, row)
            rows.append(row)
    if holdout:
        rows = split_holdout(rows, holdout)[1]
    if not any(not ends(row) for row in rows):
        where = f" in its held-out split (holdout {holdout})" if holdout else ""
        raise DatasetError(name, None, None, f"holds no follow-ups{where}: the scorecard needs conversations with a "
                           "user turn after an answer (ShareGPT), or asker examples")
    return [context_of(row) for row in rows]


def ends(row: dict[str, Any]) -> bool:
    """Whether an asker-example row is where the person ended the session (its target is the marker)."""
    return row["messages"][-1]["content"].strip() == END_OF_CONVERSATION


def context_of(row: dict[str, Any]) -> Context:
    """The context of one asker-example row (its conversation before the target, and the target or None)."""
    conversation = example_to_conversation(row)
    conversation_id = str(row["id"]).rsplit(":", 1)[0]
    human = None if ends(row) else conversation[-1].content
    return Context(str(row["id"]), session_key(conversation_id), tuple(conversation[:-1]), human, row)


def sample_contexts(contexts: Sequence[Context], limit: int, seed: int = 0) -> list[Context]:
    """Up to ``limit`` contexts (0: all), one per session per round (module docstring); order kept stable."""
    if limit <= 0 or limit >= len(contexts):
        return list(contexts)
    by_session: dict[str, list[Context]] = {}
    for c in contexts:
        by_session.setdefault(c.session, []).append(c)
    order = sorted(by_session, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).digest())
    picked: list[Context] = []
    depth = 0
    while len(picked) < limit:
        for s in order:
            if depth < len(by_session[s]):
                picked.append(by_session[s][depth])
                if len(picked) == limit:
                    break
        depth += 1
    return picked


async def ask_followups(target: str, contexts: Sequence[Context], *, max_tokens: int, temperature: float, seed: int,
                        concurrency: int = 8, max_history_turns: int = 0, timeout_s: float = 600,
                        metadata: Sequence[tuple[str, str]] = ()) -> list[FollowUp]:
    """Each context's follow-up from the asker at ``target`` (seed + i for context i; see module docstring)."""
    gate = asyncio.Semaphore(max(1, concurrency))
    async with channel(target) as ch:
        stub = asker_pb2_grpc.AskerStub(ch)

        async def one(i: int, ctx: Context) -> FollowUp:
            messages = list(ctx.messages)
            if max_history_turns > 0:
                messages = messages[-2 * max_history_turns:]
            params = conversation_pb2.GenerationParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i)
            request = asker_pb2.AskRequest(conversation=messages_to_pb(messages, ctx.id), params=params, allow_end=True)
            async with gate:
                try:
                    r = await stub.Ask(request, timeout=timeout_s, metadata=tuple(metadata) or None)
                except grpc.aio.AioRpcError as e:
                    return FollowUp(None, error=f"{e.code().name}: {e.details()}")
            return followup_of(r)

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(contexts))))


def followup_of(response: Any) -> FollowUp:
    """The scorecard's view of an ``AskResponse``: the end of the conversation, its first candidate, or none."""
    if response.end_of_conversation:
        return FollowUp(None, ended=True)
    if not response.candidates or not response.candidates[0].text.strip():
        return FollowUp(None, error="no candidate")
    return FollowUp(response.candidates[0].text)

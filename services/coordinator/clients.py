"""Calls to the model services from a run: deadlines, retries with jittered backoff, round-robin.

A target may list replicas ("ipv4:127.0.0.1:5001,127.0.0.1:5002") or be a DNS name
("dns:///responder:50051"); the channel resolves every address and spreads calls round-robin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from parrot.conversation import Message
from parrot.errors import InvalidArgument, ParrotError
from parrot.metrics import STAGE_LATENCY, child
from parrot.protoconv import messages_to_pb
from parrot.v1 import asker_pb2, asker_pb2_grpc, judge_pb2, judge_pb2_grpc, responder_pb2, responder_pb2_grpc
from parrot.v1 import conversation_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _over_limit(e: grpc.aio.AioRpcError) -> bool:
    """RESOURCE_EXHAUSTED because the request is over a configured limit (not a full queue): final."""
    return e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and any(
        k == "parrot-limit" for k, _ in (e.trailing_metadata() or ()))


class CallFailed(ParrotError):
    """A model call failed for good (after retries, or a non-retryable status)."""

    def __init__(self, stage: str, code: grpc.StatusCode, details: str, attempts: int):
        self.stage, self.status, self.attempts = stage, code, attempts
        super().__init__(f"{stage}: {code.name} after {attempts} attempt(s): {details[:300]}")


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 4
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    call_deadline_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^attempt)]."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * (2 ** attempt)))


def open_channel(target: str) -> grpc.aio.Channel:
    """A channel to a model service; TLS when PARROT_TLS_CA / PARROT_TLS are set (parrot.client)."""
    from parrot.client import channel_options, tls_credentials

    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 0),  # our own retry loop, with backoff and metrics
        *channel_options(),
    ]
    creds = tls_credentials()
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


async def check_reachable(target: str, service: str, timeout_s: float = 5.0) -> str | None:
    """None when ``service`` answers its health check SERVING within the timeout, else why not."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with open_channel(target) as ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            return f"{service} at {target} is unreachable: {e.code().name}"
        if r.status != health_pb2.HealthCheckResponse.SERVING:
            return f"{service} at {target} is not serving (status {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)})"
    return None


class ModelClients:
    """The asker, responder(s) and judge one run talks to."""

    def __init__(self, targets: dict[str, str], retry: Retry, token: str | None,
                 on_retry: Callable[[str, str], None] | None = None) -> None:
        self.targets = {k: v for k, v in targets.items() if v}
        self.retry = retry
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channels = {k: open_channel(v) for k, v in self.targets.items()}
        self._stubs: dict[tuple[str, type], object] = {}
        self._on_retry = on_retry

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

    def _channel(self, role: str) -> grpc.aio.Channel:
        if role not in self._channels:
            raise InvalidArgument(f"spec.targets.{role}", "is required for this run")
        return self._channels[role]

    def _stub(self, role: str, stub_class: type) -> Any:
        """One stub per role and service, made on first use (a stub per call costs more than the call's own Python)."""
        stub = self._stubs.get((role, stub_class))
        if stub is None:
            stub = self._stubs[(role, stub_class)] = stub_class(self._channel(role))
        return stub

    async def _call(self, stage: str, fn: Callable[[float], Awaitable[T]]) -> T:
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.retry.max_attempts):
            t0 = time.monotonic()
            try:
                result = await fn(self.retry.call_deadline_s)
                child(STAGE_LATENCY, "coordinator", stage).observe(time.monotonic() - t0)
                return result
            except grpc.aio.AioRpcError as e:
                last = e
                if e.code() not in RETRYABLE or attempt + 1 >= self.retry.max_attempts or _over_limit(e):
                    break
                if self._on_retry:
                    self._on_retry(stage, e.code().name)
                delay = self.retry.backoff(attempt)
                log.warning("model call failed, retrying", extra={"stage": stage, "code": e.code().name,
                                                                  "attempt": attempt + 1, "sleep_s": round(delay, 2)})
                await asyncio.sleep(delay)
        assert last is not None
        raise CallFailed(stage, last.code(), last.details() or "", attempt + 1)

    async def respond(self, messages: list[Message], params: conversation_pb2.GenerationParams,
                      role: str = "responder") -> responder_pb2.RespondResponse:
        stub = self._stub(role, responder_pb2_grpc.ResponderStub)
        req = responder_pb2.RespondRequest(conversation=messages_to_pb(messages), params=params)
        return await self._call("respond", lambda t: stub.Respond(req, metadata=self._metadata, timeout=t))

    async def ask(self, messages: list[Message], params: conversation_pb2.GenerationParams,
                  persona: str = "", topic: str = "") -> asker_pb2.AskResponse:
        stub = self._stub("asker", asker_pb2_grpc.AskerStub)
        req = asker_pb2.AskRequest(conversation=messages_to_pb(messages), params=params, persona=persona, topic=topic,
                                   num_candidates=1)
        return await self._call("ask", lambda t: stub.Ask(req, metadata=self._metadata, timeout=t))

    async def grade(self, messages: list[Message], turn: int, reference: str, prompt_name: str,
                    params: conversation_pb2.GenerationParams, role: str = "judge") -> judge_pb2.GradeSingleResponse:
        stub = self._stub(role, judge_pb2_grpc.JudgeStub)
        req = judge_pb2.GradeSingleRequest(conversation=messages_to_pb(messages), turn=turn, reference_answer=reference,
                                           prompt_name=prompt_name, params=params)
        return await self._call("judge", lambda t: stub.GradeSingle(req, metadata=self._metadata, timeout=t))

    async def compare(self, a: list[Message], b: list[Message], turn: int, reference: str, prompt_name: str,
                      params: conversation_pb2.GenerationParams) -> judge_pb2.ComparePairResponse:
        stub = self._stub("judge", judge_pb2_grpc.JudgeStub)
        req = judge_pb2.ComparePairRequest(conversation_a=messages_to_pb(a), conversation_b=messages_to_pb(b), turn=turn,
                                           reference_answer=reference, prompt_name=prompt_name, params=params)
        return await self._call("judge", lambda t: stub.ComparePair(req, metadata=self._metadata, timeout=t))

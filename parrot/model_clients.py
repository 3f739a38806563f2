"""Calls to the model services from a run: deadlines, retries with jittered backoff, session routing.

A target may list replicas ("ipv4:127.0.0.1:5001,127.0.0.1:5002") or be a DNS name
("dns:///responder:50051"). With ``routing="affinity"`` (the default) every turn of a session goes
to the same listed replica: the session key is a hash of its opening messages (the same at every
turn), so the replica's engine finds the earlier turns in its prompt cache instead of computing
the whole history again. A replica that answers UNAVAILABLE is skipped for a while and its
sessions move to the next one. ``routing="round_robin"`` (and any DNS name) lets gRPC spread the
calls round-robin over the resolved addresses.

Outages: when every endpoint of a role answers UNAVAILABLE (the service restarting, its node
lost), the role is *down*. Its calls are then retried about twice a second, without counting
attempts, until the service answers or the outage has lasted the run's outage budget; the
executor is told (``on_down`` / ``on_up``) so that it starts no new conversation meanwhile.
Other retryable failures (deadlines, full queues) use the attempt count and jittered backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from parrot.client import channel_options, plaintext_tls_hint, target_addresses, tls_credentials
from parrot.conversation import Message, Role
from parrot.errors import InvalidArgument, ParrotError
from parrot.metrics import STAGE_LATENCY, child
from parrot.protoconv import messages_to_pb
from parrot.retry import Backoff
from parrot.v1 import asker_pb2, asker_pb2_grpc, judge_pb2, judge_pb2_grpc, responder_pb2, responder_pb2_grpc
from parrot.v1 import conversation_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
ROUTINGS = ("affinity", "round_robin")
# How long a replica that answered UNAVAILABLE is passed over by session routing.
REPLICA_DOWN_S = 10.0
# During an outage, calls are retried this often (jittered): a service that returns is used at once.
OUTAGE_POLL_S = 0.5


def replica_addresses(target: str) -> list[str]:
    """The replicas an ``ipv4:`` / ``ipv6:`` target lists (two or more); [] for other targets."""
    addresses = target_addresses(target) if target.partition(":")[0] in ("ipv4", "ipv6") else []
    return addresses if len(addresses) > 1 else []


def session_key(messages: list[Message]) -> int:
    """A stable hash of a session's opening (any system message and the first user turn): the same at every turn."""
    h = hashlib.blake2b(digest_size=8)
    for m in messages:
        h.update(m.role.value.encode())
        h.update(b"\0")
        h.update(m.content.encode("utf-8", "replace"))
        h.update(b"\0")
        if m.role is Role.USER:
            break
    return int.from_bytes(h.digest(), "big")


class _Route:
    """One role's channels: one per listed replica (affinity), or one round-robin channel."""

    def __init__(self, target: str, routing: str, creds: grpc.ChannelCredentials | None = None) -> None:
        addresses = replica_addresses(target) if routing == "affinity" else []
        self.channels = [open_channel(a, creds) for a in addresses] if addresses else [open_channel(target, creds)]
        self._down_until = [0.0] * len(self.channels)
        self.outage_since: float | None = None  # monotonic time every replica was first found down

    def pick(self, key: int, attempt: int) -> int:
        """The replica for a session on this attempt: its own, else the next one not marked down."""
        n = len(self.channels)
        if n == 1:
            return 0
        now = time.monotonic()
        order = [(key + attempt + i) % n for i in range(n)]
        return next((i for i in order if self._down_until[i] <= now), order[0])

    def mark_down(self, index: int) -> bool:
        """Marks a replica down; True when that leaves the role with no replica up (an outage)."""
        now = time.monotonic()
        self._down_until[index] = now + REPLICA_DOWN_S
        return all(t > now for t in self._down_until)


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
    """How model calls are retried; the one place a RetryPolicy's "0 = default" is settled."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    call_deadline_s: float = 300.0
    outage_budget_s: float = 600.0

    @classmethod
    def from_policy(cls, policy: Any, defaults: "Retry | None" = None) -> "Retry":
        """From a parrot.v1.RetryPolicy; unset (0) fields take ``defaults`` (the coordinator's), else the above."""
        d = defaults or cls()
        return cls(max_attempts=policy.max_attempts or d.max_attempts,
                   initial_backoff_s=policy.initial_backoff_s or d.initial_backoff_s,
                   max_backoff_s=policy.max_backoff_s or d.max_backoff_s,
                   call_deadline_s=policy.call_deadline_s or d.call_deadline_s,
                   outage_budget_s=policy.outage_budget_s or d.outage_budget_s)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^attempt)]."""
        return Backoff(self.initial_backoff_s, self.max_backoff_s, jitter=1.0).delay(attempt)


def open_channel(target: str, creds: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to a model service: TLS with ``creds`` (the coordinator's --target-tls), else when
    PARROT_TLS_CA / PARROT_TLS are set (parrot.client), else plain text."""

    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 0),  # our own retry loop, with backoff and metrics
        *channel_options(),  # includes a prompt reconnect after an outage
    ]
    creds = creds or tls_credentials()
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


async def check_reachable(target: str, service: str, timeout_s: float = 5.0,
                          creds: grpc.ChannelCredentials | None = None) -> str | None:
    """None when ``service`` answers its health check SERVING within the timeout, else why not."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with open_channel(target, creds) as ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            return f"{service} at {target} is unreachable: {e.code().name}{plaintext_tls_hint(e)}"
        if r.status != health_pb2.HealthCheckResponse.SERVING:
            return f"{service} at {target} is not serving (status {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)})"
    return None


class ModelClients:
    """The asker, responder(s) and judge one run talks to."""

    def __init__(self, targets: dict[str, str], retry: Retry, token: str | None | dict[str, str | None],
                 on_retry: Callable[[str, str], None] | None = None, routing: str = "affinity",
                 on_down: Callable[[str, str], None] | None = None, on_up: Callable[[str], None] | None = None,
                 tls: dict[str, grpc.ChannelCredentials | None] | None = None) -> None:
        """``on_down(role, cause)`` when every endpoint of a role is found unavailable, ``on_up(role)``
        when it answers again (both called once per outage)."""
        if routing not in ROUTINGS:
            raise InvalidArgument("routing", f"is {routing!r}; allowed: {', '.join(ROUTINGS)}")
        self.targets = {k: v for k, v in targets.items() if v}
        self.retry = retry
        self.routing = routing
        # One token for every role, or one per role (the coordinator's target policy decides which target gets what).
        tokens = token if isinstance(token, dict) else {role: token for role in self.targets}
        self._metadata = {role: [("authorization", f"Bearer {t}")] if t else [] for role, t in tokens.items()}
        self._routes = {k: _Route(v, routing, (tls or {}).get(k)) for k, v in self.targets.items()}
        self._stubs: dict[tuple[str, type, int], object] = {}
        self._on_retry = on_retry
        self.on_down, self.on_up = on_down, on_up

    def outage_s(self, role: str) -> float:
        """How long the role has been down (0 when it is up)."""
        since = self._routes[role].outage_since if role in self._routes else None
        return 0.0 if since is None else time.monotonic() - since

    async def close(self) -> None:
        for route in self._routes.values():
            for ch in route.channels:
                await ch.close()

    def _route(self, role: str) -> _Route:
        if role not in self._routes:
            raise InvalidArgument(f"spec.targets.{role}", "is required for this run")
        return self._routes[role]

    def _stub(self, role: str, stub_class: type, replica: int = 0) -> Any:
        """One stub per role, service and replica, made on first use (a stub per call costs more than the call's own Python)."""
        stub = self._stubs.get((role, stub_class, replica))
        if stub is None:
            stub = self._stubs[(role, stub_class, replica)] = stub_class(self._route(role).channels[replica])
        return stub

    async def _call(self, stage: str, role: str, stub_class: type, key: int,
                    fn: Callable[[Any, float], Awaitable[T]]) -> T:
        route = self._route(role)
        attempt = 0  # counts failures other than an outage
        tries = 0
        while True:
            t0 = time.monotonic()
            replica = route.pick(key, attempt + tries)
            tries += 1
            try:
                result = await fn(self._stub(role, stub_class, replica), self.retry.call_deadline_s)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE and route.mark_down(replica):
                    delay = self._outage(role, route, e)
                    if delay is None:
                        raise CallFailed(stage, code, f"{role} unavailable for {self.outage_s(role):.0f}s, longer than "
                                         f"the run's outage budget (spec.retry.outage_budget_s = "
                                         f"{self.retry.outage_budget_s:g}): {e.details() or ''}", tries) from None
                    if self._on_retry:
                        self._on_retry(stage, code.name)
                    await asyncio.sleep(delay)
                    continue
                attempt += 1
                if code not in RETRYABLE or attempt >= self.retry.max_attempts or _over_limit(e):
                    raise CallFailed(stage, code, e.details() or "", attempt) from None
                if self._on_retry:
                    self._on_retry(stage, code.name)
                delay = self.retry.backoff(attempt - 1)
                log.warning("model call failed, retrying", extra={"stage": stage, "code": code.name,
                                                                  "attempt": attempt, "sleep_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            child(STAGE_LATENCY, "coordinator", stage).observe(time.monotonic() - t0)
            if route.outage_since is not None:
                down_s = time.monotonic() - route.outage_since
                route.outage_since = None
                log.info("model service is back", extra={"role": role, "down_s": round(down_s, 1)})
                if self.on_up:
                    self.on_up(role)
            return result

    def _outage(self, role: str, route: _Route, e: grpc.aio.AioRpcError) -> float | None:
        """Every endpoint of the role is down: starts (or continues) its outage. Returns how long to
        wait before the next try, or None once the outage has outlasted the budget."""
        if route.outage_since is None:
            route.outage_since = time.monotonic()
            log.warning("model service unavailable; holding its calls", extra={
                "role": role, "target": self.targets.get(role), "outage_budget_s": self.retry.outage_budget_s})
            if self.on_down:
                self.on_down(role, f"{e.code().name}: {(e.details() or '')[:200]}")
        left = self.retry.outage_budget_s - (time.monotonic() - route.outage_since)
        if left <= 0:
            return None
        return min(left, random.uniform(OUTAGE_POLL_S / 2, OUTAGE_POLL_S))

    async def respond(self, messages: list[Message], params: conversation_pb2.GenerationParams,
                      role: str = "responder") -> responder_pb2.RespondResponse:
        req = responder_pb2.RespondRequest(conversation=messages_to_pb(messages), params=params)
        return await self._call("respond", role, responder_pb2_grpc.ResponderStub, session_key(messages),
                                lambda stub, t: stub.Respond(req, metadata=self._metadata.get(role, []), timeout=t))

    async def ask(self, messages: list[Message], params: conversation_pb2.GenerationParams,
                  persona: str = "", topic: str = "", allow_end: bool = False) -> asker_pb2.AskResponse:
        req = asker_pb2.AskRequest(conversation=messages_to_pb(messages), params=params, persona=persona, topic=topic,
                                   num_candidates=1, allow_end=allow_end)
        return await self._call("ask", "asker", asker_pb2_grpc.AskerStub, session_key(messages),
                                lambda stub, t: stub.Ask(req, metadata=self._metadata.get("asker", []), timeout=t))

    async def grade(self, messages: list[Message], turn: int, reference: str, prompt_name: str,
                    params: conversation_pb2.GenerationParams, role: str = "judge") -> judge_pb2.GradeSingleResponse:
        req = judge_pb2.GradeSingleRequest(conversation=messages_to_pb(messages), turn=turn, reference_answer=reference,
                                           prompt_name=prompt_name, params=params)
        return await self._call("judge", role, judge_pb2_grpc.JudgeStub, session_key(messages),
                                lambda stub, t: stub.GradeSingle(req, metadata=self._metadata.get(role, []), timeout=t))

    async def compare(self, a: list[Message], b: list[Message], turn: int, reference: str, prompt_name: str,
                      params: conversation_pb2.GenerationParams) -> judge_pb2.ComparePairResponse:
        req = judge_pb2.ComparePairRequest(conversation_a=messages_to_pb(a), conversation_b=messages_to_pb(b), turn=turn,
                                           reference_answer=reference, prompt_name=prompt_name, params=params)
        return await self._call("judge", "judge", judge_pb2_grpc.JudgeStub, session_key(a),
                                lambda stub, t: stub.ComparePair(req, metadata=self._metadata.get("judge", []), timeout=t))

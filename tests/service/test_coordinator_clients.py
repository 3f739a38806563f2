"""The coordinator's model clients against an in-process gRPC server that fails on purpose."""

from __future__ import annotations

import grpc
import pytest

from parrot.conversation import Message, Role
from parrot.server.grpc_server import GrpcServer, GrpcService
from parrot.v1 import conversation_pb2, responder_pb2, responder_pb2_grpc
from parrot.model_clients import CallFailed, ModelClients, Retry


class Flaky(responder_pb2_grpc.ResponderServicer):
    def __init__(self, failures: list[grpc.StatusCode]):
        self.failures = list(failures)
        self.calls = 0

    async def Respond(self, request, context):
        self.calls += 1
        if self.failures:
            await context.abort(self.failures.pop(0), "injected")
        return responder_pb2.RespondResponse(text="ok", model="flaky")


async def serve(servicer) -> GrpcServer:
    server = GrpcServer([GrpcService("parrot.v1.Responder", servicer, responder_pb2_grpc.add_ResponderServicer_to_server)],
                        host="127.0.0.1", port=0, auth_token=None, max_message_bytes=1 << 20)
    await server.start()
    return server


MSGS = [Message(Role.USER, "hi")]
FAST = Retry(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05, call_deadline_s=5)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_retryable_codes_are_retried_with_backoff(code):
    flaky = Flaky([code, code])
    server = await serve(flaky)
    retried: list[tuple[str, str]] = []
    clients = ModelClients({"responder": f"127.0.0.1:{server.port}"}, FAST, None, on_retry=lambda s, c: retried.append((s, c)))
    try:
        r = await clients.respond(MSGS, conversation_pb2.GenerationParams())
        assert r.text == "ok" and flaky.calls == 3 and retried == [("respond", code.name)] * 2
    finally:
        await clients.close()
        await server.stop(0)


async def test_non_retryable_fails_at_once_and_retries_are_bounded():
    flaky = Flaky([grpc.StatusCode.INVALID_ARGUMENT])
    server = await serve(flaky)
    clients = ModelClients({"responder": f"127.0.0.1:{server.port}"}, FAST, None)
    try:
        with pytest.raises(CallFailed) as e:
            await clients.respond(MSGS, conversation_pb2.GenerationParams())
        assert flaky.calls == 1 and e.value.status == grpc.StatusCode.INVALID_ARGUMENT and e.value.attempts == 1
        flaky.failures = [grpc.StatusCode.DEADLINE_EXCEEDED] * 10
        with pytest.raises(CallFailed) as e:
            await clients.respond(MSGS, conversation_pb2.GenerationParams())
        assert flaky.calls == 1 + 4 and e.value.attempts == 4 and "DEADLINE_EXCEEDED" in str(e.value)
    finally:
        await clients.close()
        await server.stop(0)


async def test_an_outage_is_waited_out_within_its_budget_not_an_attempt_count():
    """UNAVAILABLE from every endpoint is an outage: retried about twice a second, however many
    times, the executor told when it starts and ends; past the budget the call fails, naming it."""
    import time

    flaky = Flaky([grpc.StatusCode.UNAVAILABLE] * 6)  # more than max_attempts (4)
    server = await serve(flaky)
    events: list[str] = []
    clients = ModelClients({"responder": f"127.0.0.1:{server.port}"}, FAST, None,
                           on_down=lambda role, cause: events.append(f"down {role} {cause[:11]}"),
                           on_up=lambda role: events.append(f"up {role}"))
    try:
        t0 = time.monotonic()
        r = await clients.respond(MSGS, conversation_pb2.GenerationParams())
        took = time.monotonic() - t0
        assert r.text == "ok" and flaky.calls == 7 and events == ["down responder UNAVAILABLE", "up responder"]
        assert 6 * 0.25 <= took < 6 * 0.5 + 2, took  # polled about twice a second, not at FAST's 50 ms backoff
        assert clients.outage_s("responder") == 0
    finally:
        await clients.close()
    short = Retry(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05, call_deadline_s=5, outage_budget_s=1.5)
    flaky.failures = [grpc.StatusCode.UNAVAILABLE] * 100
    clients = ModelClients({"responder": f"127.0.0.1:{server.port}"}, short, None)
    try:
        t0 = time.monotonic()
        with pytest.raises(CallFailed) as e:
            await clients.respond(MSGS, conversation_pb2.GenerationParams())
        assert 1.5 <= time.monotonic() - t0 < 3.5
        assert e.value.status == grpc.StatusCode.UNAVAILABLE and "outage budget" in str(e.value), str(e.value)
    finally:
        await clients.close()
        await server.stop(0)


def test_retry_policy_defaults_are_settled_once():
    from parrot.v1 import coordinator_pb2 as cpb

    assert Retry.from_policy(cpb.RetryPolicy()) == Retry()
    assert Retry().outage_budget_s == 600 and Retry().max_attempts == 4
    r = Retry.from_policy(cpb.RetryPolicy(max_attempts=7, outage_budget_s=30))
    assert (r.max_attempts, r.outage_budget_s, r.call_deadline_s) == (7, 30, 300)


@pytest.mark.parametrize("target,ok", [
    ("127.0.0.1:50051", True), ("responder:50051", True), ("[::1]:50051", True), ("dns:///svc.ns:50051", True),
    ("ipv4:127.0.0.1:1,127.0.0.1:2", True), ("unix:/tmp/s.sock", True), ("localhost", True),
    ("not a host::", False), ("host:99999", False), ("ipv4:127.0.0.1:1,bad host", False), ("dns:", False), ("a b", False),
])
def test_target_addresses_are_validated(target, ok):
    from parrot.client import target_problem

    assert (target_problem(target) is None) == ok, target_problem(target)


def test_backoff_has_full_jitter_and_a_cap():
    r = Retry(initial_backoff_s=0.5, max_backoff_s=4.0)
    samples = [r.backoff(a) for a in range(8) for _ in range(50)]
    assert all(0 <= s <= 4.0 for s in samples)
    assert len({round(s, 6) for s in samples}) > 300  # jittered, not fixed steps


class Recorder(responder_pb2_grpc.ResponderServicer):
    """Remembers the first user message of every conversation it answered."""

    def __init__(self):
        self.sessions: list[str] = []

    async def Respond(self, request, context):
        self.sessions.append(request.conversation.messages[0].content)
        return responder_pb2.RespondResponse(text="ok", model="rec")


def session(i: int, turns: int) -> list[Message]:
    msgs = []
    for t in range(turns):
        msgs += [Message(Role.USER, f"session {i} turn {t}"), Message(Role.ASSISTANT, "ok")]
    return msgs[:-1]


def test_replica_addresses_and_session_keys():
    from parrot.model_clients import replica_addresses, session_key

    assert replica_addresses("ipv4:127.0.0.1:1,127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert replica_addresses("127.0.0.1:1") == replica_addresses("dns:///svc:50051") == []
    assert replica_addresses("ipv4:127.0.0.1:1") == []  # one address: nothing to choose
    from parrot.client import target_addresses  # what the coordinator's target policy checks

    assert target_addresses("ipv4:127.0.0.1:1") == ["127.0.0.1:1"]
    assert target_addresses("dns:///svc.ns:50051") == ["svc.ns:50051"] and target_addresses("h:1") == ["h:1"]
    # The same session at every turn; different sessions differ.
    assert session_key(session(1, 1)) == session_key(session(1, 4)) != session_key(session(2, 4))
    with pytest.raises(Exception, match="routing"):
        ModelClients({"responder": "127.0.0.1:1"}, FAST, None, routing="random")


@pytest.mark.parametrize("routing", ["affinity", "round_robin"])
async def test_affinity_keeps_each_session_on_one_replica(routing):
    recs = [Recorder(), Recorder()]
    servers = [await serve(r) for r in recs]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    clients = ModelClients({"responder": target}, FAST, None, routing=routing)
    try:
        for turn in range(1, 5):
            for i in range(8):
                await clients.respond(session(i, turn), conversation_pb2.GenerationParams(max_tokens=4))
    finally:
        await clients.close()
        for s in servers:
            await s.stop(0)
    on = [{s for s in r.sessions} for r in recs]
    assert sum(len(r.sessions) for r in recs) == 32
    if routing == "affinity":
        assert not on[0] & on[1] and on[0] and on[1]  # every session on one replica; both replicas used


async def test_a_failed_replicas_sessions_move_on():
    recs = [Recorder(), Recorder()]
    servers = [await serve(r) for r in recs]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    clients = ModelClients({"responder": target}, FAST, None)
    params = conversation_pb2.GenerationParams(max_tokens=4)
    try:
        for i in range(8):
            await clients.respond(session(i, 1), params)
        await servers[0].stop(0)
        before = len(recs[1].sessions)
        for i in range(8):
            await clients.respond(session(i, 2), params)  # all 8 answered: the first replica's move on
        assert len(recs[1].sessions) == before + 8
    finally:
        await clients.close()
        await servers[1].stop(0)


@pytest.mark.parametrize("jitter,low", [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)])
def test_one_backoff_formula_for_every_retry_loop(jitter, low):
    """parrot.retry.Backoff: the step doubles up to max_s; ``jitter`` is the random share of it."""
    from parrot.retry import Backoff

    b = Backoff(initial_s=0.5, max_s=4.0, jitter=jitter)
    for attempt, step in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)]:
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(step * low - 1e-9 <= d <= step + 1e-9 for d in delays), (attempt, min(delays), max(delays))
        if jitter:
            assert max(delays) - min(delays) > step * jitter * 0.5  # random within its share


class Answers(responder_pb2_grpc.ResponderServicer):
    async def Respond(self, request, context):
        return responder_pb2.RespondResponse(text="An answer.", model="r",
                                             usage=conversation_pb2.Usage(completion_tokens=2))


async def test_an_asker_that_gives_up_is_a_dropped_follow_up_not_an_outage():
    """The asker answers ABORTED when none of its samples passes its checks (here: every sample is too
    short). The service is up, so the coordinator must not hold the run's calls as in an outage: the
    collection counts the drop, re-asks, then ends the session at once."""
    import time

    from parrot.errors import NoAcceptableOutput
    from parrot.v1 import asker_pb2_grpc, coordinator_pb2 as cpb
    from services.asker.service import AskerConfig, AskerService
    from services.coordinator.kinds import KINDS, UnitContext, resolve
    from services.coordinator.kinds.collection import NO_QUESTION, SeedUnit
    from tests.helpers.fakes import ScriptedBackend

    assert NoAcceptableOutput.code == grpc.StatusCode.ABORTED
    asker = AskerService(ScriptedBackend(lambda req, i: ""), AskerConfig(format="role-swapped"))
    server = GrpcServer([GrpcService("parrot.v1.Responder", Answers(), responder_pb2_grpc.add_ResponderServicer_to_server),
                         GrpcService("parrot.v1.Asker", asker, asker_pb2_grpc.add_AskerServicer_to_server)],
                        host="127.0.0.1", port=0, auth_token=None, max_message_bytes=1 << 20)
    await server.start()
    target = f"127.0.0.1:{server.port}"
    downs: list[str] = []
    clients = ModelClients({"responder": target, "asker": target}, FAST, None,
                           on_down=lambda role, cause: downs.append(role))
    try:
        with pytest.raises(CallFailed) as e:
            await clients.ask(MSGS + [Message(Role.ASSISTANT, "hello")], conversation_pb2.GenerationParams())
        assert e.value.status == grpc.StatusCode.ABORTED and e.value.attempts == 1
        assert "no acceptable question" in str(e.value)
        ctx = UnitContext(resolve(cpb.RunSpec(collection=cpb.CollectionSpec(min_turns=3), seed=1)), clients, 0,
                          lambda tokens: None)
        t0 = time.monotonic()
        out = await KINDS["collection"].run_unit(ctx, SeedUnit("s1", "How do I center a div?"))
        assert time.monotonic() - t0 < 10
        assert out["metadata"]["ended"] == "no_acceptable_follow_up" and out["drops"] == {NO_QUESTION: 3}
        assert downs == [] and clients.outage_s("asker") == 0
    finally:
        await clients.close()
        await server.stop(0)

"""A real Prometheus scrapes a real `parrot serve all --backend echo` on loopback.

Checks the path a cluster's ServiceMonitor relies on: the service's KServe HTTP port serves
/metrics in a format Prometheus ingests, and the parrot.v1 RPC counters arrive with their
labels. Needs Debian's prometheus (scripts/get_prometheus.sh); skipped without it, except in CI.
"""

from __future__ import annotations

import grpc

from tests.conftest import start_service
from tests.helpers.prometheus import requires_prometheus, start_prometheus

pytestmark = [requires_prometheus]

CALLS = 3


def _value(result: list[dict]) -> float:
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_scrapes_rpc_counters(tmp_path):
    from parrot.v1 import conversation_pb2 as cpb
    from parrot.v1 import responder_pb2, responder_pb2_grpc

    service = start_service(tmp_path, ["all", "--backend", "echo"])
    prom = None
    try:
        host_port = service.http_url.removeprefix("http://")
        prom = start_prometheus(tmp_path / "prometheus", {"parrot": [host_port]}, scrape_interval="1s")
        with grpc.insecure_channel(service.grpc_target) as ch:
            stub = responder_pb2_grpc.ResponderStub(ch)
            for i in range(CALLS):
                conversation = cpb.Conversation(messages=[cpb.Message(role=cpb.ROLE_USER, content=f"Question number {i}?")])
                stub.Respond(responder_pb2.RespondRequest(conversation=conversation), timeout=30)

        up = prom.wait_for('up{job="parrot"}', lambda r: _value(r) == 1.0, timeout=30)
        assert up[0]["metric"]["instance"] == host_port
        expr = 'sum(parrot_rpc_requests_total{job="parrot",service="parrot.v1.Responder",method="Respond",code="OK"})'
        result = prom.wait_for(expr, lambda r: _value(r) >= CALLS, timeout=30)
        assert _value(result) == CALLS
        tokens = prom.query('parrot_generated_tokens_total{job="parrot",backend="echo",model="echo"}')
        assert _value(tokens) > 0
    finally:
        prom_rc = prom.stop() if prom is not None else 0
        service_rc = service.stop()
    assert service_rc == 0, service.log()[-3000:]
    assert prom_rc == 0, prom.log()[-3000:]

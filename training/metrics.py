"""Prometheus metrics of a training run: exposed on ``--metrics-port`` and/or pushed to a Pushgateway.

One registry per process (a training process runs one run at a time); series are labelled by
method and run so that a Pushgateway or a scrape across Jobs keeps runs apart.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
LABELS = ["method", "run"]

STEP_SECONDS = Histogram(
    "parrot_train_step_seconds", "Wall time of one optimizer step.", LABELS, registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
TOKENS_PER_SECOND = Gauge("parrot_train_tokens_per_second",
                          "Non-padding input tokens per second over the last logging interval.", LABELS, registry=REGISTRY)
TOKENS = Counter("parrot_train_tokens", "Non-padding input tokens trained on (this process, this attempt).", LABELS,
                 registry=REGISTRY)
LOSS = Gauge("parrot_train_loss", "Training loss, mean over the last logging interval.", LABELS, registry=REGISTRY)
STEP = Gauge("parrot_train_global_step", "Optimizer steps done (continues across resumes).", LABELS, registry=REGISTRY)
LEARNING_RATE = Gauge("parrot_train_learning_rate", "Current learning rate.", LABELS, registry=REGISTRY)
REWARD_ACCURACY = Gauge("parrot_train_reward_accuracy",
                        "CaPO: share of pairs whose chosen answer gets the higher implicit reward, by strategy ('all' = overall).",
                        LABELS + ["strategy", "split"], registry=REGISTRY)
REWARD_MARGIN = Gauge("parrot_train_reward_margin",
                      "CaPO: mean implicit reward margin (chosen - rejected), by strategy ('all' = overall).",
                      LABELS + ["strategy", "split"], registry=REGISTRY)
CHECKPOINTS = Counter("parrot_train_checkpoints_uploaded", "Checkpoints uploaded to the object store.", LABELS,
                      registry=REGISTRY)


_servers: dict[int, object] = {}


def expose(port: int, addr: str = "0.0.0.0") -> None:
    """Serves /metrics of this registry on ``port`` (all interfaces by default: a pod's scrape target).

    The server lives until ``stop_exposing()`` or the end of the process."""
    from prometheus_client import start_http_server

    if port in _servers:
        return
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    _servers[port] = server
    log.info("training metrics exposed", extra={"port": port})


def stop_exposing() -> None:
    for port in list(_servers):
        server = _servers.pop(port)
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


def push(gateway: str, job: str, grouping: dict[str, str]) -> None:
    """Pushes the registry to a Pushgateway; failures are logged, never fatal to training."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(gateway, job=job, registry=REGISTRY, grouping_key=grouping, timeout=10)
    except Exception as e:  # noqa: BLE001 - a metrics outage must not stop a training run
        log.warning("metrics push failed", extra={"gateway": gateway, "error": str(e)})

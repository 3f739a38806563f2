"""Prometheus metrics shared by every service (served at the KServe HTTP port's /metrics).

Histograms are labelled by model and stage, in the style of kserve/metrics.py.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram


@lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: on hot paths (every RPC, every turn) the
    label lookup costs more than the increment it serves."""
    return metric.labels(*labels)


# Latency buckets of a request (RPC or HTTP): 5 ms to 5 min.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RPC_REQUESTS = Counter(
    "parrot_rpc_requests_total",
    "parrot.v1 RPCs handled, by service, method and final status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "parrot_rpc_latency_seconds",
    "parrot.v1 RPC latency, by service and method.",
    ["service", "method"],
    buckets=REQUEST_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "parrot_stage_latency_seconds",
    "Latency of a processing stage (load, prefill, decode, queue, judge_generate, judge_score, ...).",
    ["model", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
AUTH_FAILURES = Counter(
    "parrot_auth_failures_total",
    "Requests refused for a missing or wrong bearer token, by transport (grpc, http) and reason (missing, invalid).",
    ["transport", "reason"],
)
GENERATED_TOKENS = Counter(
    "parrot_generated_tokens_total",
    "Tokens generated, by model and backend.",
    ["model", "backend"],
)
PROMPT_TOKENS = Counter(
    "parrot_prompt_tokens_total",
    "Prompt tokens processed, by model and backend.",
    ["model", "backend"],
)
PREFIX_CACHE_TOKENS = Counter(
    "parrot_prefix_cache_hit_tokens_total",
    "Prompt tokens whose KV states were reused (from the prefix cache, or copied from a row being decoded) "
    "instead of computed, by model.",
    ["model"],
)
ENGINE_RESTARTS = Counter(
    "parrot_engine_restarts_total",
    "Times a managed engine (llama-server) died and was started again, by model.",
    ["model"],
)
PREFIX_CACHE_EVICTED_TOKENS = Counter(
    "parrot_prefix_cache_evicted_tokens_total",
    "Tokens of KV states dropped from the prefix cache to stay within its budget, by model "
    "(a steady rise during multi-turn runs means the budget is too small for the sessions in flight).",
    ["model"],
)
BATCH_SIZE = Histogram(
    "parrot_batch_size",
    "Rows (requests) in each forward step of the dynamic batcher.",
    ["model"],
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
QUEUE_DEPTH = Gauge(
    "parrot_queue_depth",
    "Requests waiting for the dynamic batcher.",
    ["model"],
)
MODEL_READY = Gauge(
    "parrot_model_ready",
    "1 when the model is loaded and serving, 0 while loading.",
    ["model", "service"],
)
BACKEND_RETRIES = Counter(
    "parrot_backend_retries_total",
    "HTTP backend retries after 429/5xx/transport errors, by backend.",
    ["backend", "reason"],
)
HTTP_REQUESTS = Counter(
    "parrot_http_requests_total",
    "HTTP requests (OpenAI routes, KServe REST, probes) by route template, method and status code "
    "(499: the client hung up before the answer).",
    ["route", "method", "code"],
)
HTTP_LATENCY = Histogram(
    "parrot_http_latency_seconds",
    "HTTP request latency by route template and method.",
    ["route", "method"],
    buckets=REQUEST_BUCKETS,
)

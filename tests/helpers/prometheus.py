"""A real Prometheus on loopback for tests (Debian's `prometheus` package, scripts/get_prometheus.sh).

``start_prometheus(tmp_dir, {"parrot": ["127.0.0.1:8080"]})`` writes a scrape config, starts
``prometheus`` on a free loopback port with its storage under ``tmp_dir``, waits for
``/-/ready`` and returns a ``PromProcess``: ``query(expr)`` runs an instant query through the
HTTP API, ``wait_for(expr, predicate, timeout)`` polls it, ``stop()`` sends SIGTERM and waits.
Tests must stop what they start (``with start_prometheus(...) as prom:`` does).

Checked against Prometheus 2.42 (Debian 12): flags ``--config.file``, ``--storage.tsdb.path``,
``--web.listen-address``, ``--log.level``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.conftest import free_port, terminate

# PARROT_PROMETHEUS may name a prometheus binary that is not on PATH.
PROMETHEUS_ENV = "PARROT_PROMETHEUS"


def prometheus_binary() -> str | None:
    return os.environ.get(PROMETHEUS_ENV) or shutil.which("prometheus")


requires_prometheus = pytest.mark.skipif(
    prometheus_binary() is None and not os.environ.get("CI"),
    reason="prometheus not installed (run scripts/get_prometheus.sh as root); in CI this is a failure, not a skip",
)

Result = list[dict[str, Any]]


@dataclass
class PromProcess:
    proc: subprocess.Popen
    url: str
    config_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: HTTP {response.status_code}: {body}")
        return body["data"]

    def query(self, expr: str) -> Result:
        """Instant query (``/api/v1/query``): the result list (vector samples with ``metric`` and ``value``)."""
        data = self._get("/api/v1/query", query=expr)
        result = data["result"]
        # Scalars and strings come back as one [ts, value] pair; wrap them like a one-sample vector.
        return result if data["resultType"] in ("vector", "matrix") else [{"metric": {}, "value": result}]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error (``/api/v1/targets``)."""
        return self._get("/api/v1/targets")["activeTargets"]

    def wait_for(self, expr: str, predicate: Callable[[Result], bool], timeout: float = 30, interval: float = 0.5) -> Result:
        """Polls ``query(expr)`` until ``predicate(result)`` holds; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        result: Result = []
        while True:
            self._check_alive()
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"prometheus: {expr!r} did not reach the expected value within {timeout}s; last result: {result}\n"
                    f"targets: {json.dumps(self.targets(), indent=1)[:3000]}\n{self.log()[-2000:]}"
                )
            time.sleep(interval)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code (kills and raises if it does not stop)."""
        return terminate(self.proc, timeout, "prometheus", self.log)

    def __enter__(self) -> PromProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrape_config(targets: dict[str, list[str]], scrape_interval: str = "1s") -> dict[str, Any]:
    """A Prometheus config scraping ``/metrics`` of each job's targets."""
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()
        ],
    }


def start_prometheus(tmp_dir: Path, targets: dict[str, list[str]], scrape_interval: str = "1s",
                     ready_timeout: float = 60) -> PromProcess:
    """Starts prometheus scraping ``targets`` (job name -> ["127.0.0.1:port", ...]) and waits until ready."""
    binary = prometheus_binary()
    if binary is None:
        raise AssertionError("prometheus is not installed: run scripts/get_prometheus.sh (as root) or set PARROT_PROMETHEUS")
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_dir / "prometheus.yml"
    # JSON is YAML: no YAML library needed.
    config_path.write_text(json.dumps(scrape_config(targets, scrape_interval), indent=2))
    port = free_port()
    log_path = tmp_dir / f"prometheus-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_dir,
        )
    prom = PromProcess(proc, f"http://127.0.0.1:{port}", config_path, log_path)
    try:
        _wait_ready(prom, ready_timeout)
    except BaseException:
        prom.stop()
        raise
    return prom


def _wait_ready(prom: PromProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        prom._check_alive()
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"prometheus not ready within {timeout}s\n{prom.log()[-3000:]}")
        time.sleep(0.2)

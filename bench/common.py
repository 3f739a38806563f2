"""What the benchmarks share: starting `parrot serve ...` on loopback and stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from parrot.client import free_port, wait_until_serving  # noqa: E402

PARROT = str(Path(sys.executable).parent / "parrot")


def start(args: list[str], service: str, env: dict[str, str] | None = None,
          ports: tuple[int, int] | None = None) -> tuple[subprocess.Popen, str]:
    """Runs `parrot serve ARGS` on free loopback ports (or ``ports``, to restart a service where it
    was); returns the process and its gRPC target once SERVING."""
    port, http = ports or (free_port(), free_port())
    proc = subprocess.Popen([PARROT, "serve", *args, "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(http)],
                            env=dict(os.environ, PARROT_LOG_LEVEL="WARNING", **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        wait_until_serving(target, service, 300, lambda: None if proc.poll() is None else f"{args} exited {proc.returncode}")
    except (TimeoutError, RuntimeError) as e:
        proc.kill()
        raise SystemExit(str(e)) from e
    proc.http_port = http  # type: ignore[attr-defined]  # for scraping /metrics
    return proc, target


def scrape(proc: subprocess.Popen, prefixes: tuple[str, ...] = ("parrot_",)) -> dict[str, float]:
    """The service's Prometheus samples whose names start with one of ``prefixes``: {'name{labels}': value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/metrics", timeout=30) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(prefixes):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def stop(*procs: subprocess.Popen) -> None:
    """SIGTERM, then wait for each."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(60)

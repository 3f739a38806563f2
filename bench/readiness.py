"""Readiness during start-up, on the real engine: does any request fail once readiness said true?

Starts `parrot serve responder` N times (default 20; llama.cpp and the bundled model), polls
`/v2/health/ready` from the moment the HTTP port opens, and from the first `ready: true` on sends
chat completions; counts those answered 503 (goal, issue 19: 0). Prints the time from the port
opening to ready.

    python bench/readiness.py [--restarts 20] [--backend llamacpp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import PARROT, free_port  # importing common puts the repo on sys.path

import httpx  # noqa: E402


def one_start(backend: str, after_ready: int) -> tuple[float, float, list[int]]:
    """(s to port open, s from port open to ready, statuses of the requests sent once ready)."""
    hport = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen([PARROT, "serve", "responder", "--backend", backend, "--host", "127.0.0.1",
                             "--grpc-port", str(free_port()), "--http-port", str(hport)],
                            env=dict(os.environ, PARROT_LOG_LEVEL="WARNING"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{hport}"
    statuses: list[int] = []
    opened = ready_at = None
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            while len(statuses) < after_ready:
                if proc.poll() is not None:
                    raise SystemExit(f"parrot serve exited {proc.returncode}")
                try:
                    r = c.get("/v2/health/ready")
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                opened = opened or time.monotonic()
                if ready_at is None and r.status_code == 200 and r.json().get("ready"):
                    ready_at = time.monotonic()
                if ready_at is not None:
                    statuses.append(c.post("/v1/chat/completions", json={
                        "model": "responder", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).status_code)
                else:
                    time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)
    assert opened is not None and ready_at is not None
    return opened - t0, ready_at - opened, statuses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--requests", type=int, default=3, help="chat requests sent after each ready")
    args = ap.parse_args()
    bad = 0
    waits = []
    for i in range(args.restarts):
        port_s, wait_s, statuses = one_start(args.backend, args.requests)
        bad += sum(1 for s in statuses if s == 503)
        waits.append(wait_s)
        print(f"start {i + 1}: port open after {port_s:.1f} s, ready {wait_s:.1f} s later; after ready: {statuses}")
    print(f"{args.restarts} starts ({args.backend}): {bad} requests answered 503 after readiness said true "
          f"(goal 0); port open -> ready: min {min(waits):.1f} s, max {max(waits):.1f} s")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

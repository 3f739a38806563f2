"""Shared fixtures: real service processes on free loopback ports, stopped by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
PARROT = str(Path(sys.executable).parent / "parrot")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_available() -> bool:
    from parrot.modelstore import bundled_model_dir

    return (bundled_model_dir() / "config.json").is_file()


requires_model = pytest.mark.skipif(
    not os.environ.get("CI") and not model_available(),
    reason="bundled model not prepared (run scripts/setup.sh); in CI this is a failure, not a skip",
)


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    grpc_target: str
    http_url: str
    log_path: Path
    token: str | None

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"service did not stop within {timeout}s after SIGTERM\n{self.log()[-3000:]}")
        return self.proc.returncode


def wait_serving(target: str, service: str, proc: subprocess.Popen, log_path: Path, timeout: float = 240) -> None:
    """Polls the standard gRPC health service until ``service`` is SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"service exited with {proc.returncode}\n{log_path.read_text()[-4000:]}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise AssertionError(f"{service} not SERVING after {timeout}s\n{log_path.read_text()[-4000:]}")


def start_service(tmp_dir: Path, args: list[str], env_extra: dict[str, str] | None = None,
                  token: str | None = None, wait_for: str | None = "parrot.v1.Responder") -> ServiceProcess:
    gport, hport = free_port(), free_port()
    env = dict(os.environ)
    env.update({"PARROT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    env.pop("PARROT_AUTH_TOKEN", None)
    if token:
        env["PARROT_AUTH_TOKEN"] = token
    env.update(env_extra or {})
    log_path = tmp_dir / f"service-{gport}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PARROT, "serve", *args, "--host", "127.0.0.1", "--grpc-port", str(gport), "--http-port", str(hport)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
    sp = ServiceProcess(proc, f"127.0.0.1:{gport}", f"http://127.0.0.1:{hport}", log_path, token)
    if wait_for:
        try:
            wait_serving(sp.grpc_target, wait_for, proc, log_path)
        except BaseException:
            sp.stop()
            raise
    return sp

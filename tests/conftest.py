"""Shared fixtures: real service processes on free loopback ports, stopped by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from parrot.client import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent
PARROT = str(Path(sys.executable).parent / "parrot")


def model_available() -> bool:
    from parrot.modelstore import bundled_model_dir

    return (bundled_model_dir() / "config.json").is_file()


requires_model = pytest.mark.skipif(
    not os.environ.get("CI") and not model_available(),
    reason="bundled model not prepared (run scripts/setup.sh); in CI this is a failure, not a skip",
)


def llama_server_available() -> bool:
    from parrot.engines.llamacpp import find_server

    return find_server() is not None


requires_llama_server = pytest.mark.skipif(
    not os.environ.get("CI") and not llama_server_available(),
    reason="llama-server not built (run `parrot engine build`; scripts/setup.sh does); in CI this is a failure",
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
        return terminate(self.proc, timeout, "service", self.log)


def terminate(proc: subprocess.Popen, timeout: float, what: str, log: Callable[[], str]) -> int:
    """SIGTERM, then wait; returns the exit code. Kills and fails the test if it does not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"{what} did not stop within {timeout}s after SIGTERM\n{log()[-3000:]}")
    return proc.returncode


def wait_serving(target: str, service: str, proc: subprocess.Popen, log_path: Path, timeout: float = 240) -> None:
    from parrot.client import wait_until_serving

    def alive() -> str | None:
        return None if proc.poll() is None else f"service exited with {proc.returncode}\n{log_path.read_text()[-4000:]}"

    try:
        wait_until_serving(target, service, timeout, alive)
    except (TimeoutError, RuntimeError) as e:
        raise AssertionError(f"{e}\n{log_path.read_text()[-4000:]}") from e


def start_service(tmp_dir: Path, args: list[str], env_extra: dict[str, str] | None = None,
                  token: str | None = None, wait_for: str | None = "parrot.v1.Responder",
                  ports: tuple[int, int] | None = None) -> ServiceProcess:
    """``ports`` (gRPC, HTTP) restarts a service where it was; default: free ports."""
    gport, hport = ports or (free_port(), free_port())
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

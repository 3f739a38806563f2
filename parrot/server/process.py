"""One lifecycle for every Parrot server process (the model services and the coordinator).

bind the gRPC port (health NOT_SERVING) and the HTTP port -> ``load`` in the background (the model, or
the runs to resume) -> SERVING -> SIGTERM or SIGINT -> NOT_SERVING, stop accepting, finish calls in
flight (up to ``grace_s``) -> stop the HTTP port -> ``release``. A failed load or an HTTP server that
exits on its own ends the process with status 1.

``ServerSettings`` holds what every server process is configured with, written once: the config of
each process (``services.model_server.ServeConfig``, ``services.coordinator.server.CoordinatorServeConfig``)
extends it.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from parrot.server.grpc_server import GrpcServer, ServerTls
from parrot.tokens import token_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    host: str = field(default="0.0.0.0", metadata={"help": "Interface both ports bind (127.0.0.1 for local only)."})
    grpc_port: int = field(default=50051, metadata={"help": "gRPC port (PARROT_GRPC_PORT)."})
    http_port: int = field(default=8080, metadata={"help": "HTTP port: REST, readiness, /metrics (PARROT_HTTP_PORT)."})
    auth_token_file: str | None = field(default=None, metadata={"help": "File holding the bearer token (a mounted Secret)."})
    auth_token_env: str = field(default="PARROT_AUTH_TOKEN", metadata={"help": "Env var holding the bearer token, if no file."})
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "gRPC message size limit, both directions."})
    grace_s: float = field(default=10.0, metadata={"help": "Seconds to finish calls in flight on SIGTERM."})
    tls_cert_file: str | None = field(default=None, metadata={"help": "PEM certificate: serve both ports over TLS (PARROT_TLS_CERT)."})
    tls_key_file: str | None = field(default=None, metadata={"help": "PEM private key for --tls-cert (PARROT_TLS_KEY)."})
    tls_client_ca_file: str | None = field(default=None, metadata={
        "help": "PEM CA whose client certificates both ports require (PARROT_TLS_CLIENT_CA)."})

    def auth_token(self) -> str | None:
        """The bearer token callers must send: from the file (a mounted Secret), else the env var, else none."""
        return token_from(self.auth_token_file, self.auth_token_env, "--auth-token-file / PARROT_AUTH_TOKEN_FILE")

    def tls(self) -> ServerTls | None:
        return ServerTls.from_files(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)


class ServerProcess(abc.ABC):
    """A server process: subclasses build ``self.grpc`` and say how to serve HTTP, load and release."""

    settings: ServerSettings
    grpc: GrpcServer
    _stopping: asyncio.Event | None = None

    @abc.abstractmethod
    async def serve_http(self) -> None:
        """Serves the HTTP port until ``stop_http``; returning earlier means it failed."""

    @abc.abstractmethod
    async def stop_http(self) -> None:
        ...

    @abc.abstractmethod
    async def load(self) -> dict[str, Any]:
        """Makes the process ready (loads the model, resumes runs); returns fields for the ``ready`` log line."""

    async def draining(self) -> None:
        """First step of the stop, before the gRPC port stops accepting (e.g. readiness turns false)."""

    async def release(self) -> None:
        """Frees what ``load`` took, after both ports have stopped."""

    def ready_fields(self) -> dict[str, Any]:
        return {"grpc_port": self.grpc.port, "http_port": self.settings.http_port,
                "auth": "on" if self.grpc.auth else "off", "tls": self.grpc.tls}

    @property
    def _stop(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.grpc.start()
            http_task = asyncio.create_task(self.serve_http(), name="http")
            load_task = asyncio.create_task(self._load(), name="load")
            stop_task = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait({http_task, load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if load_task in done and load_task.exception() is None:
                done, _ = await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            rc = 0
            if load_task.done() and not load_task.cancelled() and load_task.exception() is not None:
                log.error("failed to load", exc_info=load_task.exception())
                rc = 1
            elif http_task in done:
                log.error("HTTP server exited", exc_info=http_task.exception())
                rc = 1
            await self._shutdown(http_task, load_task)
            stop_task.cancel()
            return rc
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        """Begins the graceful stop, as SIGTERM does (for embedding and tests)."""
        self._stop.set()

    def _on_signal(self, sig: int) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(sig).name})
        self._stop.set()

    async def _load(self) -> None:
        t0 = time.monotonic()
        extra = await self.load()
        await self.grpc.set_serving(True)
        log.info("ready", extra={**self.ready_fields(), **extra, "load_s": round(time.monotonic() - t0, 2)})

    async def _shutdown(self, http_task: asyncio.Task, load_task: asyncio.Task) -> None:
        await self.draining()
        await self.grpc.stop(self.settings.grace_s)
        await self.stop_http()
        try:
            await asyncio.wait_for(http_task, timeout=self.settings.grace_s + 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
            http_task.cancel()
        if not load_task.done():
            load_task.cancel()
            await asyncio.gather(load_task, return_exceptions=True)
        await self.release()
        log.info("stopped")

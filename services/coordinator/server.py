"""`parrot serve coordinator`: the Coordinator gRPC API on the shared bootstrap and lifecycle
(``parrot.server.process``); over HTTP, /metrics
and (unless --no-web) the run browser at /ui/ (services/coordinator/web), on the same port.

On start it resumes every run its store records as pending or running.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from parrot.metrics import MODEL_READY
from parrot.server.grpc_server import GrpcServer, GrpcService
from parrot.server.process import ServerProcess, ServerSettings
from parrot.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.service import CoordinatorConfig, CoordinatorService, RunManager
from services.coordinator.web import WebConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorServeConfig(ServerSettings):
    """The coordinator process: the settings every server has (``ServerSettings``; its own port and
    message-size defaults) and its own."""

    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    grpc_port: int = field(default=50060, metadata={"help": "Coordinator gRPC port."})
    http_port: int = field(default=8090, metadata={"help": "HTTP port: /metrics and the run browser."})
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata={"help": "gRPC message size limit."})
    storage_retry_s: float = field(default=600.0, metadata={"help": "How long object-store writes are retried."})
    web: WebConfig = field(default_factory=WebConfig, metadata={"help": "The run browser on the HTTP port."})


class _HttpPort:
    """The HTTP port: prometheus_client's own server (/metrics alone) or, with the run browser,
    an aiohttp application on the event loop serving /metrics and /ui/ (same TLS settings)."""

    def __init__(self, cfg: CoordinatorServeConfig, manager: RunManager, token: str | None = None) -> None:
        self.cfg, self.manager, self.token = cfg, manager, token
        self._plain: Any = None
        self._runner: Any = None
        self._ui: Any = None

    async def start(self) -> None:
        cfg = self.cfg
        if not cfg.web.enabled:
            from prometheus_client import start_http_server

            # /metrics over TLS too when the process has a certificate: no port of it speaks plain text then.
            self._plain, _ = start_http_server(cfg.http_port, addr=cfg.host, certfile=cfg.tls_cert_file,
                                               keyfile=cfg.tls_key_file, client_cafile=cfg.tls_client_ca_file,
                                               client_auth_required=cfg.tls_client_ca_file is not None)
            return
        from aiohttp import web

        from services.coordinator.web.app import build_app

        app, self._ui = build_app(self.manager, cfg.web, self.token, tls=cfg.tls_cert_file is not None)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.host, cfg.http_port, ssl_context=self._ssl(), reuse_address=True).start()
        if not self.token:
            log.warning("the run browser at /ui/ is open: the coordinator has no auth token (PARROT_AUTH_TOKEN_FILE)")

    def _ssl(self) -> Any:
        cfg = self.cfg
        if not cfg.tls_cert_file:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        if cfg.tls_client_ca_file:
            ctx.load_verify_locations(cfg.tls_client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def stop(self) -> None:
        if self._plain is not None:
            self._plain.shutdown()
        if self._runner is not None:
            self._ui.stopping.set()  # ends the live event streams
            await self._runner.cleanup()


class CoordinatorProcess(ServerProcess):
    """`parrot serve coordinator`: loading is resuming the runs the store records as pending or running."""

    def __init__(self, cfg: CoordinatorServeConfig) -> None:
        from parrot.storage import open_store
        from services.coordinator import metrics as m

        self.settings = cfg
        self.manager: RunManager | None = None

        def on_retry(op: str, key: str, attempt: int, err: str) -> None:
            if self.manager is None:
                m.STORAGE_RETRIES.labels(op).inc()
            else:  # pauses the runs concerned and says so in their events
                self.manager.on_storage_retry(op, key, attempt, err)

        token = cfg.auth_token()
        store = open_store(cfg.coordinator.store_url, retry_for_s=cfg.storage_retry_s, on_retry=on_retry)
        self.manager = RunManager(store, cfg.coordinator)
        descriptor = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
        self.grpc = GrpcServer(
            [GrpcService(descriptor.full_name, CoordinatorService(self.manager),
                         coordinator_pb2_grpc.add_CoordinatorServicer_to_server)],
            host=cfg.host, port=cfg.grpc_port, auth_token=token, max_message_bytes=cfg.max_message_bytes,
            tls=cfg.tls())
        self.http = _HttpPort(cfg, self.manager, token)
        self._http_stopped = asyncio.Event()

    async def serve_http(self) -> None:
        await self.http.start()
        await self._http_stopped.wait()

    async def stop_http(self) -> None:
        log.info("stopping; unfinished runs resume on next start")
        await self.http.stop()
        self._http_stopped.set()

    async def load(self) -> dict[str, Any]:
        assert self.manager is not None
        resumed = await self.manager.resume_all()
        MODEL_READY.labels("coordinator", "coordinator").set(1)
        cfg = self.settings
        return {"store": cfg.coordinator.store_url, "web": "/ui/" if cfg.web.enabled else "off",  # type: ignore[attr-defined]
                "resumed_runs": resumed}

    async def release(self) -> None:
        assert self.manager is not None
        await self.manager.close()


def serve_coordinator(cfg: CoordinatorServeConfig) -> int:
    async def main() -> int:
        return await CoordinatorProcess(cfg).run()

    return asyncio.run(main())

"""`parrot serve coordinator`: the Coordinator gRPC API on the shared bootstrap; over HTTP, /metrics
and (unless --no-web) the run browser at /ui/ (services/coordinator/web), on the same port.

On start it resumes every run its store records as pending or running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from parrot.metrics import MODEL_READY
from parrot.server.grpc_server import GrpcServer, GrpcService, ServerTls
from parrot.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.service import CoordinatorConfig, CoordinatorService, RunManager
from services.coordinator.web import WebConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorServeConfig:
    coordinator: CoordinatorConfig
    host: str = field(default="0.0.0.0", metadata={"help": "Interface to bind."})
    grpc_port: int = field(default=50060, metadata={"help": "Coordinator gRPC port."})
    http_port: int = field(default=8090, metadata={"help": "Prometheus /metrics port."})
    auth_token: str | None = field(default=None, metadata={"help": "Bearer token callers must send."})
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata={"help": "gRPC message size limit."})
    grace_s: float = field(default=10.0, metadata={"help": "Seconds to finish calls in flight on SIGTERM."})
    storage_retry_s: float = field(default=600.0, metadata={"help": "How long object-store writes are retried."})
    tls_cert_file: str | None = field(default=None, metadata={"help": "PEM certificate: serve gRPC over TLS."})
    tls_key_file: str | None = field(default=None, metadata={"help": "PEM private key for the certificate."})
    tls_client_ca_file: str | None = field(default=None, metadata={
        "help": "PEM CA: require client certificates it signed, on both ports (mutual TLS)."})
    web: WebConfig = field(default_factory=WebConfig, metadata={"help": "The run browser on the HTTP port."})


class _HttpPort:
    """The HTTP port: prometheus_client's own server (/metrics alone) or, with the run browser,
    an aiohttp application on the event loop serving /metrics and /ui/ (same TLS settings)."""

    def __init__(self, cfg: CoordinatorServeConfig, manager: RunManager) -> None:
        self.cfg, self.manager = cfg, manager
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

        app, self._ui = build_app(self.manager, cfg.web, cfg.auth_token, tls=cfg.tls_cert_file is not None)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.host, cfg.http_port, ssl_context=self._ssl(), reuse_address=True).start()
        if not cfg.auth_token:
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


async def run_coordinator(cfg: CoordinatorServeConfig) -> int:
    from parrot.storage import open_store
    from services.coordinator import metrics as m

    manager: RunManager | None = None

    def on_retry(op: str, key: str, attempt: int, err: str) -> None:
        if manager is None:
            m.STORAGE_RETRIES.labels(op).inc()
        else:  # pauses the runs concerned and says so in their events
            manager.on_storage_retry(op, key, attempt, err)

    tls = ServerTls.from_files(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
    store = open_store(cfg.coordinator.store_url, retry_for_s=cfg.storage_retry_s, on_retry=on_retry)
    manager = RunManager(store, cfg.coordinator)
    descriptor = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    grpc_server = GrpcServer(
        [GrpcService(descriptor.full_name, CoordinatorService(manager), coordinator_pb2_grpc.add_CoordinatorServicer_to_server)],
        host=cfg.host, port=cfg.grpc_port, auth_token=cfg.auth_token, max_message_bytes=cfg.max_message_bytes,
        tls=tls)
    http_port = _HttpPort(cfg, manager)
    await http_port.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await grpc_server.start()
    resumed = await manager.resume_all()
    await grpc_server.set_serving(True)
    MODEL_READY.labels("coordinator", "coordinator").set(1)
    log.info("ready", extra={"grpc_port": grpc_server.port, "http_port": cfg.http_port, "store": cfg.coordinator.store_url,
                             "auth": "on" if grpc_server.auth else "off", "tls": grpc_server.tls,
                             "web": "/ui/" if cfg.web.enabled else "off",
                             "resumed_runs": resumed})
    await stop.wait()
    log.info("stopping; unfinished runs resume on next start")
    await grpc_server.stop(cfg.grace_s)
    await http_port.stop()
    await manager.close()
    log.info("stopped")
    return 0


def serve_coordinator(cfg: CoordinatorServeConfig) -> int:
    return asyncio.run(run_coordinator(cfg))

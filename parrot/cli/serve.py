"""`parrot serve` (a model service or the coordinator) and `parrot up` (the local stack)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from parrot.cli._common import fail
from parrot.logs import setup_logging

class ServiceName(str, Enum):
    asker = "asker"
    responder = "responder"
    judge = "judge"
    all = "all"
    coordinator = "coordinator"



def serve_cmd(
    service: ServiceName = typer.Argument(..., help="asker, responder, judge, all (the three, one shared model), or coordinator."),
    host: str = typer.Option("0.0.0.0", envvar="PARROT_HOST", help="Interface to bind."),
    grpc_port: Optional[int] = typer.Option(None, envvar="PARROT_GRPC_PORT",
                                            help="gRPC port (default 50051; coordinator 50060)."),
    http_port: Optional[int] = typer.Option(None, envvar="PARROT_HTTP_PORT",
                                            help="HTTP port: KServe REST, OpenAI, /metrics (default 8080; coordinator 8090)."),
    backend: str = typer.Option("auto", envvar="PARROT_BACKEND",
                                help="auto (llamacpp when llama-server is built, else transformers), llamacpp (a "
                                     "llama-server child), engine (any OpenAI-compatible engine: llama-server, vLLM, "
                                     "SGLang), transformers (in-process), tgi, openai, or echo (instant, no model)."),
    auth_token_file: Optional[str] = typer.Option(None, envvar="PARROT_AUTH_TOKEN_FILE",
                                                  help="Require this bearer token (file; else env PARROT_AUTH_TOKEN if set)."),
    max_new_tokens: int = typer.Option(2048, envvar="PARROT_MAX_NEW_TOKENS", help="Upper bound for max_tokens in requests."),
    max_input_chars: int = typer.Option(200_000, envvar="PARROT_MAX_INPUT_CHARS", help="Upper bound on conversation size."),
    grace_s: float = typer.Option(10.0, envvar="PARROT_GRACE_S", help="Seconds to finish calls in flight on SIGTERM."),
    store_url: str = typer.Option("", "--store-url", "--store", envvar="PARROT_STORE_URL",
                                  help="coordinator: object store (file:///dir or s3://bucket/prefix; default ~/.parrot/store)."),
    responder: str = typer.Option("127.0.0.1:50051", envvar="PARROT_RESPONDER", help="coordinator: default responder address."),
    asker: str = typer.Option("127.0.0.1:50051", envvar="PARROT_ASKER", help="coordinator: default asker address."),
    judge: str = typer.Option("127.0.0.1:50051", envvar="PARROT_JUDGE", help="coordinator: default judge address."),
    max_active_runs: int = typer.Option(4, envvar="PARROT_MAX_ACTIVE_RUNS", help="coordinator: runs executing at once."),
    routing: str = typer.Option("affinity", envvar="PARROT_ROUTING",
                                help="coordinator: affinity (a session's turns to the same listed replica, for the "
                                     "engine's prompt cache; a failed replica's sessions move on) or round_robin."),
    outage_budget_s: float = typer.Option(600.0, envvar="PARROT_OUTAGE_BUDGET_S",
                                          help="coordinator: how long a run waits out a model role with no endpoint "
                                               "up (no new conversation starts, calls held) before it stops as failed; "
                                               "a run's spec.retry.outage_budget_s overrides it."),
    allowed_targets: str = typer.Option("", envvar="PARROT_ALLOWED_TARGETS",
                                        help="coordinator: targets a run may name besides its own, "
                                             "PATTERN[=none|upstream|TOKEN_FILE] comma-separated (PATTERN: fnmatch over "
                                             "host:port; the credential sent to it: none by default)."),
    input_roots: str = typer.Option("", envvar="PARROT_INPUT_ROOTS",
                                    help="coordinator: folders and s3://bucket/PREFIX a run's input URLs may name "
                                         "(comma-separated; the store itself always)."),
    upstream_token_file: Optional[str] = typer.Option(None, envvar="PARROT_UPSTREAM_TOKEN_FILE",
                                                      help="coordinator: file with the token sent to its own model "
                                                           "targets (else PARROT_UPSTREAM_TOKEN, else its own token)."),
    storage_retry_s: float = typer.Option(600.0, envvar="PARROT_STORAGE_RETRY_S",
                                          help="coordinator: how long a failing object store (down, full, read-only) "
                                               "is waited out, the runs paused, before they fail."),
    judge_prompts: Optional[str] = typer.Option(None, envvar="PARROT_JUDGE_PROMPTS",
                                                help="judge: extra prompt file (ours or FastChat's judge_prompts.jsonl)."),
    tls_cert: Optional[str] = typer.Option(None, envvar="PARROT_TLS_CERT",
                                           help="PEM certificate: serve gRPC over TLS (with --tls-key). Clients: PARROT_TLS_CA."),
    tls_key: Optional[str] = typer.Option(None, envvar="PARROT_TLS_KEY", help="PEM private key of --tls-cert."),
    tls_client_ca: Optional[str] = typer.Option(None, envvar="PARROT_TLS_CLIENT_CA",
                                                help="PEM CA: require client certificates it signed on every port "
                                                     "(mutual TLS; with --tls-cert). Clients: PARROT_TLS_CLIENT_CERT/KEY."),
    target_tls: str = typer.Option("", envvar="PARROT_TARGET_TLS",
                                   help="coordinator: dial matching targets over TLS, PATTERN=CA_FILE|system"
                                        "[:CERT_FILE:KEY_FILE] comma-separated (others: PARROT_TLS_CA / PARROT_TLS)."),
    max_messages: int = typer.Option(256, envvar="PARROT_MAX_MESSAGES", help="Upper bound on messages per conversation."),
    max_message_bytes: Optional[int] = typer.Option(
        None, envvar="PARROT_MAX_MESSAGE_BYTES", help="gRPC message size limit (default 16 MiB; coordinator 64 MiB)."),
    max_turns: int = typer.Option(64, envvar="PARROT_MAX_TURNS", help="coordinator: user turns per conversation of a run."),
    max_concurrency: int = typer.Option(1024, envvar="PARROT_MAX_CONCURRENCY",
                                        help="coordinator: conversations in flight at once in one run."),
    max_conversations: int = typer.Option(1_000_000, envvar="PARROT_MAX_CONVERSATIONS",
                                          help="coordinator: conversations in one run."),
    web: bool = typer.Option(True, "--web/--no-web", envvar="PARROT_WEB",
                             help="coordinator: serve the run browser at /ui/ on the HTTP port (behind the token)."),
    web_page_size: int = typer.Option(50, envvar="PARROT_WEB_PAGE_SIZE",
                                      help="coordinator: rows per page of the run browser's runs and conversations."),
    **backend_settings: Any,
) -> None:
    """Serve a model service (parrot.v1 gRPC + KServe REST; the responder adds OpenAI /v1/chat/completions)
    or the coordinator (parrot.v1.Coordinator gRPC + /metrics).

    Every backend setting is a flag here, generated from the backends' config dataclasses; a flag
    names the backends it applies to."""
    setup_logging()
    from parrot.errors import ConfigError

    if service is ServiceName.coordinator:
        from services.coordinator.spec import RunLimits

        try:
            limits = RunLimits(max_turns=max_turns, max_concurrency=max_concurrency, max_conversations=max_conversations,
                               max_new_tokens=max_new_tokens)
        except ConfigError as e:
            fail(str(e))
        if routing not in ("affinity", "round_robin"):
            fail(f"--routing / PARROT_ROUTING is {routing!r}; allowed: affinity, round_robin")
        _serve_coordinator(host, grpc_port or 50060, http_port or 8090, store_url, responder, asker, judge, max_active_runs,
                           auth_token_file, grace_s, limits=limits, routing=routing, tls=(tls_cert, tls_key, tls_client_ca),
                           max_message_bytes=max_message_bytes or 64 * 1024 * 1024, storage_retry_s=storage_retry_s,
                           outage_budget_s=outage_budget_s, allowed_targets=allowed_targets, input_roots=input_roots,
                           upstream_token_file=upstream_token_file, target_tls=target_tls,
                           web=(web, web_page_size))
        return
    grpc_port = grpc_port or 50051
    http_port = http_port or 8080
    from parrot.backends import backend_names
    from parrot.backends.flags import backend_config as build_backend_config
    from parrot.conversation import InputLimits
    from parrot.errors import ConfigError
    from services.model_server import ServeConfig, serve

    if backend == "auto":
        from parrot.engines.llamacpp import auto_backend
        from parrot.errors import ConfigError

        try:
            backend = auto_backend()
        except ConfigError as e:
            fail(str(e))
    if backend not in backend_names():
        fail(f"--backend: unknown backend {backend!r}; allowed: {', '.join(backend_names())} (or auto)")
    if backend in ("engine", "openai", "tgi"):
        if not backend_settings.get("base_url"):
            fail(f"--base-url / PARROT_BASE_URL is required for the {backend} backend (the server's URL)")
        backend_settings["base_url"] = backend_settings["base_url"].rstrip("/")
    if backend == "llamacpp":
        from parrot.engines.llamacpp import require_server

        try:
            require_server()  # fail before binding ports: the binary is missing or misnamed
        except ConfigError as e:
            fail(str(e))
    from parrot.asking.rerank import RerankSettings
    from parrot.backends.flags import settings_from_flags

    asker_settings = {f.dest: backend_settings.pop(f.dest, None) for f in ASKER_FLAGS}
    try:
        rerank = settings_from_flags("asker", RerankSettings, asker_settings, ASKER_FLAGS)
    except ConfigError as e:
        fail(str(e))
    if service not in (ServiceName.asker, ServiceName.all) and any(v is not None for v in asker_settings.values()):
        typer.secho(f"[serve] {service.value} ignores the asker's --rerank-* and --end-threshold settings", err=True)
    try:
        backend_config, ignored = build_backend_config(backend, backend_settings, SERVE_FLAGS)
    except ConfigError as e:
        fail(str(e))
    if ignored:
        typer.secho(f"[serve] the {backend} backend ignores: {'; '.join(ignored)}", err=True)
    services = ("asker", "responder", "judge") if service is ServiceName.all else (service.value,)
    try:
        config = ServeConfig(
            services=services, host=host, grpc_port=grpc_port, http_port=http_port, backend=backend,
            backend_config=backend_config, auth_token_file=auth_token_file, grace_s=grace_s,
            limits=InputLimits(max_new_tokens=max_new_tokens, max_input_chars=max_input_chars, max_messages=max_messages),
            judge_prompts_file=judge_prompts, tls_cert_file=tls_cert, tls_key_file=tls_key,
            tls_client_ca_file=tls_client_ca, max_message_bytes=max_message_bytes or 16 * 1024 * 1024,
            asker_rerank=rerank,
        )
        rc = serve(config)
    except ConfigError as e:
        fail(str(e))
    raise typer.Exit(rc)



def _with_backend_flags(command: Any) -> tuple[list[Any], list[Any]]:
    """Every backend setting, and the asker's rerank settings, as flags of `parrot serve`, generated
    from their config dataclasses (parrot.backends.flags): written once, in the dataclass."""
    import inspect

    from parrot.asking.rerank import RerankSettings
    from parrot.backends.flags import backend_flags, settings_flags

    flags, asker = backend_flags(), settings_flags("asker", RerankSettings)
    params = [p for p in inspect.signature(command).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for flag in flags + asker:
        params.append(inspect.Parameter(flag.dest, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[flag.type],
                                        default=typer.Option(None, f"--{flag.name}", envvar=flag.env, help=flag.help(),
                                                             show_default=False)))
    command.__signature__ = inspect.Signature(params)
    return flags, asker


SERVE_FLAGS, ASKER_FLAGS = _with_backend_flags(serve_cmd)


def default_store_url() -> str:

    home = Path(os.environ.get("PARROT_HOME") or Path.home() / ".parrot")
    return (home / "store").resolve().as_uri()


def _serve_coordinator(host: str, grpc_port: int, http_port: int, store: str, responder: str, asker: str, judge: str,
                       max_active_runs: int, auth_token_file: Optional[str], grace_s: float, *, limits: Any = None,
                       routing: str = "affinity",
                       tls: tuple[Optional[str], ...] = (None, None, None), max_message_bytes: int = 64 * 1024 * 1024,
                       storage_retry_s: float = 600.0, outage_budget_s: float = 600.0, allowed_targets: str = "",
                       input_roots: str = "", upstream_token_file: Optional[str] = None, target_tls: str = "",
                       web: tuple[bool, int] = (True, 50)) -> None:

    from parrot.errors import ConfigError
    from parrot.server.process import ServerSettings
    from services.coordinator.server import CoordinatorServeConfig, serve_coordinator
    from services.coordinator.service import CoordinatorConfig
    from services.coordinator.web import WebConfig

    if not 0 <= storage_retry_s <= 86400:
        fail(f"--storage-retry-s / PARROT_STORAGE_RETRY_S is {storage_retry_s}; allowed 0..86400")
    from parrot.tokens import token_from

    try:
        token = ServerSettings(auth_token_file=auth_token_file).auth_token()
        upstream = token_from(upstream_token_file, "PARROT_UPSTREAM_TOKEN",
                              "--upstream-token-file / PARROT_UPSTREAM_TOKEN_FILE") or token
        coordinator = CoordinatorConfig(store_url=store or default_store_url(), responder=responder, asker=asker,
                                        judge=judge, max_active_runs=max_active_runs, routing=routing,
                                        outage_budget_s=outage_budget_s,
                                        upstream_token=upstream, allowed_targets=allowed_targets,
                                        input_roots=input_roots, target_tls=target_tls,
                                        **({"limits": limits} if limits is not None else {}))
        web_config = WebConfig(enabled=web[0], page_size=web[1])
    except ConfigError as e:
        fail(str(e))
    cfg = CoordinatorServeConfig(
        coordinator=coordinator, host=host, grpc_port=grpc_port, http_port=http_port, auth_token_file=auth_token_file,
        grace_s=grace_s,
        tls_cert_file=tls[0], tls_key_file=tls[1], tls_client_ca_file=tls[2], max_message_bytes=max_message_bytes,
        storage_retry_s=storage_retry_s, web=web_config)
    try:
        rc = serve_coordinator(cfg)
    except ConfigError as e:
        fail(str(e))
    raise typer.Exit(rc)


def up_cmd(
    backend: str = typer.Option("auto", envvar="PARROT_BACKEND",
                                help="Backend of the model services (auto: llamacpp when llama-server is built, "
                                     "else transformers)."),
    model: Optional[str] = typer.Option(None, envvar="PARROT_MODEL",
                                        help="Model of the model services (default: the backend's own, the bundled "
                                             "SmolLM2 for llamacpp and transformers)."),
    grpc_port: int = typer.Option(50051, help="Model services' gRPC port."),
    http_port: int = typer.Option(8080, help="Model services' HTTP port (KServe REST, OpenAI, /metrics)."),
    coordinator_port: int = typer.Option(50060, help="Coordinator gRPC port."),
    coordinator_http_port: int = typer.Option(8090, help="Coordinator /metrics port."),
    store_url: str = typer.Option("", "--store-url", "--store", envvar="PARROT_STORE_URL",
                                  help="Coordinator's object store (default ~/.parrot/store)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
) -> None:
    """Start the local stack: asker+responder+judge (one shared model) and the coordinator. Ctrl-C stops it."""
    setup_logging()
    if backend == "auto":
        from parrot.engines.llamacpp import auto_backend
        from parrot.errors import ConfigError

        try:
            backend = auto_backend()
        except ConfigError as e:
            fail(str(e))
    typer.secho(f"[up] model services: backend {backend}, model {model or 'default'} (the engine and model file are logged below)",
                err=True)
    import signal
    import subprocess
    import time

    from parrot.client import wait_until_serving

    exe = str(Path(sys.argv[0]).resolve()) if Path(sys.argv[0]).name == "parrot" else "parrot"
    models_target = f"127.0.0.1:{grpc_port}"
    env = dict(os.environ)
    procs = [
        subprocess.Popen([exe, "serve", "all", "--backend", backend, *(["--model", model] if model else []), "--host", host,
                          "--grpc-port", str(grpc_port), "--http-port", str(http_port)], env=env),
        subprocess.Popen([exe, "serve", "coordinator", "--host", host, "--grpc-port", str(coordinator_port),
                          "--http-port", str(coordinator_http_port), "--store-url", store_url or default_store_url(),
                          "--responder", models_target, "--asker", models_target, "--judge", models_target,
                          # a local stack: its runs may name other services on this machine, with its token
                          "--allowed-targets", "127.0.0.1:*=upstream,localhost:*=upstream"], env=env),
    ]
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    def exited() -> str | None:
        if stopping:  # Ctrl-C / SIGTERM during start-up: not an error
            return "stopping"
        return next((f"a service exited ({p.returncode})" for p in procs if p.poll() is not None), None)

    try:
        for target, svc in ((models_target, "parrot.v1.Judge"), (f"127.0.0.1:{coordinator_port}", "parrot.v1.Coordinator")):
            wait_until_serving(target, svc, 600, exited)
    except (TimeoutError, RuntimeError) as e:
        stop()
        for p in procs:
            p.wait(60)
        if str(e) == "stopping":
            raise typer.Exit(0)
        fail(str(e))
    web_off = os.environ.get("PARROT_WEB", "").lower() in ("0", "false", "no", "off")
    browser = "" if web_off else f"; run browser http://127.0.0.1:{coordinator_http_port}/ui/"
    typer.secho(f"parrot is up: models {models_target} (HTTP {http_port}, backend {backend}), coordinator 127.0.0.1:{coordinator_port} "
                f"(metrics {coordinator_http_port}{browser}). Ctrl-C to stop.", fg=typer.colors.GREEN, err=True)
    rc = 0
    while not stopping:
        for p in procs:
            if p.poll() is not None and not stopping:
                typer.secho(f"error: a service exited with {p.returncode}; stopping", fg=typer.colors.RED, err=True)
                rc = 1
                stop()
        time.sleep(0.5)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("up")(up_cmd)

"""Client helpers for the CLI and tests: channels with auth, and conversation files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import grpc

from parrot.conversation import SPEAKER_ROLES, Message  # SPEAKER_ROLES: also maps system/user/assistant
from parrot.errors import ConfigError
from parrot.tokens import token_from

DEFAULT_TARGET = "127.0.0.1:50051"


class ConversationFileError(ValueError):
    """A conversation file is unreadable or malformed; the message names file and field."""


def tls_credentials(env: Any = None) -> grpc.ChannelCredentials | None:
    """Client TLS from the environment, or None for plain-text channels.

    PARROT_TLS_CA: a PEM file of the CA (or the self-signed server certificate) to trust;
    PARROT_TLS=1: TLS with the system's roots. PARROT_TLS_SERVER_NAME overrides the name the
    certificate is checked against (when dialling an IP the certificate does not list).
    PARROT_TLS_CLIENT_CERT / PARROT_TLS_CLIENT_KEY: a client certificate, for servers that
    require one (--tls-client-ca).
    """
    env = os.environ if env is None else env
    ca = env.get("PARROT_TLS_CA", "")
    if ca or env.get("PARROT_TLS", "").strip().lower() in ("1", "true", "yes", "on"):
        return channel_credentials(ca or None, env.get("PARROT_TLS_CLIENT_CERT") or None,
                                   env.get("PARROT_TLS_CLIENT_KEY") or None, "PARROT_TLS_CA")
    return None


def channel_credentials(ca_file: str | None, cert_file: str | None, key_file: str | None,
                        setting: str) -> grpc.ChannelCredentials:
    """TLS credentials: trust ``ca_file`` (None: the system's roots); present a client certificate
    when both ``cert_file`` and ``key_file`` are given (servers that require mutual TLS)."""

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{setting}: cannot read the {what} {path}: {e.strerror}") from e

    if bool(cert_file) != bool(key_file):
        raise ConfigError(f"{setting}: a client certificate needs both its certificate and its key "
                          "(PARROT_TLS_CLIENT_CERT and PARROT_TLS_CLIENT_KEY)")
    return grpc.ssl_channel_credentials(root_certificates=read(ca_file, "CA certificate"),
                                        private_key=read(key_file, "client key"),
                                        certificate_chain=read(cert_file, "client certificate"))


#: gRPC's default reconnect backoff grows to 120 s, so calls keep failing for seconds after a
#: restarted service is back; a model service or coordinator that returns is found within ~1 s.
PROMPT_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                    ("grpc.max_reconnect_backoff_ms", 1000)]
_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?::(\d{1,5}))?$")


def target_addresses(target: str) -> list[str]:
    """The host:port addresses a gRPC target names: each of an ``ipv4:`` / ``ipv6:`` list, the host of
    ``dns:///host:port``, else the target itself (``host:port``, ``unix:...``)."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return [a.strip() for a in rest.split(",") if a.strip()]
    if sep and scheme == "dns":
        rest = rest.lstrip("/")
        return [rest.split("/", 1)[1] if "/" in rest else rest]
    return [target]


def target_problem(target: str) -> str | None:
    """None when ``target`` is a gRPC address (host:port, [v6]:port, or a dns: / ipv4: / ipv6: /
    unix: target), else what is wrong with it."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in _SCHEMES:
        if not rest.strip("/") or any(c.isspace() for c in rest):
            return f"{target!r} is not a gRPC address: nothing valid after '{scheme}:'"
        if scheme in ("ipv4", "ipv6"):
            bad = [a for a in rest.split(",") if _HOST_PORT.match(a.strip()) is None]
            if bad:
                return f"{target!r} is not a gRPC address: {bad[0]!r} is not host:port"
        return None
    m = _HOST_PORT.match(target)
    if m is None:
        return f"{target!r} is not a gRPC address (host:port, [ipv6]:port, dns:///host:port, ipv4:a:p,b:p or unix:path)"
    if m.group(2) is not None and not 0 < int(m.group(2)) < 65536:
        return f"{target!r} is not a gRPC address: port {m.group(2)} is out of range"
    return None


def channel_options(env: Any = None) -> list[tuple[str, Any]]:
    env = os.environ if env is None else env
    name = env.get("PARROT_TLS_SERVER_NAME", "")
    return [*PROMPT_RECONNECT, *([("grpc.ssl_target_name_override", name)] if name else [])]


def channel(target: str) -> grpc.aio.Channel:
    """An asyncio channel to a Parrot service: TLS when PARROT_TLS_CA / PARROT_TLS say so."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *channel_options()]
    creds = tls_credentials()
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


def sync_channel(target: str) -> grpc.Channel:
    """A blocking channel with the same TLS settings as :func:`channel` (health polls, tests)."""
    creds = tls_credentials()
    if creds is not None:
        return grpc.secure_channel(target, creds, options=channel_options())
    return grpc.insecure_channel(target, options=channel_options())


def plaintext_tls_hint(e: grpc.RpcError) -> str:
    """What to set when a plain-text client met a TLS server (grpc only says the socket closed); ""."""
    details = e.details() or ""
    if e.code() == grpc.StatusCode.UNAVAILABLE and tls_credentials() is None and any(
            s in details for s in ("Socket closed", "Connection reset", "Stream removed", "handshake")):
        return (" (if the server serves TLS, this client spoke plain text: set PARROT_TLS_CA to the CA "
                "certificate, or PARROT_TLS=1 for the system's roots)")
    return ""


def rpc_error_text(e: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call, with the plain-text-meets-TLS hint when it applies."""
    return f"{e.code().name}: {e.details() or ''}{plaintext_tls_hint(e)}"


def auth_metadata(token_env: str = "PARROT_AUTH_TOKEN") -> list[tuple[str, str]]:
    """The authorization metadata from ``$token_env`` (stripped; ConfigError naming it when malformed)."""

    token = token_from(None, token_env, "")
    return [("authorization", f"Bearer {token}")] if token else []


def load_conversation(path: str) -> list[Message]:
    """Reads a conversation: a JSON list of {role, content}, or {"messages": [...]}, or
    ShareGPT-style {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}. '-' is stdin."""
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise ConversationFileError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversationFileError(f"{path}: line {e.lineno}: not valid JSON: {e.msg}") from e

    if isinstance(data, dict) and "conversations" in data:
        items, role_key, text_key = data["conversations"], "from", "value"
    else:
        items = data.get("messages") if isinstance(data, dict) else data
        role_key, text_key = "role", "content"
    if not isinstance(items, list):
        raise ConversationFileError(f"{path}: expected a list of messages (or an object with 'messages')")
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not isinstance(m.get(text_key), str):
            raise ConversationFileError(f"{path}: messages[{i}]: expected an object with a string '{text_key}'")
        role = SPEAKER_ROLES.get(str(m.get(role_key, "")).lower())
        if role is None:
            raise ConversationFileError(
                f"{path}: messages[{i}].{role_key}: unknown role {m.get(role_key)!r}; allowed: system, user, assistant")
        out.append(Message(role, m[text_key]))
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for servers that tests and benchmarks start.

    Chosen below the OS's ephemeral range: a port the OS hands out for ``bind(0)`` can be taken
    by any outgoing connection (health polls, say) before the server gets to bind it.
    """
    import random
    import socket

    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # fall back to the OS's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(target: str, service: str, timeout: float = 240, alive: Any = None) -> None:
    """Polls the standard gRPC health service until ``service`` reports SERVING.

    ``alive`` is an optional callable returning an error string when the server process died.
    Raises TimeoutError (or RuntimeError from ``alive``) instead of waiting forever.
    """
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with sync_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            problem = alive() if alive else None
            if problem:
                raise RuntimeError(problem)
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{service or 'server'} at {target} not SERVING after {timeout:.0f}s")

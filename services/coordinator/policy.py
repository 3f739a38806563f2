"""What a caller of the coordinator may make it reach: model targets and input files, by policy.

The coordinator holds credentials its callers do not (the model services' upstream token, the
store's S3 keys, its file system). A run spec names targets and input URLs, so without a policy
a caller could have the coordinator send its upstream token to any address, or read any file or
bucket it can. Here:

- **Targets.** The coordinator's own targets (``--responder/--asker/--judge``) are always allowed
  and get the upstream token. Any other target must match an entry of ``--allowed-targets``
  (``PATTERN[=CREDENTIAL]``, comma-separated; PATTERN an fnmatch over ``host:port``, a bare
  host meaning any port; CREDENTIAL ``none`` (default: no token is sent), ``upstream`` (the
  upstream token), or the path of a file holding that target's own token). Anything else is
  PERMISSION_DENIED naming the setting, before the coordinator contacts it at all.
- **TLS per target.** ``--target-tls`` entries ``PATTERN=CA_FILE[:CERT_FILE:KEY_FILE]`` (CA_FILE
  ``system`` for the system's roots; CERT/KEY a client certificate for servers that require one)
  make the coordinator dial matching targets over TLS; others use the process-wide
  ``PARROT_TLS_CA`` / ``PARROT_TLS`` settings (plain text when unset).
- **Inputs.** ``file://`` paths and ``s3://`` objects only under ``--input-roots`` (folders and
  ``s3://bucket[/prefix]``) or in the coordinator's own store. Anything else is PERMISSION_DENIED
  with the same message whether or not it exists (no oracle).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parrot.client import channel_credentials, target_addresses
from parrot.errors import ConfigError, PermissionDenied
from parrot.tokens import read_token_file

ALLOWED_TARGETS_SETTING = "--allowed-targets / PARROT_ALLOWED_TARGETS (chart: coordinator.allowedTargets)"
TARGET_TLS_SETTING = "--target-tls / PARROT_TARGET_TLS (chart: coordinator.targetTls)"
INPUT_ROOTS_SETTING = "--input-roots / PARROT_INPUT_ROOTS (chart: coordinator.inputRoots)"


@dataclass(frozen=True)
class TargetRule:
    pattern: str  # fnmatch over "host:port"
    credential: str  # "none", "upstream", or a token file path


def parse_allowed_targets(text: str) -> tuple[TargetRule, ...]:
    """``PATTERN[=CREDENTIAL], ...`` -> rules (ConfigError naming the bad entry)."""
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        pattern, _, credential = entry.partition("=")
        rules.append(TargetRule(_pattern(pattern, ALLOWED_TARGETS_SETTING, entry), credential.strip() or "none"))
    return tuple(rules)


def _pattern(text: str, setting: str, entry: str) -> str:
    pattern = text.strip()
    if not pattern or any(c.isspace() for c in pattern) or "/" in pattern:
        raise ConfigError(f"{setting}: {entry!r} does not start with a PATTERN like *.models.svc:50051 or 10.0.0.*")
    return pattern if ":" in pattern.lstrip("[").split("]")[-1] else pattern + ":*"


def parse_target_tls(text: str) -> tuple[tuple[str, Any], ...]:
    """``PATTERN=CA_FILE|system[:CERT_FILE:KEY_FILE], ...`` -> (pattern, channel credentials) pairs."""
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        pattern, sep, files = entry.partition("=")
        parts = files.split(":") if sep else []
        if len(parts) not in (1, 3) or not parts[0]:
            raise ConfigError(f"{TARGET_TLS_SETTING}: {entry!r} is not PATTERN=CA_FILE|system[:CERT_FILE:KEY_FILE]")
        ca = None if parts[0] == "system" else parts[0]
        cert, key = (parts[1], parts[2]) if len(parts) == 3 else (None, None)
        rules.append((_pattern(pattern, TARGET_TLS_SETTING, entry), channel_credentials(ca, cert, key, TARGET_TLS_SETTING)))
    return tuple(rules)


class TargetPolicy:
    """Which targets a run may name, the bearer token each one gets, and how it is dialled (TLS)."""

    def __init__(self, defaults: dict[str, str], rules: tuple[TargetRule, ...], upstream_token: str | None,
                 tls: tuple[tuple[str, Any], ...] = ()) -> None:
        self.tls = tls
        self.defaults = {t for t in defaults.values() if t}
        self.rules = rules
        self.upstream_token = upstream_token
        self._tokens: dict[str, str] = {}
        for rule in rules:  # read token files at start-up: a bad file is a start-up error, not a run failure
            if rule.credential not in ("none", "upstream"):
                self._tokens[rule.credential] = read_token_file(rule.credential, ALLOWED_TARGETS_SETTING)

    def token_for(self, field_name: str, target: str) -> str | None:
        """The token to send to ``target`` (named by ``field_name``), or PermissionDenied."""
        if target in self.defaults:
            return self.upstream_token
        rules = [self._rule(a) for a in target_addresses(target)]
        if rules and all(r is not None and r == rules[0] for r in rules):
            cred = rules[0].credential  # type: ignore[union-attr]
            return None if cred == "none" else self.upstream_token if cred == "upstream" else self._tokens[cred]
        raise PermissionDenied(f"{field_name}: {target!r} is not a target this coordinator may call: only its own "
                               f"targets and those allowed by {ALLOWED_TARGETS_SETTING}")

    def credentials_for(self, target: str) -> Any:
        """TLS channel credentials for ``target`` from --target-tls, or None (the process-wide setting)."""
        addresses = target_addresses(target)
        for pattern, creds in self.tls:
            if all(fnmatch.fnmatchcase(a, pattern) for a in addresses):
                return creds
        return None

    def _rule(self, address: str) -> TargetRule | None:
        return next((r for r in self.rules if fnmatch.fnmatchcase(address, r.pattern)), None)


class InputPolicy:
    """Where input URLs of a run may point: under local folders and S3 prefixes, and the store."""

    def __init__(self, roots: str, store: Any) -> None:
        self.folders: list[Path] = []
        self.prefixes: list[tuple[str, str]] = []  # (bucket, key prefix)
        for root in (r.strip() for r in roots.split(",")):
            if not root:
                continue
            if root.startswith("s3://"):
                bucket, _, prefix = root[len("s3://"):].partition("/")
                if not bucket:
                    raise ConfigError(f"{INPUT_ROOTS_SETTING}: {root!r} names no bucket (s3://bucket[/prefix])")
                self.prefixes.append((bucket, prefix.strip("/")))
            else:
                path = Path(root[len("file://"):] if root.startswith("file://") else root)
                if not path.is_absolute():
                    raise ConfigError(f"{INPUT_ROOTS_SETTING}: {root!r} is not an absolute folder")
                self.folders.append(Path(os.path.realpath(path)))
        if getattr(store, "root", None) is not None:
            self.folders.append(Path(os.path.realpath(store.root)))
        if getattr(store, "bucket", None):
            self.prefixes.append((store.bucket, getattr(store, "prefix", "")))

    def check_path(self, field_name: str, path: Path) -> Path:
        """The resolved path when it lies under an allowed folder (symlinks and '..' resolved first)."""
        real = Path(os.path.realpath(path))
        if any(real == f or f in real.parents for f in self.folders):
            return real
        raise self._denied(field_name, path.as_uri() if path.is_absolute() else str(path))

    def check_s3(self, field_name: str, bucket: str, key: str) -> None:
        parts = key.split("/")
        if ".." in parts or "." in parts:
            raise self._denied(field_name, f"s3://{bucket}/{key}")
        for b, prefix in self.prefixes:
            if b == bucket and (not prefix or key == prefix or key.startswith(prefix + "/")):
                return
        raise self._denied(field_name, f"s3://{bucket}/{key}")

    @staticmethod
    def _denied(field_name: str, url: str) -> PermissionDenied:
        return PermissionDenied(f"{field_name}.url: {url} is outside the folders and buckets this coordinator reads "
                                f"inputs from ({INPUT_ROOTS_SETTING}, and its own store); send the file inline instead")

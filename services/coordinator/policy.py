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

from parrot.errors import ConfigError, PermissionDenied
from parrot.tokens import read_token_file

ALLOWED_TARGETS_SETTING = "--allowed-targets / PARROT_ALLOWED_TARGETS (chart: coordinator.allowedTargets)"
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
        pattern, credential = pattern.strip(), credential.strip() or "none"
        if not pattern or any(c.isspace() for c in pattern) or "/" in pattern:
            raise ConfigError(f"{ALLOWED_TARGETS_SETTING}: {entry!r} is not PATTERN[=none|upstream|TOKEN_FILE] "
                              "(PATTERN like *.models.svc:50051 or 10.0.0.*)")
        if ":" not in pattern.lstrip("[").split("]")[-1]:
            pattern += ":*"
        rules.append(TargetRule(pattern, credential))
    return tuple(rules)


def _addresses(target: str) -> list[str]:
    """The host:port addresses a gRPC target names (dns:///h:p, ipv4:a,b, h:p; unix: as itself)."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return [a.strip() for a in rest.split(",") if a.strip()]
    if sep and scheme == "dns":
        rest = rest.lstrip("/")
        return [rest.split("/", 1)[1] if "/" in rest else rest]
    return [target]


class TargetPolicy:
    """Which targets a run may name, and the bearer token each one gets."""

    def __init__(self, defaults: dict[str, str], rules: tuple[TargetRule, ...], upstream_token: str | None) -> None:
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
        rules = [self._rule(a) for a in _addresses(target)]
        if rules and all(r is not None and r == rules[0] for r in rules):
            cred = rules[0].credential  # type: ignore[union-attr]
            return None if cred == "none" else self.upstream_token if cred == "upstream" else self._tokens[cred]
        raise PermissionDenied(f"{field_name}: {target!r} is not a target this coordinator may call: only its own "
                               f"targets and those allowed by {ALLOWED_TARGETS_SETTING}")

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

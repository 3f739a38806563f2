"""One parser for bearer tokens, wherever they come from: a file (a mounted Secret), an
environment variable, a per-target token file. Surrounding whitespace is stripped (a Secret or an
`echo` leaves a trailing newline), and a token must be at least MIN_TOKEN_CHARS printable
characters with no spaces inside: a short token is guessable, and a control character would
break the HTTP header it travels in. Every error names the setting and says how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

from parrot.errors import ConfigError

MIN_TOKEN_CHARS = 16
MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def parse_token(raw: str, source: str) -> str:
    """``raw`` stripped, or ConfigError naming ``source`` (never the token itself)."""
    token = raw.strip()
    if not token:
        raise ConfigError(f"{source} is empty")
    if any(not c.isprintable() or c.isspace() for c in token):
        raise ConfigError(f"{source}: the token contains whitespace or control characters; a token is one printable word")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the token has {len(token)} characters; at least {MIN_TOKEN_CHARS} are required "
                          f"(make one: {MAKE_ONE})")
    return token


def read_token_file(path: str, setting: str) -> str:
    try:
        raw = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"{setting}: cannot read token file {path}: {why}") from e
    return parse_token(raw, f"{setting}: token file {path}")


def token_from(file: str | None, env_name: str, file_setting: str, env: dict[str, str] | None = None) -> str | None:
    """A token from ``file`` if given, else from the environment variable ``env_name``, else None."""
    if file:
        return read_token_file(file, file_setting)
    raw = (os.environ if env is None else env).get(env_name)
    return parse_token(raw, env_name) if raw else None

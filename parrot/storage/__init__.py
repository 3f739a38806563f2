"""Object storage for run records, conversations, datasets and reports.

``open_store(url)`` picks the backend from a URL:

- ``file:///abs/dir`` or a plain path: :class:`LocalStore` rooted there (created if missing);
- ``s3://bucket/optional/prefix``: :class:`S3Store` (MinIO or S3; connection settings from the
  ``PARROT_S3_*`` environment variables, see :mod:`parrot.storage.s3`).

Every put is atomic, transient failures are retried for ``retry_for_s`` seconds, and errors
are typed: :class:`ObjectNotFound`, :class:`StorageError` (permanent),
:class:`StorageUnavailable` (gave up retrying), ``InvalidArgument`` (bad key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from parrot.errors import ConfigError, InvalidArgument
from parrot.storage.base import (
    STORAGE_OPERATIONS,
    STORAGE_RETRIES,
    ObjectNotFound,
    ObjectStore,
    OnRetry,
    StorageError,
    StorageUnavailable,
    validate_key,
    validate_prefix,
)
from parrot.storage.local import LocalStore

__all__ = [
    "STORAGE_OPERATIONS",
    "STORAGE_RETRIES",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "OnRetry",
    "StorageError",
    "StorageUnavailable",
    "open_store",
    "validate_key",
    "validate_prefix",
]


def open_store(
    url: str,
    *,
    retry_for_s: float = 60.0,
    on_retry: OnRetry | None = None,
    env: Mapping[str, str] | None = None,
) -> ObjectStore:
    """Opens the object store at ``url`` (no I/O for S3 until the first operation).

    ``env`` defaults to ``os.environ`` (the PARROT_S3_* settings). A malformed URL or a
    missing setting raises ``ConfigError`` naming it.
    """
    url = (url or "").strip()
    if not url:
        raise ConfigError("object store URL is empty; use a directory, file:///abs/dir or s3://bucket/prefix")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "":
        return LocalStore(url, retry_for_s=retry_for_s, on_retry=on_retry)
    parts = urlsplit(url)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"object store URL {url!r}: file URLs name a local path, like file:///data/parrot")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"object store URL {url!r}: the path must be absolute, like file:///data/parrot")
        return LocalStore(path, retry_for_s=retry_for_s, on_retry=on_retry)
    if scheme == "s3":
        from parrot.storage.s3 import open_s3_store  # lazy: minio is only needed for S3

        if "@" in parts.netloc:  # do not echo the URL: it holds credentials
            raise ConfigError("object store URL must not contain credentials; use the PARROT_S3_* variables")

        prefix = parts.path.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidArgument as e:
                raise ConfigError(f"object store URL {url!r}: bad prefix: {e.problem}") from None
        if parts.query or parts.fragment:
            raise ConfigError(f"object store URL {url!r}: use s3://bucket/prefix, without '?' or '#'")
        return open_s3_store(
            parts.netloc, prefix, env=os.environ if env is None else env, retry_for_s=retry_for_s, on_retry=on_retry
        )
    raise ConfigError(
        f"object store URL {url!r}: scheme {scheme!r} is not supported; use a directory, file:///abs/dir or s3://bucket/prefix"
    )

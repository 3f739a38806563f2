"""S3 or MinIO as an object store, through the ``minio`` client.

A single S3 PUT is atomic (readers see the whole old object or the whole new one), and the
client signs the payload hash over plain HTTP, so a truncated upload is rejected. The
client's own urllib3 retries are off: every retry happens in :class:`ObjectStore` so it is
logged, counted and bounded by ``retry_for_s``.

Settings come from the environment (read by :meth:`S3Settings.from_env`, never at import):

=========================== ===========================================================
PARROT_S3_ENDPOINT          ``host:port`` or ``http(s)://host:port`` (required)
PARROT_S3_ACCESS_KEY        access key (required)
PARROT_S3_SECRET_KEY        secret key (required)
PARROT_S3_SESSION_TOKEN     session token for temporary credentials (optional)
PARROT_S3_REGION            region; asked from the server when unset (optional)
PARROT_S3_SECURE            1/0: force HTTPS on or off (default: the endpoint's scheme;
                            HTTPS when the endpoint has none)
PARROT_S3_CREATE_BUCKET     0 to never create the bucket (default 1: create if missing)
=========================== ===========================================================
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from parrot.errors import ConfigError
from parrot.storage.base import ObjectNotFound, ObjectStore, OnRetry

log = logging.getLogger(__name__)

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1 or 0")


@dataclass(frozen=True)
class S3Settings:
    """Connection settings for S3Store. Credentials are left out of ``repr``."""

    endpoint: str  # host:port, no scheme
    secure: bool
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    create_bucket: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """Reads the PARROT_S3_* variables; a missing or malformed one raises ConfigError naming it."""
        env = os.environ if env is None else env
        raw = env.get("PARROT_S3_ENDPOINT", "").strip()
        if not raw:
            raise ConfigError("PARROT_S3_ENDPOINT is not set; set it to host:port or http(s)://host:port of the S3 server")
        secure = True
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https"):
                raise ConfigError(f"PARROT_S3_ENDPOINT: scheme {parts.scheme!r} is not supported; use http:// or https://")
            if "@" in parts.netloc:  # do not echo the value: it holds credentials
                raise ConfigError("PARROT_S3_ENDPOINT must not contain credentials; use PARROT_S3_ACCESS_KEY/SECRET_KEY")
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ConfigError(f"PARROT_S3_ENDPOINT={raw!r}: give only scheme://host:port, without a path")
            secure, endpoint = parts.scheme == "https", parts.netloc
        else:
            endpoint = raw.rstrip("/")
            if "@" in endpoint or "/" in endpoint:
                raise ConfigError("PARROT_S3_ENDPOINT must be host:port or http(s)://host:port")
        if not endpoint:
            raise ConfigError("PARROT_S3_ENDPOINT has no host; set it to host:port or http(s)://host:port")
        secure = _env_bool(env, "PARROT_S3_SECURE", secure)
        access_key = env.get("PARROT_S3_ACCESS_KEY", "")
        if not access_key:
            raise ConfigError("PARROT_S3_ACCESS_KEY is not set; it holds the S3 access key")
        secret_key = env.get("PARROT_S3_SECRET_KEY", "")
        if not secret_key:
            raise ConfigError("PARROT_S3_SECRET_KEY is not set; it holds the S3 secret key")
        return cls(
            endpoint=endpoint,
            secure=secure,
            access_key=access_key,
            secret_key=secret_key,
            session_token=env.get("PARROT_S3_SESSION_TOKEN") or None,
            region=env.get("PARROT_S3_REGION", "").strip() or None,
            create_bucket=_env_bool(env, "PARROT_S3_CREATE_BUCKET", True),
        )

    def client(self, *, connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0) -> Minio:
        """A minio client with bounded timeouts and no hidden retries."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=32,  # worker threads of asyncio.to_thread
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )


class S3Store(ObjectStore):
    """Objects in ``bucket`` under an optional ``prefix`` (keys are relative to it)."""

    backend = "s3"

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = True,
        region: str | None = None,
        retry_for_s: float = 60.0,
        on_retry: OnRetry | None = None,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ):
        super().__init__(
            retry_for_s=retry_for_s, on_retry=on_retry, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s
        )
        if not _BUCKET_RE.match(bucket or ""):
            raise ConfigError(
                f"S3 bucket name {bucket!r} is invalid: use 3-63 lowercase letters, digits, '.' and '-'"
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.create_bucket = create_bucket
        self.region = region
        self._bucket_ready = not create_bucket
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(key)}"

    async def close(self) -> None:
        self.client._http.clear()  # minio exposes no public close

    # ---- blocking primitives ------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        """Creates the bucket once, on first use (so opening a store does no I/O)."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket, location=self.region)
                    log.info("created S3 bucket %s", self.bucket)
                except S3Error as e:
                    if e.code != "BucketAlreadyOwnedByYou":
                        raise
            self._bucket_ready = True

    def _put_sync(self, key: str, data: bytes, content_type: str) -> None:
        self._ensure_bucket()
        self.client.put_object(self.bucket, self._name(key), io.BytesIO(data), len(data), content_type=content_type)

    def _get_sync(self, key: str) -> bytes:
        self._ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, self._name(key))
        except S3Error as e:
            if e.code in NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def _exists_sync(self, key: str) -> bool:
        self._ensure_bucket()
        try:
            self.client.stat_object(self.bucket, self._name(key))
        except S3Error as e:
            if e.code in NOT_FOUND_CODES:
                return False
            raise
        return True

    def _list_sync(self, prefix: str) -> list[str]:
        self._ensure_bucket()
        strip = len(self.prefix) + 1 if self.prefix else 0
        objects = self.client.list_objects(self.bucket, prefix=self._name(prefix), recursive=True)
        return [o.object_name[strip:] for o in objects if o.object_name and not o.is_dir]

    def _list_folders_sync(self, prefix: str) -> list[str]:
        self._ensure_bucket()
        objects = self.client.list_objects(self.bucket, prefix=self._name(prefix), recursive=False)
        return [o.object_name.rstrip("/").rsplit("/", 1)[-1] for o in objects if o.object_name and o.is_dir]

    def _delete_sync(self, key: str) -> None:
        self._ensure_bucket()
        self.client.remove_object(self.bucket, self._name(key))

    # ---- error classification -----------------------------------------------------------

    def _is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, S3Error):
            status = getattr(exc.response, "status", 0) or 0
            return exc.code in TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(exc, ServerError):
            return exc.status_code >= 500 or exc.status_code == 429
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            return status >= 500 or status == 429
        if isinstance(exc, urllib3.exceptions.SSLError):
            return False  # certificate or protocol mismatch: configuration, not weather
        return isinstance(
            exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, http.client.HTTPException)
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, S3Error):
            status = getattr(exc.response, "status", None)
            hint = ""
            if exc.code == "NoSuchBucket":
                hint = f" (bucket {self.bucket!r} does not exist; PARROT_S3_CREATE_BUCKET=0?)"
            elif exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                hint = " (check PARROT_S3_ACCESS_KEY / PARROT_S3_SECRET_KEY and the bucket policy)"
            return f"S3 {exc.code} (HTTP {status}): {exc.message}{hint}"
        return super()._describe(exc)


def open_s3_store(
    bucket: str,
    prefix: str = "",
    *,
    env: Mapping[str, str] | None = None,
    retry_for_s: float = 60.0,
    on_retry: OnRetry | None = None,
) -> S3Store:
    """An S3Store configured from the PARROT_S3_* environment variables."""
    settings = S3Settings.from_env(env)
    log.info(
        "object store: s3://%s/%s at %s (secure=%s)", bucket, prefix, settings.endpoint, settings.secure,
        extra={"bucket": bucket, "endpoint": settings.endpoint},
    )
    return S3Store(
        settings.client(),
        bucket,
        prefix,
        create_bucket=settings.create_bucket,
        region=settings.region,
        retry_for_s=retry_for_s,
        on_retry=on_retry,
    )

"""The object store interface shared by every backend: keys, errors, retries and metrics.

A backend implements a few blocking primitives (``_put_sync``, ``_get_sync``, ...) and says
which of its exceptions are transient (``_is_transient``). This module turns them into the
async API the coordinator uses: each primitive runs in a worker thread (``asyncio.to_thread``),
transient failures are retried with exponential backoff and jitter for up to ``retry_for_s``
seconds (then :class:`StorageUnavailable`), permanent ones become :class:`StorageError` at once.

Keys are ``/``-separated relative paths (``runs/r1/conversations/000042.json``). The same key
rules hold for every backend, so a run written to a local directory can be copied to S3 as is.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter

from parrot.errors import InvalidArgument, ParrotError, Unavailable
from parrot.retry import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called before each retry sleep as ``on_retry(op, key, attempt, error)``; may be async.
OnRetry = Callable[[str, str, int, str], "Awaitable[None] | None"]

#: Suffix of the temporary files a local put writes before renaming; reserved in keys.
TMP_SUFFIX = ".parrot-tmp"
MAX_KEY_BYTES = 1024  # the S3 limit
MAX_SEGMENT_BYTES = 255  # the usual file-name limit

STORAGE_OPERATIONS = Counter(
    "parrot_storage_operations_total",
    "Object store operations, by backend, operation and outcome (ok, not_found, error, unavailable).",
    ["backend", "op", "outcome"],
)
STORAGE_RETRIES = Counter(
    "parrot_storage_retries_total",
    "Object store attempts that failed transiently and were retried, by backend and operation.",
    ["backend", "op"],
)


class ObjectNotFound(ParrotError):
    """No object is stored under the key."""

    code = grpc.StatusCode.NOT_FOUND
    http_status = 404

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"object {key!r} not found")


class StorageError(ParrotError):
    """A permanent storage failure (permission denied, disk full, access denied, bad bucket).

    Retrying will not help; the message names the operation, the key and the cause.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 500


class StorageUnavailable(Unavailable):
    """The store kept failing transiently for the whole retry window."""


def _check_segments(value: str, field: str, *, allow_partial_last: bool) -> None:
    if value.startswith("/"):
        raise InvalidArgument(field, f"{value!r} is absolute; use a relative path like 'runs/r1/record.json'")
    if "\\" in value:
        raise InvalidArgument(field, f"{value!r} contains a backslash; separate segments with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(field, f"{value!r} contains a control character")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_KEY_BYTES} bytes (UTF-8)")
    segments = value.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "" and not (last and allow_partial_last):
            raise InvalidArgument(field, f"{value!r} has an empty segment ('//' or a leading/trailing '/')")
        if seg in (".", ".."):
            raise InvalidArgument(field, f"{value!r} has a {seg!r} segment; only plain names are allowed")
        if len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidArgument(field, f"segment {seg[:40]!r}... is longer than {MAX_SEGMENT_BYTES} bytes")


def validate_key(key: str) -> str:
    """Returns ``key`` if it is a valid object key, else raises ``InvalidArgument("key", ...)``.

    Allowed: non-empty ``/``-separated relative paths of plain names. Rejected: absolute keys,
    ``.``/``..`` and empty segments, backslashes, control characters, keys over 1024 bytes and
    names ending in ``.parrot-tmp`` (reserved for in-flight local writes).
    """
    if not isinstance(key, str) or not key:
        raise InvalidArgument("key", "must be a non-empty '/'-separated relative path")
    _check_segments(key, "key", allow_partial_last=False)
    if key.endswith(TMP_SUFFIX):
        raise InvalidArgument("key", f"names ending in {TMP_SUFFIX!r} are reserved for in-flight writes")
    return key


def validate_prefix(prefix: str) -> str:
    """Returns ``prefix`` if it is a valid listing prefix ('' lists everything).

    A prefix is matched as a plain string against keys, like S3 does: ``runs/r1/`` lists the
    keys under that folder, ``runs/r1`` also matches ``runs/r10/...``.
    """
    if not isinstance(prefix, str):
        raise InvalidArgument("prefix", "must be a string ('' lists every key)")
    if prefix:
        _check_segments(prefix, "prefix", allow_partial_last=True)
    return prefix


class ObjectStore(abc.ABC):
    """Async object store: atomic puts, retried transient failures, typed errors.

    Subclasses set :attr:`backend` and implement the blocking primitives. Every public method
    validates its key first (``InvalidArgument``), may raise :class:`StorageError` (permanent)
    or :class:`StorageUnavailable` (transient failures outlasted ``retry_for_s``).

    A cancelled call stops waiting at once, but an attempt already running in its worker
    thread finishes on its own; puts are whole-object replacements, so that is harmless.
    """

    backend: str = "abstract"

    def __init__(
        self,
        *,
        retry_for_s: float = 60.0,
        on_retry: OnRetry | None = None,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ):
        if retry_for_s < 0:
            raise ValueError("retry_for_s must be >= 0")
        self.retry_for_s = float(retry_for_s)
        self.on_retry = on_retry
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

    # ---- public async API -------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Stores ``data`` under ``key`` atomically: readers see the old object or the new one."""
        validate_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument("data", f"must be bytes, not {type(data).__name__}")
        data = bytes(data)
        await self._call("put", key, self._put_sync, key, data, content_type)

    async def get(self, key: str) -> bytes:
        """Returns the object's bytes; raises :class:`ObjectNotFound` if there is none."""
        validate_key(key)
        return await self._call("get", key, self._get_sync, key)

    async def exists(self, key: str) -> bool:
        """True if an object is stored under ``key`` (a 'folder' of other keys is not one)."""
        validate_key(key)
        return await self._call("exists", key, self._exists_sync, key)

    async def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (recursively), sorted."""
        validate_prefix(prefix)
        keys = await self._call("list", prefix, self._list_sync, prefix)
        return sorted(k for k in keys if k.startswith(prefix))

    async def list_folders(self, prefix: str = "") -> list[str]:
        """Names of the 'folders' directly under ``prefix`` (which is "" or ends with "/"), sorted.

        One level only, so listing runs does not read every object of every run.
        """
        validate_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            raise InvalidArgument("prefix", f"{prefix!r} must end with '/' to name a folder")
        return sorted(await self._call("list", prefix, self._list_folders_sync, prefix))

    async def delete(self, key: str) -> None:
        """Removes the object. Deleting a missing key is not an error (so retries are safe)."""
        validate_key(key)
        await self._call("delete", key, self._delete_sync, key)

    async def remove_leftovers(self, prefix: str = "") -> int:
        """Deletes the temporary files of writes that a crash interrupted under ``prefix``; returns
        how many. Only for a store's single writer at start-up (a live writer's file would go too).
        Stores whose puts leave nothing behind (S3) have none."""
        validate_prefix(prefix)
        return await self._call("clean", prefix, self._remove_leftovers_sync, prefix)

    def _remove_leftovers_sync(self, prefix: str) -> int:
        return 0

    async def put_json(self, key: str, obj: Any, *, indent: int | None = None) -> None:
        """Stores ``obj`` as UTF-8 JSON (content type ``application/json``)."""
        data = json.dumps(obj, ensure_ascii=False, indent=indent).encode("utf-8")
        await self.put(key, data, content_type="application/json")

    async def get_json(self, key: str) -> Any:
        """Loads a JSON object; a stored object that is not JSON raises :class:`StorageError`."""
        data = await self.get(key)
        try:
            return json.loads(data)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise StorageError(f"get_json {key!r}: the stored object is not valid JSON ({e})") from e

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """Where the object lives, as a URL (``file:///abs/path`` or ``s3://bucket/key``)."""

    async def close(self) -> None:
        """Releases connections; the store must not be used afterwards."""

    # ---- what a backend implements (blocking; run in a worker thread) --------------------

    @abc.abstractmethod
    def _put_sync(self, key: str, data: bytes, content_type: str) -> None: ...

    @abc.abstractmethod
    def _get_sync(self, key: str) -> bytes:
        """Returns the bytes or raises ObjectNotFound."""

    @abc.abstractmethod
    def _exists_sync(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _list_folders_sync(self, prefix: str) -> list[str]:
        """Immediate child folder names under ``prefix`` (blocking; retried by the caller)."""

    @abc.abstractmethod
    def _list_sync(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``; may return extra keys (they are filtered) and unsorted."""

    @abc.abstractmethod
    def _delete_sync(self, key: str) -> None: ...

    @abc.abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """True if retrying the operation may succeed (connection lost, timeout, 5xx, EAGAIN)."""

    def _describe(self, exc: BaseException) -> str:
        """A short cause for messages and logs. Must never include credentials."""
        text = str(exc)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    # ---- retry loop ---------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random (``attempt`` is 1-based)."""
        return Backoff(self.backoff_base_s, self.backoff_max_s, jitter=0.5).delay(attempt - 1)

    async def _notify_retry(self, op: str, key: str, attempt: int, cause: str) -> None:
        if self.on_retry is None:
            return
        try:
            result = self.on_retry(op, key, attempt, cause)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a broken callback must not turn a retry into a failure
            log.exception("storage on_retry callback failed", extra={"op": op, "key": key})

    async def _call(self, op: str, key: str, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(*args)`` in a thread, retrying transient failures for ``retry_for_s``."""
        start = time.monotonic()
        deadline = start + self.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await asyncio.to_thread(fn, *args)
            except ObjectNotFound:
                STORAGE_OPERATIONS.labels(self.backend, op, "not_found").inc()
                raise
            except ParrotError:
                STORAGE_OPERATIONS.labels(self.backend, op, "error").inc()
                raise
            except Exception as exc:
                cause = self._describe(exc)
                if not self._is_transient(exc):
                    STORAGE_OPERATIONS.labels(self.backend, op, "error").inc()
                    raise StorageError(f"{op} {key!r} failed on {self.backend} store: {cause}") from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    STORAGE_OPERATIONS.labels(self.backend, op, "unavailable").inc()
                    elapsed = time.monotonic() - start
                    raise StorageUnavailable(
                        f"{op} {key!r}: {self.backend} store still failing after {attempt} attempt(s) "
                        f"over {elapsed:.1f}s: {cause}"
                    ) from exc
                delay = min(remaining, self._backoff(attempt))
                STORAGE_RETRIES.labels(self.backend, op).inc()
                log.warning(
                    "storage %s %r failed (attempt %d), retrying in %.2fs: %s",
                    op, key, attempt, delay, cause,
                    extra={"backend": self.backend, "op": op, "key": key, "attempt": attempt},
                )
                await self._notify_retry(op, key, attempt, cause)
                await asyncio.sleep(delay)
            else:
                STORAGE_OPERATIONS.labels(self.backend, op, "ok").inc()
                return result

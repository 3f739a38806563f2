"""An HTTP client for model APIs: retries, errors that name the problem, server-sent events.

- ``HttpRetry``: exponential backoff with jitter, honouring ``Retry-After``;
- ``HTTPClient``: an ``httpx.AsyncClient`` wrapper that retries 429, 5xx, timeouts and
  transport errors, maps other 4xx to ``InvalidArgument`` and exhausted retries to
  ``Unavailable``, bounds concurrency, and parses server-sent events (``iter_sse_data``).

Secrets: the API key is only ever put into the ``Authorization`` header. Every message that
leaves this module (exceptions, log lines) goes through ``HTTPClient.redact``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import httpx

from parrot.errors import ConfigError, InvalidArgument, Unavailable
from parrot.metrics import BACKEND_RETRIES
from parrot.retry import Backoff

log = logging.getLogger(__name__)

# Longest wait we accept from a server's Retry-After header.
MAX_RETRY_AFTER_S = 60.0
# Longest piece of an upstream error body we repeat in our own messages.
MAX_DETAIL_CHARS = 200
# Statuses that are retried (besides every 5xx).
RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class HttpRetry:
    """How often and how long an HTTP model API is retried (``max_retries`` retries after the first try).
    (The coordinator's model calls use ``parrot.model_clients.Retry``; both back off with ``parrot.retry``.)"""

    max_retries: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0

    def delay(self, retry_index: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based).

        A server's ``Retry-After`` wins (capped at ``MAX_RETRY_AFTER_S``); otherwise
        exponential backoff with jitter in [50%, 100%] of the capped exponential step.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
        return Backoff(self.backoff_initial_s, self.backoff_max_s, jitter=0.5).delay(retry_index)


def parse_retry_after(value: str | None) -> float | None:
    """Parses a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_detail(response: httpx.Response) -> str:
    """The server's error message from a response body, shortened to ``MAX_DETAIL_CHARS``.

    Understands ``{"error": {"message": ...}}`` (OpenAI, vLLM), ``{"error": "..."}`` (TGI),
    ``{"detail": ...}`` (FastAPI) and ``{"message": ...}``; falls back to the raw text.
    """
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    message: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = err.get("message", err)
        elif err is not None:
            message = err
        elif "detail" in body:
            message = body["detail"]
        elif "message" in body:
            message = body["message"]
    if not isinstance(message, str):
        message = json.dumps(message)
    return shorten(" ".join(message.split()))


def shorten(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Cuts ``text`` to ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def iter_sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yields the ``data`` payload of each server-sent event (multi-line data joined by newlines).

    Comment lines (``:``) and other fields (``event``, ``id``, ``retry``) are ignored.
    """
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class _Retry(Exception):
    """Internal: one attempt failed in a way that may be retried."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class HTTPClient:
    """A retrying, concurrency-bounded JSON/SSE client for one upstream server."""

    def __init__(
        self,
        *,
        backend: str,
        timeout_s: float,
        policy: HttpRetry,
        max_concurrency: int,
        api_key: str = "",
    ) -> None:
        self.backend = backend
        self.timeout_s = float(timeout_s)
        self.policy = policy
        self._api_key = api_key
        self._semaphore = asyncio.Semaphore(max(1, int(max_concurrency)))
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=max(1, int(max_concurrency)) + 4),
        )
        self.requests_sent = 0
        self.retries = 0

    def redact(self, text: str) -> str:
        """Removes the API key from ``text`` (in case a server echoes it back)."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    async def close(self) -> None:
        """Closes the underlying connection pool."""
        await self._client.aclose()

    async def probe(self, url: str) -> httpx.Response | None:
        """One GET without retries; None when the server cannot be reached or times out."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._client.get(url)
        except (TimeoutError, httpx.HTTPError):
            return None

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        accept_statuses: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Sends one request with retries; returns a 2xx response (or one in ``accept_statuses``).

        Raises ``InvalidArgument`` for a non-retryable 4xx, ``Unavailable`` when retries are
        exhausted or the upstream cannot be used at all.
        """
        retry_index = 0
        while True:
            try:
                return await self._attempt(method, url, json_body, accept_statuses)
            except _Retry as failure:
                await self._before_retry(failure, retry_index, url)
                retry_index += 1

    async def stream_events(self, url: str, json_body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POSTs ``json_body`` and yields each JSON event of the SSE reply until ``[DONE]``.

        Failures before the first event are retried like ``request``; after it, a broken
        stream raises ``Unavailable`` (the text already passed on cannot be taken back).
        """
        retry_index = 0
        while True:
            started = False
            try:
                async with self._semaphore:
                    self.requests_sent += 1
                    async with self._client.stream("POST", url, json=json_body) as response:
                        await self._check_status(response, frozenset())
                        async for event in self._sse_json(response):
                            started = True
                            yield event
                return
            except _Retry as failure:
                if started:
                    raise self._exhausted(failure, attempts=retry_index + 1, mid_stream=True) from None
                await self._before_retry(failure, retry_index, url)
                retry_index += 1
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                failure = self._transport_failure(exc)
                if started:
                    raise self._exhausted(failure, attempts=retry_index + 1, mid_stream=True) from None
                await self._before_retry(failure, retry_index, url)
                retry_index += 1

    async def _attempt(
        self,
        method: str,
        url: str,
        json_body: Mapping[str, Any] | None,
        accept_statuses: frozenset[int],
    ) -> httpx.Response:
        """One try of ``request``: raises ``_Retry`` for retryable failures."""
        async with self._semaphore:
            self.requests_sent += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await self._client.request(method, url, json=json_body)
            except (TimeoutError, httpx.TimeoutException):
                raise _Retry("timeout", f"no response within {self.timeout_s:g} s") from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise self._transport_failure(exc) from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"{self.backend} backend: cannot send the request: {type(exc).__name__}") from None
        await self._check_status(response, accept_statuses)
        return response

    def _transport_failure(self, exc: Exception) -> _Retry:
        """Classifies a transport exception as a retryable failure."""
        if isinstance(exc, httpx.TimeoutException):
            return _Retry("timeout", f"no response within {self.timeout_s:g} s")
        return _Retry("transport", f"connection failed ({type(exc).__name__})")

    async def _check_status(self, response: httpx.Response, accept_statuses: frozenset[int]) -> None:
        """Returns for 2xx / accepted statuses; raises ``_Retry``, ``InvalidArgument`` or ``Unavailable``."""
        status = response.status_code
        if 200 <= status < 300 or status in accept_statuses:
            return
        await response.aread()
        detail = self.redact(error_detail(response))
        if status >= 500 or status in RETRYABLE_4XX:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _Retry(f"http_{status}", f"HTTP {status}: {detail}" if detail else f"HTTP {status}", retry_after)
        if status in (401, 403):
            raise Unavailable(
                f"{self.backend} backend: upstream rejected the credentials (HTTP {status}); "
                "check the configured API key"
            )
        raise InvalidArgument("params", f"rejected by the {self.backend} upstream (HTTP {status}): {detail or 'no detail'}")

    async def _before_retry(self, failure: _Retry, retry_index: int, url: str) -> None:
        """Counts and sleeps before a retry, or raises ``Unavailable`` once retries are used up."""
        if retry_index >= self.policy.max_retries:
            raise self._exhausted(failure, attempts=retry_index + 1) from None
        delay = self.policy.delay(retry_index, failure.retry_after)
        BACKEND_RETRIES.labels(backend=self.backend, reason=failure.reason).inc()
        self.retries += 1
        log.warning(
            "%s backend: %s %s; retry %d/%d in %.2f s",
            self.backend, loggable_url(url), failure.detail, retry_index + 1, self.policy.max_retries, delay,
        )
        await asyncio.sleep(delay)

    def _exhausted(self, failure: _Retry, *, attempts: int, mid_stream: bool = False) -> Unavailable:
        """The error raised when an upstream keeps failing."""
        where = "stream broke" if mid_stream else f"upstream failed after {attempts} attempt{'s' if attempts != 1 else ''}"
        return Unavailable(self.redact(f"{self.backend} backend: {where}: {failure.detail}"))

    async def _sse_json(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """Decodes the JSON events of an SSE response; stops at ``[DONE]``."""
        async for data in iter_sse_data(response.aiter_lines()):
            if data.strip() == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise Unavailable(f"{self.backend} backend: upstream sent a malformed stream event") from None
            if isinstance(event, dict) and event.get("error"):
                err = event["error"]
                message = err.get("message", "") if isinstance(err, dict) else str(err)
                raise Unavailable(self.redact(f"{self.backend} backend: upstream stream error: {shorten(message)}"))
            if isinstance(event, dict):
                yield event


def loggable_url(url: str) -> str:
    """The URL without user info or query (safe for logs)."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(u.copy_with(username=None, password=None, query=None))


def read_api_key(*, key_file: str, key_env: str, backend: str) -> str:
    """Reads the API key from ``key_file`` (wins when set) or the env var ``key_env``; "" if none."""
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{backend} backend: cannot read api_key_file {key_file!r}: {exc.strerror}") from None
        log.info("%s backend: API key read from api_key_file %s", backend, key_file)
        return key
    key = os.environ.get(key_env, "").strip() if key_env else ""
    if key:
        log.info("%s backend: API key read from env var %s", backend, key_env)
    else:
        log.info("%s backend: no API key (env var %s is unset); sending no Authorization header", backend, key_env)
    return key



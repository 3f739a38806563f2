"""Shared HTTP machinery for backends that speak OpenAI-style ``/chat/completions``.

Used by the ``openai`` backend (vLLM, KServe's HF runtime, hosted APIs) and the ``tgi``
backend (text-generation-inference's Messages API). It holds:

- ``RetryPolicy``: exponential backoff with jitter, honouring ``Retry-After``;
- ``HTTPClient``: an ``httpx.AsyncClient`` wrapper that retries 429, 5xx, timeouts and
  transport errors, maps other 4xx to ``InvalidArgument`` and exhausted retries to
  ``Unavailable``, bounds concurrency, and parses server-sent events;
- ``ChatCompletionsBackend``: ``generate`` and ``stream`` on top of it; subclasses only say
  where to POST and which extra fields to send.

Secrets: the API key is only ever put into the ``Authorization`` header. Every message that
leaves this module (exceptions, log lines) goes through ``HTTPClient.redact``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, ClassVar, Mapping, Sequence

import httpx

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent, gather_all_or_cancel
from parrot.conversation import GenerationParams
from parrot.errors import ConfigError, InvalidArgument, Unavailable
from parrot.metrics import BACKEND_RETRIES, GENERATED_TOKENS, PROMPT_TOKENS

log = logging.getLogger(__name__)

# Longest wait we accept from a server's Retry-After header.
MAX_RETRY_AFTER_S = 60.0
# Longest piece of an upstream error body we repeat in our own messages.
MAX_DETAIL_CHARS = 200
# Statuses that are retried (besides every 5xx).
RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts (``max_retries`` retries after the first try)."""

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
        step = min(self.backoff_max_s, self.backoff_initial_s * (2**retry_index))
        return max(0.0, step * random.uniform(0.5, 1.0))


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


class PrefillStripper:
    """Removes an echoed prefill from the start of streamed text.

    Servers that honour ``continue_final_message`` normally return only the continuation;
    some echo the prefill first. Text is held back while it is still a prefix of the
    prefill, then released without the prefill if it was an echo, or whole if not.
    """

    def __init__(self, prefill: str) -> None:
        self._prefill = prefill
        self._held = ""
        self._decided = not prefill

    def feed(self, delta: str) -> str:
        """Takes the next piece of text; returns what may be passed on now."""
        if self._decided:
            return delta
        self._held += delta
        if self._prefill.startswith(self._held):
            if len(self._held) < len(self._prefill):
                return ""
            self._decided, self._held = True, ""
            return ""
        self._decided = True
        out, self._held = self._held, ""
        return out[len(self._prefill):] if out.startswith(self._prefill) else out

    def flush(self) -> str:
        """At the end of the stream: text still held back was not an echo; release it."""
        out, self._held, self._decided = self._held, "", True
        return out


def strip_prefill(text: str, prefill: str) -> str:
    """Removes ``prefill`` from the start of ``text`` if the server echoed it."""
    if prefill and text.startswith(prefill):
        return text[len(prefill):]
    return text


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
        policy: RetryPolicy,
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


def sampling_fields(params: GenerationParams) -> dict[str, Any]:
    """OpenAI-style sampling fields for ``params`` (stop and seed omitted when unset)."""
    body: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def finish_reason(value: Any) -> str:
    """Our finish reason: "length" if the API says so, else "stop"."""
    return "length" if value == "length" else "stop"


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from a response's ``usage`` (0 when absent)."""
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class ChatCompletionsBackend(Backend):
    """``generate`` and ``stream`` over an OpenAI-style ``/chat/completions`` endpoint.

    Subclasses implement ``_chat_url`` and ``_make_client`` (and ``load``), and override the
    ``_request_model`` / ``_check_request`` / ``_sampling`` / ``_prefill_fields`` hooks as needed.
    """

    # Ask for a final usage chunk in streams (``stream_options.include_usage``).
    stream_usage_option: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._http: HTTPClient | None = None

    # -- hooks -----------------------------------------------------------------------------

    def _chat_url(self) -> str:
        raise NotImplementedError

    def _request_model(self) -> str:
        """The ``model`` field sent in each request."""
        return self.model_name

    def _check_request(self, request: GenerationRequest) -> None:
        """Raises if this backend cannot serve ``request`` (before anything is sent)."""

    def _sampling(self, params: GenerationParams) -> dict[str, Any]:
        """Sampling fields of the request body."""
        return sampling_fields(params)

    def _prefill_fields(self, request: GenerationRequest) -> dict[str, Any]:
        """Extra body fields when the request has a prefill."""
        return {"continue_final_message": True, "add_generation_prompt": False}

    async def _make_client(self) -> HTTPClient:
        """Builds the HTTP client (called once, lazily, if ``load`` did not)."""
        raise NotImplementedError

    # -- shared implementation ---------------------------------------------------------------

    async def _client(self) -> HTTPClient:
        if self._http is None:
            self._http = await self._make_client()
        return self._http

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body of a chat completion request."""
        messages = [m.as_dict() for m in request.messages]
        body: dict[str, Any] = {"model": self._request_model(), "messages": messages}
        body.update(self._sampling(request.params))
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body.update(self._prefill_fields(request))
        if stream:
            body["stream"] = True
            if self.stream_usage_option:
                body["stream_options"] = {"include_usage": True}
        return body

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Runs the requests concurrently (bounded by ``max_concurrency``)."""
        for r in requests:
            self._check_request(r)
        return await gather_all_or_cancel([self._generate_one(r) for r in requests])

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        http = await self._client()
        response = await http.request("POST", self._chat_url(), json_body=self.build_body(request, stream=False))
        result = self._parse_completion(response, request.prefill)
        self._count_tokens(result)
        return result

    def _parse_completion(self, response: httpx.Response, prefill: str) -> GenerationResult:
        """Turns a non-streamed chat completion into a ``GenerationResult``."""
        try:
            data = response.json()
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise Unavailable(f"{self.name} backend: upstream returned a malformed chat completion") from None
        prompt_tokens, completion_tokens = _usage(data)
        return GenerationResult(
            text=strip_prefill(text, prefill),
            finish_reason=finish_reason(choice.get("finish_reason")),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Streams one generation; the last event carries the full result."""
        self._check_request(request)
        http = await self._client()
        stripper = PrefillStripper(request.prefill)
        parts: list[str] = []
        content_chunks = 0
        reason: Any = None
        usage: tuple[int, int] | None = None
        async for event in http.stream_events(self._chat_url(), self.build_body(request, stream=True)):
            if event.get("usage"):
                usage = _usage(event)
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
                if delta:
                    content_chunks += 1
                    out = stripper.feed(delta)
                    if out:
                        parts.append(out)
                        yield StreamEvent(delta=out)
        tail = stripper.flush()
        if tail:
            parts.append(tail)
            yield StreamEvent(delta=tail)
        prompt_tokens, completion_tokens = usage if usage is not None else (0, content_chunks)
        result = GenerationResult(
            text="".join(parts),
            finish_reason=finish_reason(reason),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        self._count_tokens(result)
        yield StreamEvent(delta="", result=result)

    def _count_tokens(self, result: GenerationResult) -> None:
        GENERATED_TOKENS.labels(model=self.model_name, backend=self.name).inc(result.completion_tokens)
        PROMPT_TOKENS.labels(model=self.model_name, backend=self.name).inc(result.prompt_tokens)

    async def close(self) -> None:
        """Closes the HTTP client."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.ready = False

    def stats(self) -> dict[str, Any]:
        if self._http is None:
            return {"requests_sent": 0, "retries": 0}
        return {"requests_sent": self._http.requests_sent, "retries": self._http.retries}

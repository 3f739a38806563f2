"""Backends that speak OpenAI-style ``/chat/completions`` (the ``openai`` and ``tgi`` backends) and
the pieces the ``engine`` backend shares with them: request fields from generation parameters,
finish reasons, and removing an assistant prefill from what the model wrote.

``ChatCompletionsBackend``: ``generate`` and ``stream`` over ``HTTPClient``; subclasses only say
where to POST and which extra fields to send.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, ClassVar, Mapping, Sequence

import httpx

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent, gather_all_or_cancel
from parrot.backends.http.client import HTTPClient
from parrot.conversation import GenerationParams
from parrot.errors import Unavailable
from parrot.metrics import GENERATED_TOKENS, PROMPT_TOKENS


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

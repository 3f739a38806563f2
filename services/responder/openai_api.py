"""An OpenAI-compatible ``POST /v1/chat/completions`` (plain and streaming), ``GET /v1/models``
and ``GET /v1/models/{id}``.

Mounted on KServe's FastAPI app next to its v1/v2 routes. (KServe's own OpenAI routes need
vLLM, which is not part of this platform.) Honours vLLM's ``continue_final_message``: a final
assistant message is then a prefill the model continues. ``response_format`` other than
``text`` is refused (400): nothing here constrains decoding to JSON.

Two KServe v1 routes share these paths; one answer serves both: ``GET /v1/models`` is OpenAI's
list with KServe's ``models`` beside it, and ``GET /v1/models/<name>`` is OpenAI's model object
with KServe's readiness fields (``name``, ``ready``; 503 while the model loads).
Errors are raised and answered by ``parrot.server.http_surface`` in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from parrot.conversation import Message, Role, resolve_params, validate_messages
from parrot.errors import InvalidArgument, NotReady, ParrotError
from parrot.server.http_surface import error_body, http_error, not_found
from services.responder.service import ResponderService

log = logging.getLogger(__name__)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = ""
    messages: list[ChatMessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    continue_final_message: bool = False
    response_format: dict[str, Any] | None = None


_ROLES = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{where}.content[{i}]", "only text parts are supported")
        parts.append(part["text"])
    return "".join(parts)


def parse_chat_request(body: ChatCompletionIn, responder: ResponderService) -> tuple[list[Message], Any, str]:
    """Validates an OpenAI chat request; returns (messages, params, prefill)."""
    limits = responder.config.limits
    if body.n != 1:
        raise InvalidArgument("n", f"is {body.n}; only n=1 is supported")
    kind = (body.response_format or {}).get("type", "text")
    if kind != "text":
        raise InvalidArgument("response_format", f"type {kind!r} is not supported; allowed: text (decoding is "
                                                 "not constrained to JSON here)")
    messages = []
    for i, m in enumerate(body.messages):
        role = _ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role", f"unknown role {m.role!r}; allowed: system, user, assistant")
        messages.append(Message(role, _text(m.content, f"messages[{i}]")))
    prefill = ""
    if body.continue_final_message and messages and messages[-1].role is Role.ASSISTANT:
        prefill = messages.pop().content
    messages = validate_messages(messages, last_role=Role.USER, limits=limits, field_name="messages")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    params = resolve_params(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        default_max_tokens=responder.config.default_max_tokens,
        limits=limits,
        field_name="",  # OpenAI's error objects name the body's own field: "param": "max_tokens"
    )
    return messages, params, prefill


def mount_openai_routes(app: FastAPI, responder: ResponderService, served_name: str,
                        models_ready: Callable[[], dict[str, bool]]) -> None:
    """``models_ready()``: each KServe model served here (asker, responder, judge) and whether it is ready."""

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "parrot"}

    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatCompletionIn.model_validate(await request.json())
        except (ValidationError, ValueError, RecursionError) as e:
            raise InvalidArgument("body", f"not a chat completion request: {str(e)[:500]}") from None
        names = (served_name, responder.backend.model_name)
        if body.model and body.model not in names:
            raise not_found("model", body.model, list(names))
        messages, params, prefill = parse_chat_request(body, responder)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = body.model or served_name
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            stream = responder.respond_stream(messages, params, prefill)
            try:  # the first event before the status: a model still loading is a 503, not a broken stream
                first = await anext(stream)
            except BaseException:
                await stream.aclose()
                raise
            return ClosingStreamingResponse(_sse(first, stream, completion_id, created, model, include_usage),
                                            media_type="text/event-stream")
        result = await responder.respond(messages, params, prefill)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        }

    async def models() -> Any:
        names = list(models_ready())
        return {"object": "list", "data": [model_object(n) for n in names], "models": names}

    async def model(model_id: str) -> Any:
        ready = models_ready()
        if model_id not in ready:
            raise not_found("model", model_id, list(ready))
        if not ready[model_id]:  # KServe v1 readiness on the same path: 503 while loading
            raise NotReady(f"model {model_id!r} is loading")
        return {**model_object(model_id), "name": model_id, "ready": True}

    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", model, methods=["GET"])


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends (Starlette leaves an interrupted one to the
    garbage collector, whose clean-up then runs as a task that can be destroyed while pending)."""

    async def stream_response(self, send: Any) -> None:
        async with contextlib.aclosing(self.body_iterator):  # type: ignore[type-var]
            await super().stream_response(send)


async def _sse(first: Any, stream: AsyncIterator[Any], cid: str, created: int, model: str,
               include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None, choices: bool = True) -> str:
        body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def render(event: Any) -> list[str]:
        out = [chunk({"content": event.delta}, None)] if event.delta else []
        if event.result is not None:
            r = event.result
            out.append(chunk({}, r.finish_reason))
            if include_usage:
                out.append(chunk({}, None, {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                                            "total_tokens": r.prompt_tokens + r.completion_tokens}, choices=False))
        return out

    # aclosing: a client that hangs up closes the backend's stream here and now (which stops the
    # generation), instead of leaving it to the garbage collector as a pending task
    async with contextlib.aclosing(stream):
        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            for piece in render(first):
                yield piece
            async for event in stream:
                for piece in render(event):
                    yield piece
        except Exception as e:  # noqa: BLE001 - the status is sent: the error goes into the stream
            if not isinstance(e, ParrotError):
                log.error("unhandled error in a chat completion stream", exc_info=e)
            status, message, param, code = http_error(e)
            yield f"data: {json.dumps(error_body('/v1/chat/completions', status, message, param, code))}\n\n"
        yield "data: [DONE]\n\n"

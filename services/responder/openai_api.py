"""An OpenAI-compatible ``POST /v1/chat/completions`` (plain and streaming) and ``GET /v1/models``.

Mounted on KServe's FastAPI app next to its v1/v2 routes. (KServe's own OpenAI routes need
vLLM, which is not part of this platform.) Honours vLLM's ``continue_final_message``: a final
assistant message is then a prefill the model continues.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from parrot.conversation import Message, Role, resolve_params, validate_messages
from parrot.errors import InvalidArgument, ParrotError
from services.responder.service import ResponderService


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


_ROLES = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": None}})


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
        field_name="request",
    )
    return messages, params, prefill


def mount_openai_routes(app: FastAPI, responder: ResponderService, served_name: str) -> None:
    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatCompletionIn.model_validate(await request.json())
        except (ValidationError, ValueError) as e:
            return _error(400, f"invalid request body: {str(e)[:500]}")
        try:
            messages, params, prefill = parse_chat_request(body, responder)
        except InvalidArgument as e:
            return _error(400, str(e), param=e.field)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = body.model or served_name
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            stream = responder.respond_stream(messages, params, prefill)
            return StreamingResponse(
                _sse(stream, completion_id, created, model, include_usage), media_type="text/event-stream"
            )
        try:
            result = await responder.respond(messages, params, prefill)
        except ParrotError as e:
            return _error(e.http_status, str(e), kind="server_error" if e.http_status >= 500 else "invalid_request_error")
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
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": 0, "owned_by": "parrot"}]}

    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])


async def _sse(stream: AsyncIterator[Any], cid: str, created: int, model: str, include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None, choices: bool = True) -> str:
        body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
        async for event in stream:
            if event.delta:
                yield chunk({"content": event.delta}, None)
            if event.result is not None:
                yield chunk({}, event.result.finish_reason)
                if include_usage:
                    r = event.result
                    yield chunk({}, None, {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                                           "total_tokens": r.prompt_tokens + r.completion_tokens}, choices=False)
    except ParrotError as e:
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"

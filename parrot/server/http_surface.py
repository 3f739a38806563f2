"""The HTTP side's one error map, and the ASGI middleware every HTTP request of a model service passes.

The gRPC side maps each ``ParrotError`` to its status code in one place (``interceptors``); this is
the same for HTTP. Two error shapes, chosen by the route:

- the OpenAI routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models[/<id>]``):
  ``{"error": {"message", "type", "param", "code"}}``, as OpenAI's SDKs expect;
- KServe's v1/v2 routes and the rest: KServe's ``{"error": "<message>"}``.

``HttpSurface`` (pure ASGI, so it adds no task of its own around a request) does per request:
bearer auth on POSTs (when a token is set), the error map for anything a route raises (an
unexpected error is a 500 with no detail, logged, and the keep-alive connection stays usable:
nothing propagates to uvicorn, which would reset it), cancellation of the route when the client
hangs up after sending its request (a generation stops instead of running to the end), and
``parrot_http_requests_total{route,method,code}`` / ``parrot_http_latency_seconds``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, Awaitable, Callable

from starlette.requests import ClientDisconnect

from parrot.errors import InvalidArgument, LimitExceeded, NotFound, ParrotError
from parrot.metrics import HTTP_LATENCY, HTTP_REQUESTS, child
from parrot.server.interceptors import auth_failed

log = logging.getLogger(__name__)

OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
#: The ``code`` label of a request whose client hung up before an answer was sent (nginx's convention).
CLIENT_CLOSED = 499

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 412: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def is_openai_path(path: str) -> bool:
    """The OpenAI routes; ``/v1/models/<name>:predict`` and the like stay KServe's."""
    return path in OPENAI_PATHS or (path.startswith("/v1/models/") and ":" not in path)


def http_error(exc: BaseException) -> tuple[int, str, str | None, str]:
    """(HTTP status, message, param, code) for an exception: a ParrotError's own status and message;
    anything else 500 with a generic message (the detail goes to the log, never to the caller)."""
    if isinstance(exc, LimitExceeded):  # will not pass on retry: a 4xx that clients do not retry
        return 400, str(exc), exc.field, "limit_exceeded"
    if isinstance(exc, InvalidArgument):
        return 400, str(exc), exc.field, "invalid_argument"
    if isinstance(exc, ParrotError):
        return exc.http_status, str(exc), None, getattr(exc, "http_code", None) or exc.code.name.lower()
    return 500, "internal error; see the server log", None, "internal_error"


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The error body for ``path``: OpenAI's error object on the OpenAI routes, else KServe's."""
    if is_openai_path(path):
        kind = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return {"error": message}


def error_response(path: str, exc: BaseException) -> Any:
    """A JSONResponse for ``exc`` in the shape of ``path``'s surface."""
    from fastapi.responses import JSONResponse

    status, message, param, code = http_error(exc)
    return JSONResponse(status_code=status, content=error_body(path, status, message, param, code))


def not_found(what: str, name: str, allowed: list[str]) -> NotFound:
    """NotFound for an unknown name, listing the names served; on HTTP its code is ``<what>_not_found``."""
    exc = NotFound(f"{what} {name!r} does not exist; served here: {', '.join(allowed)}")
    exc.http_code = f"{what}_not_found"  # type: ignore[attr-defined]
    return exc


class HttpSurface:
    """ASGI middleware: auth, the error map, cancellation on hang-up and request metrics (see the module doc)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None = None) -> None:
        self.app = app
        self._token = token.encode() if token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        state: dict[str, Any] = {"status": None, "done": False}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            refused = self._token is not None and scope["method"] == "POST" and self._refusal(scope)
            if refused:
                client = scope.get("client") or ("", 0)
                auth_failed("http", refused, scope["path"], f"{client[0]}:{client[1]}")
                await _send_json(tracked_send, 401, error_body(scope["path"], 401, "missing or invalid bearer token",
                                                               code="invalid_api_key"),
                                 headers=((b"www-authenticate", b"Bearer"),))
            else:
                await self._run(scope, receive, tracked_send, state)
        except Exception as exc:  # noqa: BLE001 - the one place HTTP errors become responses
            await self._answer_error(scope, receive, tracked_send, state, exc)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates only: bounded labels
            code = state["status"] or CLIENT_CLOSED
            child(HTTP_REQUESTS, route, scope["method"], str(code)).inc()
            child(HTTP_LATENCY, route, scope["method"]).observe(time.monotonic() - t0)

    def _refusal(self, scope: dict) -> str | None:
        """None when the request carries the token; else why not ("missing" or "invalid")."""
        header = None
        for key, value in scope.get("headers") or ():
            if key == b"authorization":
                header = value.decode("latin-1")
        if header is None:
            return "missing"
        supplied = header[len("Bearer "):].encode() if header.startswith("Bearer ") else b""
        return None if hmac.compare_digest(supplied, self._token or b"") else "invalid"

    async def _run(self, scope: dict, receive: Callable, send: Callable, state: dict) -> None:
        """Runs the route in a task that is cancelled if the client disconnects once its request is in."""
        body_in = asyncio.Event()
        hung_up = asyncio.Event()

        async def app_receive() -> dict:
            if body_in.is_set():  # later reads (a streaming response listening for a disconnect) wait here
                await hung_up.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                hung_up.set()
            elif not message.get("more_body", False):
                body_in.set()
            return message

        app_task = asyncio.ensure_future(self.app(scope, app_receive, send))

        async def watch() -> None:
            await body_in.wait()
            message = await receive()  # the server answers a disconnect, or one once the response is complete
            while message["type"] != "http.disconnect":
                message = await receive()
            hung_up.set()
            if not state["done"]:
                app_task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.shield(app_task)
        except asyncio.CancelledError:
            if not app_task.cancelled() or not hung_up.is_set():
                app_task.cancel()
                raise  # the server is stopping: not ours to swallow
            log.info("client disconnected; request cancelled", extra={"path": scope["path"]})
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _answer_error(self, scope: dict, receive: Callable, send: Callable, state: dict, exc: Exception) -> None:
        if state["status"] is not None and isinstance(exc, (OSError, ClientDisconnect)):
            return  # the client hung up mid-answer: nobody to answer
        status = http_error(exc)[0]
        if status >= 500 and not isinstance(exc, ParrotError):
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
        if state["status"] is None:
            await error_response(scope["path"], exc)(scope, receive, send)
        elif not state["done"]:  # a streamed body had started: end it cleanly, the connection stays usable
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Callable, status: int, body: dict, headers: tuple = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def install(app: Any, token: str | None) -> None:
    """Adds ``HttpSurface`` to a FastAPI app (before it serves its first request), and answers the
    framework's own errors (no such route, wrong method, a body that fails the route's schema) in
    the same shapes: a body that is not JSON or not the schema is a 400, as it is on every route."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def http_exception(request: Any, exc: HTTPException) -> Any:
        return JSONResponse(status_code=exc.status_code, headers=getattr(exc, "headers", None),
                            content=error_body(request.url.path, exc.status_code, str(exc.detail)))

    async def validation_error(request: Any, exc: RequestValidationError) -> Any:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5])
        message = f"the request body does not match the route's schema: {problems}"[:1000]
        return JSONResponse(status_code=400, content=error_body(request.url.path, 400, message, code="invalid_body"))

    app.add_exception_handler(HTTPException, http_exception)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(HttpSurface, token=token)

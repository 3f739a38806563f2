"""Who may see the run browser: the coordinator's bearer token, sent as a header or through a login form.

A browser logs in once (POST /ui/login with the token); it then holds a cookie with an HMAC of
the token, never the token itself, so no page, log line or cookie store carries the token. The
cookie is HttpOnly and SameSite=Strict (a page of another site cannot act with it), and the
actions (cancel, resume) also refuse a cross-site Origin. Without a configured token the
coordinator's gRPC API is open and so is the page (the server logs a warning at start).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "parrot_ui"
_CONTEXT = b"parrot-web-ui-session-v1"


def session_value(token: str) -> str:
    """The cookie value for a token: an HMAC of a fixed context keyed by the token."""
    return hmac.new(token.encode(), _CONTEXT, hashlib.sha256).hexdigest()


class TokenAuth:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self._session = session_value(token) if token else None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allowed(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.check_token(header[len("Bearer "):].strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and self._session is not None and hmac.compare_digest(cookie, self._session)

    @staticmethod
    def refusal_reason(request: web.Request) -> str:
        """``missing`` (no token, no session cookie) or ``invalid``: the labels of parrot_auth_failures_total."""
        return "invalid" if request.headers.get("Authorization") or request.cookies.get(COOKIE) else "missing"

    def login(self, response: web.StreamResponse, secure: bool) -> None:
        assert self._session is not None
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", secure=secure, path="/ui")


def same_origin(request: web.Request) -> bool:
    """False for a state-changing request that names another site as its Origin (or Referer)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def safe_next(target: str) -> str:
    """Where to go after logging in: only a page of the run browser itself."""
    return target if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target else "/ui/"

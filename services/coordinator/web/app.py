"""The coordinator's HTTP port as an aiohttp application: /metrics (open, for Prometheus) and the
run browser under /ui/ (behind the token). Handlers are thin: read through ``runs`` / ``views``,
render a Jinja template; domain errors become clear pages (404, 400, 409), a slow or failing
object store becomes a banner (503), anything else a generic 500 page with the detail in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

from parrot.errors import FailedPrecondition, InvalidArgument, NotFound, ParrotError, Unavailable
from parrot.metrics import HTTP_LATENCY, HTTP_REQUESTS, child
from parrot.server.interceptors import auth_failed
from parrot.storage import StorageError
from services.coordinator.web import WebConfig
from services.coordinator.web.auth import TokenAuth, safe_next, same_origin
from services.coordinator.web.events import stream_runs
from services.coordinator.web.runs import Filters, IndexCache, Lru, finished_key, active_rows, list_runs, run_row, state_name, unit_record
from services.coordinator.web import views

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
CHART_JS = STATIC / "vendor" / "uPlot.iife.min.js"
T = TypeVar("T")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
# (method, path, WebUI handler); /ui/static/ and the 404 page are added after these.
ROUTES = (
    ("GET", "/ui/", "runs_page"),
    ("GET", "/ui/login", "login_page"),
    ("POST", "/ui/login", "login"),
    ("POST", "/ui/logout", "logout"),
    ("GET", "/ui/events", "events"),
    ("GET", "/ui/api/runs", "runs_json"),
    ("GET", "/ui/runs/{run_id}", "run_page"),
    ("GET", "/ui/runs/{run_id}/conversations", "conversations_page"),
    ("GET", "/ui/runs/{run_id}/conversations/{index}", "conversation_page"),
    ("POST", "/ui/runs/{run_id}/cancel", "cancel"),
    ("POST", "/ui/runs/{run_id}/resume", "resume"),
    ("GET", "/ui/compare", "compare_page"),
    ("GET", "/ui/datasets", "datasets_page"),
)
STATUS = {NotFound: 404, InvalidArgument: 400, FailedPrecondition: 409}
TITLES = {404: "not found", 400: "bad request", 409: "not possible now", 403: "not allowed", 429: "too many runs"}


class StoreDown(Exception):
    """The object store did not answer in time or failed: the page shows a banner."""


def _templates() -> Any:
    import jinja2
    import markupsafe

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"
    env.filters["pct"] = lambda x: f"{x:g}"  # as the page's script prints it: 100, 12.5
    env.filters["signed"] = lambda x: "–" if x is None else f"{x:+.2f}"
    env.filters["duration"] = _duration
    env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "–"
    # JSON for <script type="application/json">: not HTML-escaped (the browser does not decode
    # entities there), but "<", ">" and "&" as \\u escapes so no text can close the element.
    env.filters["tojson_safe"] = lambda x: markupsafe.Markup(
        json.dumps(x, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return env


def _duration(s: Any) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class WebUI:
    def __init__(self, manager: Any, config: WebConfig, auth_token: str | None, tls: bool = False) -> None:
        self.manager = manager
        self.config = config
        self.auth = TokenAuth(auth_token)
        self.tls = tls
        self.env = _templates()
        self.indexes = IndexCache(config.index_cache_runs)
        self.views = Lru(4 * config.index_cache_runs)  # run pages and comparisons of finished runs
        self.stopping = asyncio.Event()

    # ---- plumbing -----------------------------------------------------------------------

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        ctx.setdefault("banner", None)
        html = self.env.get_template(template).render(
            auth=self.auth.enabled, charts=CHART_JS.is_file(), path=request.path, **ctx)
        return web.Response(text=html, status=status, content_type="text/html")

    async def store(self, aw: Awaitable[T]) -> T:
        """Awaits a read of the object store, at most ``store_timeout_s``."""
        try:
            return await asyncio.wait_for(aw, self.config.store_timeout_s)
        except (asyncio.TimeoutError, StorageError, Unavailable, OSError) as e:
            raise StoreDown(str(e) or type(e).__name__) from e

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """Counts and times every request by route template (parrot_http_requests_total /
        parrot_http_latency_seconds, as the model services' HTTP routes), logs it at DEBUG."""
        t0 = time.monotonic()
        status = 500
        try:
            response = await self._dispatch(request, handler)
            status = response.status
            return response
        except web.HTTPException as e:  # redirects and refusals raised by the handlers
            status = e.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            elapsed = time.monotonic() - t0
            child(HTTP_REQUESTS, route, request.method, str(status)).inc()
            child(HTTP_LATENCY, route, request.method).observe(elapsed)
            log.debug("web request", extra={"route": route, "method": request.method, "status": status,
                                            "ms": round(1000 * elapsed, 1)})

    async def _dispatch(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        if request.path.startswith("/ui/static/") or request.path in ("/ui/login", "/metrics", "/favicon.ico"):
            response = await handler(request)
        elif not self.auth.allowed(request):
            auth_failed("http", self.auth.refusal_reason(request), f"{request.method} {request.path}", str(request.remote))
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                response = self.render(request, "login.html", status=401, next=safe_next(request.path_qs), failed=False,
                                       title="Log in", login_form=True)
            else:
                response = web.Response(status=401, text="401: send the coordinator's token (Authorization: Bearer ...)",
                                        headers={"WWW-Authenticate": 'Bearer realm="parrot"'})
        else:
            response = await self._guarded(request, handler)
        if request.path.startswith("/ui"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            if not request.path.startswith("/ui/static/"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _guarded(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except StoreDown as e:
            log.warning("web page: object store unavailable", extra={"path": request.path, "error": str(e)})
            return self.render(request, "error.html", status=503, title="Object store unavailable", message=None,
                               banner=f"The object store is not answering ({_clip(str(e))}). Runs in memory are "
                                      "shown on the runs page; try again when the store is back.")
        except ParrotError as e:
            status = next((s for cls, s in STATUS.items() if isinstance(e, cls)), getattr(e, "http_status", 500))
            return self.render(request, "error.html", status=status, title=f"{status}: {TITLES.get(status, 'error')}",
                               message=str(e))
        except Exception:  # noqa: BLE001 - the page says something went wrong; the log has the trace
            log.exception("web page failed", extra={"path": request.path})
            return self.render(request, "error.html", status=500, title="500: internal error",
                               message="The page could not be built; the coordinator's log has the details.")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        r = app.router
        r.add_get("/", _to_ui)
        r.add_get("/ui", _to_ui)
        for method, path, name in ROUTES:
            r.add_route(method, path, getattr(self, name))
        r.add_static("/ui/static/", STATIC, follow_symlinks=False)
        app.router.add_route("*", "/ui/{tail:.*}", self.not_found)
        return app

    # ---- pages --------------------------------------------------------------------------

    def _page(self, request: web.Request) -> int:
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            raise InvalidArgument("page", f"{request.query.get('page')!r} is not a page number (1, 2, ...)") from None
        if page < 1:
            raise InvalidArgument("page", f"is {page}; pages start at 1")
        return page - 1

    async def runs_page(self, request: web.Request) -> web.Response:
        page, size = self._page(request), self.config.page_size
        kind = request.query.get("kind", "")
        if kind not in ("", "evaluation", "collection", "negatives"):
            raise InvalidArgument("kind", f"{kind!r}; allowed evaluation, collection, negatives")
        try:
            rows, total = await self.store(list_runs(self.manager, page, size, kind))
            banner = None
        except StoreDown as e:
            rows, total = active_rows(self.manager), len(self.manager.executors)
            banner = (f"The object store is not answering ({_clip(str(e))}); showing only the runs executing in this "
                      "coordinator.")
            rows = [r for r in rows if not kind or r["kind"] == kind]
        return self.render(request, "runs.html", status=503 if banner else 200, rows=rows, total=total, page=page + 1,
                           pages=max(1, -(-total // size)), banner=banner, kind=kind,
                           title="Datasets" if kind else "Runs")

    async def datasets_page(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/?kind=collection")

    async def runs_json(self, request: web.Request) -> web.Response:
        page = self._page(request)
        rows, total = await self.store(list_runs(self.manager, page, self.config.page_size))
        return web.json_response({"runs": rows, "total": total, "page": page + 1})

    async def _run(self, request: web.Request) -> Any:
        return await self.store(self.manager.get(request.match_info["run_id"]))

    async def run_page(self, request: web.Request) -> web.Response:
        run = await self._run(request)
        row = run_row(run)
        kind = row["kind"]
        build = views.evaluation_view if kind == "evaluation" else views.dataset_view
        key = finished_key(self.manager, run)
        if key is None:
            body = await self.store(build(self.manager.store, run))
        else:
            body = await self.store(self.views.get(("run", key), lambda: build(self.manager.store, run)))
        return self.render(request, "run.html", run=row, body=body, title=run.id,
                           resumable=state_name(run.state) in ("failed", "cancelled", "succeeded"))

    async def conversations_page(self, request: web.Request) -> web.Response:
        run = await self._run(request)
        filters = Filters.parse(request.query)
        page, size = self._page(request), self.config.page_size
        index = await self.store(self.indexes.get_index(self.manager, run))
        matched = [r for r in index.rows if filters.keep(r, index.units[r.index])]
        rows = views.page_rows(index, matched[page * size:(page + 1) * size])
        log.debug("conversations page", extra={"run_id": run.id, "rows": len(index.rows), "matched": len(matched)})
        return self.render(request, "conversations.html", run=run_row(run), rows=rows, total=len(index.rows),
                           matched=len(matched), page=page + 1, pages=max(1, -(-len(matched) // size)),
                           filters=filters, categories=index.categories, kind=index.kind, title=f"{run.id}: conversations",
                           query={k: v for k, v in request.query.items() if k != "page"})

    async def conversation_page(self, request: web.Request) -> web.Response:
        run = await self._run(request)
        try:
            i = int(request.match_info["index"])
        except ValueError:
            raise NotFound(f"no conversation {request.match_info['index']!r} in run {run.id}") from None
        index = await self.store(self.indexes.get_index(self.manager, run))
        if not 0 <= i < len(index.units):
            raise NotFound(f"run {run.id} has conversations 0..{len(index.units) - 1}; there is no {i}")
        rec = await self.store(unit_record(self.manager, run.id, i))
        view = views.conversation_view(index.kind, index.units[i], rec)
        return self.render(request, "conversation.html", run=run_row(run), unit=index.units[i], row=index.rows[i],
                           conv=view, kind=index.kind, index=i, count=len(index.units),
                           title=f"{run.id}: conversation {index.rows[i].id}")

    async def compare_page(self, request: web.Request) -> web.Response:
        from parrot.reports import load_run

        a_id, b_id = request.query.get("a", "").strip(), request.query.get("b", "").strip()
        if not a_id or not b_id:
            rows, _ = await self.store(list_runs(self.manager, 0, 200))
            choices = [r for r in rows if r["kind"] == "evaluation" and r["state"] == "succeeded"]
            return self.render(request, "compare.html", view=None, choices=choices, title="Compare runs",
                               a_id=a_id, b_id=b_id)
        run_a, run_b = await self.store(self.manager.get(a_id)), await self.store(self.manager.get(b_id))

        async def build() -> dict[str, Any]:
            a, b = await load_run(self.manager.store, a_id), await load_run(self.manager.store, b_id)
            index_a = await self.indexes.get_index(self.manager, run_a)
            return await asyncio.to_thread(views.compare_view, a, b, index_a)  # keeps the event loop free

        key_a, key_b = finished_key(self.manager, run_a), finished_key(self.manager, run_b)
        if key_a is None or key_b is None:
            view = await self.store(build())
        else:
            view = await self.store(self.views.get(("compare", key_a, key_b), build))
        return self.render(request, "compare.html", view=view, choices=[], title=f"Compare {a_id} and {b_id}",
                           a_id=a_id, b_id=b_id)

    async def not_found(self, request: web.Request) -> web.Response:
        return self.render(request, "error.html", status=404, title="404: not found",
                           message=f"There is no page {request.path}.")

    # ---- actions ------------------------------------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        run_id = request.match_info["run_id"]
        run = await self.manager.cancel(run_id)
        log.info("run cancelled from the web page", extra={"run_id": run_id, "state": state_name(run.state)})
        raise web.HTTPSeeOther(f"/ui/runs/{run_id}")

    async def resume(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        run_id = request.match_info["run_id"]
        form = await request.post()
        await self.manager.resume(run_id, retry_failed=form.get("retry_failed") in ("1", "on"))
        log.info("run resumed from the web page", extra={"run_id": run_id})
        raise web.HTTPSeeOther(f"/ui/runs/{run_id}")

    @staticmethod
    def _check_origin(request: web.Request) -> None:
        if not same_origin(request):
            log.warning("web action refused: cross-site request", extra={"path": request.path, "peer": request.remote})
            raise web.HTTPForbidden(text="403: cross-site request refused")

    # ---- login --------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html", next=safe_next(request.query.get("next", "/ui/")), failed=False,
                           title="Log in", login_form=True)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        target = safe_next(str(form.get("next", "/ui/")))
        if not self.auth.enabled:
            raise web.HTTPSeeOther(target)
        if not self.auth.check_token(str(form.get("token", ""))):
            auth_failed("http", "invalid", "POST /ui/login", str(request.remote))
            return self.render(request, "login.html", status=401, next=target, failed=True, title="Log in",
                               login_form=True)
        log.info("web login", extra={"peer": request.remote})
        response = web.HTTPSeeOther(target)
        self.auth.login(response, secure=self.tls)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/ui/login")
        response.del_cookie("parrot_ui", path="/ui")
        raise response

    # ---- live -------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await stream_runs(request, self.manager, self.stopping)


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(manager: Any, config: WebConfig, auth_token: str | None, tls: bool = False) -> tuple[web.Application, WebUI]:
    ui = WebUI(manager, config, auth_token, tls)
    app = ui.app()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/favicon.ico", _no_content)
    return app, ui

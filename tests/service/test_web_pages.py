"""The run browser's pages in process: the coordinator's aiohttp application on loopback, over a
real RunManager and a local object store holding finished runs (bench/web_runs.py writes them
with the coordinator's own output code).

Covers what a browser is not needed for: the token (header, login form, cookie; 401 without;
the token never in a page, a cookie or a log line), clear pages for bad input (unknown run: 404;
a run without judgments; a bad filter: 400; a store that is down: a banner, not a trace),
server-side paging and filters, compare's deltas, and cross-site actions refused.
The real browser tests are in test_web_browser.py.
"""

from __future__ import annotations

import logging
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.web_runs import write_eval_run
from parrot.errors import Unavailable
from parrot.storage import open_store
from services.coordinator.service import CoordinatorConfig, RunManager
from services.coordinator.web import WebConfig
from services.coordinator.web.app import build_app
from services.coordinator.web.auth import COOKIE

TOKEN = "web-test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
A, B, NOJUDGE = "run-20261206-100000-aaaaaa", "run-20261206-100001-bbbbbb", "run-20261206-100002-cccccc"


class FlakyStore:
    """A store that can be switched off: every call then fails as a real outage does."""

    def __init__(self, inner) -> None:
        self._inner, self.down = inner, False

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        async def call(*args, **kwargs):
            if self.down:
                raise Unavailable("object store: connection refused (test outage)")
            return await attr(*args, **kwargs)
        return call

    def url(self, key: str) -> str:
        return self._inner.url(key)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return (tmp_path_factory.mktemp("webstore") / "store").as_uri()


@pytest.fixture(scope="module")
async def runs(store_url):
    await write_eval_run(store_url, n=120, turns=4, seed=1, offset=-1.0, model_id="weaker", run_id=A, failed=3)
    await write_eval_run(store_url, n=120, turns=4, seed=2, offset=0.5, model_id="stronger", run_id=B)
    await write_eval_run(store_url, n=5, turns=2, seed=3, model_id="nojudge", run_id=NOJUDGE, judged=False)
    return store_url


@pytest.fixture
async def web(runs):
    store = FlakyStore(open_store(runs, retry_for_s=0))
    manager = RunManager(store, CoordinatorConfig(store_url=runs, check_targets=False))
    app, _ = build_app(manager, WebConfig(page_size=50, store_timeout_s=2.0), TOKEN)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    client.store = store
    yield client
    await client.close()


async def get(client, path: str, **kw):
    r = await client.get(path, headers={**BEARER, "Accept": "text/html"}, **kw)
    return r.status, await r.text()


async def test_no_token_is_refused_and_the_login_form_sets_a_cookie_without_the_token(web, caplog):
    from parrot.metrics import AUTH_FAILURES

    caplog.set_level(logging.DEBUG)
    before = {r: AUTH_FAILURES.labels("http", r)._value.get() for r in ("missing", "invalid")}
    r = await web.get("/ui/", headers={"Accept": "text/html"})
    assert r.status == 401 and 'id="login"' in await r.text()
    r = await web.get("/ui/api/runs")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await web.get("/ui/runs/" + A, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status == 401
    r = await web.post("/ui/login", data={"token": "not-it", "next": "/ui/"}, allow_redirects=False)
    assert r.status == 401 and "not the coordinator" in await r.text()
    # every refusal counted (as the gRPC ones are) and logged without the token
    assert AUTH_FAILURES.labels("http", "missing")._value.get() - before["missing"] == 2
    assert AUTH_FAILURES.labels("http", "invalid")._value.get() - before["invalid"] == 2
    assert any(rec.getMessage() == "authentication failed" and rec.method == "GET /ui/api/runs" for rec in caplog.records)
    r = await web.post("/ui/login", data={"token": TOKEN, "next": "https://evil.example/"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ui/"  # never sends the browser elsewhere
    cookie = r.cookies[COOKIE]
    assert cookie.value and TOKEN not in cookie.value and cookie["httponly"] and cookie["samesite"] == "Strict"
    r = await web.get("/ui/", headers={"Accept": "text/html"})  # the client keeps the cookie
    assert r.status == 200
    pages = [await (await web.get(p)).text() for p in ("/ui/", f"/ui/runs/{A}", f"/ui/runs/{A}/conversations/0")]
    assert all(TOKEN not in p for p in pages)
    assert not [rec for rec in caplog.records if TOKEN in rec.getMessage() or TOKEN in str(rec.__dict__)]
    assert (await web.get("/metrics")).status == 200  # Prometheus scrapes without the token, as before


async def test_unknown_run_and_conversation_get_a_404_page(web):
    from parrot.metrics import HTTP_REQUESTS

    counted = HTTP_REQUESTS.labels("/ui/runs/{run_id}", "GET", "404")
    before = counted._value.get()
    status, html = await get(web, "/ui/runs/run-20990101-000000-ffffff")
    assert status == 404 and "does not exist" in html and "Traceback" not in html
    assert counted._value.get() == before + 1  # counted by route template, not by run id
    status, html = await get(web, f"/ui/runs/{A}/conversations/100000")
    assert status == 404 and "there is no 100000" in html
    status, html = await get(web, "/ui/runs/..%2Fetc")
    assert status in (400, 404) and "Traceback" not in html
    status, html = await get(web, "/ui/no/such/page")
    assert status == 404


async def test_run_without_judgments_says_so(web):
    status, html = await get(web, f"/ui/runs/{NOJUDGE}")
    assert status == 200 and 'id="no-judgments"' in html and "no turn was graded" in html


async def test_store_outage_is_a_banner_not_a_trace(web):
    web.store.down = True
    try:
        for path in ("/ui/", f"/ui/runs/{A}", f"/ui/runs/{A}/conversations", f"/ui/compare?a={A}&b={B}"):
            status, html = await get(web, path)
            assert status == 503, path
            assert 'id="banner"' in html and "object store is not answering" in html, path
            assert "Traceback" not in html and "File \"" not in html, path
    finally:
        web.store.down = False
    status, _ = await get(web, "/ui/")
    assert status == 200


async def test_runs_are_listed_by_kind(web):
    status, html = await get(web, "/ui/?kind=evaluation")
    assert status == 200 and "3 evaluation runs" in html and all(f'id="run-{r}"' in html for r in (A, B, NOJUDGE))
    status, html = await get(web, "/ui/?kind=collection")
    assert status == 200 and "0 collection runs" in html and 'id="run-' not in html
    status, html = await get(web, "/ui/?kind=bogus")
    assert status == 400 and "allowed evaluation, collection, negatives" in html


async def test_conversations_are_paged_and_filtered_on_the_server(web):
    status, html = await get(web, f"/ui/runs/{A}/conversations")
    assert status == 200 and "120 of 120 conversations" in html and "page 1 of 3" in html
    assert len(re.findall(r'<tr class="status-', html)) == 50
    status, html = await get(web, f"/ui/runs/{A}/conversations?page=3")
    assert len(re.findall(r'<tr class="status-', html)) == 20
    status, html = await get(web, f"/ui/runs/{A}/conversations?status=failed")
    assert "3 of 120 conversations" in html and "not graded: UNAVAILABLE" in html
    status, html = await get(web, f"/ui/runs/{A}/conversations?category=math&score_below=5")
    matched = int(re.search(r'id="matched">(\d+) of', html).group(1))
    assert 0 < matched < 15  # 15 math sessions
    rows = re.findall(r"<td>(\d+)</td><td>math</td>", html)
    assert len(rows) == matched
    status, html = await get(web, f"/ui/runs/{A}/conversations?score_below=abc")
    assert status == 400 and "score_below" in html
    status, html = await get(web, f"/ui/runs/{A}/conversations?page=0")
    assert status == 400


async def test_conversation_shows_every_turn_with_score_and_explanation(web):
    status, html = await get(web, f"/ui/runs/{A}/conversations/7")
    assert status == 200
    scores = re.findall(r'class="score" data-score="([\d.]+)"', html)
    assert len(scores) == 4
    assert html.count("synthetic judgment of turn") == 4


async def test_compare_shows_per_turn_deltas_and_where_runs_differ_most(web, runs):
    from parrot.reports import load_run
    from parrot.reports.build import per_turn_series

    status, html = await get(web, f"/ui/compare?a={A}&b={B}")
    assert status == 200
    store = open_store(runs)
    a, b = per_turn_series(await load_run(store, A)), per_turn_series(await load_run(store, B))
    table = html[html.index('id="deltas"'):]
    for t, ma, mb in zip(a["turn"], a["mean"], b["mean"]):
        assert f"<td>{t}</td><td class=\"num\">{ma:.2f}</td><td class=\"num\">{mb:.2f}</td>" in table
        assert f"{mb - ma:+.2f}" in table
    differ = html[html.index('id="differ"'):]
    deltas = [abs(float(x)) for x in re.findall(r'<td class="num">([+-][\d.]+)</td></tr>', differ.split("</table>")[0])]
    assert len(deltas) == 20 and deltas == sorted(deltas, reverse=True) and deltas[0] > 0
    status, html = await get(web, f"/ui/compare?a={A}&b={NOJUDGE}")
    assert status == 409 and "share no graded session turn" in html


async def test_actions_refuse_a_cross_site_origin(web):
    r = await web.post(f"/ui/runs/{A}/resume", headers={**BEARER, "Origin": "https://evil.example"},
                       allow_redirects=False)
    assert r.status == 403
    r = await web.post(f"/ui/runs/{A}/resume", headers=BEARER, allow_redirects=False)
    assert r.status == 409 and "only failed or cancelled runs can be resumed" in await r.text()


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_http_port_serves_the_page_only_when_enabled(runs, enabled, monkeypatch):
    """--no-web: the HTTP port is prometheus_client's server again (/metrics alone); --web: aiohttp with both."""
    import httpx

    from parrot.client import free_port
    from services.coordinator.server import CoordinatorServeConfig, _HttpPort

    port = free_port()
    manager = RunManager(open_store(runs), CoordinatorConfig(store_url=runs, check_targets=False))
    monkeypatch.setenv("PARROT_TEST_WEB_TOKEN", TOKEN)
    cfg = CoordinatorServeConfig(coordinator=manager.config, host="127.0.0.1", http_port=port,
                                 auth_token_env="PARROT_TEST_WEB_TOKEN", web=WebConfig(enabled=enabled))
    http = _HttpPort(cfg, manager, cfg.auth_token())
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 200
            page = await client.get("/ui/", headers=BEARER)
            # prometheus_client's server answers every path with the metrics: no page there
            assert ('id="runs"' in page.text) is enabled and ("parrot_" in page.text) is not enabled
    finally:
        await http.stop()

"""The run browser in a real headless browser (chromium + selenium) against a real coordinator
process on loopback, with model services on the echo backend and finished and running runs.

What a user does: is refused without the token and logs in; watches the runs list update while a
run progresses (server-sent events, no reload); cancels a run and resumes it with the buttons;
reads a conversation with every turn's score, instruction checks and drafted-turn provenance;
sees the per-turn chart of a run; compares two runs and sees the per-turn deltas.
Screenshots of the main pages are taken on the way; PARROT_UPDATE_SCREENSHOTS=1 copies them to
docs/img/web/ (README shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import grpc
import httpx
import pytest

from bench.web_runs import write_eval_run
from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc
from tests.helpers.browser import requires_browser, save_png, start_browser
from tests.conftest import REPO, start_service
from tests.process.test_coordinator import QUESTIONS, jsonl, start_coordinator

CHARTS_JS = REPO / "services" / "coordinator" / "web" / "static" / "vendor" / "uPlot.iife.min.js"
requires_charts = pytest.mark.skipif(
    not CHARTS_JS.is_file() and not os.environ.get("CI"),
    reason="uPlot not fetched (run scripts/get_web_assets.sh; setup.sh does); in CI this is a failure, not a skip")
pytestmark = [requires_browser, requires_charts, pytest.mark.timeout(180)]

TOKEN = "browser-test-token-0123456789abcdef"
MD = [("authorization", f"Bearer {TOKEN}")]
A, B = "run-20261206-090000-aaaaaa", "run-20261206-090001-bbbbbb"
DOCS = REPO / "docs" / "img" / "web"

# Question 103 (8 turns) carries instructions (one the echo answers follow from turn 1 on, one they
# miss from turn 3 on) and turns drafted by the asker.
CHECKED = [dict(q) for q in QUESTIONS]
CHECKED[2] = {**CHECKED[2], "instructions": [{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, None,
                                             {"instruction_id_list": ["keywords:existence"],
                                              "kwargs": [{"keywords": ["snowflake"]}]}] + [None] * 5,
              "turn_provenance": [{"turn": t, "source": "original" if t <= 2 else "asker", "asker_model": "echo"
                                   if t > 2 else "", "review": "accepted" if t > 2 else ""} for t in range(1, 9)]}


def eval_spec(n: int, name: str, concurrency: int = 0, questions=None) -> cpb.RunSpec:
    rows = questions or [{"question_id": 500 + i, "category": ["writing", "math"][i % 2],
                          "turns": [f"Question {i}: plan a trip.", "Make it cheaper."]} for i in range(n)]
    return cpb.RunSpec(name=name, concurrency=concurrency, evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="questions.jsonl", content=jsonl(rows)), model_id="echo-model"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webui")
    store = (tmp / "store").as_uri()
    asyncio.run(write_eval_run(store, n=40, turns=8, seed=1, offset=-1.2, model_id="model-a", name="nightly", run_id=A,
                               failed=2))
    asyncio.run(write_eval_run(store, n=40, turns=8, seed=2, offset=0.3, model_id="model-b", name="nightly", run_id=B))
    models = start_service(tmp, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge",
                           env_extra={"PARROT_ECHO_DELAY_S": "0.05"})
    token_file = tmp / "token"
    token_file.write_text(TOKEN)
    coord = None
    try:
        coord = start_coordinator(tmp, store, models.grpc_target, env={"PARROT_AUTH_TOKEN_FILE": str(token_file)})
        channel = grpc.insecure_channel(coord.grpc_target)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        checked = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(0, "checked", questions=CHECKED)), metadata=MD,
                                timeout=30).id
        wait_state(stub, checked, cpb.RUN_STATE_SUCCEEDED)
        yield {"coord": coord, "stub": stub, "url": coord.http_url, "checked": checked, "tmp": tmp}
        channel.close()
    finally:
        if coord is not None:
            log = coord.log()
            assert coord.stop() == 0, log[-3000:]
            assert TOKEN not in coord.log(), "the token leaked into the coordinator's log"
        assert models.stop() == 0


def wait_state(stub, run_id: str, state: int, timeout: float = 60) -> cpb.Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=MD, timeout=10)
        if run.state == state:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not {cpb.RunState.Name(state)} after {timeout}s: {run}")


@pytest.fixture(scope="module")
def browser(stack):
    driver = start_browser()
    driver.set_page_load_timeout(30)
    login(driver, stack["url"])
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(stack):
    folder = stack["tmp"] / "screenshots"
    yield folder
    if os.environ.get("PARROT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, DOCS / png.name)


def login(driver, url: str) -> None:
    driver.get(url + "/ui/login")
    by_id(driver, "token").send_keys(TOKEN)
    by_id(driver, "login-submit").click()
    until(lambda: css(driver, "#runs"), what="the runs page after login")


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def until(predicate, timeout: float = 20, what: str = "condition"):
    """Polls ``predicate`` until it is truthy; an element that went away in a navigation counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def no_js_errors(driver) -> None:
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, errors


def test_without_the_token_the_page_is_refused_and_login_opens_it(stack, browser):
    r = httpx.get(stack["url"] + "/ui/", timeout=10)
    assert r.status_code == 401
    assert httpx.get(stack["url"] + "/ui/events", timeout=10).status_code == 401
    assert httpx.post(stack["url"] + f"/ui/runs/{A}/resume", timeout=10).status_code == 401
    assert httpx.get(stack["url"] + "/ui/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200
    browser.delete_all_cookies()  # logged out
    browser.get(stack["url"] + f"/ui/runs/{A}")
    assert by_id(browser, "login")  # the refusal is a login form
    by_id(browser, "token").send_keys("wrong-token-0123456789")
    by_id(browser, "login-submit").click()
    until(lambda: css(browser, "#login-failed"), what="the refusal")
    by_id(browser, "token").send_keys(TOKEN)
    by_id(browser, "login-submit").click()
    until(lambda: browser.current_url.endswith(f"/ui/runs/{A}"), what="the run page after login")
    assert TOKEN not in browser.page_source
    assert all(TOKEN not in c["value"] for c in browser.get_cookies())


def test_run_list_updates_while_a_run_progresses(stack, browser, shots):
    browser.get(stack["url"] + "/ui/")
    until(lambda: "live" == by_id(browser, "live").text, what="the event stream to open")
    browser.execute_script("window.__sameDocument = true;")
    runs_before = int(by_id(browser, "run-count").text)
    run_id = stack["stub"].StartRun(cpb.StartRunRequest(spec=eval_spec(40, "live", concurrency=2)), metadata=MD,
                                    timeout=30).id
    row = until(lambda: css(browser, f"#run-{run_id}"), what="the new run's row")[0]
    seen: list[str] = []
    deadline = time.monotonic() + 90
    shot = False
    while time.monotonic() < deadline:
        done = row.find_element("css selector", ".done").text
        if not seen or seen[-1] != done:
            seen.append(done)
        if not shot and done.startswith(("10 ", "11 ", "12 ", "13 ", "14 ")):
            save_png(browser, shots / "runs.png")
            shot = True
        if row.find_element("css selector", ".state").text == "succeeded":
            break
        time.sleep(0.05)
    assert row.find_element("css selector", ".state").text == "succeeded", seen
    assert row.find_element("css selector", ".done").text == "40 / 40"
    middle = [s for s in seen if 0 < int(s.split(" / ")[0]) < 40]
    assert len(middle) >= 3, f"the row did not move while the run ran: {seen}"
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    assert int(by_id(browser, "run-count").text) == runs_before + 1
    assert row.find_element("css selector", ".percent").text == "100%"
    no_js_errors(browser)


def test_cancel_and_resume_buttons(stack, browser):
    stub = stack["stub"]
    run_id = stub.StartRun(cpb.StartRunRequest(spec=eval_spec(60, "to-cancel", concurrency=1)), metadata=MD,
                           timeout=30).id
    wait_state(stub, run_id, cpb.RUN_STATE_RUNNING)
    # While it runs, its conversations come from the executor's records in memory.
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations?status=pending")
    assert int(by_id(browser, "matched").text.split(" of ")[0]) > 30
    assert by_id(browser, "matched").text.split(" of ")[1].startswith("60 conversations")
    browser.get(stack["url"] + f"/ui/runs/{run_id}")
    by_id(browser, "cancel").click()
    until(lambda: by_id(browser, "run-state").text == "cancelled", what="cancelled")
    run = stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=MD, timeout=10)
    assert run.state == cpb.RUN_STATE_CANCELLED
    # Cancelled before its outputs: the list comes from the conversation records in the store.
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations?status=finished")
    assert by_id(browser, "matched").text.startswith(f"{run.progress.finished} of 60 conversations")
    browser.get(stack["url"] + f"/ui/runs/{run_id}")
    by_id(browser, "resume").click()
    # The run page follows the resumed run live and reloads itself when it ends (outputs, no Cancel).
    until(lambda: by_id(browser, "run-state").text == "succeeded" and not css(browser, "#cancel"), timeout=90,
          what="the run page to show the resumed run succeeded")
    assert by_id(browser, "run-progress").text.startswith("60 finished, 0 failed")
    run = stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=MD, timeout=10)
    assert run.progress.finished == 60


def test_conversation_page_shows_every_turns_score(stack, browser, shots):
    run_id = stack["checked"]
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations/2")
    turns = css(browser, "li.turn")
    assert len(turns) == 8
    scores = [t.find_element("css selector", ".score").text for t in turns]
    assert scores == ["score 7.0"] * 8  # the echo judge's probability-weighted score
    assert len(css(browser, "details.judge")) == 8
    checks = css(browser, "table.checks")
    assert len(checks) == 8 and all("punctuation:no_comma" in c.text for c in checks)  # in force from turn 1 on
    failed = [len(c.find_elements("css selector", "tr.fail")) for c in checks]
    assert failed == [0, 0] + [1] * 6  # "snowflake" required from turn 3 on; echo never says it
    prov = [t.find_elements("css selector", ".prov") for t in turns]
    assert [p[0].text.split()[0] for p in prov] == ["original"] * 2 + ["asker"] * 6
    save_png(browser, shots / "conversation.png")
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations?failed_checks=1")
    assert by_id(browser, "matched").text.startswith("1 of 3 conversations")
    assert [r.text.split()[1] for r in css(browser, "#conversations tbody tr")] == ["103"]
    no_js_errors(browser)


def test_run_page_draws_the_per_turn_curve(stack, browser, shots):
    browser.get(stack["url"] + f"/ui/runs/{A}")
    chart = by_id(browser, "score-chart")
    until(lambda: chart.get_attribute("data-drawn") == "1", what="the chart")
    assert chart.find_elements("css selector", "canvas"), "uPlot drew no canvas"
    assert len(css(browser, "#failures tbody tr")) == 2
    save_png(browser, shots / "run.png")
    no_js_errors(browser)
    # A run whose sessions carry instructions: instruction following per turn, charted with its CI too.
    browser.get(stack["url"] + f"/ui/runs/{stack['checked']}")
    inst = by_id(browser, "instruction-chart")
    until(lambda: inst.get_attribute("data-drawn") == "1", what="the instruction chart")
    assert inst.find_elements("css selector", "canvas")
    assert "Instruction following per turn" in browser.page_source


def test_compare_shows_the_deltas(stack, browser, shots):
    browser.get(stack["url"] + f"/ui/compare?a={A}&b={B}")
    rows = css(browser, "#deltas tbody tr")
    assert len(rows) == 8
    deltas = [float(r.find_elements("css selector", "td")[3].text) for r in rows]
    for r, d in zip(rows, deltas):
        a, b = (float(r.find_elements("css selector", "td")[i].text) for i in (1, 2))
        assert abs((b - a) - d) < 0.011
    assert sum(deltas) / len(deltas) > 0.5  # model-b's scores were drawn 1.5 higher
    assert len(css(browser, "#differ tbody tr")) == 20
    until(lambda: by_id(browser, "compare-chart").get_attribute("data-drawn") == "1", what="the compare chart")
    save_png(browser, shots / "compare.png")
    no_js_errors(browser)


def test_collection_dataset_highlights_context_dependent_follow_ups(stack, browser, shots):
    from tests.process.test_coordinator import SEEDS

    stub = stack["stub"]
    spec = cpb.RunSpec(name="collect", seed=5, collection=cpb.CollectionSpec(
        seeds=cpb.InputFile(name="seeds.jsonl", content=jsonl(SEEDS)), min_turns=4, max_turns=4))
    run_id = stub.StartRun(cpb.StartRunRequest(spec=spec), metadata=MD, timeout=30).id
    wait_state(stub, run_id, cpb.RUN_STATE_SUCCEEDED)
    browser.get(stack["url"] + f"/ui/runs/{run_id}")
    stats = by_id(browser, "dataset-stats").text
    assert "context_dependent_per_session" in stats and "turns_per_session" in stats
    by_id(browser, "conversations-link").click()
    until(lambda: css(browser, "#conversations tbody tr"), what="the dataset's conversations")
    results = stub.GetRunResults(cpb.GetRunResultsRequest(run_id=run_id, include_content=True), metadata=MD, timeout=30)
    stats = json.loads({a.name: a.content for a in results.artifacts}["stats.json"])
    flagged, shot = 0, None
    for i in range(len(SEEDS)):
        browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations/{i}")
        turns = css(browser, "li.turn")
        assert len(turns) == 4
        assert "dependent" not in turns[0].get_attribute("class")  # a first turn has no context to depend on
        marked = css(browser, "li.turn.dependent")
        assert all(t.find_element("css selector", ".cues").text.startswith("context-dependent") for t in marked)
        flagged += len(marked)
        shot = shot if shot is not None or not marked else i
    # The page flags exactly the follow-ups the dataset statistics count as context-dependent.
    assert flagged == stats["context_dependent"]
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations/{shot or 0}")
    save_png(browser, shots / "dataset.png")
    no_js_errors(browser)


def test_negatives_dataset_shows_chosen_beside_each_rejected_answer(stack, browser):
    from tests.process.test_negatives import CONVERSATIONS, negatives_spec

    stub = stack["stub"]
    run_id = stub.StartRun(cpb.StartRunRequest(spec=negatives_spec()), metadata=MD, timeout=30).id
    wait_state(stub, run_id, cpb.RUN_STATE_SUCCEEDED)
    results = stub.GetRunResults(cpb.GetRunResultsRequest(run_id=run_id, include_content=True), metadata=MD, timeout=30)
    rows = [json.loads(line) for line in {a.name: a.content for a in results.artifacts}["preferences.jsonl"].splitlines()]
    browser.get(stack["url"] + "/ui/?kind=negatives")
    assert css(browser, f"#run-{run_id}")
    browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations")
    count = int(by_id(browser, "matched").text.split(" of ")[0])
    shown, total = [], 0
    for i in range(count):
        browser.get(stack["url"] + f"/ui/runs/{run_id}/conversations/{i}")
        source_id = browser.title.split(": conversation ")[1].split(" ·")[0]
        shown.append(source_id)
        mine = [r for r in rows if r["source_id"] == source_id]
        pairs = css(browser, "div.pair")
        assert len(pairs) == len(mine), source_id
        total += len(pairs)
        for pair, row in zip(pairs, mine):
            assert pair.find_element("css selector", ".chosen pre").text == row["chosen"][-1]["content"].strip()
            assert pair.find_element("css selector", ".rejected pre").text == row["rejected"][-1]["content"].strip()
            assert row["strategy"] in pair.find_element("css selector", ".pair-head").text
    assert set(shown) <= {c["id"] for c in CONVERSATIONS}
    assert rows and total == len(rows)  # every preference pair of the output is on a page
    no_js_errors(browser)


def test_unknown_run_is_a_404_page(stack, browser):
    browser.get(stack["url"] + "/ui/runs/run-20990101-000000-ffffff")
    assert by_id(browser, "error-title").text.startswith("404")
    assert "does not exist" in by_id(browser, "error-message").text

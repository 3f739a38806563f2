"""The run browser on a large run: page load times with 10,000 conversations.

Writes two finished evaluation runs of N conversations x T turns (default 10,000 x 8, with the
coordinator's own output code: bench/web_runs.py) into a fresh local store, starts
`parrot serve coordinator` on it (a real process, with a token), and times each page over HTTP
(the first request, cold, then the median of --reps more: a finished run's conversation index,
run page and comparison are built once and kept for the few runs looked at last). Pages are paged on the server: the conversations list reads the run's compact
score files once, then only its page; a conversation reads one record. The coordinator's RSS
after all pages shows nothing loads every record. With --browser (chromium + chromedriver on
PATH), the browser's own load time (navigation start to the load event) of the main pages too.

    .venv/bin/python bench/web.py                      # 10,000 x 8
    .venv/bin/python bench/web.py --conversations 1000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import start, stop  # noqa: E402
from bench.web_runs import write_eval_run  # noqa: E402

TOKEN = "bench-web-token-0123456789abcdef"
A, B = "run-20261206-000000-aaaaaa", "run-20261206-000001-bbbbbb"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(client, path: str, reps: int) -> tuple[float, float, int]:
    """(first request ms, median of the next ``reps`` ms, bytes) of GET path; fails on a non-200."""
    times = []
    size = 0
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: HTTP {r.status_code}\n{r.text[:2000]}")
        size = len(r.content)
    return times[0], statistics.median(times[1:]), size


def browser_loads(url: str, paths: list[str]) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.helpers.browser import browser_missing, start_browser

    if browser_missing():
        print(f"(no browser timings: {browser_missing()})")
        return {}
    driver = start_browser()
    out = {}
    try:
        driver.get(url + "/ui/login")
        driver.find_element("id", "token").send_keys(TOKEN)
        driver.find_element("id", "login-submit").click()
        for p in paths:
            loads = []
            for _ in range(3):
                driver.get(url + p)
                loads.append(driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;"))
            out[p] = statistics.median(loads)
    finally:
        driver.quit()
    return out


def main() -> None:
    import httpx
    import psutil

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also time the pages in headless chromium")
    args = ap.parse_args()
    n = args.conversations
    with tempfile.TemporaryDirectory(prefix="parrot-bench-web-") as tmp:
        store = Path(tmp, "store").as_uri()
        t0 = time.perf_counter()
        asyncio.run(write_eval_run(store, n=n, turns=args.turns, seed=1, model_id="model-a", run_id=A, failed=n // 100))
        asyncio.run(write_eval_run(store, n=n, turns=args.turns, seed=2, offset=0.4, model_id="model-b", run_id=B))
        setup_s = time.perf_counter() - t0
        token = Path(tmp, "token")
        token.write_text(TOKEN)
        proc, _ = start(["coordinator", "--store", store], "parrot.v1.Coordinator",
                        env={"PARROT_AUTH_TOKEN_FILE": str(token)})
        url = f"http://127.0.0.1:{proc.http_port}"  # type: ignore[attr-defined]
        rows = []
        rss0 = psutil.Process(proc.pid).memory_info().rss / 2**20
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
                pages = [("runs list", "/ui/"),
                         ("run page (summary, CI chart, tables)", f"/ui/runs/{A}"),
                         ("conversations, page 1", f"/ui/runs/{A}/conversations"),
                         ("conversations, page 2", f"/ui/runs/{A}/conversations?page=2"),
                         ("conversations, last page", f"/ui/runs/{A}/conversations?page={-(-n // 50)}"),
                         ("conversations, filtered (math, a turn < 4)",
                          f"/ui/runs/{A}/conversations?category=math&score_below=4"),
                         ("conversations, text search", f"/ui/runs/{A}/conversations?q=session+9999"),
                         ("one conversation", f"/ui/runs/{A}/conversations/{n // 2}"),
                         ("compare two runs", f"/ui/compare?a={A}&b={B}")]
                for label, path in pages:
                    first, median, size = timed(client, path, args.reps)
                    rows.append((label, first, median, size))
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            loads = browser_loads(url, [p for _, p in pages[:3]] + [pages[7][1], pages[8][1]]) if args.browser else {}
        finally:
            stop(proc)
        store_mb = sum(f.stat().st_size for f in Path(tmp, "store").rglob("*") if f.is_file()) / 2**20
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nRun browser on a large run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
          f"{os.cpu_count()} CPU cores (load average {load} at the end: other work shares the machine)")
    print(f"two evaluation runs of {n:,} conversations x {args.turns} turns ({store_mb:.0f} MiB in the store, "
          f"written in {setup_s:.0f} s); HTTP on loopback, median of {args.reps} after the first request\n")
    print("| page | first request (ms) | median (ms) | page size (KiB) |")
    print("| --- | ---: | ---: | ---: |")
    for label, first, median, size in rows:
        print(f"| {label} | {first:.0f} | {median:.0f} | {size / 1024:.0f} |")
    print(f"\ncoordinator RSS: {rss0:.0f} MiB at start, {rss:.0f} MiB after every page (two indexes, run page and "
          f"comparison cached)")
    if loads:
        print("\n| page in headless chromium | load event (ms) |\n| --- | ---: |")
        for p, ms in loads.items():
            print(f"| {p} | {ms:.0f} |")


if __name__ == "__main__":
    main()

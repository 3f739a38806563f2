"""Live progress of the runs as server-sent events, from the stream WatchRun uses.

One task per executing run iterates ``RunManager.watch`` (the executor's own event queue) and
keeps the run's latest row; the response sends the rows that changed at most every
``FLUSH_S`` (a fast run publishes many events per second; the page needs a few), picks up runs
started meanwhile, and sends a comment line every ``KEEPALIVE_S`` so proxies keep it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import web

from services.coordinator.web.runs import run_row

log = logging.getLogger(__name__)

FLUSH_S = 0.25
KEEPALIVE_S = 15.0


async def _follow(manager: Any, run_id: str, latest: dict[str, dict[str, Any]], changed: asyncio.Event) -> None:
    try:
        async for _event in manager.watch(run_id):
            run = await manager.get(run_id)
            latest[run_id] = run_row(run)
            changed.set()
        latest[run_id] = run_row(await manager.get(run_id))  # the final state, as stored
        changed.set()
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - one run's stream ending badly must not end the others
        log.debug("run event stream ended", extra={"run_id": run_id, "error": str(e)})


async def stream_runs(request: web.Request, manager: Any, stopping: asyncio.Event) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    latest: dict[str, dict[str, Any]] = {}
    changed = asyncio.Event()
    followers: dict[str, asyncio.Task] = {}
    last_write = time.monotonic()
    try:
        await response.write(b"retry: 2000\n\n")
        while not stopping.is_set():
            for run_id in list(manager.executors):
                if run_id not in followers:
                    followers[run_id] = asyncio.create_task(_follow(manager, run_id, latest, changed))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=1.0)
            if changed.is_set():
                changed.clear()
                rows = list(latest.values())
                latest.clear()
                for row in rows:
                    await response.write(f"event: run\ndata: {json.dumps(row)}\n\n".encode())
                last_write = time.monotonic()
                await asyncio.sleep(FLUSH_S)
            elif time.monotonic() - last_write > KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                last_write = time.monotonic()
            for run_id, task in list(followers.items()):
                if task.done() and run_id not in manager.executors:
                    del followers[run_id]
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in followers.values():
            task.cancel()
        await asyncio.gather(*followers.values(), return_exceptions=True)
    return response

"""Executes one run: workers over the plan's units, each finished unit persisted before it counts.

Each finished unit is a record in the store (``parrot.storage.layout``: ``runs/<id>/units/``); a
restarted coordinator lists them and runs only what is missing, so nothing is lost and nothing is
done twice.

Pauses: while the object store cannot be written (retried for the store's ``retry_for_s``) or a
role's endpoints are all unavailable (for the spec's ``retry.outage_budget_s``), no new
conversation starts, the ones in flight are held, and GetRun / WatchRun / metrics say why and
since when. Past its budget the run stops as failed and can be resumed. A final state that
cannot be written is kept in memory (GetRun reports it) and written as soon as the store allows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable

from google.protobuf import json_format

from parrot.errors import ParrotError, Unavailable
from parrot.metrics import child
from parrot.model_clients import CallFailed, ModelClients
from parrot.storage import StorageError
from parrot.storage.layout import run_record, unit_key, units_prefix
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator import metrics as m
from services.coordinator.kinds import FAILED, FINISHED, Record, RunKind, UnitContext, UnitFailed
from services.coordinator.spec import Plan

log = logging.getLogger(__name__)

TERMINAL = {cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED}


STORE = "object store"  # the pause key of a store fault (the others are role names)


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _cause_label(cause: str) -> str:
    return "object_store" if cause == STORE else "model_service"


class RunStopped(Unavailable):
    """A pause outlasted its budget: the run stops (as failed) and can be resumed."""


class _RunStore:
    """The run's view of the object store: a write that fails while the run is running (disk
    full, read-only, a file in the way) pauses the run and is retried until the store's
    ``retry_for_s`` has passed since the fault began; reads and other calls go straight through."""

    def __init__(self, store: Any, ex: "RunExecutor") -> None:
        self._store, self._ex = store, ex

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._retrying(key, lambda: self._store.put(key, data, content_type))

    async def put_json(self, key: str, obj: Any, **kw: Any) -> None:
        await self._retrying(key, lambda: self._store.put_json(key, obj, **kw))

    async def _retrying(self, key: str, write: Callable[[], Any]) -> None:
        attempt = 0
        while True:
            try:
                await write()
                break
            except StorageError as e:
                ex = self._ex
                if ex.run.state != cpb.RUN_STATE_RUNNING or ex.pause_s(STORE) > self._store.retry_for_s:
                    raise
                attempt += 1
                cause = str(e).split(": ", 1)[-1].replace(", then resume the run", "; the run goes on by itself then")
                ex.storage_retry("put", key, attempt, cause)
                # Short waits: a local disk or a store that is back is used within a second.
                await asyncio.sleep(min(1.0, 0.1 * 2 ** min(attempt, 4)) * (0.5 + random.random() / 2))
        self._ex._storage_back()


class RunExecutor:
    def __init__(self, run: cpb.Run, plan: Plan, store: Any, clients: ModelClients,
                 on_change: Callable[[cpb.Run], Any] | None = None) -> None:
        self.run = run
        self.plan = plan
        self.store = store
        self.clients = clients
        self.units: dict[int, dict[str, Any]] = {}
        self._subscribers: set[asyncio.Queue] = set()
        self._cancel = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session_start = time.monotonic()
        self._session_done = 0
        self._elapsed_before = run.progress.elapsed_s
        self._last_saved = 0.0
        self.run.progress.total = len(plan.units)
        # Why the run is paused, by cause (STORE or a role): (wall since, monotonic since, text).
        self._pauses: dict[str, tuple[float, float, str]] = {}
        self._go = asyncio.Event()  # set while nothing pauses the run
        self._go.set()
        self._probing = False
        self._failure: BaseException | None = None
        self.loaded = asyncio.Event()  # set once the persisted records are counted (progress is right)
        self.store = _RunStore(store, self)
        clients.on_down, clients.on_up = self._role_down, self._role_up

    # ---- events -------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        q.put_nowait(self._event(cpb.RUN_EVENT_TYPE_SNAPSHOT))
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def _event(self, kind: int, conversation_id: str = "", message: str = "") -> cpb.RunEvent:
        self._update_timing()
        return cpb.RunEvent(run_id=self.run.id, type=kind, state=self.run.state, progress=self.run.progress,
                            conversation_id=conversation_id, message=message, time=time.time())

    def publish(self, kind: int, conversation_id: str = "", message: str = "") -> None:
        ev = self._event(kind, conversation_id, message)
        for q in list(self._subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:  # a stuck watcher must not stall the run
                self._subscribers.discard(q)

    def _update_timing(self) -> None:
        p = self.run.progress
        if self.run.state == cpb.RUN_STATE_RUNNING:
            session = time.monotonic() - self._session_start
            p.elapsed_s = self._elapsed_before + session
            remaining = p.total - p.finished - p.failed
            p.eta_s = session / self._session_done * remaining if self._session_done else 0.0

    # ---- persistence ----------------------------------------------------------------------

    async def save(self, force: bool = True) -> None:
        if not force and time.monotonic() - self._last_saved < 2.0:
            return
        self._last_saved = time.monotonic()
        self._update_timing()
        await self.store.put_json(run_record(self.run.id),
                                  json_format.MessageToDict(self.run, preserving_proto_field_name=True))
        self._storage_back()

    # ---- pauses: a failing store or a role that is down; say so, hold, go on ----------------

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    def pause_s(self, cause: str) -> float:
        """How long ``cause`` has paused the run (0 when it does not)."""
        p = self._pauses.get(cause)
        return 0.0 if p is None else time.monotonic() - p[1]

    def _pause(self, cause: str, text: str) -> None:
        if cause not in self._pauses:
            self._pauses[cause] = (time.time(), time.monotonic(), text)
            m.RUNS_PAUSED.labels(_cause_label(cause)).inc()
        else:
            self._pauses[cause] = (*self._pauses[cause][:2], text)
        self._go.clear()
        self._show_pauses()

    def _unpause(self, cause: str, message: str) -> None:
        if self._pauses.pop(cause, None) is None:
            return
        m.RUNS_PAUSED.labels(_cause_label(cause)).dec()
        self._show_pauses()
        if not self._pauses:
            self._go.set()
        log.info(message, extra={"run_id": self.run.id})
        self.publish(cpb.RUN_EVENT_TYPE_STATE_CHANGED, message=message)

    def _show_pauses(self) -> None:
        """Run message and paused_* fields from the causes in force."""
        if self._pauses:
            texts = [t for _, _, t in self._pauses.values()]
            self.run.paused_reason = "; ".join(texts)
            self.run.paused_since = min(w for w, _, _ in self._pauses.values())
            self.run.message = "paused: " + self.run.paused_reason
        else:
            self.run.paused_reason, self.run.paused_since, self.run.message = "", 0.0, ""

    def storage_retry(self, op: str, key: str, attempt: int, cause: str) -> None:
        """The store is retrying an operation (this run's or the coordinator's): pause the run.

        Workers take no new conversation until a write succeeds again; the write being
        retried keeps its data, so nothing is lost. Said in events, the run message and metrics.
        """
        if self.run.state != cpb.RUN_STATE_RUNNING:
            return
        if STORE not in self._pauses:
            log.warning("object store failing; run paused", extra={"run_id": self.run.id, "op": op, "key": key})
        self._pause(STORE, f"object store failing ({op} {key}: {cause}); retrying (attempt {attempt})")
        self.publish(cpb.RUN_EVENT_TYPE_STORAGE_RETRY, message=self.run.message)

    def _storage_back(self) -> None:
        self._unpause(STORE, "object store is back; run continues")

    def _role_down(self, role: str, cause: str) -> None:
        if self.run.state != cpb.RUN_STATE_RUNNING:
            return
        budget = self.clients.retry.outage_budget_s
        self._pause(role, f"{role} unavailable since {_utc()} ({cause}); no new conversation starts, the ones in "
                          f"flight are held and retried for up to {budget:g}s (spec.retry.outage_budget_s)")
        log.warning("model service down; run paused", extra={"run_id": self.run.id, "role": role})
        self.publish(cpb.RUN_EVENT_TYPE_PAUSED, message=self.run.message)

    def _role_up(self, role: str) -> None:
        self._unpause(role, f"{role} is back; run continues")

    async def _wait_to_go(self) -> None:
        """While paused: one worker probes a failing store by saving run.json (retried); the rest
        wait. A role outage is probed by the calls in flight; past its budget the run stops."""
        while self.paused:
            if STORE in self._pauses and not self._probing:
                self._probing = True
                try:
                    await self.save()
                finally:
                    self._probing = False
                continue
            try:
                await asyncio.wait_for(self._go.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            budget = self.clients.retry.outage_budget_s
            for role in [c for c in self._pauses if c != STORE]:
                if self.clients.outage_s(role) > budget:
                    raise RunStopped(f"{role} unavailable for more than {budget:g}s (spec.retry.outage_budget_s; "
                                     f"since {_utc(self._pauses[role][0])})")

    async def _load_done(self) -> None:
        """Reads the unit records already persisted (a resumed run) and recounts progress."""
        p = self.run.progress
        p.finished = p.failed = 0
        p.turns = p.tokens = 0
        p.judge_failures = 0
        p.in_flight = 0  # the stored count was of the process that wrote it
        p.dropped.clear()
        for key in await self.store.list(units_prefix(self.run.id)):
            rec = await self.store.get_json(key)
            self.units[rec["index"]] = rec
            self._count(rec)
            # run.json is saved at most every 2 s; the last record says how far the run really got.
            self._elapsed_before = max(self._elapsed_before, float(rec.get("run_elapsed_s", 0.0)))

    def _count(self, rec: dict[str, Any]) -> None:
        p = self.run.progress
        if rec["status"] == FINISHED:
            p.finished += 1
        else:
            p.failed += 1
        data = rec.get("data") or {}
        p.turns += int(data.get("turns", 0))
        p.tokens += int(data.get("tokens", 0))
        p.judge_failures += int(data.get("judge_failures", 0))
        for reason, n in (data.get("drops") or {}).items():
            p.dropped[reason] = p.dropped.get(reason, 0) + int(n)

    # ---- running -----------------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancel.set()
        for t in self._tasks:
            t.cancel()

    async def execute(self) -> None:
        kind = self.plan.kind
        try:
            await self._load_done()
            self.loaded.set()
            pending = [i for i in range(len(self.plan.units)) if i not in self.units]
            self.run.state = cpb.RUN_STATE_RUNNING
            m.RUNS_ACTIVE.inc()
            self.run.message, self.run.finished_at = "", 0.0
            self.run.paused_reason, self.run.paused_since = "", 0.0
            if not self.run.started_at:
                self.run.started_at = time.time()
            await self.save()
            self.publish(cpb.RUN_EVENT_TYPE_STATE_CHANGED, message=f"running: {len(pending)} of {len(self.plan.units)} to do")
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in pending:
                queue.put_nowait(i)
            workers = min(self.plan.settings.concurrency, max(1, len(pending)))
            self._tasks = [asyncio.create_task(self._worker(queue, kind)) for _ in range(workers)]
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._failure is not None:
                raise self._failure
            for r in results:
                if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError):
                    raise r
            if self._cancel.is_set():
                await self._finish(cpb.RUN_STATE_CANCELLED, "cancelled by request")
                return
            from services.coordinator.outputs import write_outputs

            summary = await write_outputs(self.run, self.plan, self.units, self.store)
            p = self.run.progress
            state = cpb.RUN_STATE_FAILED if p.failed and not p.finished else cpb.RUN_STATE_SUCCEEDED
            await self._finish(state, f"{p.finished} finished, {p.failed} failed")
            if kind.scored:
                from services.coordinator.scores import SCOREBOARD

                SCOREBOARD.record(self.run, summary)
        except asyncio.CancelledError:
            if self._cancel.is_set():
                await self._finish(cpb.RUN_STATE_CANCELLED, "cancelled by request")
            raise
        except Exception as e:  # storage gave up, or a bug: the run can be resumed later
            log.error("run failed", exc_info=e, extra={"run_id": self.run.id})
            from parrot.storage import StorageError, StorageUnavailable

            if isinstance(e, (StorageError, StorageUnavailable)):
                why = f"object store failed: {e}"
            else:
                why = str(e) if isinstance(e, ParrotError) else f"internal error ({type(e).__name__}); see the coordinator log"
            await self._finish(cpb.RUN_STATE_FAILED, f"run stopped: {why}. Finished conversations are kept; after fixing "
                               f"the cause, resume it: parrot runs resume {self.run.id}")
        finally:
            self.loaded.set()
            for cause in list(self._pauses):
                m.RUNS_PAUSED.labels(_cause_label(cause)).dec()
            self._pauses.clear()
            self._go.set()
            await self.clients.close()

    async def _finish(self, state: int, message: str) -> None:
        if self.run.state == cpb.RUN_STATE_RUNNING:
            m.RUNS_ACTIVE.dec()
        self._update_timing()
        self.run.state = state
        self.run.message = message
        self.run.paused_reason, self.run.paused_since = "", 0.0
        self.run.finished_at = time.time()
        self.run.progress.in_flight = 0
        self.run.progress.eta_s = 0
        m.RUNS_FINISHED.labels(self.plan.kind.name, cpb.RunState.Name(state).removeprefix("RUN_STATE_").lower()).inc()
        self.publish(cpb.RUN_EVENT_TYPE_STATE_CHANGED, message=message)
        log.info("run ended", extra={"run_id": self.run.id, "state": cpb.RunState.Name(state), "detail": message})
        await self._record_final_state(message)

    async def _record_final_state(self, message: str) -> None:
        """Writes the final state; while the store refuses, GetRun reports it from memory (this
        task stays alive, so the run is not forgotten) and the write is retried until it lands."""
        delay = 1.0
        while True:
            try:
                await self.save()
                if self.run.message != message:
                    self.run.message = message
                    await self.save()
                return
            except Exception as e:  # the store itself is what failed
                self.run.message = (f"{message} (not yet recorded in the object store: {e}; the coordinator keeps "
                                    "trying)")
                log.error("cannot record the run's final state; retrying", extra={
                    "run_id": self.run.id, "error": str(e), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    async def _worker(self, queue: asyncio.Queue, kind: RunKind) -> None:
        try:
            while not self._cancel.is_set():
                await self._wait_to_go()
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._run_unit(index, kind)
        except Exception as e:  # the store gave up (or a bug): stop the other workers, fail the run
            if self._failure is None:
                self._failure = e
                for t in self._tasks:
                    if t is not asyncio.current_task():
                        t.cancel()
            raise

    async def _run_unit(self, index: int, kind: RunKind) -> None:
        unit = self.plan.units[index]
        p = self.run.progress
        p.in_flight += 1
        m.IN_FLIGHT.inc()
        self.publish(cpb.RUN_EVENT_TYPE_CONVERSATION_STARTED, unit.id)
        t0 = time.monotonic()
        turns, generated = child(m.TURNS, kind.name), child(m.TOKENS, kind.name)

        def on_turn(tokens: int) -> None:
            turns.inc()
            generated.inc(tokens)

        ctx = UnitContext(settings=self.plan.settings, clients=self.clients, index=index, on_turn=on_turn)
        status, reason, data = FINISHED, "", {}
        try:
            data = await kind.run_unit(ctx, unit)
        except (CallFailed, UnitFailed) as e:
            m.FAILURES.labels(kind.name, e.status.name if isinstance(e, CallFailed) else "unit_failed").inc()
            status, reason = FAILED, str(e)
        finally:
            p.in_flight -= 1
            m.IN_FLIGHT.dec()
        elapsed = round(time.monotonic() - t0, 3)
        self._update_timing()
        rec = Record(index, unit.id, status, data, reason, elapsed, round(self.run.progress.elapsed_s, 3)).as_json()
        # Persist first; only then count. A crash between the two loses nothing: resume recounts.
        await self.store.put_json(unit_key(self.run.id, index), rec)
        self._storage_back()
        self.units[index] = rec
        self._count(rec)
        self._session_done += 1
        child(m.CONVERSATIONS, kind.name, status).inc()
        child(m.STAGE, "conversation").observe(rec["elapsed_s"])
        self.publish(cpb.RUN_EVENT_TYPE_CONVERSATION_FINISHED if status == FINISHED
                     else cpb.RUN_EVENT_TYPE_CONVERSATION_FAILED, unit.id, reason)
        await self.save(force=False)

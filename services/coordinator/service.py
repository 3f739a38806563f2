"""parrot.v1.Coordinator: starts, tracks, resumes and cancels runs."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from google.protobuf import json_format

from parrot.errors import FailedPrecondition, InvalidArgument, NotFound, ParrotError, ResourceExhausted
from parrot.storage.layout import RUNS, input_key, outputs_prefix, run_of, run_prefix, run_record, units_prefix
from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc
from services.coordinator import metrics as m
from parrot.model_clients import ModelClients, Retry, check_reachable
from services.coordinator.executor import TERMINAL, RunExecutor
from services.coordinator.kinds import RunKind, kind_of, plan_run, resolve
from services.coordinator.spec import NO_LIMITS, Plan, RunLimits, RunSettings

log = logging.getLogger(__name__)

INLINE_LIMIT = 8 * 1024 * 1024
ROLE_SERVICE = {"responder": "parrot.v1.Responder", "asker": "parrot.v1.Asker", "judge": "parrot.v1.Judge",
                "baseline_responder": "parrot.v1.Responder", "second_judge": "parrot.v1.Judge"}


@dataclass(frozen=True)
class CoordinatorConfig:
    store_url: str = field(default="", metadata={"help": "Object store for runs (file:///dir or s3://bucket/prefix)."})
    responder: str = field(default="127.0.0.1:50051", metadata={"help": "Default responder address."})
    asker: str = field(default="127.0.0.1:50051", metadata={"help": "Default asker address."})
    judge: str = field(default="127.0.0.1:50051", metadata={"help": "Default judge address."})
    max_active_runs: int = field(default=4, metadata={"help": "Runs executing at once; more get RESOURCE_EXHAUSTED."})
    upstream_token: str | None = field(default=None, metadata={"help": "Bearer token sent to the model services."})
    allowed_targets: str = field(default="", metadata={
        "help": "Targets a run may name besides the coordinator's own: PATTERN[=none|upstream|TOKEN_FILE], comma-separated "
                "(PATTERN an fnmatch over host:port). See services/coordinator/policy.py."})
    target_tls: str = field(default="", metadata={
        "help": "TLS per target: PATTERN=CA_FILE|system[:CERT_FILE:KEY_FILE], comma-separated (others: PARROT_TLS_CA)."})
    input_roots: str = field(default="", metadata={
        "help": "Folders and s3://bucket[/prefix] a run's input URLs may name (besides the store), comma-separated."})
    outage_budget_s: float = field(default=600.0, metadata={
        "help": "How long a run waits out a role with no endpoint up before it stops (spec.retry.outage_budget_s overrides)."})
    check_targets: bool = field(default=True, metadata={"help": "Health-check a run's endpoints at StartRun."})
    routing: str = field(default="affinity", metadata={
        "help": "affinity (every turn of a session to the same listed replica, for its prompt cache) or round_robin."})
    limits: RunLimits = field(default_factory=RunLimits, metadata={"help": "Limits on what one run may ask for."})

    def __post_init__(self) -> None:
        from parrot.client import target_problem
        from parrot.errors import ConfigError

        for role in ("responder", "asker", "judge"):
            problem = target_problem(getattr(self, role))
            if problem:
                raise ConfigError(f"--{role}: {problem}")
        if not 0 < self.outage_budget_s <= 86400:
            raise ConfigError(f"--outage-budget-s / PARROT_OUTAGE_BUDGET_S is {self.outage_budget_s}; allowed (0, 86400]")


class RunManager:
    def __init__(self, store: Any, config: CoordinatorConfig) -> None:
        from services.coordinator.policy import InputPolicy, TargetPolicy, parse_allowed_targets, parse_target_tls

        self.store = store
        self.config = config
        self.targets = TargetPolicy({"responder": config.responder, "asker": config.asker, "judge": config.judge},
                                    parse_allowed_targets(config.allowed_targets), config.upstream_token,
                                    parse_target_tls(config.target_tls))
        self.inputs = InputPolicy(config.input_roots, store)
        self.executors: dict[str, RunExecutor] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self._start_lock = asyncio.Lock()

    def _settings(self, spec: cpb.RunSpec, limits: RunLimits = NO_LIMITS) -> RunSettings:
        """The spec checked and resolved, with this coordinator's defaults (``limits`` only at StartRun)."""
        return resolve(spec, limits, Retry(outage_budget_s=self.config.outage_budget_s))

    def _targets(self, settings: RunSettings) -> dict[str, str]:
        """Each role's target: the spec's, else the coordinator's own (responder, asker, judge)."""
        own = {"responder": self.config.responder, "asker": self.config.asker, "judge": self.config.judge}
        return {role: target or own.get(role, "") for role, target in settings.targets.items()}

    def _tokens(self, kind: RunKind, targets: dict[str, str]) -> dict[str, str | None]:
        """The bearer token for each role's target; PERMISSION_DENIED for a target the policy does not allow."""
        return {role: self.targets.token_for(kind.target_field(role), target) for role, target in targets.items() if target}

    def _clients(self, settings: RunSettings) -> ModelClients:
        targets = self._targets(settings)
        tls = {role: self.targets.credentials_for(t) for role, t in targets.items() if t}
        return ModelClients(targets, settings.retry, self._tokens(settings.kind, targets), tls=tls,
                            on_retry=lambda stage, code: m.MODEL_RETRIES.labels(stage, code).inc(),
                            routing=self.config.routing)

    def _active(self) -> int:
        """Runs executing now; one that has reached its final state no longer counts (a client
        that saw it end may start the next at once)."""
        return sum(1 for run_id, t in self.tasks.items()
                   if not t.done() and self.executors[run_id].run.state not in TERMINAL)

    async def start_run(self, spec: cpb.RunSpec) -> cpb.Run:
        async with self._start_lock:
            self._check_active()
            # The spec checked once (malformed addresses are INVALID_ARGUMENT before any policy).
            settings = self._settings(spec, self.config.limits)
            kind = settings.kind
            targets = self._targets(settings)
            self._tokens(kind, targets)  # every named target allowed, before the coordinator contacts or reads anything
            plan, inputs = await plan_run(settings, self.store, self.config.limits, self.inputs)
            if self.config.check_targets:
                for role in settings.roles():
                    if not targets.get(role):
                        raise InvalidArgument(f"spec.targets.{role}", "is required for this run")
                    problem = await check_reachable(targets[role], ROLE_SERVICE[role],
                                                    creds=self.targets.credentials_for(targets[role]))
                    if problem:
                        raise FailedPrecondition(f"spec.targets.{role}: {problem}")
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            stored = cpb.RunSpec()
            stored.CopyFrom(spec)
            section = kind.section(stored)
            for fld, (name, data) in inputs.items():
                key = input_key(run_id, fld)
                await self.store.put(key, data)
                f = getattr(section, fld)
                f.Clear()
                f.name, f.url = name, key
            run = cpb.Run(id=run_id, spec=stored, state=cpb.RUN_STATE_PENDING, created_at=time.time(),
                          output_url=self.store.url(run_prefix(run_id)))
            run.progress.total = len(plan.units)
            self._launch(run, plan.stored_as(stored))
            await self.executors[run_id].save()
            m.RUNS_STARTED.labels(kind.name, "new").inc()
            log.info("run started", extra={"run_id": run_id, "kind": kind.name, "conversations": len(plan.units)})
            return run

    def _check_active(self) -> None:
        if self._active() >= self.config.max_active_runs:
            raise ResourceExhausted(f"{self._active()} runs are executing; at most {self.config.max_active_runs} at once "
                                    "(coordinator --max-active-runs / PARROT_MAX_ACTIVE_RUNS); retry when one ends")

    def on_storage_retry(self, op: str, key: str, attempt: int, cause: str) -> None:
        """The object store is retrying: pause the run the key belongs to (every running run when
        the key is no run's), and say so in its events, message and metrics."""
        m.STORAGE_RETRIES.labels(op).inc()
        owner = run_of(key)
        for run_id, ex in list(self.executors.items()):
            if (owner is None or run_id == owner) and not self.tasks[run_id].done():
                ex.storage_retry(op, key, attempt, cause)

    async def resume(self, run_id: str, retry_failed: bool = False) -> cpb.Run:
        """Continues a failed or cancelled run: only conversations without a record are run.

        With ``retry_failed`` the conversations recorded as failed are run again too, in any run
        that ended (a succeeded run with failures included); finished ones are never redone.
        """
        async with self._start_lock:
            run = await self.get(run_id)
            task = self.tasks.get(run_id)
            state = run.state
            resumable = (cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED) + ((cpb.RUN_STATE_SUCCEEDED,) if retry_failed else ())
            if state not in resumable:
                raise FailedPrecondition(f"run {run_id} is {cpb.RunState.Name(state).removeprefix('RUN_STATE_').lower()}"
                                         "; only failed or cancelled runs can be resumed (and, with --retry-failed, "
                                         "succeeded runs with failed conversations)")
            self._check_active()
            plan, _ = await plan_run(self._settings(run.spec), self.store)
            if retry_failed:
                failed = [key for key in await self.store.list(units_prefix(run_id))
                          if (await self.store.get_json(key)).get("status") == "failed"]
                if state == cpb.RUN_STATE_SUCCEEDED and not failed:
                    raise FailedPrecondition(f"run {run_id} succeeded with no failed conversations; nothing to retry")
            if task is not None and not task.done():  # ended, still writing its final state: let it go
                await self._settle(task)
            if retry_failed:
                for key in failed:
                    await self.store.delete(key)
            resumed = cpb.Run()
            resumed.CopyFrom(run)
            resumed.state, resumed.message, resumed.finished_at = cpb.RUN_STATE_PENDING, "resumed by request", 0.0
            self._launch(resumed, plan)
            await self.executors[run_id].save()
            m.RUNS_STARTED.labels(plan.kind.name, "resumed").inc()
            log.info("run resumed by request", extra={"run_id": run_id, "retry_failed": retry_failed})
            return resumed

    @staticmethod
    async def _settle(task: asyncio.Task, wait_s: float = 5.0) -> None:
        """Gives an ended run's task a moment to write its final state, then stops it."""
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _launch(self, run: cpb.Run, plan: Plan) -> None:
        ex = RunExecutor(run, plan, self.store, self._clients(plan.settings))
        self.executors[run.id] = ex
        task = asyncio.create_task(ex.execute(), name=f"run-{run.id}")
        self.tasks[run.id] = task
        task.add_done_callback(lambda t, run_id=run.id: self._forget(run_id, t))

    def _forget(self, run_id: str, task: asyncio.Task) -> None:
        """A run that ended is read from the store from now on: a long-lived coordinator keeps
        no conversation records of finished runs in memory."""
        if self.tasks.get(run_id) is task:
            del self.tasks[run_id]
            self.executors.pop(run_id, None)

    async def resume_all(self) -> list[str]:
        """Restarts every run the store says is pending or running (after a crash or restart), and
        rebuilds the evaluation score gauges from the finished ones."""
        from services.coordinator.scores import SCOREBOARD

        resumed, finished = [], []
        for run_id in await self.store.list_folders(RUNS):
            key = run_record(run_id)
            if not await self.store.exists(key):
                continue
            run = json_format.ParseDict(await self.store.get_json(key), cpb.Run(), ignore_unknown_fields=True)
            if run.state in TERMINAL:
                finished.append(run)
                continue
            if run.id in self.executors:
                continue
            # Writes a crash cut short left temporary files; only a run that was executing has any
            # (the coordinator is their only writer), so finished runs are not walked at start-up.
            leftovers = await self.store.remove_leftovers(run_prefix(run.id) + "/")
            if leftovers:
                log.info("removed temporary files of interrupted writes", extra={"run_id": run.id, "files": leftovers})
            try:
                plan, _ = await plan_run(self._settings(run.spec), self.store)
                self._launch(run, plan)  # PERMISSION_DENIED if the target policy changed meanwhile
            except ParrotError as e:
                log.error("cannot resume run", extra={"run_id": run.id, "error": str(e)})
                continue
            m.RUNS_STARTED.labels(plan.kind.name, "resumed").inc()
            resumed.append(run.id)
            log.info("run resumed", extra={"run_id": run.id})
        # Serve GetRun only once each resumed run has counted its records (progress, elapsed time).
        await asyncio.gather(*(self.executors[r].loaded.wait() for r in resumed if r in self.executors))
        await SCOREBOARD.load(self.store, finished)
        return resumed

    async def get(self, run_id: str) -> cpb.Run:
        if not run_id or "/" in run_id or ".." in run_id:
            raise InvalidArgument("run_id", f"{run_id!r} is not a run id (run-YYYYMMDD-HHMMSS-xxxxxx)")
        if run_id in self.executors:
            ex = self.executors[run_id]
            ex._update_timing()
            return ex.run
        key = run_record(run_id)
        if not await self.store.exists(key):
            raise NotFound(f"run {run_id} does not exist")
        return json_format.ParseDict(await self.store.get_json(key), cpb.Run(), ignore_unknown_fields=True)

    async def list(self, limit: int) -> list[cpb.Run]:
        runs = []
        for run_id in reversed(await self.store.list_folders(RUNS)):  # ids sort by start time
            if len(runs) == (limit or 50):
                break
            try:
                runs.append(await self.get(run_id))
            except NotFound:  # a folder without run.json (a StartRun that failed before recording)
                continue
        return runs

    async def cancel(self, run_id: str) -> cpb.Run:
        run = await self.get(run_id)
        ex, task = self.executors.get(run_id), self.tasks.get(run_id)
        if ex is not None and task is not None:
            if ex.run.state not in TERMINAL:
                ex.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout=30)
                except (asyncio.CancelledError, asyncio.TimeoutError):
                    pass
        elif run.state not in TERMINAL and not await self._ended_meanwhile(run_id):  # recorded as running but not executing here: mark it
            run.state, run.message, run.finished_at = cpb.RUN_STATE_CANCELLED, "cancelled by request", time.time()
            await self.store.put_json(run_record(run_id),
                                      json_format.MessageToDict(run, preserving_proto_field_name=True))
        return await self.get(run_id)

    async def _ended_meanwhile(self, run_id: str) -> bool:
        """True when the stored record says the run ended (it may have, while we looked)."""
        stored = json_format.ParseDict(await self.store.get_json(run_record(run_id)), cpb.Run(),
                                       ignore_unknown_fields=True)
        return stored.state in TERMINAL

    async def watch(self, run_id: str) -> AsyncIterator[cpb.RunEvent]:
        run = await self.get(run_id)
        ex = self.executors.get(run_id)
        if ex is None or run.state in TERMINAL:
            yield cpb.RunEvent(run_id=run_id, type=cpb.RUN_EVENT_TYPE_SNAPSHOT, state=run.state, progress=run.progress,
                               message=run.message, time=time.time())
            return
        q = ex.subscribe()
        try:
            while True:
                ev = await q.get()
                yield ev
                if ev.type == cpb.RUN_EVENT_TYPE_STATE_CHANGED and ev.state in TERMINAL:
                    return
        finally:
            ex.unsubscribe(q)

    async def results(self, run_id: str, include_content: bool) -> cpb.GetRunResultsResponse:
        run = await self.get(run_id)
        out = cpb.GetRunResultsResponse(run=run)
        for key in await self.store.list(outputs_prefix(run_id) + "/"):
            data = await self.store.get(key)
            art = cpb.Artifact(name=key.rsplit("/", 1)[-1], url=self.store.url(key), size_bytes=len(data))
            if include_content and len(data) <= INLINE_LIMIT:
                art.content = data
            out.artifacts.append(art)
            if art.name == "summary.json":
                out.summary_json = data.decode()
        return out

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, manager: RunManager) -> None:
        self.manager = manager

    async def StartRun(self, request: cpb.StartRunRequest, context: Any) -> cpb.Run:
        kind_of(request.spec)
        return await self.manager.start_run(request.spec)

    async def GetRun(self, request: cpb.GetRunRequest, context: Any) -> cpb.Run:
        return await self.manager.get(request.run_id)

    async def ListRuns(self, request: cpb.ListRunsRequest, context: Any) -> cpb.ListRunsResponse:
        if request.limit > 1000:
            raise InvalidArgument("limit", f"is {request.limit}; allowed 1..1000 (0 = 50)")
        return cpb.ListRunsResponse(runs=await self.manager.list(request.limit))

    async def WatchRun(self, request: cpb.WatchRunRequest, context: Any) -> AsyncIterator[cpb.RunEvent]:
        async for ev in self.manager.watch(request.run_id):
            yield ev

    async def CancelRun(self, request: cpb.CancelRunRequest, context: Any) -> cpb.Run:
        return await self.manager.cancel(request.run_id)

    async def GetRunResults(self, request: cpb.GetRunResultsRequest, context: Any) -> cpb.GetRunResultsResponse:
        return await self.manager.results(request.run_id, request.include_content)

    async def ResumeRun(self, request: cpb.ResumeRunRequest, context: Any) -> cpb.Run:
        return await self.manager.resume(request.run_id, request.retry_failed)

    async def CreateReport(self, request: Any, context: Any) -> Any:
        from parrot.reports import create_report_rpc

        for run_id in request.run_ids:
            await self.manager.get(run_id)  # NOT_FOUND / INVALID_ARGUMENT for a bad id
        return await create_report_rpc(self.manager.store, request)

"""CLI commands that talk to the coordinator: eval, collect, runs list|show|watch|cancel|results."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from parrot.cli._common import COORDINATOR, TOKEN_ENV, coordinator_stub, fail, rpc

runs_app = typer.Typer(help="Inspect and control runs on the coordinator.", no_args_is_help=True)

URL_SCHEMES = ("s3://", "file://", "runs/")
# RunSpec kind -> the command that starts it.
KIND_COMMANDS = {"collection": "collect", "evaluation": "eval", "negatives": "negatives"}


def clip(text: str) -> str:
    from parrot.errors import clip as _clip

    return _clip(text)


def input_file(value: str, flag: str) -> dict[str, Any]:
    """A local path is sent inline (so a remote coordinator can read it); a URL is passed on."""
    import base64

    if value.startswith(URL_SCHEMES):
        return {"url": value, "name": value.rsplit("/", 1)[-1]}
    p = Path(value).expanduser()
    if not p.is_file():
        fail(f"{flag}: {value} is not a file")
    return {"name": p.name, "content": base64.b64encode(p.read_bytes()).decode()}


def build_spec(spec_file: Optional[str], kind: str, section: dict[str, Any], common: dict[str, Any]) -> Any:
    """YAML spec file (RunSpec fields; input files as paths or URLs) < flags."""
    import yaml
    from google.protobuf import json_format

    from parrot.v1 import coordinator_pb2 as cpb

    base: dict[str, Any] = {}
    text = ""
    if spec_file:
        try:
            text = Path(spec_file).read_bytes().decode("utf-8-sig")
            base = yaml.safe_load(text) or {}
        except OSError as e:
            fail(f"--spec: cannot read {spec_file}: {e.strerror}")
        except UnicodeDecodeError as e:
            fail(f"--spec: {spec_file} is not UTF-8 text (byte {e.start})")
        except yaml.YAMLError as e:
            fail(f"--spec: {spec_file} is not valid YAML: {clip(str(e))}")
        if not isinstance(base, dict):
            fail(f"--spec: {spec_file} must hold a mapping of RunSpec fields")
        kinds = [k for k in KIND_COMMANDS if k in base]
        if len(kinds) > 1:
            where = ", ".join(f"'{k}'{_yaml_line(text, k)}" for k in kinds)
            fail(f"--spec: {spec_file} has {len(kinds)} run kinds ({where}); a run spec describes one: keep one section "
                 f"({', '.join(f'{k} for `parrot {c}`' for k, c in KIND_COMMANDS.items())})")
        for other, command in KIND_COMMANDS.items():
            if other != kind and other in base:
                fail(f"--spec: {spec_file} describes a {other} run; use `parrot {command}`")
        for name in (kind, "retry", "targets", "params", "labels"):
            if base.get(name) is not None and not isinstance(base[name], dict):
                fail(f"--spec: {spec_file}{_yaml_line(text, name)}: field '{name}' must be a mapping")
        base.setdefault(kind, {})
        if base[kind] is None:
            base[kind] = {}
        for fld in ("seeds", "questions", "reference_answers", "conversations"):
            if isinstance(base.get(kind, {}).get(fld), str):
                base[kind][fld] = input_file(base[kind][fld], f"--spec {kind}.{fld}")
    merged = dict(base)
    merged.setdefault(kind, {})
    merged[kind].update({k: v for k, v in section.items() if v not in (None, "", 0, False)})
    for k, v in common.items():
        if v in (None, "", 0):
            continue
        if isinstance(v, dict):
            merged.setdefault(k, {}).update({kk: vv for kk, vv in v.items() if vv not in (None, "", 0)})
        else:
            merged[k] = v
    try:
        return json_format.ParseDict(merged, cpb.RunSpec())
    except (json_format.ParseError, TypeError, ValueError) as e:
        import re

        m = re.search(r'Failed to parse (\w+) field|field named "(\w+)"', str(e))
        where = f"{spec_file}{_yaml_line(text, m.group(1) or m.group(2))}" if (spec_file and m) else (spec_file or "flags")
        fail(f"run spec {where}: {clip(str(e))}")


def _yaml_line(text: str, key: str) -> str:
    """':N' where ``key`` first appears as a mapping key in the YAML text (or '' if it cannot be found)."""
    import yaml

    try:
        stack = [yaml.compose(text)]
    except yaml.YAMLError:
        return ""
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == key:
                    return f":{k.start_mark.line + 1}"
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return ""


def state_name(state: int) -> str:
    from parrot.v1 import coordinator_pb2 as cpb

    return cpb.RunState.Name(state).removeprefix("RUN_STATE_").lower()


async def watch_with_progress(stub: Any, md: Any, run_id: str, quiet: bool = False) -> Any:
    """Follows WatchRun with a live progress bar (plain lines when not a terminal); returns the last event."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from parrot.v1 import coordinator_pb2 as cpb

    last = None
    interactive = sys.stderr.isatty() and not quiet
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("failed {task.fields[failed]} · turns {task.fields[turns]} · tokens {task.fields[tokens]}"
                                   " · eta {task.fields[eta]}"), TimeElapsedColumn(), disable=not interactive,
                        transient=False)
    printed = -1
    with progress:
        task = progress.add_task(run_id, total=None, failed=0, turns=0, tokens=0, eta="?")
        async for ev in stub.WatchRun(cpb.WatchRunRequest(run_id=run_id), metadata=md):
            last = ev
            p = ev.progress
            done = p.finished + p.failed
            eta = f"{p.eta_s:.0f}s" if p.eta_s else "?"
            progress.update(task, total=p.total or None, completed=done, failed=p.failed, turns=p.turns, tokens=p.tokens,
                            eta=eta)
            if not interactive and not quiet and (done != printed or ev.type == cpb.RUN_EVENT_TYPE_STATE_CHANGED):
                printed = done
                typer.echo(f"[{run_id}] {state_name(ev.state)}: {done}/{p.total} conversations "
                           f"({p.failed} failed), {p.turns} turns, {p.tokens} tokens, eta {eta}", err=True)
    return last


#: How long a following CLI waits for a coordinator that went away (a restart resumes the run).
RECONNECT_S = 600.0


async def reconnecting(call: Any, budget_s: float = RECONNECT_S) -> Any:
    """``await call()``, retried while the coordinator is unreachable (restarting) for up to ``budget_s``."""
    import grpc

    deadline = asyncio.get_running_loop().time() + budget_s
    said = False
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                raise
            if not said:
                typer.echo(f"coordinator unreachable ({e.code().name}: {e.details()}); the run goes on there. "
                           f"Reconnecting (for up to {budget_s:.0f}s)...", err=True)
                said = True
            await asyncio.sleep(1.0)


async def follow(stub: Any, md: Any, run_id: str, quiet: bool = False) -> Any:
    """Follows a run until it ends, re-attaching when the coordinator restarts (the run resumes
    there) or a stream ends early; returns the last event."""
    from parrot.v1 import coordinator_pb2 as cpb

    ended = (cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED)
    said = False
    while True:
        last = await reconnecting(lambda: watch_with_progress(stub, md, run_id, quiet))
        if last is not None and last.state in ended:
            return last
        run = await reconnecting(lambda: stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=md))
        if run.state in ended:
            return last
        if not said:
            typer.echo(f"[{run_id}] re-attached; the run is {state_name(run.state)}", err=True)
            said = True
        await asyncio.sleep(0.5)


def print_run(run: Any) -> None:
    p = run.progress
    typer.echo(f"run {run.id}: {state_name(run.state)} ({run.message})" if run.message else
               f"run {run.id}: {state_name(run.state)}")
    if run.paused_since:
        import time

        typer.echo(f"  paused since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(run.paused_since))}: nothing new "
                   "starts until the cause is fixed; the run then goes on by itself")
    typer.echo(f"  kind: {run.spec.WhichOneof('kind')}  name: {run.spec.name or '-'}  output: {run.output_url}")
    typer.echo(f"  conversations: {p.finished} finished, {p.failed} failed, {p.in_flight} in flight, of {p.total}")
    typer.echo(f"  turns: {p.turns}  tokens: {p.tokens}  elapsed: {p.elapsed_s:.1f}s")
    if p.dropped:
        typer.echo("  dropped follow-ups: " + ", ".join(f"{k}={v}" for k, v in sorted(p.dropped.items())))
    if run.spec.WhichOneof("kind") == "evaluation":
        typer.echo(f"  judge failures: {p.judge_failures}")


def print_summary(summary_json: str) -> None:
    if not summary_json:
        return
    s = json.loads(summary_json)
    scores = s.get("scores") or {}
    per_turn = scores.get("per_turn") or {}
    if per_turn:
        typer.echo("\n  turn  mean   95% CI           n")
        for turn, row in sorted(per_turn.items(), key=lambda kv: int(kv[0])):
            typer.echo(f"  {int(turn):>4}  {_f(row.get('mean'))}  [{_f(row.get('low'))}, {_f(row.get('high'))}]  {row.get('n', '')}")
        o = scores.get("overall") or {}
        typer.echo(f"  all   {_f(o.get('mean'))}  [{_f(o.get('low'))}, {_f(o.get('high'))}]  {o.get('n', '')}")
        cats = scores.get("per_category") or {}
        if cats:
            typer.echo("\n  category      mean")
            for cat, row in sorted(cats.items()):
                typer.echo(f"  {cat:<12}  {_f(row.get('mean'))}")
    inst = (s.get("instructions") or {}).get("per_turn") or {}
    if inst:
        typer.echo("\n  instruction following (prompt strict / loose, instruction strict / loose)")
        for turn, row in sorted(inst.items(), key=lambda kv: int(kv[0])):
            cells = "  ".join(_f((row.get(k) or {}).get("mean")) for k in
                              ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"))
            typer.echo(f"  {int(turn):>4}  {cells}")
    _print_benchmark(s)
    agree = s.get("judge_agreement")
    if agree:
        typer.echo(f"\n  judge agreement ({agree.get('judge_a')} vs {agree.get('judge_b')}, {agree.get('n')} turns): "
                   f"Spearman {_f(agree.get('spearman'))}, pairwise {_f(agree.get('pairwise_agreement'))}")
    stats = s.get("stats")
    if stats:
        typer.echo("\n  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()
                                     if not isinstance(v, (dict, list))))


def _print_benchmark(s: dict[str, Any]) -> None:
    """The protocol block of a published benchmark run: its name, the per-task / per-axis / per-arm
    table, per-language instruction accuracy and pass^k."""
    langs = (s.get("instructions") or {}).get("per_language") or {}
    if langs:
        typer.echo("\n  prompt strict per turn and language (95% CI)")
        for lang, block in sorted(langs.items()):
            cells = "  ".join(f"t{t} {_f(r['prompt_strict']['mean'])} [{_f(r['prompt_strict']['low'])}, "
                              f"{_f(r['prompt_strict']['high'])}]" for t, r in sorted(block["per_turn"].items(),
                                                                                     key=lambda kv: int(kv[0])))
            typer.echo(f"  {lang:<12}  {cells}")
    p = s.get("protocol")
    if not p:
        return
    typer.echo(f"\n  protocol: {p.get('name')}" + (f" ({p['scored_as']})" if p.get("scored_as") else ""))
    for key, cols in (("per_task", ("mean", "low", "high", "n")), ("per_axis", ("pass_rate", "n")),
                      ("per_arm", ("mean", "aptitude", "unreliability", "runs"))):
        for name, row in sorted((p.get(key) or {}).items()):
            typer.echo(f"  {name:<24}  " + "  ".join(f"{c} {_f(row.get(c)) if c not in ('n', 'runs') else row.get(c)}"
                                                   for c in cols))
    if p.get("overall") is not None:
        typer.echo(f"  overall                   {_f(p['overall'])}")
    pk = p.get("pass_k") or {}
    ks = sorted((k for k in pk if k.isdigit()), key=int)
    if len(ks) > 1:
        typer.echo("  pass^k: " + "  ".join(f"k={k} {_f(pk[k])}" for k in ks) + f"  ({pk.get('pass_means')})")


def _f(x: Any) -> str:
    return f"{x:5.2f}" if isinstance(x, (int, float)) else "  -  "


async def save_results(stub: Any, md: Any, run_id: str, out: Optional[str]) -> Any:
    from parrot.v1 import coordinator_pb2 as cpb

    res = await stub.GetRunResults(cpb.GetRunResultsRequest(run_id=run_id, include_content=bool(out)), metadata=md)
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        for a in res.artifacts:
            (d / a.name).write_bytes(a.content)
        typer.echo(f"  wrote {len(res.artifacts)} files to {d}/")
    else:
        for a in res.artifacts:
            typer.echo(f"  {a.name}: {a.url} ({a.size_bytes} bytes)")
    return res


def start_and_follow(coordinator: str, token_env: str, spec: Any, detach: bool, out: Optional[str],
                     on_summary: Any = None) -> None:
    from parrot.v1 import coordinator_pb2 as cpb

    async def go() -> int:
        async def fn(stub: Any, md: Any) -> int:
            run = await stub.StartRun(cpb.StartRunRequest(spec=spec), metadata=md)
            typer.echo(f"started {run.id} ({run.progress.total} conversations); output: {run.output_url}")
            if detach:
                return 0
            await follow(stub, md, run.id)
            run = await reconnecting(lambda: stub.GetRun(cpb.GetRunRequest(run_id=run.id), metadata=md))
            print_run(run)
            res = await reconnecting(lambda: save_results(stub, md, run.id, out))
            print_summary(res.summary_json)
            if on_summary is not None:
                on_summary(res.summary_json)
            return 0 if run.state == cpb.RUN_STATE_SUCCEEDED else 1

        return await rpc(coordinator, token_env, fn, coordinator_stub)

    raise typer.Exit(asyncio.run(go()))


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")

    @app.command("eval")
    def eval_cmd(
        questions: Optional[str] = typer.Option(None, "--questions", "-q",
                                                help="MT-Bench format file (any number of turns) or a published "
                                                     "benchmark file; path or URL."),
        references: Optional[str] = typer.Option(None, help="FastChat reference answer file (optional)."),
        limit: int = typer.Option(0, help="Only the first N questions (0 = all)."),
        model_id: str = typer.Option("", help="Name of the model under test in the output files."),
        judge_prompt: str = typer.Option("", help="Judge prompt name (default: the judge's)."),
        judge_max_tokens: int = typer.Option(0, help="Most tokens of each judge explanation (0 = judge default)."),
        pairwise: bool = typer.Option(False, help="Also compare against --baseline, both orders."),
        baseline: str = typer.Option("", help="gRPC address of the baseline responder (pairwise)."),
        baseline_model_id: str = typer.Option("", help="Name of the baseline in the output files."),
        responder: str = typer.Option("", help="Responder address (default: the coordinator's)."),
        judge: str = typer.Option("", help="Judge address (default: the coordinator's)."),
        questions_format: str = typer.Option("", help="auto (default), mtbench, sessions, sharegpt, or a published "
                                                      "benchmark file: mt-eval, mtbench101, multi-if, "
                                                      "lost-in-conversation, multichallenge."),
        history: str = typer.Option("", help="self (own earlier answers) or golden (the file's reference assistant "
                                             "turns); default: the benchmark's protocol."),
        repeats: int = typer.Option(0, help="Runs of every session with different seeds, for pass^k (0 = 1)."),
        arm: Optional[list[str]] = typer.Option(None, "--arm", help="Lost in Conversation arm: full, concat or sharded "
                                                                    "(repeatable; default all three)."),
        skip_judge: bool = typer.Option(False, help="Grade with the file's instruction checks only (no judge)."),
        second_judge: str = typer.Option("", help="Address of a second judge grading every turn (judge agreement)."),
        concurrency: int = typer.Option(0, help="Sessions in flight at once (0 = the coordinator's default)."),
        max_tokens: int = typer.Option(0, help="Most new tokens per answer (0 = responder default)."),
        seed: int = typer.Option(0, help="Seed for generation."),
        name: str = typer.Option("", help="A name for the run."),
        spec: Optional[str] = typer.Option(None, "--spec", help="YAML run spec; flags override it."),
        detach: bool = typer.Option(False, help="Start and return without following progress."),
        out: Optional[str] = typer.Option(None, help="Download the run's output files into this folder."),
        coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV,
    ) -> None:
        """Evaluate a model on N-turn sessions (MT-Bench / MT-Bench++ format, or a published multi-turn benchmark
        file as it ships): answers + per-turn judgments, scored by the benchmark's protocol."""
        if not questions and not spec:
            fail("give --questions FILE (or --spec FILE)")
        section = {"questions": input_file(questions, "--questions") if questions else None,
                   "reference_answers": input_file(references, "--references") if references else None,
                   "model_id": model_id, "judge_prompt": judge_prompt, "pairwise": pairwise,
                   "baseline_model_id": baseline_model_id, "judge_max_tokens": judge_max_tokens,
                   "questions_format": questions_format, "skip_judge": skip_judge, "second_judge": second_judge,
                   "history": history, "repeats": repeats, "arms": arm or None}
        common = {"name": name, "limit": limit, "concurrency": concurrency, "seed": str(seed) if seed else None,
                  "targets": {"responder": responder, "judge": judge, "baseline_responder": baseline},
                  "params": {"max_tokens": max_tokens}}
        start_and_follow(coordinator, token_env, build_spec(spec, "evaluation", section, common), detach, out)

    @app.command("collect")
    def collect_cmd(
        seeds: Optional[str] = typer.Option(None, "--seeds", "-s", help="ShareGPT JSON/JSONL or JSONL of queries; path or URL."),
        seed_format: str = typer.Option("auto", help="auto, sharegpt or queries."),
        turns: Optional[int] = typer.Option(None, help="User turns per conversation (fixed; default 4)."),
        min_turns: Optional[int] = typer.Option(None, help="Sample the number of user turns between --min-turns and --max-turns."),
        max_turns: Optional[int] = typer.Option(None, help="Upper end of the sampled range."),
        persona: str = typer.Option("", help="Asker persona hint."),
        min_query_chars: int = typer.Option(0, help="Drop shorter follow-ups (0 = the coordinator's default)."),
        limit: int = typer.Option(0, help="Only the first N seeds (0 = all)."),
        responder: str = typer.Option("", help="Responder address (default: the coordinator's)."),
        asker: str = typer.Option("", help="Asker address (default: the coordinator's)."),
        concurrency: int = typer.Option(0, help="Conversations in flight at once (0 = the coordinator's default)."),
        max_tokens: int = typer.Option(0, help="Most new tokens per answer (0 = responder default)."),
        seed: int = typer.Option(0, help="Seed for sampled turn counts and generation."),
        name: str = typer.Option("", help="A name for the run."),
        spec: Optional[str] = typer.Option(None, "--spec", help="YAML run spec; flags override it."),
        detach: bool = typer.Option(False, help="Start and return without following progress."),
        out: Optional[str] = typer.Option(None, help="Download the dataset and stats into this folder."),
        coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV,
    ) -> None:
        """Collect multi-turn conversations (Parrot-Ask): responder answers, asker asks follow-ups."""
        if not seeds and not spec:
            fail("give --seeds FILE (or --spec FILE)")
        if turns is not None and (min_turns is not None or max_turns is not None):
            fail("--turns and --min-turns/--max-turns are alternatives")
        # The coordinator's rules (spec.collection.min_turns / max_turns), said with the flags' names.
        for flag, value in (("--turns", turns), ("--min-turns", min_turns), ("--max-turns", max_turns)):
            if value is not None and value < 1:
                fail(f"{flag}: is {value}; a conversation needs at least 1 user turn")
        if min_turns is not None and max_turns is not None and max_turns < min_turns:
            fail(f"--max-turns: is {max_turns}; it must be >= --min-turns ({min_turns})")
        lo = turns or min_turns or (0 if spec else 4)
        section = {"seeds": input_file(seeds, "--seeds") if seeds else None, "seed_format": seed_format,
                   "min_turns": lo, "max_turns": turns or max_turns, "persona": persona,
                   "min_query_chars": min_query_chars}
        common = {"name": name, "limit": limit, "concurrency": concurrency, "seed": str(seed) if seed else None,
                  "targets": {"responder": responder, "asker": asker}, "params": {"max_tokens": max_tokens}}
        start_and_follow(coordinator, token_env, build_spec(spec, "collection", section, common), detach, out)

    @runs_app.command("list")
    def runs_list(limit: int = typer.Option(50, help="Most runs to show (newest first)."),
                  coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """List runs, newest first."""
        from parrot.v1 import coordinator_pb2 as cpb

        async def fn(stub: Any, md: Any) -> None:
            r = await stub.ListRuns(cpb.ListRunsRequest(limit=limit), metadata=md)
            typer.echo(f"{'run':<30} {'kind':<11} {'state':<10} {'done':>11} {'failed':>6}  name")
            for run in r.runs:
                p = run.progress
                typer.echo(f"{run.id:<30} {run.spec.WhichOneof('kind') or '-':<11} {state_name(run.state):<10} "
                           f"{p.finished + p.failed:>5}/{p.total:<5} {p.failed:>6}  {run.spec.name}")

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

    @runs_app.command("show")
    def runs_show(run_id: str, coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """Show one run: state, progress, outputs and summary."""
        from parrot.v1 import coordinator_pb2 as cpb

        async def fn(stub: Any, md: Any) -> None:
            print_run(await stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=md))
            print_summary((await save_results(stub, md, run_id, None)).summary_json)

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

    @runs_app.command("watch")
    def runs_watch(run_id: str, coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """Follow a run's progress until it ends."""
        from parrot.v1 import coordinator_pb2 as cpb

        async def fn(stub: Any, md: Any) -> None:
            await follow(stub, md, run_id)
            print_run(await reconnecting(lambda: stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=md)))

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

    @runs_app.command("cancel")
    def runs_cancel(run_id: str, coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """Cancel a run; finished conversations stay recorded."""
        from parrot.v1 import coordinator_pb2 as cpb

        async def fn(stub: Any, md: Any) -> None:
            print_run(await stub.CancelRun(cpb.CancelRunRequest(run_id=run_id), metadata=md))

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

    @runs_app.command("resume")
    def runs_resume(run_id: str,
                    retry_failed: bool = typer.Option(False, help="Also run again the conversations recorded as failed."),
                    coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """Continue a failed or cancelled run (after fixing the cause); finished conversations are kept."""
        from parrot.v1 import coordinator_pb2 as cpb

        async def fn(stub: Any, md: Any) -> None:
            print_run(await stub.ResumeRun(cpb.ResumeRunRequest(run_id=run_id, retry_failed=retry_failed), metadata=md))

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

    @runs_app.command("results")
    def runs_results(run_id: str, out: Optional[str] = typer.Option(None, help="Download the files into this folder."),
                     coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV) -> None:
        """List (or download) a run's output files and print its summary."""
        async def fn(stub: Any, md: Any) -> None:
            print_summary((await save_results(stub, md, run_id, out)).summary_json)

        asyncio.run(rpc(coordinator, token_env, fn, coordinator_stub))

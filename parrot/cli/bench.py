"""CLI: `parrot bench extend|check|instructions|agreement|asker` (building and checking benchmarks, scoring askers).

`parrot bench` is about benchmark data and quality scorecards; the folder bench/ holds speed scripts (platform
against peers), which this command does not run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

import typer

from parrot.cli._common import fail

bench_app = typer.Typer(help="Benchmark data and quality scorecards: extend sessions to N turns, check session files, "
                                 "list instruction checks, judge agreement, score askers against people. (Speed "
                                 "measurements are the scripts in the repository's bench/ folder, not this command.)",
                        no_args_is_help=True)
FORMAT = typer.Option("auto", "--format", help="Session file format: auto, mtbench, sessions, sharegpt, or a published "
                                                "benchmark file: mt-eval, mtbench101, multi-if, lost-in-conversation, "
                                                "multichallenge.")


def _load(path: str, fmt: str) -> list[Any]:
    from parrot.datasets import SESSION_FORMATS, DatasetError, load_eval_sessions_file

    if fmt not in SESSION_FORMATS:
        fail(f"--format is {fmt!r}; allowed: {', '.join(SESSION_FORMATS)}")
    try:
        return load_eval_sessions_file(path, fmt)
    except DatasetError as e:
        fail(str(e))
    return []


@bench_app.command("extend")
def extend_cmd(
    questions: str = typer.Argument(..., help="Session file to extend (MT-Bench questions, sessions JSONL or ShareGPT)."),
    out: str = typer.Option(..., "--out", "-o", help="Output JSONL (MT-Bench format with turn_provenance)."),
    turns: int = typer.Option(8, help="User turns per session after extension (MT-Bench++: 8)."),
    limit: int = typer.Option(0, help="Only the first N sessions (0 = all)."),
    asker: str = typer.Option("127.0.0.1:50051", envvar="PARROT_ASKER", help="gRPC address of the asker."),
    responder: str = typer.Option("127.0.0.1:50051", envvar="PARROT_RESPONDER",
                                  help="gRPC address of the responder that writes the context answers."),
    answer_max_tokens: int = typer.Option(256, help="Most new tokens per context answer."),
    ask_max_tokens: int = typer.Option(64, help="Most new tokens per follow-up question."),
    ask_temperature: Optional[float] = typer.Option(None, help="Asker temperature (default: the asker's)."),
    max_asks_per_turn: int = typer.Option(3, help="Asker calls per turn before a session stops early."),
    persona: str = typer.Option("", help="Asker persona hint."),
    concurrency: int = typer.Option(4, help="Sessions extended at once."),
    seed: int = typer.Option(0, help="Base seed of the generation calls."),
    review: Optional[str] = typer.Option(None, help="Markdown review sheet (default: OUT with .review.md)."),
    restart: bool = typer.Option(False, help="Start over instead of resuming from what OUT already holds."),
    fmt: str = FORMAT,
    also_shape: Optional[list[str]] = typer.Option(
        None, "--also-shape", help="Also write the draft in a published shape beside OUT (repeatable): mt-eval "
                                   "(OUT.mt-eval.jsonl) or mtbench101 (OUT.mtbench101.jsonl); the drafted context "
                                   "answers are the assistant turns."),
    mtbench101_task: str = typer.Option("AR", help="MT-Bench-101 task code of the mtbench101 shape (default AR, "
                                                   "anaphora resolution)."),
    call_deadline_s: float = typer.Option(300.0, help="Deadline of each model call."),
    token_env: str = typer.Option("PARROT_AUTH_TOKEN", help="Env var holding the bearer token to send (if set)."),
) -> None:
    """Extend sessions to N turns with the asker (a first draft of an MT-Bench++-style file, for human review)."""
    from parrot.logs import setup_logging

    setup_logging()
    from parrot.benchmarks.extend import ExtendConfig, ExtendIncomplete, extend_file, review_sheet
    from parrot.errors import ConfigError
    from parrot.model_clients import ModelClients, Retry, check_reachable

    from parrot.benchmarks.shapes import SHAPES, write_shapes
    from parrot.datasets.published import MTBENCH101_TASKS

    for shape in also_shape or []:
        if shape not in SHAPES:
            fail(f"--also-shape is {shape!r}; allowed: {', '.join(SHAPES)}")
    if mtbench101_task not in MTBENCH101_TASKS:
        fail(f"--mtbench101-task is {mtbench101_task!r}; allowed: {', '.join(MTBENCH101_TASKS)}")
    sessions = _load(questions, fmt)
    sessions = sessions[:limit] if limit else sessions
    try:
        cfg = ExtendConfig(turns=turns, answer_max_tokens=answer_max_tokens, ask_max_tokens=ask_max_tokens,
                           ask_temperature=ask_temperature, max_asks_per_turn=max_asks_per_turn, persona=persona,
                           concurrency=concurrency, seed=seed)
    except ConfigError as e:
        fail(str(e))
    out_path = Path(out)
    if Path(questions).resolve() == out_path.resolve():
        fail("--out must not be the input file")
    if restart and out_path.exists():
        out_path.unlink()
    review_path = Path(review) if review else out_path.with_suffix(".review.md")

    from parrot.errors import ConfigError
    from parrot.tokens import token_from

    try:
        token = token_from(None, token_env, "")
    except ConfigError as e:
        fail(str(e))

    async def go() -> int:
        for target, svc in ((asker, "parrot.v1.Asker"), (responder, "parrot.v1.Responder")):
            problem = await check_reachable(target, svc)
            if problem:
                fail(problem)
        clients = ModelClients({"asker": asker, "responder": responder}, Retry(call_deadline_s=call_deadline_s), token)
        done = [0]

        def progress(rec: dict[str, Any]) -> None:
            done[0] += 1
            ext = rec.get("extension") or {}
            typer.echo(f"[{done[0]}/{len(sessions)}] {rec['question_id']}: {len(rec['turns'])} turns ({ext.get('status')})",
                       err=True)

        rc = 0
        try:
            records = await extend_file(sessions, out_path, cfg, clients, progress)
        except ExtendIncomplete as e:
            records, rc = e.records, 1
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        finally:
            await clients.close()
        review_path.write_text(review_sheet(records, f"Review: {out_path.name}"), encoding="utf-8")
        for path in write_shapes(records, out_path, also_shape or [], mtbench101_task):
            typer.echo(f"wrote {path}")
        new = sum(1 for r in records for p in r.get("turn_provenance", []) if p.get("source") == "asker")
        incomplete = sum(1 for r in records if (r.get("extension") or {}).get("status") == "incomplete")
        typer.echo(f"wrote {len(records)} sessions ({new} new turns, {incomplete} incomplete) to {out_path}; "
                   f"review sheet: {review_path}")
        return rc

    raise typer.Exit(asyncio.run(go()))


@bench_app.command("check")
def check_cmd(path: str = typer.Argument(..., help="Session file (any --format, detected by default)."),
              fmt: str = FORMAT) -> None:
    """Validate a session or published benchmark file (every record, every instruction) and print what it holds."""
    sessions = _load(path, fmt)
    turns = [len(q.turns) for q in sessions]
    with_inst = sum(1 for q in sessions if q.instructions)
    n_inst = sum(len(t) for q in sessions for t in (q.instructions or []))
    cats: dict[str, int] = {}
    for q in sessions:
        cats[q.category] = cats.get(q.category, 0) + 1
    typer.echo(f"{path}: {len(sessions)} sessions, turns {min(turns)}..{max(turns)} (total {sum(turns)}); "
               f"{with_inst} with instructions ({n_inst} given)")
    typer.echo("categories: " + ", ".join(f"{c}={n}" for c, n in sorted(cats.items())))
    protocols = {q.protocol.benchmark for q in sessions if q.protocol}
    if protocols:
        p = sessions[0].protocol
        scored = sum(len(q.protocol.scored_turns or q.turns) for q in sessions if q.protocol)
        golden = sum(1 for q in sessions if q.protocol and q.protocol.golden)
        typer.echo(f"benchmark: {', '.join(sorted(protocols))}; default history: {p.default_history}; "
                   f"judged turns: {scored}; with reference assistant turns (golden history): {golden}")


@bench_app.command("instructions")
def instructions_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the verifiable instructions the checks know, with their arguments."""
    from parrot.instructions import REGISTRY

    rows = [{"id": i, "args": {p.name: p.kind + ("" if p.required else f" (default {p.default!r})") for p in c.params},
             "group": c.group, "description": c.description} for i, c in sorted(REGISTRY.items())]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        args = ", ".join(f"{k}: {v}" for k, v in r["args"].items()) or "-"
        typer.echo(f"{r['id']:<48} {args}")


@bench_app.command("agreement")
def agreement_cmd(
    judgments_a: str = typer.Argument(..., help="FastChat single-judgment JSONL of judge A."),
    judgments_b: str = typer.Argument(..., help="FastChat single-judgment JSONL of judge B (same answers)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Agreement of two judges that graded the same answers (Spearman, pairwise agreement)."""
    from parrot.analysis import judge_agreement
    from parrot.datasets import DatasetError, load_single_judgments_file

    scores = []
    for path in (judgments_a, judgments_b):
        try:
            recs = load_single_judgments_file(path)
        except DatasetError as e:
            fail(str(e))
        scores.append({(str(r.question_id), r.model, r.turn): r.score for r in recs})
    result = judge_agreement(scores[0], scores[1])
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if not result["n"]:
        fail("the two files share no graded (question_id, model, turn)")
    f = lambda x, pct=False: "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3f}")  # noqa: E731
    typer.echo(f"items graded by both: {result['n']} (only one judge: {result['only_one_judge']})")
    typer.echo(f"Spearman: {f(result['spearman'])}  pairwise agreement: {f(result['pairwise_agreement'], True)} "
               f"(without ties: {f(result['pairwise_agreement_no_ties'], True)}, {result['pairs']} pairs)")
    typer.echo(f"exact agreement: {f(result['exact_agreement'], True)}  mean |A-B|: {f(result['mean_abs_diff'])}")


def register(app: typer.Typer) -> None:
    from parrot.cli.bench_asker import asker_cmd

    bench_app.command("asker")(asker_cmd)
    app.add_typer(bench_app, name="bench")

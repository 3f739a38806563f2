"""`parrot negatives`: a CaPO negatives run on the coordinator (context-dependent queries -> preference pairs)."""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer

from parrot.cli._common import COORDINATOR, TOKEN_ENV, fail
from parrot.cli.runs import build_spec, input_file, start_and_follow


def print_negatives_summary(summary_json: str) -> None:
    """Per-strategy pairs and drops of a negatives run's summary."""
    if not summary_json:
        return
    stats = json.loads(summary_json).get("stats") or {}
    per = stats.get("per_strategy") or {}
    if not per:
        return
    typer.echo(f"\n  {'strategy':<26} {'pairs':>6} {'near-identical':>15} {'empty':>6} {'no distractor':>14}")
    for name, row in per.items():
        typer.echo(f"  {name:<26} {row.get('pairs', 0):>6} {row.get('near_identical', 0):>15} {row.get('empty', 0):>6} "
                   f"{row.get('no_distractor', 0):>14}")
    skipped = stats.get("queries_skipped") or {}
    typer.echo(f"  queries: {stats.get('queries_selected', 0)} selected, {stats.get('queries_used', 0)} used; skipped: "
               + ", ".join(f"{k}={v}" for k, v in skipped.items()))


def register(app: typer.Typer) -> None:
    @app.command("negatives")
    def negatives_cmd(
        conversations: Optional[str] = typer.Option(None, "--conversations", "-i",
                                                    help="ShareGPT JSON/JSONL conversations; path or URL."),
        strategy: Optional[List[str]] = typer.Option(None, "--strategy", help="context_neglect, context_hallucination or "
                                                     "context_misunderstanding; repeat for several (default: all three)."),
        chosen_source: str = typer.Option("", help="responder (default: answer with the full history) or dataset "
                                                   "(the conversation's own answer)."),
        judge_confirm: bool = typer.Option(False, help="Confirm each detected query with the judge."),
        judge_threshold: float = typer.Option(0.0, help="Lowest judge rating (1-10) that confirms a query (0 = the coordinator's default)."),
        judge_prompt: str = typer.Option("", help="Judge prompt for the confirmation (default parrot-context-v1)."),
        max_queries: int = typer.Option(0, help="Most selected queries per conversation (0 = all)."),
        max_history_turns: int = typer.Option(0, help="Most earlier exchanges kept as history (0 = all)."),
        near_identical: float = typer.Option(0.0, help="Drop pairs at or above this chosen/rejected similarity (0 = the coordinator's default)."),
        all_follow_ups: bool = typer.Option(False, help="Select every follow-up, not only context-dependent ones."),
        limit: int = typer.Option(0, help="Only the first N conversations (0 = all)."),
        responder: str = typer.Option("", help="Responder address (default: the coordinator's)."),
        judge: str = typer.Option("", help="Judge address (default: the coordinator's)."),
        concurrency: int = typer.Option(0, help="Conversations in flight at once (0 = the coordinator's default)."),
        max_tokens: int = typer.Option(0, help="Most new tokens per answer (0 = responder default)."),
        seed: int = typer.Option(0, help="Seed for generation."),
        name: str = typer.Option("", help="A name for the run."),
        spec: Optional[str] = typer.Option(None, "--spec", help="YAML run spec; flags override it."),
        detach: bool = typer.Option(False, help="Start and return without following progress."),
        out: Optional[str] = typer.Option(None, help="Download preferences.jsonl, selected.jsonl and stats into this folder."),
        coordinator: str = COORDINATOR, token_env: str = TOKEN_ENV,
    ) -> None:
        """CaPO negatives: for context-dependent queries, a chosen answer and one rejected answer per strategy."""
        if not conversations and not spec:
            fail("give --conversations FILE (or --spec FILE)")
        section = {"conversations": input_file(conversations, "--conversations") if conversations else None,
                   "strategies": list(strategy or []) or None, "chosen_source": chosen_source,
                   "judge_confirm": judge_confirm, "judge_threshold": judge_threshold, "judge_prompt": judge_prompt,
                   "max_queries_per_conversation": max_queries, "max_history_turns": max_history_turns,
                   "near_identical_threshold": near_identical, "all_follow_ups": all_follow_ups}
        common = {"name": name, "limit": limit, "concurrency": concurrency, "seed": str(seed) if seed else None,
                  "targets": {"responder": responder, "judge": judge}, "params": {"max_tokens": max_tokens}}
        start_and_follow(coordinator, token_env, build_spec(spec, "negatives", section, common), detach, out,
                         on_summary=print_negatives_summary)


__all__: list[Any] = ["register", "print_negatives_summary"]

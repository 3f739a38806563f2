"""`parrot data asker|stats`: asker SFT examples from conversation logs, and dataset statistics side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from parrot.cli._common import fail

data_app = typer.Typer(help="Data pipeline: asker training data and dataset statistics.", no_args_is_help=True)

TOKENIZER = typer.Option("bundled", help="Token counter: 'bundled' (the bundled model's tokenizer), 'whitespace', or a "
                                         "tokenizer folder.")


def token_counter(spec: str) -> tuple[Callable[[str], int], str]:
    """(count function, label) for --tokenizer."""
    from parrot.datasets.cleaning import whitespace_tokens

    if spec == "whitespace":
        return whitespace_tokens, "whitespace"
    if spec == "bundled":
        from parrot.modelstore import bundled_model_dir

        path = bundled_model_dir()
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            fail(f"--tokenizer bundled: the bundled model is not prepared ({path}); run `parrot model prepare` "
                 "or pass --tokenizer whitespace")
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            fail(f"--tokenizer: {spec} is not a tokenizer folder (or 'bundled', 'whitespace')")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        fail(f"--tokenizer: cannot load a tokenizer from {path}: {e}")

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count, "tokenizer"


def _write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _read_conversations(path: str, fmt: str) -> list[Any]:
    from parrot.datasets import DatasetError
    from parrot.datasets.conversations import load_conversations_file

    try:
        if fmt == "asker":
            from parrot.conversation import Message
            from parrot.asking.prompting import END_OF_CONVERSATION, from_role_swapped

            rows = load_conversations_file(path, "messages")
            out: list[tuple[str, list[Message]]] = []
            for cid, messages in rows:
                try:
                    conversation = from_role_swapped(messages)[0]
                except ValueError as e:
                    fail(f"{path}: record {cid}: not an asker example ({e})")
                if conversation[-1].content == END_OF_CONVERSATION:  # an end example: the session as it ended
                    conversation = conversation[:-1]
                out.append((cid, conversation))
            return out
        return load_conversations_file(path, fmt)
    except DatasetError as e:
        fail(str(e))
    return []


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")

    @data_app.command("asker")
    def asker_cmd(
        inputs: List[str] = typer.Option(..., "--input", "-i", help="ShareGPT JSON/JSONL file; repeat for several."),
        output: str = typer.Option(..., "--output", "-o", help="Where to write the examples (JSONL)."),
        report: Optional[str] = typer.Option(None, help="Where to write the report (default: OUTPUT.report.json)."),
        min_user_turns: int = typer.Option(2, help="Keep only conversations with at least this many user turns."),
        max_tokens: int = typer.Option(2048, help="Most tokens per example; older context is left out to fit."),
        max_target_tokens: int = typer.Option(512, help="Drop target user turns longer than this."),
        max_message_tokens: int = typer.Option(0, help="Cut conversations before a longer message (0 = no cap)."),
        repair: bool = typer.Option(True, help="Trim leading assistant turns / cut at a wrong alternation "
                                               "(--no-repair drops such conversations)."),
        dedupe: bool = typer.Option(True, help="Drop duplicate conversations and examples."),
        end_examples: bool = typer.Option(False, help="Also an example whose target is the end-of-conversation marker "
                                                      "where each real session ended (the asker learns to stop)."),
        holdout: float = typer.Option(0.0, help="Fraction of sessions kept out of OUTPUT for evaluation (by a hash of "
                                                "the session id; ShareGPT chunks of a session stay together)."),
        holdout_output: Optional[str] = typer.Option(None, help="Where the held-out examples go (default: "
                                                                "OUTPUT with .heldout.jsonl)."),
        tokenizer: str = TOKENIZER,
    ) -> None:
        """Asker SFT examples (role-swapped chats: the user's turn is the assistant target) from ShareGPT logs."""
        from parrot.logs import setup_logging

        setup_logging()
        from parrot.datasets import DatasetError, dumps_jsonl, load_sharegpt_file
        from parrot.datasets.cleaning import CleaningConfig
        from parrot.asking.training_data import AskerDataConfig, build_asker_dataset, split_holdout

        if not 0 <= holdout < 1:
            fail(f"--holdout is {holdout}; allowed 0 <= x < 1")
        out = Path(output)
        held_path = Path(holdout_output) if holdout_output else out.with_name(out.stem + ".heldout.jsonl")
        if holdout and held_path.resolve() == out.resolve():
            fail("--holdout-output must differ from --output")
        try:
            config = AskerDataConfig(cleaning=CleaningConfig(min_user_turns=min_user_turns, repair=repair,
                                                             max_message_tokens=max_message_tokens, dedupe=dedupe),
                                     max_tokens=max_tokens, max_target_tokens=max_target_tokens, dedupe_examples=dedupe,
                                     end_examples=end_examples)
        except ValueError as e:
            fail(str(e))
        files = []
        for path in inputs:
            try:
                files.append((Path(path).name, load_sharegpt_file(path)))
            except DatasetError as e:
                fail(str(e))
        count, label = token_counter(tokenizer)
        rows, rep = build_asker_dataset(files, config, count)
        rows, held = split_holdout(rows, holdout)
        if holdout:
            _write_atomic(held_path, dumps_jsonl(held))
        _write_atomic(out, dumps_jsonl(rows))
        rep_path = Path(report) if report else out.with_name(out.name + ".report.json")
        summary = {**rep.as_dict(), "token_counter": label, "config": {
            "min_user_turns": min_user_turns, "max_tokens": max_tokens, "max_target_tokens": max_target_tokens,
            "max_message_tokens": max_message_tokens, "repair": repair, "dedupe": dedupe, "holdout": holdout,
            "end_examples": end_examples}}
        if holdout:
            summary["holdout"] = {"fraction": holdout, "output": str(held_path), "examples": len(held),
                                  "sessions": len({r["id"].rsplit(":", 1)[0] for r in held}),
                                  "training_examples": len(rows)}
        _write_atomic(rep_path, json.dumps(summary, indent=2) + "\n")
        c = rep.cleaning
        typer.echo(f"conversations: {c.conversations_in} read, {c.conversations_kept} kept")
        typer.echo("  dropped: " + ", ".join(f"{k}={v}" for k, v in c.dropped.items()))
        typer.echo("  repaired: " + ", ".join(f"{k}={v}" for k, v in c.repaired.items()))
        typer.echo(f"examples: {len(rows)} written to {out} (of {rep.examples} built from {rep.targets} follow-up turns; "
                   f"{rep.context_dependent} context-dependent, {rep.context_trimmed} with context trimmed)")
        typer.echo("  dropped: " + ", ".join(f"{k}={v}" for k, v in rep.dropped.items()))
        typer.echo(f"  tokens ({label}): {rep.tokens} total, "
                   f"{rep.tokens / rep.examples if rep.examples else 0:.1f} per example")
        if holdout:
            typer.echo(f"held out: {len(held)} examples of {summary['holdout']['sessions']} conversations written to "
                       f"{held_path}; {len(rows)} left for training in {out}")
        typer.echo(f"report: {rep_path}")

    @data_app.command("stats")
    def stats_cmd(
        files: List[str] = typer.Argument(..., help="Conversation datasets (ShareGPT, MT-Bench questions, chat JSONL)."),
        fmt: str = typer.Option("auto", "--format", help="auto, sharegpt, mtbench, messages, or asker (examples of "
                                                         "`parrot data asker`, read back as conversations)."),
        tokenizer: str = TOKENIZER,
        as_json: bool = typer.Option(False, "--json", help="Print the full statistics as JSON."),
    ) -> None:
        """Statistics of conversation datasets side by side: sessions, turns, tokens, context-dependent queries, distinct-2."""
        from parrot.logs import setup_logging

        setup_logging()
        from parrot.analysis import dataset_stats, format_stats_table
        from parrot.datasets.conversations import CONVERSATION_FORMATS

        if fmt not in (*CONVERSATION_FORMATS, "asker"):
            fail(f"--format is {fmt!r}; allowed: {', '.join((*CONVERSATION_FORMATS, 'asker'))}")
        count, label = token_counter(tokenizer)
        named = []
        for path in files:
            conversations = [messages for _id, messages in _read_conversations(path, fmt)]
            named.append((Path(path).name, dataset_stats(conversations, count if label == "tokenizer" else None)))
        if as_json:
            typer.echo(json.dumps(dict(named), indent=2))
        else:
            typer.echo(format_stats_table(named))

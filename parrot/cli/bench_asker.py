"""CLI: `parrot bench asker`, the human-likeness scorecard of askers on held-out real contexts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from parrot.cli._common import fail

ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
OPTION = re.compile(r"@(?P<key>rerank|end)=(?P<value>[^@=]*)$")  # MODEL@rerank=N, MODEL@end=P, in any order


@dataclass(frozen=True)
class AskerSpec:
    name: str
    address: str = ""  # host:port of a running asker
    model: str = ""  # or a model to serve on loopback for the run (smollm2, checkpoint folder, URL)
    rerank: int = 0  # the served model's `parrot serve asker --rerank-samples` (0 = off)
    end_threshold: float = 0.0  # its `--end-threshold` (0 = off)


def parse_asker(spec: str) -> AskerSpec:
    """NAME=ADDRESS (host:port, not an existing path), NAME=MODEL, NAME=MODEL@rerank=N, NAME=MODEL@end=P
    (the options in any order)."""
    name, eq, value = spec.partition("=")
    if not eq or not name.strip() or not value.strip():
        fail(f"--asker {spec!r}: expected NAME=ADDRESS (host:port of a running asker), NAME=MODEL "
             "(smollm2, a checkpoint folder or URL), NAME=MODEL@rerank=N or NAME=MODEL@end=P")
    options: dict[str, str] = {}
    while (m := OPTION.search(value)) is not None:
        if m["key"] in options:
            fail(f"--asker {spec!r}: @{m['key']} is given twice")
        options[m["key"]] = m["value"]
        value = value[:m.start()]
    if ADDRESS.match(value) and not Path(value).exists():
        if options:
            fail(f"--asker {spec!r}: @rerank and @end apply to a MODEL the command serves; start the asker at "
                 f"{value} with `parrot serve asker --rerank-samples N --end-threshold P` instead")
        return AskerSpec(name, address=value)
    rerank = _option(spec, options, "rerank", int, lambda v: 2 <= v <= 16, "allowed 2..16 samples per question")
    end = _option(spec, options, "end", float, lambda v: 0 < v <= 1, "allowed a probability in (0, 1]")
    return AskerSpec(name, model=value, rerank=int(rerank), end_threshold=end)


def _option(spec: str, options: dict[str, str], key: str, kind: type, ok: Any, allowed: str) -> float:
    """The value of ``@key=`` in ``options`` (0 when absent); fails naming it when not a ``kind`` that is ``ok``."""
    if key not in options:
        return 0
    try:
        value = kind(options[key])
    except ValueError:
        value = None
    if value is None or not ok(value):
        fail(f"--asker {spec!r}: @{key}={options[key]}; {allowed}")
    return value


def start_asker(model: str, backend: str, timeout_s: float, rerank: int = 0,
                end_threshold: float = 0.0) -> tuple[subprocess.Popen, str, Path]:
    """`parrot serve asker --model MODEL` (``rerank``: ``--rerank-samples``, ``end_threshold``:
    ``--end-threshold``) as a child on free loopback ports; (process, target, log) once SERVING."""
    from parrot.client import free_port, wait_until_serving

    port, http = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="parrot-bench-asker-", suffix=".log")[1])
    cmd = [sys.executable, "-c", "from parrot.cli import main; main()", "serve", "asker", "--backend", backend,
           "--model", model, "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(http)]
    if rerank:
        cmd += ["--rerank-samples", str(rerank)]
    if end_threshold:
        cmd += ["--end-threshold", str(end_threshold)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PARROT_LOG_LEVEL=os.environ.get("PARROT_LOG_LEVEL", "WARNING")))
    target = f"127.0.0.1:{port}"
    try:
        wait_until_serving(target, "parrot.v1.Asker", timeout_s,
                           lambda: None if proc.poll() is None else f"exited with code {proc.returncode}")
    except (TimeoutError, RuntimeError) as e:
        stop_asker(proc)
        tail = log.read_text(errors="replace")[-1500:]
        fail(f"--asker model {model!r}: `parrot serve asker` {e}; its log ends:\n{tail}")
    return proc, target, log


def stop_asker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def asker_cmd(
    data: str = typer.Argument(..., help="ShareGPT file (JSON or JSONL) or asker-examples JSONL (`parrot data asker`)."),
    askers: list[str] = typer.Option(..., "--asker", metavar="NAME=ADDRESS|MODEL[@rerank=N][@end=P]",
                                     help="An asker to score (repeat): NAME=host:port of a running asker, or "
                                          "NAME=MODEL (smollm2, checkpoint folder or URL), served on loopback for the run; "
                                          "MODEL@rerank=N serves it with `--rerank-samples N` (best of N samples), "
                                          "MODEL@end=P with `--end-threshold P` (ends only when p(end) >= P)."),
    holdout: float = typer.Option(0.0, help="Use only the held-out sessions of this fraction (the split of "
                                           "`parrot data asker --holdout`); 0 = every context of the file."),
    limit: int = typer.Option(40, help="Contexts to use, spread over as many sessions as possible (0 = all)."),
    seed: int = typer.Option(0, help="Seed of the context sample, the generation calls and the bootstrap."),
    max_history_turns: int = typer.Option(2, help="Latest exchanges of each context sent to the askers (0 = all)."),
    max_tokens: int = typer.Option(48, help="Most new tokens per follow-up."),
    temperature: float = typer.Option(0.0, help="Asker temperature (0 = greedy)."),
    concurrency: int = typer.Option(8, help="Asker requests in flight (the server batches them)."),
    backend: str = typer.Option("transformers", help="Backend of the askers served for the run (echo: wiring checks)."),
    nll: bool = typer.Option(True, "--nll/--no-nll", help="Held-out NLL / perplexity of the people's follow-ups under "
                                                           "each asker given as a MODEL (in-process)."),
    max_length: int = typer.Option(512, help="--nll: tokens per example, as in training."),
    resamples: int = typer.Option(1000, help="Bootstrap resamples (by session) per interval."),
    start_timeout_s: float = typer.Option(300.0, help="Wait this long for a served asker to become SERVING."),
    as_json: Optional[str] = typer.Option(None, "--json", help="Also write the scorecard and every follow-up here."),
    token_env: str = typer.Option("PARROT_AUTH_TOKEN", help="Env var holding the bearer token to send (if set)."),
) -> None:
    """The human-likeness scorecard: askers' follow-ups vs people's real next turns on held-out contexts."""
    from parrot.logs import setup_logging

    setup_logging()
    from parrot.asking.scorecard import score
    from parrot.asking.scorecard_io import ask_followups, load_contexts, sample_contexts
    from parrot.client import auth_metadata
    from parrot.datasets import DatasetError
    from parrot.model_clients import check_reachable

    specs = [parse_asker(s) for s in askers]
    if len({s.name for s in specs}) < len(specs):
        fail("--asker names must differ")
    if not 0 <= holdout < 1:
        fail(f"--holdout is {holdout}; allowed 0 <= x < 1")
    try:
        contexts = sample_contexts(load_contexts(data, holdout), limit, seed)
    except (OSError, DatasetError) as e:
        fail(f"DATA: {e}")
    for s in specs:
        if s.address:
            problem = asyncio.run(check_reachable(s.address, "parrot.v1.Asker"))
            if problem:
                fail(f"--asker {s.name}={s.address}: {problem}")
    metadata = auth_metadata(token_env)
    followups: dict[str, Any] = {}
    for s in specs:
        proc = None
        target = s.address
        if s.model:
            rerank = f", reranking {s.rerank} samples" if s.rerank else ""
            rerank += f", end threshold {s.end_threshold}" if s.end_threshold else ""
            typer.echo(f"[bench asker] {s.name}: serving {s.model} ({backend}{rerank}) on loopback", err=True)
            proc, target, log = start_asker(s.model, backend, start_timeout_s, s.rerank, s.end_threshold)
        try:
            followups[s.name] = asyncio.run(ask_followups(
                target, contexts, max_tokens=max_tokens, temperature=temperature, seed=seed,
                concurrency=concurrency, max_history_turns=max_history_turns, metadata=metadata))
        finally:
            if proc is not None:
                stop_asker(proc)
                log.unlink(missing_ok=True)
        missing = sum(f.text is None and not f.ended for f in followups[s.name])
        typer.echo(f"[bench asker] {s.name}: {len(contexts) - missing}/{len(contexts)} follow-ups", err=True)
    scored: dict[str, Any] = {}
    if nll:
        from training.asker_eval import followup_nll

        for s in specs:
            if s.model:
                typer.echo(f"[bench asker] {s.name}: held-out NLL under {s.model}", err=True)
                scored[s.name] = followup_nll(s.model, [c.example if c.human is not None else None
                                                         for c in contexts], max_length)
    card = score(contexts, followups, scored, n_resamples=resamples, seed=seed)
    typer.echo(card.caption(data, holdout) + "\n")
    typer.echo(card.markdown())
    if as_json:
        report = {"data": data, "holdout": holdout, "seed": seed, **card.as_dict(),
                  "askers": {s.name: {"address": s.address, "model": s.model, "rerank": s.rerank,
                                       "end_threshold": s.end_threshold} for s in specs},
                  "followups": [{"id": c.id, "session": c.session, "people": c.human,
                                 **{n: {"text": fs[i].text, "ended": fs[i].ended, "error": fs[i].error}
                                    for n, fs in followups.items()}} for i, c in enumerate(contexts)]}
        Path(as_json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

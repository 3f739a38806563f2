"""Do askers ask like people? Context-dependent follow-ups on held-out real contexts.

For every held-out asker example (`parrot data asker --holdout F` writes them), the context is a
real conversation up to a user turn and the target is what the person asked next. Each asker
(`--asker NAME=MODEL`: `smollm2` for the prompted base model, or a checkpoint folder / URL from
`parrot train asker`, which the asker service serves in the role-swapped format) is started as
`parrot serve asker` on loopback and asked for the next user turn of each context; the
context-dependence detector (`parrot.analysis.is_context_dependent`) marks the generated turns
and, as the reference row, the people's own turns. A context where every sample failed the
asker's own checks (the service answers UNAVAILABLE) counts under "no follow-up", and the
fraction is over the follow-ups that came back. Prints a Markdown table; `--json` writes the
figures and every generated follow-up.

    .venv/bin/python bench/asker_followups.py --examples asker.heldout.jsonl \
        --asker base=smollm2 --asker trained=.parrot/train/asker-smollm2/model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from common import start, stop

from parrot.analysis import is_context_dependent
from parrot.conversation import Message, Role


def load_examples(path: str, limit: int) -> list[Any]:
    """The first ``limit`` held-out examples, read and checked once by the training loader."""
    from training.data import load_asker_examples

    return load_asker_examples(path, Path(path).read_bytes())[:limit]


def contexts(examples: list[Any], max_history_turns: int) -> list[tuple[str, list[Message], str]]:
    """(example id, context ending with an answer, the person's follow-up) per held-out example."""
    from parrot.asking.training_data import example_to_conversation

    out = []
    for example in examples:
        conversation = example_to_conversation({"messages": example.messages})
        context, target = conversation[:-1], conversation[-1]
        if max_history_turns > 0:
            context = context[-2 * max_history_turns:]
        out.append((example.id, context, target.content))
    return out


def user_turns(context: list[Message]) -> int:
    return sum(m.role is Role.USER for m in context)


async def ask_all(target: str, items: list[tuple[str, list[Message], str]], args: argparse.Namespace) -> list[dict[str, Any]]:
    import grpc

    from parrot.client import channel
    from parrot.protoconv import messages_to_pb
    from parrot.v1 import asker_pb2, asker_pb2_grpc, conversation_pb2

    gate = asyncio.Semaphore(args.concurrency)
    async with channel(target) as ch:
        stub = asker_pb2_grpc.AskerStub(ch)

        async def one(i: int, cid: str, context: list[Message]) -> dict[str, Any]:
            params = conversation_pb2.GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                                       seed=args.seed + i)
            async with gate:
                t0 = time.monotonic()
                try:
                    r = await stub.Ask(asker_pb2.AskRequest(conversation=messages_to_pb(context), params=params),
                                       timeout=600)
                except grpc.aio.AioRpcError as e:  # e.g. UNAVAILABLE: every sample failed the asker's checks
                    return {"id": cid, "followup": None, "error": f"{e.code().name}: {e.details()}",
                            "context_dependent": False, "cues": [], "seconds": round(time.monotonic() - t0, 3)}
            text = r.candidates[0].text
            verdict = is_context_dependent(text, user_turns(context))
            return {"id": cid, "followup": text, "context_dependent": verdict.dependent, "cues": verdict.cues,
                    "seconds": round(time.monotonic() - t0, 3), "model": r.model}

        return list(await asyncio.gather(*(one(i, cid, ctx) for i, (cid, ctx, _) in enumerate(items))))


def target_nll(model_spec: str, examples: list[Any], max_length: int) -> tuple[float, int, int]:
    """(mean negative log-likelihood per target token, examples scored, target tokens) of the
    people's follow-ups under a model.

    The asker's own training objective on held-out data: the role-swapped example with the loss
    only on its last message (``training.data``'s tokenization, so exactly what training sees);
    examples whose target lies past ``max_length`` are left out, as training leaves them out.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parrot.modelstore import resolve_model
    from training.data import IGNORE, tokenize_example

    folder = resolve_model(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    total, scored, tokens = 0.0, 0, 0
    for example in examples:
        enc = tokenize_example(tokenizer, example, max_length)
        if enc is None:
            continue
        ids = torch.tensor([enc["input_ids"]])
        target = torch.tensor(enc["labels"][1:])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        keep = target != IGNORE
        logp = torch.log_softmax(logits[keep], dim=-1)
        total -= float(logp.gather(1, target[keep][:, None]).sum())
        scored += 1
        tokens += int(keep.sum())
    return (total / tokens if tokens else float("nan")), scored, tokens


def row(name: str, marks: list[bool], words: list[int], seconds: float | None, failed: int = 0) -> str:
    """A table row; the fraction is over the follow-ups that came back (``failed``: contexts with none)."""
    n = len(marks)
    frac = sum(marks) / n if n else 0.0
    wall = f"{seconds:.0f}" if seconds is not None else "-"
    return f"| {name} | {n + failed} | {failed} | {sum(marks)} | {frac:.3f} | {sum(words) / max(n, 1):.1f} | {wall} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", required=True, help="held-out asker examples (JSONL of `parrot data asker`)")
    ap.add_argument("--asker", action="append", default=[], metavar="NAME=MODEL",
                    help="an asker to measure: smollm2, a checkpoint folder or an object-store URL (repeat)")
    ap.add_argument("--limit", type=int, default=40, help="held-out contexts to use (the first N)")
    ap.add_argument("--max-history-turns", type=int, default=2, help="latest exchanges of each context to send (0: all)")
    ap.add_argument("--max-tokens", type=int, default=48, help="most tokens per generated follow-up")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (the server batches them)")
    ap.add_argument("--backend", default="transformers", help="backend of the asker services (echo: wiring checks)")
    ap.add_argument("--nll", action="store_true",
                    help="also the mean NLL per token of the people's follow-ups under each asker model (in-process)")
    ap.add_argument("--max-length", type=int, default=512, help="--nll: tokens per example (as in training)")
    ap.add_argument("--json", default="", help="also write the figures and every follow-up here")
    args = ap.parse_args()
    if not args.asker:
        ap.error("give at least one --asker NAME=MODEL")
    askers = []
    for spec in args.asker:
        name, eq, model = spec.partition("=")
        if not eq or not name or not model:
            ap.error(f"--asker {spec!r}: expected NAME=MODEL")
        askers.append((name, model))
    try:
        examples = load_examples(args.examples, args.limit)
    except (OSError, ValueError) as e:  # DatasetError is a ValueError: file, line and field
        sys.exit(f"--examples: {e}")
    items = contexts(examples, args.max_history_turns)

    human = [is_context_dependent(t, user_turns(ctx)).dependent for _, ctx, t in items]
    lines = ["| follow-ups by | contexts | no follow-up | context-dependent | fraction | words / follow-up | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|",
             row("people (held-out targets)", human, [len(t.split()) for _, _, t in items], None)]
    report: dict[str, Any] = {"examples": args.examples, "contexts": len(items), "human_fraction": sum(human) / len(items),
                              "askers": {}}
    for name, model in askers:
        print(f"[asker_followups] {name}: starting parrot serve asker --model {model}", file=sys.stderr)
        proc, target = start(["asker", "--backend", args.backend, "--model", model], "parrot.v1.Asker")
        try:
            t0 = time.monotonic()
            results = asyncio.run(ask_all(target, items, args))
            wall = time.monotonic() - t0
        finally:
            stop(proc)
        answered = [r for r in results if r["followup"] is not None]
        failed = len(results) - len(answered)
        marks = [r["context_dependent"] for r in answered]
        lines.append(row(f"{name} ({model})", marks, [len(r["followup"].split()) for r in answered], wall, failed))
        report["askers"][name] = {"model": model, "fraction": sum(marks) / len(marks) if marks else None,
                                  "no_followup": failed, "wall_s": round(wall, 1), "followups": results}
        print(f"[asker_followups] {name}: {sum(marks)}/{len(marks)} context-dependent, {failed} without a follow-up, "
              f"in {wall:.0f} s", file=sys.stderr)
    print("\n".join(lines))
    if args.nll:
        nll_lines = ["", "| asker model | held-out examples | target tokens | NLL / token | perplexity |", "|---|---:|---:|---:|---:|"]
        for name, model in askers:
            nll, scored, tokens = target_nll(model, examples, args.max_length)
            report["askers"][name]["target_nll"] = nll
            nll_lines.append(f"| {name} ({model}) | {scored} | {tokens} | {nll:.3f} | {math.exp(nll):.1f} |")
        print("\n".join(nll_lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

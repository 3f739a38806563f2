"""Coordinator throughput: turns per second end to end, and the speed-up of concurrent sessions.

Part 1 (`--part echo`): model services on the instant `echo` backend (no model), so the cost
measured is the coordinator's own: gRPC calls to the responder and judge (or asker), and
persisting every conversation. Evaluation and collection runs at 1, 16 and 64 concurrent
conversations; goal >= 1,000 turns/s on a 2-core machine.

Part 2 (`--part model`): SmolLM2 behind `parrot serve all`: a 10-session x 8-turn evaluation
(answers + per-turn judgments) with the coordinator's concurrency vs the same sessions one at
a time; goal >= 4x.

    .venv/bin/python bench/coordinator.py                 # both parts
    .venv/bin/python bench/coordinator.py --part echo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import scrape, start, stop  # noqa: E402


def questions(n: int, turns: int) -> bytes:
    topics = ["a garden plan", "a job interview", "a Python script", "a trip to Kyoto", "a birthday speech",
              "a budget spreadsheet", "a chemistry lab report", "a chess opening"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        follow = ["Make it shorter.", "Why is that?", "Give an example.", "Now in a table.", "What about the second point?",
                  "Add one more idea.", "Summarize it in one line."]
        rows.append({"question_id": i, "category": "writing",
                     "turns": [f"Help me with {t} (session {i})."] + follow[: turns - 1]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def run_once(coordinator: str, spec) -> tuple[float, object]:
    import grpc

    from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc

    with grpc.insecure_channel(coordinator) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        t0 = time.perf_counter()
        run = stub.StartRun(cpb.StartRunRequest(spec=spec), timeout=60)
        for _ in stub.WatchRun(cpb.WatchRunRequest(run_id=run.id), timeout=3600):
            pass  # follow the run until it ends
        wall = time.perf_counter() - t0
        final = stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=30)
        if final.state != cpb.RUN_STATE_SUCCEEDED or final.progress.failed:
            raise SystemExit(f"run {run.id} ended {final.state} ({final.message})")
        return wall, final


def part_echo(levels: list[int], store_dir: Path) -> list[dict]:
    from parrot.v1 import coordinator_pb2 as cpb

    models, models_target = start(["all", "--backend", "echo"], "parrot.v1.Judge")
    coord, coord_target = start(["coordinator", "--store", store_dir.as_uri(), "--responder", models_target,
                                 "--asker", models_target, "--judge", models_target], "parrot.v1.Coordinator")
    rows = []
    try:
        for kind in ("evaluation", "collection"):
            for c in levels:
                n = max(64, c * 8)
                if kind == "evaluation":
                    spec = cpb.RunSpec(concurrency=c, evaluation=cpb.EvaluationSpec(
                        questions=cpb.InputFile(name="q.jsonl", content=questions(n, 8))))
                else:
                    seeds = "".join(json.dumps({"query": f"Tell me about topic number {i} in detail."}) + "\n" for i in range(n))
                    spec = cpb.RunSpec(concurrency=c, collection=cpb.CollectionSpec(
                        seeds=cpb.InputFile(name="s.jsonl", content=seeds.encode()), min_turns=8))
                print(f"# echo {kind}, {c} concurrent, {n} conversations ...", file=sys.stderr)
                wall, run = run_once(coord_target, spec)
                rows.append({"kind": kind, "concurrency": c, "conversations": n, "turns": run.progress.turns,
                             "wall_s": wall, "turns_s": run.progress.turns / wall})
    finally:
        stop(coord, models)
    return rows


def part_model(store_dir: Path, max_tokens: int, judge_max_tokens: int, levels: list[int]) -> list[dict]:
    from parrot.v1 import coordinator_pb2 as cpb, conversation_pb2

    models, models_target = start(["all"], "parrot.v1.Judge")
    coord, coord_target = start(["coordinator", "--store", store_dir.as_uri(), "--responder", models_target,
                                 "--asker", models_target, "--judge", models_target], "parrot.v1.Coordinator")
    rows = []
    try:
        for c in levels:
            spec = cpb.RunSpec(concurrency=c, params=conversation_pb2.GenerationParams(max_tokens=max_tokens),
                               evaluation=cpb.EvaluationSpec(questions=cpb.InputFile(name="q8.jsonl", content=questions(10, 8)),
                                                             judge_max_tokens=judge_max_tokens))
            print(f"# SmolLM2 10 x 8-turn evaluation, concurrency {c} ...", file=sys.stderr)
            before = scrape(models)
            wall, run = run_once(coord_target, spec)
            after = scrape(models)
            rows.append({"concurrency": c, "sessions": 10, "turns": run.progress.turns, "tokens": run.progress.tokens,
                         "wall_s": wall, "stages": stage_totals(before, after)})
    finally:
        stop(coord, models)
    return rows


def stage_totals(before: dict[str, float], after: dict[str, float]) -> dict[str, tuple[float, int]]:
    """Seconds and count per backend stage of the model server during one run (its stage histograms)."""
    out: dict[str, tuple[float, int]] = {}
    for key, value in after.items():
        if key.startswith("parrot_stage_latency_seconds_sum{"):
            stage = key.split("stage=", 1)[1].rstrip("}").split(",")[0]
            count_key = key.replace("_sum{", "_count{")
            seconds = value - before.get(key, 0.0)
            count = int(after.get(count_key, 0) - before.get(count_key, 0))
            if count:
                out[stage] = (seconds, count)
    for name, label in (("parrot_prompt_tokens_total", "prompt tokens"),
                        ("parrot_prefix_cache_hit_tokens_total", "of which from the prefix cache"),
                        ("parrot_prefix_cache_evicted_tokens_total", "evicted from the prefix cache"),
                        ("parrot_generated_tokens_total", "generated tokens (rows x steps)")):
        total = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(name + "{"))
        out[label] = (float("nan"), int(total))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["echo", "model", "both"], default="both")
    ap.add_argument("--concurrency", default="1,16,64", help="Echo part: comma-separated concurrency levels.")
    ap.add_argument("--max-tokens", type=int, default=48, help="Model part: answer tokens per turn.")
    ap.add_argument("--judge-max-tokens", type=int, default=32, help="Model part: judge explanation tokens per turn.")
    ap.add_argument("--sessions-at-once", default="1,10",
                    help="Model part: comma-separated concurrency levels; the first is the baseline of the speed-up.")
    args = ap.parse_args()
    print(f"\nCoordinator benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {platform.machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("echo", "both"):
            rows = part_echo([int(x) for x in args.concurrency.split(",")], Path(tmp) / "echo-store")
            print("Echo backends (no model): end-to-end turns/s (model calls over gRPC + one persisted record per conversation)\n")
            print("| run kind | concurrent conversations | conversations | turns | wall s | turns/s |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['kind']} | {r['concurrency']} | {r['conversations']} | {r['turns']} | {r['wall_s']:.2f} | "
                      f"{r['turns_s']:.0f} |")
            print()
        if args.part in ("model", "both"):
            rows = part_model(Path(tmp) / "model-store", args.max_tokens, args.judge_max_tokens,
                              [int(x) for x in args.sessions_at_once.split(",")])
            print(f"SmolLM2 (bf16): 10 sessions x 8 turns, answers ({args.max_tokens} tokens) + per-turn judgments "
                  f"({args.judge_max_tokens}-token explanations)\n")
            print("| sessions at once | turns | tokens | wall s | speed-up |")
            print("|---:|---:|---:|---:|---:|")
            base = rows[0]["wall_s"]
            for r in rows:
                print(f"| {r['concurrency']} | {r['turns']} | {r['tokens']} | {r['wall_s']:.1f} | {base / r['wall_s']:.2f}x |")
            print("\nWhere the model server's worker spent the time (stage histograms; counts are calls or tokens)\n")
            print("| stage | " + " | ".join(f"{r['concurrency']} at once: s | count" for r in rows) + " |")
            print("|---|" + "---:|---:|" * len(rows))
            for stage in rows[-1]["stages"]:
                cells = []
                for r in rows:
                    sec, n = r["stages"].get(stage, (0.0, 0))
                    cells.append(f"{'' if sec != sec else f'{sec:.1f}'} | {n}")
                print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

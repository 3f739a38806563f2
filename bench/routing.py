"""Multi-turn routing over replicas: session affinity vs round-robin, on llama.cpp.

Two `parrot serve responder --backend llamacpp` replicas (one core each) on loopback; SESSIONS
sessions x TURNS turns at once (full history, greedy, --max-tokens), sent through the coordinator's
own client (`ModelClients`, target `ipv4:replica1,replica2`) with each routing policy in turn, on
fresh replicas each time. Reports wall time and the prompt tokens the engines computed (prompt
tokens minus those taken from their prompt cache, from each replica's /metrics).

    .venv/bin/python bench/routing.py                 # 16 sessions x 5 turns, 64 new tokens
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import scrape, start, stop  # noqa: E402
from bench.engines import sessions  # noqa: E402


def computed_and_total(procs) -> tuple[float, float]:
    total = cached = 0.0
    for p in procs:
        for k, v in scrape(p).items():
            if k.startswith("parrot_prompt_tokens_total{"):
                total += v
            elif k.startswith("parrot_prefix_cache_hit_tokens_total{"):
                cached += v
    return total - cached, total


async def drive(target: str, routing: str, work: list[list[str]], max_tokens: int) -> float:
    from parrot.conversation import Message, Role
    from parrot.v1 import conversation_pb2 as cpb
    from parrot.model_clients import ModelClients, Retry

    clients = ModelClients({"responder": target}, Retry(), None, routing=routing)
    params = cpb.GenerationParams(max_tokens=max_tokens, temperature=0.0)

    async def one(turns: list[str]) -> None:
        history: list[Message] = []
        for q in turns:
            history.append(Message(Role.USER, q))
            r = await clients.respond(history, params)
            history.append(Message(Role.ASSISTANT, r.text))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in work))
    wall = time.perf_counter() - t0
    await clients.close()
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    work = sessions(args.sessions, args.turns)
    threads = max(1, (os.cpu_count() or 2) // args.replicas)
    rows = []
    for routing in ("round_robin", "affinity"):
        procs = [start(["responder", "--backend", "llamacpp", "--engine-parallel", str(args.sessions),
                        "--engine-threads", str(threads)], "parrot.v1.Responder")[0] for _ in range(args.replicas)]
        try:
            target = "ipv4:" + ",".join(f"127.0.0.1:{p.args[p.args.index('--grpc-port') + 1]}" for p in procs)
            computed0, total0 = computed_and_total(procs)
            wall = asyncio.run(drive(target, routing, work, args.max_tokens))
            computed1, total1 = computed_and_total(procs)
            rows.append((routing, wall, computed1 - computed0, total1 - total0))
            print(f"  {routing}: {wall:.1f} s, {computed1 - computed0:.0f} of {total1 - total0:.0f} prompt tokens computed",
                  flush=True)
        finally:
            stop(*procs)
    rr, af = rows
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores; {args.replicas} llama.cpp replicas "
          f"x {threads} thread(s); {args.sessions} sessions x {args.turns} turns, {args.max_tokens} new tokens\n")
    print("| routing | wall s | prompt tokens | computed prompt tokens |")
    print("|---|---:|---:|---:|")
    for name, wall, computed, total in rows:
        print(f"| {name} | {wall:.1f} | {total:.0f} | {computed:.0f} |")
    print(f"\naffinity vs round-robin: {rr[2] / max(af[2], 1):.2f}x fewer computed prompt tokens, "
          f"{rr[1] / af[1]:.2f}x sooner")


if __name__ == "__main__":
    main()

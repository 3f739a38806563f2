"""Generation throughput: concurrent gRPC clients against `parrot serve responder` vs a sequential loop.

Starts the responder (SmolLM2, the embedded default) on loopback, then for each concurrency level
runs that many gRPC clients, each sending its share of the same prompts (greedy, fixed
max_tokens), and reports aggregate generated tokens/s and p50/p95 request latency. In the same
run, a plain sequential Hugging Face `model.generate` loop over the same prompts gives the
baseline; the ratio column is tokens/s over the baseline's. Goal: >= 6x at 16 clients.

    .venv/bin/python bench/generation.py                 # 1, 4, 16, 32 clients
    .venv/bin/python bench/generation.py --concurrency 16 --dtype float32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import start, stop  # noqa: E402

TOPICS = [
    ("a Python web scraper", "How do I add retries to it?"),
    ("planning a week in Lisbon", "What about the second day?"),
    ("the causes of the French Revolution", "Which of those mattered most?"),
    ("baking sourdough bread", "Why did mine come out flat?"),
    ("learning linear algebra", "Can you give an example of that?"),
    ("a cover letter for a data analyst job", "Make it shorter."),
    ("how vaccines train the immune system", "And for viruses that mutate?"),
    ("choosing a first electric guitar", "What would you pick under 300 dollars?"),
]


def build_conversations(n: int) -> list[list[dict[str, str]]]:
    """Multi-turn prompts of about 150-250 tokens: a first question, an answer, a follow-up."""
    convs = []
    for i in range(n):
        topic, follow_up = TOPICS[i % len(TOPICS)]
        convs.append([
            {"role": "system", "content": "You are a helpful assistant. Answer clearly and stay on the topic of the conversation."},
            {"role": "user", "content": f"I need some help with {topic}. Give me an overview of the main points to consider, "
                                        f"with a short explanation for each one. (request {i})"},
            {"role": "assistant", "content": f"Sure. For {topic}, the main points are: first, be clear about your goal and "
                                             "constraints; second, start with a simple version and improve it step by step; "
                                             "third, check the result against what you expected and adjust; fourth, keep "
                                             "notes of what worked so you can repeat it. Tell me which part you want to go "
                                             "deeper on."},
            {"role": "user", "content": follow_up},
        ])
    return convs


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def sequential_baseline(convs: list[list[dict[str, str]]], max_tokens: int, dtype: str) -> dict[str, float]:
    """A plain loop: one `model.generate` per prompt, greedy, same model folder and dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parrot.modelstore import resolve_model

    folder = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    eos = model.generation_config.eos_token_id
    latencies, tokens = [], 0
    with torch.inference_mode():
        warm = tok.apply_chat_template(convs[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        model.generate(**warm, max_new_tokens=4, do_sample=False)
        t0 = time.perf_counter()
        for conv in convs:
            inputs = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            s = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
            latencies.append(time.perf_counter() - s)
            new = out[0, inputs["input_ids"].shape[1]:].tolist()
            tokens += len([t for t in new if t != eos])
        wall = time.perf_counter() - t0
    del model
    return {"clients": 0, "requests": len(convs), "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95)}


async def run_clients(target: str, convs: list[list[dict[str, str]]], clients: int, max_tokens: int) -> dict[str, float]:
    import grpc

    from parrot.conversation import Message, Role
    from parrot.protoconv import messages_to_pb
    from parrot.v1 import conversation_pb2, responder_pb2, responder_pb2_grpc

    requests = [responder_pb2.RespondRequest(
        conversation=messages_to_pb([Message(Role(m["role"]), m["content"]) for m in c]),
        params=conversation_pb2.GenerationParams(max_tokens=max_tokens, temperature=0.0)) for c in convs]
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    tokens = 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = responder_pb2_grpc.ResponderStub(ch)

        async def client() -> None:
            nonlocal tokens
            while not queue.empty():
                req = queue.get_nowait()
                s = time.perf_counter()
                resp = await stub.Respond(req, timeout=600)
                latencies.append(time.perf_counter() - s)
                tokens += resp.usage.completion_tokens

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(requests), "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16,32", help="Comma-separated client counts.")
    ap.add_argument("--max-tokens", type=int, default=64, help="New tokens per request (greedy).")
    ap.add_argument("--requests-per-client", type=int, default=2, help="Requests per client at each level (min 8 in all).")
    ap.add_argument("--baseline-prompts", type=int, default=8, help="Prompts in the sequential model.generate loop.")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--json", help="Also write the rows to this JSON file.")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    print(f"# sequential model.generate baseline ({args.baseline_prompts} prompts, {args.dtype}) ...", file=sys.stderr)
    base = sequential_baseline(build_conversations(args.baseline_prompts), args.max_tokens, args.dtype)
    proc, target = start(["responder", "--dtype", args.dtype, "--max-batch-size", str(args.max_batch_size)],
                         "parrot.v1.Responder")
    rows = []
    try:
        asyncio.run(run_clients(target, build_conversations(2), 2, 8))  # warm-up
        for c in levels:
            n = max(8, c * args.requests_per_client)
            print(f"# {c} concurrent gRPC clients, {n} requests ...", file=sys.stderr)
            rows.append(asyncio.run(run_clients(target, build_conversations(n), c, args.max_tokens)))
    finally:
        stop(proc)

    print(f"\nGeneration benchmark: SmolLM2-135M-Instruct, {args.dtype}, greedy, {args.max_tokens} new tokens/request, "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}\n")
    print("| mode | clients | requests | tokens | wall s | tokens/s | p50 latency s | p95 latency s | vs sequential |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| sequential model.generate | 1 | {base['requests']} | {base['tokens']} | {base['wall_s']:.1f} | "
          f"{base['tok_s']:.1f} | {base['p50_s']:.2f} | {base['p95_s']:.2f} | 1.00x |")
    for r in rows:
        print(f"| parrot gRPC responder | {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | "
              f"{r['tok_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['tok_s'] / base['tok_s']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": base, "rows": rows, "dtype": args.dtype}, indent=2))


if __name__ == "__main__":
    main()

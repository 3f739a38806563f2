"""Engines side by side: llama.cpp's llama-server direct vs the platform on it vs the in-process engine.

One client, one workload for every server: SESSIONS sessions at once, TURNS user turns each, full
history every turn (the model's own answers), greedy, --max-tokens new tokens per answer; then the
same with one session. Sessions: MT-Bench's questions (../shared/data/mt_bench/question.jsonl when
present, turns 1-2) with three follow-up turns of ours (turns 3-5), else our own 5-turn topics.

Rows (each its own server, started and stopped here, all on loopback):
  llama-server bf16      llama-server --parallel 16 on SmolLM2 converted to bf16 GGUF, /v1/chat/completions,
                         with its defaults and with -fa off (faster on CPU: the baseline for the ratios)
  llama-server <default> the same on the platform's default GGUF (q8_0), -fa off
  platform OpenAI route  `parrot serve responder --backend llamacpp`, its /v1/chat/completions
  platform gRPC          the same process, parrot.v1.Responder/Respond
  in-process (auto)      `parrot serve responder --backend transformers` (dtype auto), gRPC
Then the quality guard: NLL per token of MT-Bench's reference answers under each GGUF, measured by
llama.cpp's own llama-perplexity (the engine's numerics), against bf16; with flash attention off (the
platform's setting) and on.

    .venv/bin/python bench/engines.py                       # everything (about 15 min on 2 cores)
    .venv/bin/python bench/engines.py --rows platform-grpc,llama-default --sessions 16
    # an engine you run (vLLM on a GPU: vllm serve MODEL --max-logprobs 20): direct vs the platform on it
    .venv/bin/python bench/engines.py --rows external --engine-url http://127.0.0.1:8000/v1 --engine-tokenizer MODEL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, start, stop  # noqa: E402

FOLLOW_UPS = ["Can you make that shorter?", "Why is that the case?", "Give one concrete example of it."]
OWN_TOPICS = [
    ["How do I read a CSV file in Python?", "And if it has no header row?"],
    ["Plan a three-day trip to Lisbon.", "What about the second day?"],
    ["Explain what an API is.", "How is that different from a library?"],
    ["Why does sourdough bread rise?", "Mine came out flat. Why?"],
]
ROWS = ("llama-bf16", "llama-default", "platform-openai", "platform-grpc", "inprocess", "external")


def sessions(n: int, turns: int) -> list[list[str]]:
    path = REPO.parent / "shared" / "data" / "mt_bench" / "question.jsonl"
    firsts: list[list[str]] = []
    if path.is_file():
        firsts = [json.loads(line)["turns"][:2] for line in path.read_text().splitlines() if line.strip()]
    firsts = firsts or OWN_TOPICS
    return [(firsts[i % len(firsts)] + FOLLOW_UPS)[:turns] for i in range(n)]


async def run_openai(base_url: str, model: str, work: list[list[str]], max_tokens: int) -> tuple[int, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=600, max_retries=0)

    async def one(turns: list[str]) -> int:
        history: list[dict[str, str]] = []
        tokens = 0
        for q in turns:
            history.append({"role": "user", "content": q})
            r = await client.chat.completions.create(model=model, messages=history, max_tokens=max_tokens,
                                                     temperature=0.0)
            history.append({"role": "assistant", "content": r.choices[0].message.content or ""})
            tokens += r.usage.completion_tokens
        return tokens

    t0 = time.perf_counter()
    total = sum(await asyncio.gather(*(one(s) for s in work)))
    wall = time.perf_counter() - t0
    await client.close()
    return total, wall


async def run_grpc(target: str, work: list[list[str]], max_tokens: int) -> tuple[int, float]:
    import grpc

    from parrot.v1 import conversation_pb2 as cpb
    from parrot.v1 import responder_pb2, responder_pb2_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = responder_pb2_grpc.ResponderStub(ch)

        async def one(turns: list[str]) -> int:
            msgs: list = []
            tokens = 0
            for q in turns:
                msgs.append(cpb.Message(role=cpb.ROLE_USER, content=q))
                r = await stub.Respond(responder_pb2.RespondRequest(
                    conversation=cpb.Conversation(messages=msgs),
                    params=cpb.GenerationParams(max_tokens=max_tokens, temperature=0.0)), timeout=600)
                msgs.append(cpb.Message(role=cpb.ROLE_ASSISTANT, content=r.text))
                tokens += r.usage.completion_tokens
            return tokens

        t0 = time.perf_counter()
        total = sum(await asyncio.gather(*(one(s) for s in work)))
        return total, time.perf_counter() - t0


async def _first_model(openai, url: str) -> str:
    client = openai.AsyncOpenAI(base_url=url, api_key="none")
    try:
        return [m.id async for m in client.models.list()][0]
    finally:
        await client.close()


def start_llama_server(gguf: Path, parallel: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """llama-server as a user would start it for this workload: defaults plus --parallel (and ``extra``)."""
    import httpx

    from parrot.client import free_port
    from parrot.engines.llamacpp import require_server

    port = free_port()
    threads = str(os.cpu_count() or 2)
    proc = subprocess.Popen([str(require_server()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                             "--parallel", str(parallel), "-c", str(parallel * 4096), "--threads", threads,
                             "--no-webui", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("llama-server did not become healthy")


def measure(name: str, runner, work16, work1) -> dict:
    toks16, wall16 = runner(work16)
    toks1, wall1 = runner(work1)
    row = {"row": name, "tok_s_16": toks16 / wall16, "turns_s_16": sum(map(len, work16)) / wall16,
           "tok_s_1": toks1 / wall1, "tokens_16": toks16, "wall_16": wall16, "tokens_1": toks1, "wall_1": wall1}
    print(f"  {name}: {row['tok_s_16']:.1f} tok/s at {len(work16)} sessions, {row['tok_s_1']:.1f} alone", flush=True)
    return row


def quality(types: list[str], limit: int, flash_attn: str) -> dict[str, float]:
    """Mean NLL per token of MT-Bench's reference answers under each GGUF, by llama.cpp's own llama-perplexity.

    The engine's numerics, not only the weights: a kernel that computes wrongly shows here.
    """
    import re
    import tempfile

    from parrot.engines.llamacpp import gguf_for, require_server

    refs = REPO.parent / "shared" / "data" / "mt_bench" / "reference_answer_gpt-4.jsonl"
    if not refs.is_file():
        return {}
    text = "\n\n".join(json.loads(line)["choices"][0]["turns"][0] for line in refs.read_text().splitlines()[:limit])
    tool = require_server().parent / "llama-perplexity"
    out = {}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        for t in types:
            gguf, _ = gguf_for("smollm2", t)
            run = subprocess.run([str(tool), "-m", str(gguf), "-f", f.name, "-c", "512", "-b", "512",
                                  "--threads", str(os.cpu_count() or 2), "-fa", flash_attn],
                                 capture_output=True, text=True)
            m = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
            if not m:
                raise SystemExit(f"llama-perplexity failed on {t}:\n{(run.stdout + run.stderr)[-2000:]}")
            out[t] = math.log(float(m.group(1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rows", default=",".join(r for r in ROWS if r != "external"),
                    help=f"comma-separated subset of {', '.join(ROWS)} (default: all but external)")
    ap.add_argument("--gguf-type", default=None, help="the platform's GGUF (default: the platform default)")
    ap.add_argument("--quality-refs", type=int, default=30, help="reference answers for the NLL guard (0 = skip)")
    ap.add_argument("--engine-url", help="row 'external': an engine's OpenAI …/v1 URL (vLLM, SGLang, llama-server)")
    ap.add_argument("--engine-tokenizer", default="", help="row 'external': the served model's Hugging Face folder or id")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    from parrot.engines.llamacpp import DEFAULT_GGUF_TYPE, gguf_for

    default = args.gguf_type or DEFAULT_GGUF_TYPE
    rows = args.rows.split(",")
    if "external" in rows and not args.engine_url:
        raise SystemExit("row 'external' needs --engine-url")
    work16, work1 = sessions(args.sessions, args.turns), sessions(1, args.turns)
    mt = args.max_tokens
    results = []
    print(f"# engines: {args.sessions} sessions x {args.turns} turns, greedy, {mt} new tokens; then 1 session",
          flush=True)
    # llama-server as its defaults give it, and with -fa off: on CPU flash attention off was faster for
    # every GGUF measured here, so the -fa off bf16 row is the baseline (the stronger peer).
    for gtype, row, extra in (("bf16", "llama-bf16", ()), ("bf16", "llama-bf16", ("-fa", "off")),
                              (default, "llama-default", ("-fa", "off"))):
        if row not in rows:
            continue
        gguf, _ = gguf_for("smollm2", gtype)
        proc, url = start_llama_server(gguf, args.sessions, extra)
        try:
            label = f"llama-server direct, {gtype} GGUF, {' '.join(extra) or 'defaults'}"
            results.append(measure(label, lambda w: asyncio.run(
                run_openai(url, "m", w, mt)), work16, work1))
        finally:
            proc.terminate()
            proc.wait(30)
    if "platform-openai" in rows or "platform-grpc" in rows:
        proc, target = start(["responder", "--backend", "llamacpp", "--gguf-type", default,
                              "--engine-parallel", str(args.sessions)], "parrot.v1.Responder")
        try:
            if "platform-openai" in rows:
                url = f"http://127.0.0.1:{proc.http_port}/v1"  # type: ignore[attr-defined]
                results.append(measure(f"platform on llama.cpp ({default}), OpenAI route", lambda w: asyncio.run(
                    run_openai(url, "responder", w, mt)), work16, work1))
            if "platform-grpc" in rows:
                results.append(measure(f"platform on llama.cpp ({default}), parrot.v1 gRPC", lambda w: asyncio.run(
                    run_grpc(target, w, mt)), work16, work1))
        finally:
            stop(proc)
    if "inprocess" in rows:
        proc, target = start(["responder", "--backend", "transformers", "--dtype", "auto"], "parrot.v1.Responder")
        try:
            results.append(measure("in-process transformers (dtype auto), parrot.v1 gRPC", lambda w: asyncio.run(
                run_grpc(target, w, mt)), work16, work1))
        finally:
            stop(proc)

    if "external" in rows:
        import openai

        served = asyncio.run(_first_model(openai, args.engine_url))
        results.append(measure(f"engine direct ({served} at {args.engine_url})", lambda w: asyncio.run(
            run_openai(args.engine_url, served, w, mt)), work16, work1))
        proc, target = start(["responder", "--backend", "engine", "--base-url", args.engine_url, "--model", served,
                              "--engine-tokenizer", args.engine_tokenizer], "parrot.v1.Responder")
        try:
            results.append(measure("platform on that engine, parrot.v1 gRPC", lambda w: asyncio.run(
                run_grpc(target, w, mt)), work16, work1))
        finally:
            stop(proc)

    base = next((r for r in results if r["row"] == "llama-server direct, bf16 GGUF, -fa off"), None)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print(f"| server | {args.sessions} sessions: tok/s | turns/s | x llama-server bf16 -fa off | 1 session: tok/s "
          "| x llama-server bf16 -fa off |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        x16 = f"{r['tok_s_16'] / base['tok_s_16']:.2f}x" if base else "-"
        x1 = f"{r['tok_s_1'] / base['tok_s_1']:.2f}x" if base else "-"
        print(f"| {r['row']} | {r['tok_s_16']:.1f} | {r['turns_s_16']:.2f} | {x16} | {r['tok_s_1']:.1f} | {x1} |")
    direct = next((r for r in results if r["row"].startswith(f"llama-server direct, {default}")), None)
    grpc_row = next((r for r in results if "gRPC" in r["row"] and "llama.cpp" in r["row"]), None)
    if direct and grpc_row:
        print(f"\nadapter: platform gRPC / llama-server direct on the same {default} GGUF: "
              f"{grpc_row['tok_s_16'] / direct['tok_s_16']:.3f}x at {args.sessions} sessions, "
              f"{grpc_row['tok_s_1'] / direct['tok_s_1']:.3f}x alone")
    ext = [r for r in results if r["row"].startswith(("engine direct", "platform on that engine"))]
    if len(ext) == 2:
        print(f"\nadapter on the external engine: platform gRPC / engine direct: "
              f"{ext[1]['tok_s_16'] / ext[0]['tok_s_16']:.3f}x at {args.sessions} sessions, "
              f"{ext[1]['tok_s_1'] / ext[0]['tok_s_1']:.3f}x alone")
    if args.quality_refs:
        types = list(dict.fromkeys(["bf16", default, "bundled"]))
        for fa in ("off", "on"):
            nll = quality(types, args.quality_refs, fa)
            if nll:
                print(f"\nquality guard (llama-perplexity -fa {fa}): mean NLL/token of {args.quality_refs} MT-Bench "
                      "reference answers: " + ", ".join(
                          f"{t} {v:.4f} ({(v / nll['bf16'] - 1) * 100:+.2f}% vs bf16)" for t, v in nll.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

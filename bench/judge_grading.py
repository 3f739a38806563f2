"""Judge grading on llama.cpp, side by side: the platform's judge vs FastChat-style grading on llama-server.

The workload: SESSIONS 8-turn sessions of ``docs/examples/eight_turn_sessions.jsonl`` (ours), each
answer a fixed text of ours with a per-run tag (so no row finds another's prompts cached); every
turn is graded with its transcript so far, as `parrot eval` grades, CONCURRENCY grades in flight.
Both rows use the same judge prompt (``parrot-single-v1``), the same Q8_0 GGUF of the bundled
SmolLM2 and greedy decoding, each on its own llama-server started and stopped here:

  llama-server, parsed    what a FastChat-style judge does against llama-server: one
                          /v1/chat/completions call writes explanation and "[[N]]", which is parsed
                          (--explain-tokens + 16 new tokens; a reply without a rating is a failure)
  platform judge          `parrot serve judge --backend llamacpp`: the explanation (--explain-tokens,
                          stopped at the rating), then the probability-weighted rating from the
                          engine's log-probabilities of "1]]".."10]]" (11 one-token requests)

    .venv/bin/python bench/judge_grading.py                  # 4 sessions x 8 turns, 8 in flight (~3 min on 2 cores)
    .venv/bin/python bench/judge_grading.py --sessions 2 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid

from common import REPO, start, stop  # importing common puts the repo on sys.path

from parrot.conversation import Message, Role  # noqa: E402

ANSWER = ("Here is a short answer to that: it covers the main point, gives one example, and says what to "
          "check next. {tag}")


def workload(sessions: int) -> list[list[Message]]:
    """Every graded transcript: for each session and turn k, the first k exchanges."""
    tag = uuid.uuid4().hex[:8]
    rows = [json.loads(line) for line in (REPO / "docs/examples/eight_turn_sessions.jsonl").read_text().splitlines()]
    out = []
    for row in rows[:sessions]:
        messages: list[Message] = []
        for turn in row["turns"]:
            messages += [Message(Role.USER, turn), Message(Role.ASSISTANT, ANSWER.format(tag=tag))]
            out.append(list(messages))
    return out


async def bounded(work, one, concurrency: int) -> tuple[list[float], list, float]:
    """Runs ``one`` over ``work`` with ``concurrency`` in flight: latencies, results, wall seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def timed(item):
        async with gate:
            t0 = time.perf_counter()
            result = await one(item)
            return time.perf_counter() - t0, result

    t0 = time.perf_counter()
    done = await asyncio.gather(*(timed(w) for w in work))
    return [d for d, _ in done], [r for _, r in done], time.perf_counter() - t0


async def grade_direct(base_url: str, work: list[list[Message]], explain_tokens: int, concurrency: int):
    import openai

    from parrot.judging.parsing import parse_rating
    from parrot.judging.prompts import load_default_prompts, render_single, transcript_from_messages

    prompt = next(p for p in load_default_prompts() if p.name == "parrot-single-v1")
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=600)

    async def one(messages: list[Message]):
        judge = render_single(prompt, transcript_from_messages(messages, len(messages) // 2))
        r = await client.chat.completions.create(model="judge", messages=[m.as_dict() for m in judge],
                                                 max_tokens=explain_tokens + 16, temperature=0.0, seed=1)
        return parse_rating(r.choices[0].message.content or "")

    try:
        return await bounded(work, one, concurrency)
    finally:
        await client.close()


async def grade_platform(target: str, work: list[list[Message]], explain_tokens: int, concurrency: int):
    import grpc

    from parrot.protoconv import messages_to_pb
    from parrot.v1 import conversation_pb2 as cpb
    from parrot.v1 import judge_pb2, judge_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = judge_pb2_grpc.JudgeStub(channel)

        async def one(messages: list[Message]):
            request = judge_pb2.GradeSingleRequest(
                conversation=messages_to_pb(messages, "bench"), prompt_name="parrot-single-v1",
                params=cpb.GenerationParams(max_tokens=explain_tokens, temperature=0.0, seed=1))
            return (await stub.GradeSingle(request, timeout=600)).score

        return await bounded(work, one, concurrency)


def row(name: str, latencies: list[float], scores: list, wall: float) -> dict:
    return {"row": name, "grades": len(scores), "failures": sum(s is None for s in scores), "wall_s": round(wall, 1),
            "s_per_grade": round(wall / len(scores), 2), "p50_s": round(statistics.median(latencies), 2),
            "p90_s": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--explain-tokens", type=int, default=32, help="new tokens of the judge's explanation")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    from engines import start_llama_server

    from parrot.engines.llamacpp import DEFAULT_GGUF_TYPE, gguf_for

    rows = []
    gguf, _ = gguf_for("smollm2", DEFAULT_GGUF_TYPE)
    proc, url = start_llama_server(gguf, 16, ("-fa", "off"))
    try:
        rows.append(row("llama-server, parsed", *asyncio.run(
            grade_direct(url, workload(args.sessions), args.explain_tokens, args.concurrency))))
    finally:
        proc.terminate()
        proc.wait(60)
    proc, target = start(["judge", "--backend", "llamacpp"], "parrot.v1.Judge")
    try:
        rows.append(row("platform judge", *asyncio.run(
            grade_platform(target, workload(args.sessions), args.explain_tokens, args.concurrency))))
    finally:
        stop(proc)

    print(f"judge grading, {args.sessions} sessions x 8 turns, {args.concurrency} in flight, "
          f"{args.explain_tokens}-token explanations, SmolLM2 {DEFAULT_GGUF_TYPE}, greedy; "
          f"{platform.processor() or platform.machine()}\n")
    print("| row | grades | rating failures | wall s | s / grade | p50 latency s | p90 latency s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['grades']} | {r['failures']} | {r['wall_s']} | {r['s_per_grade']} | {r['p50_s']} | {r['p90_s']} |")
    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"\nplatform judge / llama-server parsed, wall time: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": ratio, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()

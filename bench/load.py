"""Soak: several concurrent runs against the local stack (echo backends), for a bounded time.

Starts `parrot serve all --backend echo` and `parrot serve coordinator` on loopback, then keeps
``--runs`` runs going at once (evaluation and collection alternating; each finished run is
replaced by a new one) until ``--duration`` seconds have passed. Reports:

- throughput: conversations and turns per second over the soak;
- latency: p50 / p99 of a conversation (from the persisted records) and of a turn
  (conversation time / its turns), and of StartRun / GetRun calls as a client sees them;
- memory: RSS of each service after warm-up and at the end (growth in MiB and per minute);
- failures: conversations recorded as failed (the goal is zero; the exit code is 1 otherwise).

    .venv/bin/python bench/load.py                      # 60 s, 4 runs at once
    .venv/bin/python bench/load.py --duration 300 --runs 6

A benchmark, not a test: figures go to README with date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import start, stop  # noqa: E402
from bench.coordinator import questions  # noqa: E402
from parrot.storage.layout import units_prefix  # noqa: E402

MAX_DURATION_S = 900


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def spec_for(i: int, conversations: int, concurrency: int):
    from parrot.v1 import coordinator_pb2 as cpb

    if i % 2 == 0:
        return cpb.RunSpec(name=f"soak-{i}", concurrency=concurrency, seed=i, evaluation=cpb.EvaluationSpec(
            questions=cpb.InputFile(name="q.jsonl", content=questions(conversations, 4))))
    seeds = "".join(json.dumps({"query": f"Soak run {i}: tell me about topic {k} in some detail."}) + "\n"
                    for k in range(conversations))
    return cpb.RunSpec(name=f"soak-{i}", concurrency=concurrency, seed=i, collection=cpb.CollectionSpec(
        seeds=cpb.InputFile(name="s.jsonl", content=seeds.encode()), min_turns=3, max_turns=5))


class Soak:
    def __init__(self, coordinator: str, store_dir: Path, args: argparse.Namespace) -> None:
        self.coordinator, self.store_dir, self.args = coordinator, store_dir, args
        self.lock = threading.Lock()
        self.counter = 0
        self.runs: list[object] = []
        self.client_ms: dict[str, list[float]] = {"StartRun": [], "GetRun": []}
        self.errors: list[str] = []

    def driver(self, deadline: float) -> None:
        import grpc

        from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc

        with grpc.insecure_channel(self.coordinator) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            while time.monotonic() < deadline:
                with self.lock:
                    i = self.counter
                    self.counter += 1
                t0 = time.perf_counter()
                try:
                    run = stub.StartRun(cpb.StartRunRequest(spec=spec_for(i, self.args.conversations,
                                                                          self.args.concurrency)), timeout=60)
                except grpc.RpcError as e:
                    self.errors.append(f"StartRun: {e.code().name}: {e.details()}")
                    time.sleep(0.5)
                    continue
                self.client_ms["StartRun"].append((time.perf_counter() - t0) * 1000)
                while True:
                    t0 = time.perf_counter()
                    r = stub.GetRun(cpb.GetRunRequest(run_id=run.id), timeout=60)
                    self.client_ms["GetRun"].append((time.perf_counter() - t0) * 1000)
                    if r.state in (cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED):
                        break
                    time.sleep(0.25)
                with self.lock:
                    self.runs.append(r)


def rss_sampler(procs: dict[str, object], stop_event: threading.Event, out: dict[str, list[tuple[float, int]]]) -> None:
    import psutil

    handles = {name: psutil.Process(p.pid) for name, p in procs.items()}
    while not stop_event.is_set():
        now = time.monotonic()
        for name, h in handles.items():
            try:
                out.setdefault(name, []).append((now, h.memory_info().rss))
            except psutil.Error:
                pass
        stop_event.wait(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help=f"Soak seconds (at most {MAX_DURATION_S}).")
    ap.add_argument("--runs", type=int, default=4, help="Runs executing at once.")
    ap.add_argument("--conversations", type=int, default=100, help="Conversations per run.")
    ap.add_argument("--concurrency", type=int, default=16, help="Conversations in flight per run.")
    ap.add_argument("--echo-delay-s", type=float, default=0.005, help="Latency the echo backend adds to each call.")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="RSS baseline is taken this long after the start.")
    args = ap.parse_args()
    if not 1 <= args.duration <= MAX_DURATION_S:
        raise SystemExit(f"--duration must be 1..{MAX_DURATION_S} seconds")

    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        models, models_target = start(["all", "--backend", "echo", "--echo-delay-s", str(args.echo_delay_s)],
                                      "parrot.v1.Judge")
        coord, coord_target = start(["coordinator", "--store", store_dir.as_uri(), "--responder", models_target,
                                     "--asker", models_target, "--judge", models_target,
                                     "--max-active-runs", str(args.runs)], "parrot.v1.Coordinator")
        samples: dict[str, list[tuple[float, int]]] = {}
        stop_event = threading.Event()
        sampler = threading.Thread(target=rss_sampler, args=({"model services": models, "coordinator": coord},
                                                             stop_event, samples), daemon=True)
        soak = Soak(coord_target, store_dir, args)
        try:
            sampler.start()
            t0 = time.monotonic()
            print(f"# soak: {args.runs} runs at once for {args.duration:.0f} s ...", file=sys.stderr)
            drivers = [threading.Thread(target=soak.driver, args=(t0 + args.duration,)) for _ in range(args.runs)]
            for d in drivers:
                d.start()
            for d in drivers:
                d.join()
            wall = time.monotonic() - t0
        finally:
            stop_event.set()
            sampler.join(5)
            stop(coord, models)
        conv_s, turn_s, turns = [], [], 0
        for unit in store_dir.glob(units_prefix("*") + "*.json"):
            rec = json.loads(unit.read_text())
            n = int((rec.get("data") or {}).get("turns", 0))
            turns += n
            conv_s.append(rec["elapsed_s"])
            if n:
                turn_s.append(rec["elapsed_s"] / n)
        finished = sum(r.progress.finished for r in soak.runs)
        failed = sum(r.progress.failed for r in soak.runs)

    print(f"\nLoad soak, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {platform.machine()}, "
          f"{args.runs} runs at once x {args.conversations} conversations (concurrency {args.concurrency}), "
          f"echo delay {args.echo_delay_s * 1000:.0f} ms, {wall:.0f} s\n")
    print("| runs done | conversations | failed | turns | conversations/s | turns/s | conversation p50 / p99 ms "
          "| turn p99 ms | StartRun p99 ms | GetRun p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(soak.runs)} | {len(conv_s)} | {failed} | {turns} | {len(conv_s) / wall:.1f} | {turns / wall:.0f} | "
          f"{pct(conv_s, 50) * 1000:.0f} / {pct(conv_s, 99) * 1000:.0f} | {pct(turn_s, 99) * 1000:.0f} | "
          f"{pct(soak.client_ms['StartRun'], 99):.0f} | {pct(soak.client_ms['GetRun'], 99):.0f} |")
    print("\n| service | RSS after warm-up MiB | RSS at end MiB | growth MiB | growth MiB/min (fit) |")
    print("|---|---:|---:|---:|---:|")
    for name, series in samples.items():
        start_t = series[0][0] + args.warmup_s
        steady = [(t, r) for t, r in series if t >= start_t] or series
        first, last = steady[0][1] / 2**20, steady[-1][1] / 2**20
        slope = 0.0
        if len(steady) > 2:
            ts = [t for t, _ in steady]
            rs = [r / 2**20 for _, r in steady]
            slope = statistics.linear_regression(ts, rs).slope * 60
        print(f"| {name} | {first:.0f} | {last:.0f} | {last - first:+.1f} | {slope:+.2f} |")
    if soak.errors:
        print(f"\n{len(soak.errors)} client errors, first: {soak.errors[0]}")
    print(f"\nfinished conversations in completed runs: {finished}; failed: {failed}")
    if failed or soak.errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Faults during a run, on the echo backend: what is lost, duplicated, failed, and whether the run
recovers by itself. Default settings everywhere (no retry policy in the spec), as an operator runs it.

Scenarios, each a fresh coordinator and store, the same collection (or evaluation) run:

- ``none``: no fault; its time is the normal time the others are compared with;
- ``coordinator-kill``: SIGKILL the coordinator a third of the way in, restart it at once;
- ``model-kill-2s`` / ``-5s`` / ``-20s``: SIGKILL the model service (every role), restart it on the
  same ports after 2 / 5 / 20 s (the outage column counts until it serves again, start-up included);
- ``store-full-20s``: the coordinator's disk is full for 20 s (RLIMIT_FSIZE lowered to 1 byte on
  the live process, so every store write fails with EFBIG), then freed.

Columns: failed (conversations recorded as failed), lost (input conversations missing from the
output), duplicated (conversations in the output more than once), recovered (the run succeeded
with no operator step), time, and the goal for outages: outage + 110% of the normal time.

    python bench/faults.py                      # 300-conversation collection, every scenario
    python bench/faults.py --kind evaluation --conversations 100 --scenarios none,model-kill-5s
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, start, stop  # noqa: E402  (bench/common.py puts the repo on sys.path)

SCENARIOS = ("none", "coordinator-kill", "model-kill-2s", "model-kill-5s", "model-kill-20s", "store-full-20s")
ECHO = {"PARROT_ECHO_DELAY_S": "0.05"}


def spec_for(kind: str, n: int):
    from parrot.v1 import coordinator_pb2 as cpb

    if kind == "collection":
        rows = [{"id": f"s{i}", "conversations": [{"from": "human", "value": f"Seed {i}: how do I grow tomatoes {i}?"}]}
                for i in range(n)]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return cpb.RunSpec(name="faults", concurrency=16, collection=cpb.CollectionSpec(
            seeds=cpb.InputFile(name="seeds.jsonl", content=data), min_turns=4))
    rows = [{"question_id": i, "category": "writing", "turns": [f"Question {i}, part {t}." for t in range(1, 9)]}
            for i in range(n)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return cpb.RunSpec(name="faults", concurrency=16, evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="questions.jsonl", content=data), model_id="echo"))


def output_ids(kind: str, files: dict[str, bytes]) -> list[str]:
    if kind == "collection":
        return [json.loads(x)["metadata"]["seed_id"] for x in files.get("dataset.jsonl", b"").decode().splitlines()]
    return [str(json.loads(x)["question_id"]) for x in files.get("answers.jsonl", b"").decode().splitlines()]


def expected_ids(kind: str, n: int) -> list[str]:
    return [f"s{i}" if kind == "collection" else str(i) for i in range(n)]


def run_scenario(name: str, kind: str, n: int, work: Path) -> dict:
    import grpc

    from parrot.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc

    mports, cports = (free_port(), free_port()), (free_port(), free_port())
    models, mtarget = start(["all", "--backend", "echo"], "parrot.v1.Judge", env=ECHO, ports=mports)
    store = work / name
    cargs = ["coordinator", "--store", store.as_uri(), "--responder", mtarget, "--asker", mtarget, "--judge", mtarget]
    coord, ctarget = start(cargs, "parrot.v1.Coordinator", ports=cports)
    ended = cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED
    outage = 0.0
    paused_seen = ""
    try:
        with grpc.insecure_channel(ctarget) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            t0 = time.monotonic()
            run = stub.StartRun(cpb.StartRunRequest(spec=spec_for(kind, n)), timeout=60)
            units = store / "runs" / run.id / "units"
            while len(list(units.glob("*.json"))) < n // 3:
                time.sleep(0.05)
            if name == "coordinator-kill":
                coord.send_signal(signal.SIGKILL)
                coord.wait(30)
                coord, _ = start(cargs, "parrot.v1.Coordinator", ports=cports)
            elif name.startswith("model-kill-"):
                outage = float(name.removeprefix("model-kill-").removesuffix("s"))
                models.send_signal(signal.SIGKILL)
                models.wait(30)
                t_down = time.monotonic()
                while time.monotonic() - t_down < outage:
                    r = _get(stub, run.id)
                    paused_seen = paused_seen or (r.paused_reason if r is not None else "")
                    time.sleep(0.2)
                models, _ = start(["all", "--backend", "echo"], "parrot.v1.Judge", env=ECHO, ports=mports)
                outage = time.monotonic() - t_down  # down until serving again (the restart's own start-up included)
            elif name == "store-full-20s":
                outage = 20.0
                resource.prlimit(coord.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
                t_full = time.monotonic()
                while time.monotonic() - t_full < outage:
                    r = _get(stub, run.id)
                    paused_seen = paused_seen or (r.paused_reason if r is not None else "")
                    time.sleep(0.2)
                resource.prlimit(coord.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            deadline = time.monotonic() + 900
            while True:
                r = _get(stub, run.id)
                if r is not None and r.state in ended:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: run {run.id} did not end within 900 s")
                time.sleep(0.1)
            took = time.monotonic() - t0
            res = stub.GetRunResults(cpb.GetRunResultsRequest(run_id=run.id, include_content=True), timeout=120)
        files = {a.name: a.content for a in res.artifacts}
        got = output_ids(kind, files)
        want = expected_ids(kind, n)
        return {"scenario": name, "kind": kind, "conversations": n, "state": cpb.RunState.Name(r.state),
                "finished": r.progress.finished, "failed": r.progress.failed,
                "lost": len(set(want) - set(got)) - r.progress.failed, "duplicated": len(got) - len(set(got)),
                "recovered": r.state == cpb.RUN_STATE_SUCCEEDED and r.progress.failed == 0,
                "time_s": round(took, 1), "outage_s": round(outage, 1), "paused_reason": paused_seen[:120]}
    finally:
        stop(coord, models)


def _get(stub, run_id: str):
    import grpc

    from parrot.v1 import coordinator_pb2 as cpb

    try:
        return stub.GetRun(cpb.GetRunRequest(run_id=run_id), timeout=5)
    except grpc.RpcError:  # the coordinator is restarting
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("collection", "evaluation"), default="collection")
    ap.add_argument("--conversations", type=int, default=300)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS))
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if "none" not in names:
        names.insert(0, "none")  # the normal time every goal is measured against
    work = Path(tempfile.mkdtemp(prefix="parrot-faults-"))
    rows = []
    try:
        for name in names:
            print(f"[faults] {name} ({args.kind}, {args.conversations} conversations) ...", file=sys.stderr, flush=True)
            rows.append(run_scenario(name, args.kind, args.conversations, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    normal = rows[0]["time_s"]
    print(f"\n{args.kind}, {args.conversations} conversations, concurrency 16, echo backend (0.05 s per call), "
          f"default retry settings; normal time {normal:.1f} s\n")
    print("| scenario | state | failed | lost | duplicated | recovered | outage (s) | time (s) | goal: outage + 110% normal (s) |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    for r in rows:
        goal = r["outage_s"] + 1.1 * normal
        within = "" if not r["outage_s"] else f"{goal:.1f} ({'met' if r['time_s'] <= goal else 'NOT met'})"
        print(f"| {r['scenario']} | {r['state'].removeprefix('RUN_STATE_').lower()} | {r['failed']} | {r['lost']} | "
              f"{r['duplicated']} | {'yes' if r['recovered'] else 'no'} | {r['outage_s'] or '-'} | {r['time_s']:.1f} | "
              f"{within} |")
    paused = [r for r in rows if r["paused_reason"]]
    for r in paused:
        print(f"\n{r['scenario']}: GetRun said `paused: {r['paused_reason']}...`")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

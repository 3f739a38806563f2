"""Finished evaluation runs written straight into an object store, as a coordinator would leave them.

For the run browser's benchmark (a 10,000-conversation run) and its tests (runs with known,
different scores to compare). Each run gets ``run.json``, its questions under ``inputs/``, one
record per conversation under ``units/`` and the output files written by the coordinator's own
``write_outputs`` (so summaries, CIs and scores.jsonl are the real thing). Scores are drawn
from a seeded generator: ``offset`` shifts a run's scores (another "model").
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from google.protobuf import json_format

CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


def _questions(n: int, turns: int) -> list[dict[str, Any]]:
    return [{"question_id": 10_000 + i, "category": CATEGORIES[i % len(CATEGORIES)],
             "turns": [f"Session {i}, turn {t}: " + ("Tell me about topic %d." % i if t == 1 else "And what about that one?")
                       for t in range(1, turns + 1)]} for i in range(n)]


async def write_eval_run(store_url: str, n: int = 20, turns: int = 4, seed: int = 0, offset: float = 0.0,
                         model_id: str = "synthetic", name: str = "synthetic", run_id: str | None = None,
                         failed: int = 0, judged: bool = True) -> str:
    """Writes one succeeded evaluation run of ``n`` conversations; returns its id. The last
    ``failed`` conversations are recorded as failed; ``judged=False`` leaves every turn ungraded."""
    from parrot.storage import open_store
    from parrot.v1 import coordinator_pb2 as cpb
    from parrot.storage.layout import input_key, run_prefix, run_record, unit_key
    from services.coordinator.kinds import resolve
    from services.coordinator.kinds.evaluation import QuestionUnit
    from services.coordinator.outputs import write_outputs
    from services.coordinator.spec import Plan

    store = open_store(store_url)
    run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{random.Random(seed).randrange(16**6):06x}"
    questions = _questions(n, turns)
    qkey = input_key(run_id, "questions")
    await store.put(qkey, "".join(json.dumps(q) + "\n" for q in questions).encode())
    spec = cpb.RunSpec(name=name, evaluation=cpb.EvaluationSpec(questions=cpb.InputFile(name="questions.jsonl", url=qkey),
                                                                model_id=model_id))
    now = time.time()
    run = cpb.Run(id=run_id, spec=spec, state=cpb.RUN_STATE_SUCCEEDED, created_at=now - 60, finished_at=now,
                  output_url=store.url(run_prefix(run_id)), message=f"{n - failed} finished, {failed} failed")
    run.progress.total, run.progress.finished, run.progress.failed = n, n - failed, failed
    units = [{"id": str(q["question_id"]), "question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
              "references": []} for q in questions]
    rng = random.Random(seed)
    records: dict[int, dict[str, Any]] = {}
    for i, unit in enumerate(units):
        if i >= n - failed:
            records[i] = {"index": i, "id": unit["id"], "status": "failed", "reason": "turn 2 not graded: UNAVAILABLE",
                          "data": {}}
        else:
            scores = [max(1.0, min(10.0, round(rng.gauss(7.5 - 0.3 * t + offset, 1.5)))) for t in range(1, turns + 1)]
            records[i] = {"index": i, "id": unit["id"], "status": "finished", "elapsed_s": 0.1, "data": {
                "answers": [f"Answer {t} of session {i}." for t in range(1, turns + 1)],
                "judgments": [{"turn": t, "score": s, "explanation": f"Rated {s:g}: synthetic judgment of turn {t}.",
                               "raw_output": f"Rating: [[{s:g}]]", "prompt_name": "single-v1-multi-turn",
                               "judge_model": "synthetic-judge", "method": "SCORE_METHOD_PARSED", "reference": ""}
                              for t, s in enumerate(scores, 1)] if judged else [],
                "turns": turns, "tokens": 10 * turns, "judge_failures": 0,
                "metadata": {"question_id": unit["question_id"], "category": unit["category"], "models": {}}}}
    sem = asyncio.Semaphore(64)

    async def put(i: int) -> None:
        async with sem:
            await store.put_json(unit_key(run_id, i), records[i])

    await asyncio.gather(*(put(i) for i in records))
    await write_outputs(run, Plan(resolve(spec), [QuestionUnit.of(u) for u in units], {}), records, store)
    await store.put_json(run_record(run_id), json_format.MessageToDict(run, preserving_proto_field_name=True))
    return run_id

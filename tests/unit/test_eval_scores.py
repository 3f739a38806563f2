"""The evaluation score gauges behind the ParrotEvalScoreRegression alert (services/coordinator/scores.py):
the latest two succeeded evaluation runs of each series (run name, model id), rebuilt from the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf import json_format
from prometheus_client import REGISTRY

from parrot.storage import LocalStore
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.scores import ScoreBoard, per_turn_means


def eval_run(run_id: str, name: str, model_id: str, finished_at: float, state: int = cpb.RUN_STATE_SUCCEEDED) -> cpb.Run:
    run = cpb.Run(id=run_id, state=state, finished_at=finished_at)
    run.spec.name = name
    run.spec.evaluation.model_id = model_id
    return run


def summary(model_id: str, means: dict[str, float | None]) -> dict:
    return {"model_id": model_id, "scores": {"per_turn": {t: {"mean": m, "n": 3} for t, m in means.items()}}}


def gauge(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_per_turn_means_skip_turns_without_a_mean():
    assert per_turn_means(summary("m", {"1": 7.5, "2": None, "3": 6})) == {"1": 7.5, "3": 6.0}
    assert per_turn_means({}) == {}


def test_latest_and_previous_runs_of_a_series():
    board = ScoreBoard()
    labels = {"name": "eval-a-smoke", "model_id": "a"}
    board.record(eval_run("r1", "eval-a-smoke", "a", 100), summary("a", {"1": 7.0, "2": 6.0, "3": 5.0}))
    assert gauge("parrot_eval_turn_score", **labels, turn="2") == 6.0
    assert gauge("parrot_eval_turn_score_previous", **labels, turn="2") is None
    board.record(eval_run("r2", "eval-a-smoke", "a", 200), summary("a", {"1": 7.5, "2": 4.5}))
    assert gauge("parrot_eval_turn_score", **labels, turn="2") == 4.5
    assert gauge("parrot_eval_turn_score_previous", **labels, turn="2") == 6.0
    assert gauge("parrot_eval_turn_score", **labels, turn="3") is None, "a turn the latest run lacks is not kept stale"
    assert gauge("parrot_eval_turn_score_previous", **labels, turn="3") == 5.0
    assert gauge("parrot_eval_last_run_timestamp_seconds", **labels) == 200
    # a late-arriving older run does not displace the latest; the same run twice counts once
    board.record(eval_run("r0", "eval-a-smoke", "a", 50), summary("a", {"1": 1.0}))
    board.record(eval_run("r2", "eval-a-smoke", "a", 200), summary("a", {"1": 7.5, "2": 4.5}))
    assert [r.run_id for r in board.latest("eval-a-smoke", "a")] == ["r1", "r2"]
    # failed runs, collection runs and other series leave this series alone
    board.record(eval_run("r3", "eval-a-smoke", "a", 300, cpb.RUN_STATE_FAILED), summary("a", {"1": 1.0}))
    other = eval_run("r4", "eval-b-smoke", "b", 400)
    board.record(other, summary("b", {"1": 9.0}))
    collection = cpb.Run(id="r5", state=cpb.RUN_STATE_SUCCEEDED, finished_at=500)
    collection.spec.collection.min_turns = 2
    board.record(collection, {})
    assert gauge("parrot_eval_turn_score", **labels, turn="1") == 7.5
    assert gauge("parrot_eval_turn_score", name="eval-b-smoke", model_id="b", turn="1") == 9.0


def test_board_is_rebuilt_from_the_store(tmp_path: Path):
    async def go() -> ScoreBoard:
        store = LocalStore(str(tmp_path / "store"))
        runs = []
        for i, (mean, state) in enumerate([(8.0, cpb.RUN_STATE_SUCCEEDED), (7.0, cpb.RUN_STATE_SUCCEEDED),
                                           (6.0, cpb.RUN_STATE_SUCCEEDED), (1.0, cpb.RUN_STATE_CANCELLED)]):
            run = eval_run(f"run-{i}", "eval-c-smoke", "c", 1000 + i, state)
            await store.put_json(f"runs/{run.id}/run.json", json_format.MessageToDict(run))
            await store.put_json(f"runs/{run.id}/outputs/summary.json", summary("c", {"1": mean}))
            runs.append(run)
        broken = eval_run("run-x", "eval-d-smoke", "d", 2000)  # its summary is missing: skipped, not fatal
        board = ScoreBoard()
        assert await board.load(store, [*runs, broken]) == 2
        return board

    board = asyncio.run(go())
    assert [r.run_id for r in board.latest("eval-c-smoke", "c")] == ["run-1", "run-2"]
    assert gauge("parrot_eval_turn_score", name="eval-c-smoke", model_id="c", turn="1") == 6.0
    assert gauge("parrot_eval_turn_score_previous", name="eval-c-smoke", model_id="c", turn="1") == 7.0

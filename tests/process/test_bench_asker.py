"""`parrot bench asker` end to end: one asker given by address (a running echo asker), one given as a
model (served on loopback by the command and stopped after), the scorecard table and JSON; the
errors a user sees for a file without follow-ups, an asker that does not answer, a bad --asker."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from parrot.client import free_port
from tests.conftest import REPO, requires_model, start_service

CLI = [sys.executable, "-c", "from parrot.cli import main; main()", "bench", "asker"]


def sharegpt(path, n: int) -> None:
    lines = []
    for i in range(n):
        turns = [f"How do I cook recipe number {i}?", "Boil it for ten minutes.", "And in a pan?", "Fry it instead.",
                 "What temperature should the oil be?", "About 180 degrees."]
        lines.append(json.dumps({"id": f"s{i}", "conversations": [
            {"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(turns)]}))
    path.write_text("\n".join(lines) + "\n")


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_scorecard_of_an_addressed_and_a_served_asker(tmp_path):
    data = tmp_path / "sessions.jsonl"
    sharegpt(data, 12)
    asker = start_service(tmp_path, ["asker", "--backend", "echo", "--model", "smollm2"], wait_for="parrot.v1.Asker")
    try:
        out = tmp_path / "card.json"
        r = run(str(data), "--asker", f"running={asker.grpc_target}", "--asker", "served=smollm2",
                "--asker", "reranked=smollm2@rerank=3", "--backend", "echo",
                "--no-nll", "--limit", "0", "--resamples", "100", "--json", str(out))
    finally:
        asker.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| row | people | running | served | reranked |" in r.stdout
    assert "reranking 3 samples" in r.stderr
    assert "| context-dependent rate | 0.5 [" in r.stdout  # people: "And in a pan?" yes, the oil question no
    card = json.loads(out.read_text())
    # two follow-ups and one end (where the person stopped) per session
    assert card["contexts"] == 36 and card["sessions"] == 12
    assert card["rows"]["end_agreement"]["served"]["value"] == 2 / 3  # the echo asker never ends
    assert card["askers"]["running"]["address"] == asker.grpc_target and card["askers"]["served"]["model"] == "smollm2"
    assert all(f["running"]["text"] and f["served"]["text"] for f in card["followups"])
    assert card["rows"]["no_followup"]["served"]["value"] == 0.0
    assert card["askers"]["reranked"] == {"address": "", "model": "smollm2", "rerank": 3, "end_threshold": 0.0}
    assert all(f["reranked"]["text"] for f in card["followups"] if f["people"] is not None)
    assert "perplexity" not in card["rows"]


def test_clear_errors(tmp_path):
    lone = tmp_path / "lone.jsonl"
    lone.write_text(json.dumps({"id": "x", "conversations": [{"from": "human", "value": "What is a monad, briefly?"},
                                                            {"from": "gpt", "value": "A monoid of endofunctors."}]}) + "\n")
    r = run(str(lone), "--asker", "a=smollm2", "--backend", "echo")
    assert r.returncode == 2 and "holds no follow-ups" in r.stderr, r.stderr
    data = tmp_path / "sessions.jsonl"
    sharegpt(data, 2)
    dead = f"127.0.0.1:{free_port()}"
    r = run(str(data), "--asker", f"gone={dead}")
    assert r.returncode == 2 and f"--asker gone={dead}" in r.stderr and "unreachable" in r.stderr, r.stderr
    r = run(str(data), "--asker", "no-equals-sign")
    assert r.returncode == 2 and "NAME=ADDRESS" in r.stderr, r.stderr
    r = run(str(data), "--asker", "a=smollm2", "--holdout", "1.5")
    assert r.returncode == 2 and "--holdout" in r.stderr, r.stderr


def test_rerank_and_end_suffixes_of_a_served_asker(capsys):
    import pytest
    import typer

    from parrot.cli.bench_asker import AskerSpec, parse_asker

    assert parse_asker("r=smollm2@rerank=4") == AskerSpec("r", model="smollm2", rerank=4)
    assert parse_asker("p=runs/ckpt") == AskerSpec("p", model="runs/ckpt")
    assert parse_asker("e=runs/ckpt@end=0.5") == AskerSpec("e", model="runs/ckpt", end_threshold=0.5)
    assert (parse_asker("b=runs/ckpt@end=0.7@rerank=4") == parse_asker("b=runs/ckpt@rerank=4@end=0.7")
            == AskerSpec("b", model="runs/ckpt", rerank=4, end_threshold=0.7))
    for spec, problem in [("r=127.0.0.1:5000@rerank=4", "parrot serve asker --rerank-samples N"),
                          ("r=smollm2@rerank=1", "allowed 2..16"),
                          ("r=smollm2@rerank=x", "allowed 2..16"),
                          ("e=smollm2@end=0", "allowed a probability in (0, 1]"),
                          ("e=smollm2@end=half", "allowed a probability in (0, 1]"),
                          ("e=smollm2@end=0.5@end=0.6", "@end is given twice")]:
        with pytest.raises(typer.Exit):
            parse_asker(spec)
        assert problem in capsys.readouterr().err


@requires_model
def test_held_out_nll_of_people_follow_ups_under_the_bundled_model(tmp_path):
    from parrot.asking.scorecard_io import load_contexts
    from training.asker_eval import followup_nll

    data = tmp_path / "sessions.jsonl"
    sharegpt(data, 2)
    rows = [c.example for c in load_contexts(str(data))]
    scored = followup_nll("smollm2", [*rows, None], max_length=512)
    assert scored[-1] is None and len(scored) == len(rows) + 1
    for nll, tokens in scored[:-1]:
        assert tokens > 0 and 0 < nll / tokens < 20 and math.isfinite(nll)
    # a target past max_length is not scored, as training leaves it out
    assert followup_nll("smollm2", rows[:1], max_length=8) == [None]

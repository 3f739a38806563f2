"""bench/asker_followups.py end to end on our own held-out examples: real asker services (echo
backend) started and stopped by the script, the detector over people's and generated follow-ups,
and the held-out NLL under the bundled model."""

from __future__ import annotations

import json
import subprocess
import sys

from parrot.conversation import Message, Role
from parrot.datasets import ShareGPTRecord, dumps_jsonl
from parrot.asking.training_data import build_asker_dataset
from tests.conftest import REPO, requires_model

U, A = Role.USER, Role.ASSISTANT


def _record(rid: str, *turns: str) -> ShareGPTRecord:
    roles = [U, A] * len(turns)
    return ShareGPTRecord(id=rid, messages=[Message(r, t) for r, t in zip(roles, turns)], line=1)


@requires_model
def test_asker_followups_bench_measures_each_asker_and_the_people(tmp_path):
    records = [
        _record("k1", "How do I boil an egg?", "Put it in boiling water for eight minutes.",
                "And for a soft one?", "About six minutes."),
        _record("k2", "Name a fast sorting algorithm.", "Quicksort is fast on average.",
                "Explain how quicksort partitions an array around a pivot element.", "It moves smaller keys left."),
    ]
    rows, _ = build_asker_dataset([("f.jsonl", records)])
    examples = tmp_path / "heldout.jsonl"
    examples.write_text(dumps_jsonl(rows))
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "asker_followups.py"), "--examples", str(examples),
                        "--asker", "a=smollm2", "--backend", "echo", "--nll", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    # "And for a soft one?" is elliptical, the quicksort question is self-contained: people 1 of 2.
    assert lines[2].startswith("| people (held-out targets) | 2 | 0 | 1 | 0.500 |")
    assert lines[3].startswith("| a (smollm2) | 2 |")
    figures = json.loads(out.read_text())
    assert figures["contexts"] == 2 and figures["human_fraction"] == 0.5
    asker = figures["askers"]["a"]
    assert len(asker["followups"]) == 2 and all(f["followup"] for f in asker["followups"])
    assert asker["no_followup"] == 0 and 0 < asker["target_nll"] < 20


def test_asker_followups_bench_rejects_bad_arguments(tmp_path):
    bench = str(REPO / "bench" / "asker_followups.py")
    r = subprocess.run([sys.executable, bench, "--examples", str(tmp_path / "none.jsonl"), "--asker", "a=smollm2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--examples" in r.stderr
    r = subprocess.run([sys.executable, bench, "--examples", "x.jsonl", "--asker", "no-equals"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "NAME=MODEL" in r.stderr

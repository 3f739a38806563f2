"""scripts/recipe_parrot.sh, the Parrot method end to end: a rerun skips the steps that finished and
rebuilds the one report from what they left (the full run is measured in README, not here: it trains
two models for half an hour)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.unit.test_report_capo import HELDOUT
from tests.unit.test_reports import asker_card_file, run_folder

STEPS = ("1-asker-data", "2-asker-training", "3-asker-scorecard", "4-collection", "5-negatives", "6-capo",
         "7-evaluation")


def recipe(out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PARROT_HOME": str(tmp_path / "home"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPO / "scripts" / "recipe_parrot.sh")], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_a_rerun_skips_finished_steps_and_builds_the_report(tmp_path):
    out = tmp_path / "recipe"
    (out / "done").mkdir(parents=True)
    for step in STEPS:
        (out / "done" / step).touch()
    for name, drop in (("eval-base", 0.3), ("eval-capo", 0.1)):
        run_folder(out / name, f"run-{name}", name, drop)
    card, table = asker_card_file(out / "asker-card.json")
    (out / "capo").mkdir()
    (out / "capo" / "heldout_preferences.json").write_text(json.dumps(HELDOUT))

    r = recipe(out, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for step in STEPS:
        assert f"{step}: done in an earlier run, skipped" in r.stdout
    assert "parrot up" not in r.stdout  # nothing left that needs the stack
    md = (out / "report" / "report.md").read_text()
    assert table[3] in md and "## CaPO on held-out pairs" in md and "eval-capo" in md
    assert "8-report" in (out / "steps.tsv").read_text()


def test_a_missing_input_is_named(tmp_path):
    env_out = tmp_path / "recipe"
    r = subprocess.run(["bash", str(REPO / "scripts" / "recipe_parrot.sh")],
                       env={**os.environ, "OUT": str(env_out), "LOGS": str(tmp_path / "nope.jsonl")},
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and f"LOGS={tmp_path / 'nope.jsonl'} does not exist" in r.stderr

"""The CaPO held-out report as a section of `parrot report` (parrot/reports/capo.py)."""

from __future__ import annotations

import json

import pytest

from parrot.errors import InvalidArgument
from parrot.reports.capo import load_heldout
from parrot.reports.render import to_markdown
from parrot.reports.build import Report

HELDOUT = {
    "step": 60,
    "before": {"all": {"pairs": 4, "accuracy": 0.5, "margin": 0.01},
               "context_neglect": {"pairs": 2, "accuracy": 0.5, "margin": 0.02},
               "context_hallucination": {"pairs": 2, "accuracy": 0.5, "margin": 0.0}},
    "after": {"all": {"pairs": 4, "accuracy": 1.0, "margin": 0.4},
              "context_neglect": {"pairs": 2, "accuracy": 1.0, "margin": 0.5},
              "context_hallucination": {"pairs": 2, "accuracy": 1.0, "margin": 0.3}},
    "context_probe": {"pairs": 3, "before": -0.25, "after": 0.75},
}


def test_section_rows_in_strategy_order_with_before_and_after(tmp_path):
    path = tmp_path / "heldout_preferences.json"
    path.write_text(json.dumps(HELDOUT))
    section = load_heldout(path).section()
    (table,) = section.tables
    assert [r[0] for r in table.rows] == ["context_neglect", "context_hallucination", "all"]
    assert table.rows[0] == ["context_neglect", "2", "0.500", "1.000", "0.020", "0.500"]
    assert "-0.250 (reference) -> 0.750 (CaPO)" in section.text
    md = to_markdown(Report("t", [section], {}))
    assert "| context_neglect | 2 | 0.500 | 1.000 | 0.020 | 0.500 |" in md


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("{not json", "is not a JSON file"),
    ("[1, 2]", "holds a list"),
    (json.dumps({"before": {}}), "before: is missing or empty"),
    (json.dumps({"before": {"all": {"pairs": 1, "accuracy": "x", "margin": 0}}, "after": {"all": {}}}),
     "before.all: must hold numbers"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "h.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgument) as e:
        load_heldout(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_report_cli_shows_the_heldout_report_beside_a_scorecard(tmp_path):
    from typer.testing import CliRunner

    from parrot.cli import app
    from tests.unit.test_reports import asker_card_file, run_folder

    run = run_folder(tmp_path / "run", "run-local", "m3", 0.2)
    card, table = asker_card_file(tmp_path / "card.json")
    heldout = tmp_path / "heldout_preferences.json"
    heldout.write_text(json.dumps(HELDOUT))
    r = CliRunner().invoke(app, ["report", str(run), "--asker-card", card, "--capo-heldout", str(heldout),
                                 "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert table[3] in md and "## CaPO on held-out pairs" in md and "| all | 4 | 0.500 | 1.000 |" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["capo_heldout"][0]["after"]["all"]["accuracy"] == 1.0
    r = CliRunner().invoke(app, ["report", str(run), "--capo-heldout", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "nope.json: does not exist" in r.output, r.output
    r = CliRunner().invoke(app, ["report", "some-run-id", "--capo-heldout", str(heldout)])
    assert r.exit_code == 2 and "--capo-heldout need local run folders or --store" in r.output, r.output

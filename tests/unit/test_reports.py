"""Reports: Markdown + self-contained HTML + a real PNG with one x tick per turn, regressions between
runs, judge agreement, and storage with each run in the object store."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from parrot.analysis import judge_agreement, score_summary
from parrot.instructions import instruction_summary
from parrot.reports import create_report, load_run_folder, render_report, run_from_files
from parrot.reports.build import build_report, regression_rows
from parrot.reports.plot import per_turn_figure
from parrot.storage import open_store

TURNS = 8
CATS = ["writing", "math", "coding"]


def make_run_files(run_id: str, model: str, drop: float, agreement: bool = False) -> dict[str, bytes]:
    """Output files of a made-up 8-turn evaluation run whose scores fall by ``drop`` per turn."""
    scores = []
    for q in range(6):
        for t in range(1, TURNS + 1):
            scores.append({"question_id": 100 + q, "category": CATS[q % 3], "turn": t,
                           "score": max(1.0, min(10.0, 8.5 - drop * (t - 1) + (q % 3) * 0.3))})
    checks = [{"question_id": 100 + q, "category": CATS[q % 3], "turn": t,
               "results": [{"strict": (q + t) % 3 != 0, "loose": (q + t) % 4 != 0}]}
              for q in range(6) for t in range(1, TURNS + 1)]
    summary = {"run_id": run_id, "kind": "evaluation", "model_id": model, "judge_model": "judge-x",
               "scores": score_summary(scores, n_resamples=300), "instructions": instruction_summary(checks, 300),
               "judge_failures": 0, "finished": 6}
    if agreement:
        a = {(s["question_id"], s["turn"]): s["score"] for s in scores}
        b = {k: v - 0.5 if k[1] % 2 else v for k, v in a.items()}
        summary["judge_agreement"] = {"judge_a": "local", "judge_b": "api", **judge_agreement(a, b)}
    return {"summary.json": json.dumps(summary).encode(),
            "scores.jsonl": "".join(json.dumps(s) + "\n" for s in scores).encode(),
            "instructions.jsonl": "".join(json.dumps(c) + "\n" for c in checks).encode()}


@pytest.fixture(scope="module")
def two_runs():
    return [run_from_files("run-a", make_run_files("run-a", "model-v1", 0.1, agreement=True)),
            run_from_files("run-b", make_run_files("run-b", "model-v2", 0.4))]


def test_report_files(two_runs):
    files = render_report(two_runs, "v1 vs v2")
    assert set(files) == {"report.md", "report.html", "per_turn.png", "report.json"}
    png = files["per_turn.png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG" and 500 <= img.width <= 1000 and 300 <= img.height <= 900
    assert img.text.get("Turns") == str(TURNS)
    md = files["report.md"].decode()
    assert md.startswith("# v1 vs v2") and "![per-turn scores](per_turn.png)" in md
    for heading in ("## Mean judge score per turn", "## Turn-over-turn change", "## Per category",
                    "## Instruction following per turn", "## Largest regressions", "## Judge agreement"):
        assert heading in md
    per_turn_rows = [line for line in md.split("## Mean judge score per turn")[1].split("##")[0].splitlines()
                     if line.startswith("| ") and line[2].isdigit()]
    assert len(per_turn_rows) == TURNS
    html = files["report.html"].decode()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert "src=\"http" not in html and "<link" not in html and "<script" not in html  # self-contained
    assert html.count("<table>") >= 6
    data = json.loads(files["report.json"])
    assert data["turns"] == list(range(1, TURNS + 1))


def test_plot_has_one_tick_per_turn_and_ci_bands(two_runs):
    fig = per_turn_figure(two_runs)
    axes = fig.get_axes()
    assert len(axes) == 2  # judge scores + instruction following
    for ax in axes:
        assert [int(t) for t in ax.get_xticks()] == list(range(1, TURNS + 1))
        assert len(ax.collections) == 2  # one CI band per run
        assert len(ax.get_lines()) == 2
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    labels = [t.get_text() for t in axes[-1].get_xticklabels()]
    assert labels == [str(t) for t in range(1, TURNS + 1)]
    assert axes[-1].get_xlabel() == "Turn"


def test_regressions_between_runs(two_runs):
    rows = regression_rows(two_runs[0], two_runs[1])
    assert rows and all(r["delta"] < 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: (r["delta"], r["where"]))
    assert rows[0]["where"].endswith("turn 8")  # the largest fall is at the last turn
    wheres = {r["where"] for r in rows}
    assert "turn 8" in wheres and "category writing" in wheres and any(w.startswith("session ") for w in wheres)
    report = build_report(two_runs)
    agree = next(s for s in report.sections if s.title == "Judge agreement")
    assert agree.tables[0].rows[0][1:3] == ["local", "api"]


async def test_report_is_stored_with_each_run(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    for rid, model, drop in (("run-20260101-000000-aaaaaa", "m1", 0.1), ("run-20260101-000001-bbbbbb", "m2", 0.3)):
        await store.put_json(f"runs/{rid}/run.json", {"id": rid, "spec": {"name": model}})
        for name, data in make_run_files(rid, model, drop).items():
            await store.put(f"runs/{rid}/outputs/{name}", data)
    ids = ["run-20260101-000000-aaaaaa", "run-20260101-000001-bbbbbb"]
    rid, files, folders = await create_report(store, ids, "stored")
    assert folders == [f"runs/{i}/reports/{rid}" for i in ids]
    for folder in folders:
        assert await store.get(f"{folder}/per_turn.png") == files["per_turn.png"]
        assert (await store.get(f"{folder}/report.html")).startswith(b"<!DOCTYPE html>")
    from parrot.errors import FailedPrecondition, InvalidArgument, NotFound

    with pytest.raises(NotFound):
        await create_report(store, ["run-20990101-000000-cccccc"])
    with pytest.raises(InvalidArgument):
        await create_report(store, [ids[0], ids[0]])
    await store.put_json("runs/run-20260101-000002-dddddd/run.json", {"id": "x"})
    with pytest.raises(FailedPrecondition, match="finished"):
        await create_report(store, ["run-20260101-000002-dddddd"])
    # a local folder of downloaded outputs reads the same
    d = tmp_path / "out"
    d.mkdir()
    for name, data in make_run_files("run-local", "m3", 0.2).items():
        (d / name).write_bytes(data)
    run = load_run_folder(d)
    assert run.run_id == "run-local" and run.max_turn == TURNS


def run_folder(path, run_id: str, model: str, drop: float):
    """A local output folder (as `parrot eval --out` writes) of ``make_run_files``' run."""
    path.mkdir(parents=True)
    for name, data in make_run_files(run_id, model, drop).items():
        (path / name).write_bytes(data)
    return path


def asker_card_file(path) -> tuple[str, list[str]]:
    """A `parrot bench asker --json`-shaped scorecard file; (its path, the bench's Markdown table lines)."""
    from parrot.asking.scorecard import Context, FollowUp, score
    from parrot.conversation import Message, Role

    contexts = [Context(f"s{i}:1", f"s{i}", (Message(Role.USER, f"How do I cook recipe {i}?"),
                                            Message(Role.ASSISTANT, "Boil it for ten minutes.")), "And in a pan?")
                for i in range(6)]
    card = score(contexts, {"asker": [FollowUp("What about frying it?") for _ in contexts]}, n_resamples=50)
    path.write_text(json.dumps({"data": "sessions.jsonl", "holdout": 0.2, **card.as_dict()}))
    return str(path), card.markdown().splitlines()


def test_report_shows_the_asker_scorecard_as_the_bench_prints_it(two_runs, tmp_path):
    from parrot.reports import load_asker_card

    path, table = asker_card_file(tmp_path / "card.json")
    files = render_report(two_runs, "with card", [load_asker_card(path)])
    md = files["report.md"].decode()
    assert "## Asker scorecard: card.json" in md
    assert "6 contexts from 6 sessions of sessions.jsonl (held-out 0.2)" in md
    for line in [table[0], *table[2:]]:  # the header and every row, cell for cell (not the alignment line)
        assert line in md, line
    assert "| anaphora cue rate | 0 [0, 0] | 1 [1, 1] |" in md
    card = load_asker_card(path).card
    assert type(card).from_dict(card.as_dict()).markdown() == "\n".join(table)  # JSON round trip
    assert "<th>people</th><th>asker</th>" in files["report.html"].decode()
    assert json.loads(files["report.json"])["asker_cards"][0]["file"] == "card.json"


def test_report_cli_with_an_asker_card_and_a_bad_one(tmp_path):
    from typer.testing import CliRunner

    from parrot.cli import app

    run = run_folder(tmp_path / "run", "run-local", "m3", 0.2)
    path, table = asker_card_file(tmp_path / "card.json")
    r = CliRunner().invoke(app, ["report", str(run), "--asker-card", path, "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert table[3] in (tmp_path / "rep" / "report.md").read_text()
    bad = tmp_path / "bad.json"
    for content, problem in [("{not json", "is not JSON"), (json.dumps({"rows": {}}), "has no 'contexts' field"),
                             (json.dumps({"contexts": 1, "sessions": 1, "columns": ["people"],
                                          "rows": {"vibes": {}}}), "unknown row 'vibes'")]:
        bad.write_text(content)
        r = CliRunner().invoke(app, ["report", str(run), "--asker-card", str(bad)])
        assert r.exit_code == 2 and f"--asker-card {bad}" in r.output and problem in r.output, r.output
    r = CliRunner().invoke(app, ["report", str(run), "--asker-card", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "missing.json: cannot be read" in r.output, r.output

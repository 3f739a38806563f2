"""The content of a report: sections of text and tables, independent of the output format.

Sections: the runs compared; mean judge score per turn with bootstrap CIs (runs side by side,
with the difference to the first run); the turn-over-turn change; per category; instruction-
following accuracy per turn (where the sessions carried instructions); the largest regressions
of each run against the first (by category, by turn, by session turn); judge agreement (runs
graded by a second judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from parrot.reports.data import RunData

TOP_REGRESSIONS = 10


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    image: str = ""  # file name of an image shown in this section


@dataclass
class Report:
    title: str
    sections: list[Section]
    data: dict[str, Any]  # the figures behind the tables (report.json)


def fmt(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def fmt_delta(x: Any) -> str:
    return f"{x:+.2f}" if isinstance(x, (int, float)) else "–"


def fmt_ci(block: dict[str, Any] | None) -> str:
    if not block or block.get("mean") is None:
        return "–"
    return f"{fmt(block['mean'])} [{fmt(block.get('low'))}, {fmt(block.get('high'))}]"


def _pct(block: dict[str, Any] | None) -> str:
    if not block or block.get("mean") is None:
        return "–"
    if "low" in block and block.get("low") is not None:
        return f"{100 * block['mean']:.0f}% [{100 * block['low']:.0f}, {100 * block['high']:.0f}]"
    return f"{100 * block['mean']:.0f}%"


def _scores(run: RunData) -> dict[str, Any]:
    return run.summary.get("scores") or {}


def _mean(block: dict[str, Any] | None) -> float | None:
    return None if not block else block.get("mean")


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def build_report(runs: Sequence[RunData], title: str = "", image_name: str = "per_turn.png") -> Report:
    if not runs:
        raise ValueError("a report needs at least one run")
    ref = runs[0]
    title = title or ("Evaluation report: " + " vs ".join(r.model_id or r.run_id for r in runs))
    max_turn = max(r.max_turn for r in runs)
    turns = list(range(1, max_turn + 1))
    sections: list[Section] = []

    overview = Table(["", "run", "model", "judge", "sessions", "turns graded", "judge failures", "overall mean [95% CI]"], [])
    for i, r in enumerate(runs):
        s = _scores(r)
        counts = s.get("counts") or {}
        overview.rows.append([f"#{i + 1}" + (" (reference)" if i == 0 and len(runs) > 1 else ""), r.run_id,
                              r.model_id or "–", r.judge_model or "–", str(r.summary.get("finished", counts.get("questions", "–"))),
                              str(counts.get("scored", "–")), str(r.summary.get("judge_failures", "–")),
                              fmt_ci(s.get("overall"))])
    sections.append(Section("Runs", "Scores are judge grades 1-10; intervals are 95% bootstrap CIs over graded turns.",
                            [overview]))

    per_turn = Table(["turn"] + [f"#{i + 1} mean [95% CI]" for i in range(len(runs))]
                     + [f"#{i + 1} − #1" for i in range(1, len(runs))], [])
    for t in turns:
        blocks = [_scores(r).get("per_turn", {}).get(str(t)) for r in runs]
        row = [str(t)] + [fmt_ci(b) for b in blocks]
        row += [fmt_delta(_delta(_mean(b), _mean(blocks[0]))) for b in blocks[1:]]
        per_turn.rows.append(row)
    sections.append(Section("Mean judge score per turn", "", [per_turn], image=image_name))

    tot = Table(["turn"] + [f"#{i + 1} vs previous turn" for i in range(len(runs))]
                + [f"#{i + 1} vs turn 1" for i in range(len(runs))], [])
    for t in turns[1:]:
        tot.rows.append([str(t)] + [fmt_delta(_scores(r).get("turn_over_turn", {}).get(str(t))) for r in runs]
                        + [fmt_delta(_scores(r).get("turn_drop", {}).get(str(t))) for r in runs])
    drops = [_largest_drop(r) for r in runs]
    text = "; ".join(f"#{i + 1}: largest drop {fmt_delta(d[1])} at turn {d[0]}" if d else f"#{i + 1}: no drop"
                     for i, d in enumerate(drops))
    sections.append(Section("Turn-over-turn change", text, [tot] if tot.rows else []))

    cats = sorted({c for r in runs for c in (_scores(r).get("per_category") or {})})
    if cats:
        cat_table = Table(["category"] + [f"#{i + 1} mean [95% CI]" for i in range(len(runs))]
                          + [f"#{i + 1} − #1" for i in range(1, len(runs))], [])
        for c in cats:
            blocks = [(_scores(r).get("per_category") or {}).get(c) for r in runs]
            cat_table.rows.append([c] + [fmt_ci(b) for b in blocks]
                                  + [fmt_delta(_delta(_mean(b), _mean(blocks[0]))) for b in blocks[1:]])
        sections.append(Section("Per category", "", [cat_table]))

    inst = [r.summary.get("instructions") for r in runs]
    if any(inst):
        itable = Table(["turn"] + [f"#{i + 1} {m}" for i in range(len(runs)) for m in
                                   ("prompt strict", "prompt loose", "instr. strict", "instr. loose")], [])
        for key in [str(t) for t in turns] + ["all"]:
            row = [key]
            for s in inst:
                b = (s or {}).get("overall") if key == "all" else ((s or {}).get("per_turn") or {}).get(key)
                row += [_pct((b or {}).get(m)) for m in ("prompt_strict", "prompt_loose", "instruction_strict",
                                                          "instruction_loose")]
            itable.rows.append(row)
        sections.append(Section("Instruction following per turn",
                                "Instructions accumulate: each turn is checked against every instruction still in "
                                "force. Prompt level: all instructions of the turn followed; instruction level: share "
                                "of single instructions followed. Loose also accepts the answer without its first/last "
                                "line or markdown asterisks.", [itable]))

    regressions = [regression_rows(ref, r) for r in runs[1:]]
    if len(runs) > 1:
        rtable = Table(["run", "where", "#1", "this run", "change"], [])
        for i, rows in enumerate(regressions, 2):
            for row in rows[:TOP_REGRESSIONS]:
                rtable.rows.append([f"#{i}", row["where"], fmt(row["reference"]), fmt(row["value"]),
                                    fmt_delta(row["delta"])])
        text = ("Largest score decreases against run #1 (by category, by turn, and by session turn where both runs "
                "graded the same session)." if rtable.rows else "No run scores lower than run #1 anywhere.")
        sections.append(Section("Largest regressions", text, [rtable] if rtable.rows else []))

    agree = [(i, r.summary.get("judge_agreement")) for i, r in enumerate(runs, 1) if r.summary.get("judge_agreement")]
    if agree:
        atable = Table(["run", "judge A", "judge B", "turns", "Spearman", "pairwise agreement", "w/o ties",
                        "exact", "mean |A−B|"], [])
        for i, a in agree:
            atable.rows.append([f"#{i}", str(a.get("judge_a") or "–"), str(a.get("judge_b") or "–"), str(a.get("n")),
                                fmt(a.get("spearman")), _pct({"mean": a.get("pairwise_agreement")}),
                                _pct({"mean": a.get("pairwise_agreement_no_ties")}),
                                _pct({"mean": a.get("exact_agreement")}), fmt(a.get("mean_abs_diff"))])
        sections.append(Section("Judge agreement", "Two judges graded the same answers. Pairwise agreement: share of "
                                "pairs of graded turns both judges order the same way (ties included).", [atable]))

    data = {"title": title, "runs": [{"run_id": r.run_id, "model_id": r.model_id, "judge_model": r.judge_model,
                                      "source": r.source, "summary": r.summary} for r in runs],
            "turns": turns, "regressions": regressions}
    return Report(title, sections, data)


def _largest_drop(run: RunData) -> tuple[int, float] | None:
    tot = _scores(run).get("turn_over_turn") or {}
    worst = [(int(t), d) for t, d in tot.items() if isinstance(d, (int, float)) and d < 0]
    return min(worst, key=lambda x: x[1]) if worst else None


def regression_rows(ref: RunData, run: RunData) -> list[dict[str, Any]]:
    """Places where ``run`` scores lower than ``ref``, most negative first."""
    rows: list[dict[str, Any]] = []
    rs, s = _scores(ref), _scores(run)
    for kind in ("per_category", "per_turn"):
        for key, block in (s.get(kind) or {}).items():
            delta = _delta(_mean(block), _mean((rs.get(kind) or {}).get(key)))
            if delta is not None and delta < 0:
                where = f"category {key}" if kind == "per_category" else f"turn {key}"
                rows.append({"where": where, "reference": _mean(rs[kind][key]), "value": _mean(block), "delta": delta})
    ref_items = scores_by_session_turn(ref)
    for item, value in scores_by_session_turn(run).items():
        if item in ref_items:
            delta = value - ref_items[item]
            if delta < 0:
                rows.append({"where": f"session {item[0]} turn {item[1]}", "reference": ref_items[item], "value": value,
                             "delta": delta})
    rows.sort(key=lambda r: (r["delta"], r["where"]))
    return rows


def scores_by_session_turn(run: RunData) -> dict[tuple[str, int], float]:
    """{(question id, turn): score} of the run's graded turns (also the run browser's comparison)."""
    out: dict[tuple[str, int], float] = {}
    for rec in run.scores:
        if rec.get("score") is not None:
            out[(str(rec["question_id"]), int(rec["turn"]))] = float(rec["score"])
    return out


def per_turn_series(run: RunData) -> dict[str, list[Any]]:
    """Turn numbers with mean/low/high judge score (for the plot)."""
    pt = _scores(run).get("per_turn") or {}
    turns = sorted(int(t) for t in pt if pt[t].get("mean") is not None)
    return {"turn": turns, "mean": [pt[str(t)]["mean"] for t in turns], "low": [pt[str(t)]["low"] for t in turns],
            "high": [pt[str(t)]["high"] for t in turns]}


def instruction_series(run: RunData) -> dict[str, list[Any]]:
    pt = ((run.summary.get("instructions") or {}).get("per_turn")) or {}
    turns = sorted(int(t) for t in pt if (pt[t].get("prompt_strict") or {}).get("mean") is not None)
    get = lambda t, k: pt[str(t)]["prompt_strict"][k]  # noqa: E731
    return {"turn": turns, "mean": [get(t, "mean") for t in turns], "low": [get(t, "low") for t in turns],
            "high": [get(t, "high") for t in turns]}


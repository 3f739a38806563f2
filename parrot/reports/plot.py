"""The per-turn plot: mean judge score per turn with its CI band, one line per run (matplotlib, Agg).

When runs carry instruction checks a second panel shows prompt-level strict accuracy per turn.
The x axis has one tick per turn (1..N). The PNG records the turn count in its text metadata
(``Turns``) so tools can check it without reading pixels.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from parrot.reports.build import instruction_series, per_turn_series
from parrot.reports.data import RunData


def per_turn_figure(runs: Sequence[RunData], title: str = "") -> Any:
    """A matplotlib Figure (not attached to pyplot, so no GUI backend is involved)."""
    from matplotlib.figure import Figure

    judge = [per_turn_series(r) for r in runs]
    inst = [instruction_series(r) for r in runs]
    panels = [("Mean judge score (1-10)", judge, (1, 10))] if any(s["turn"] for s in judge) else []
    if any(s["turn"] for s in inst):
        panels.append(("Instruction following\n(prompt-level strict)", inst, (0, 1)))
    if not panels:
        panels = [("Mean judge score (1-10)", judge, (1, 10))]
    max_turn = max([r.max_turn for r in runs] + [1])
    fig = Figure(figsize=(7.0, 2.6 * len(panels) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for ax, (ylabel, series, ylim) in zip(axes, panels):
        for i, (run, s) in enumerate(zip(runs, series)):
            c = colors[i % len(colors)]
            if not s["turn"]:
                continue
            ax.fill_between(s["turn"], s["low"], s["high"], color=c, alpha=0.18, linewidth=0)
            ax.plot(s["turn"], s["mean"], marker="o", color=c, label=f"#{i + 1} {run.label}")
        ax.set_xticks(list(range(1, max_turn + 1)))
        ax.set_xlim(0.7, max_turn + 0.3)
        ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("Turn")
    axes[0].legend(loc="lower left", fontsize=8, frameon=False)
    axes[0].set_title(title or "Per-turn scores with 95% bootstrap CIs", fontsize=10)
    return fig


def figure_png(fig: Any, turns: int, title: str = "") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Title": title or "parrot per-turn report", "Software": "parrot",
                                            "Turns": str(turns)})
    return buf.getvalue()

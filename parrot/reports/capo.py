"""The CaPO held-out report as a report section.

``parrot train capo --eval-fraction F`` (or ``--eval-dataset``) writes ``heldout_preferences.json``
in its run folder: per strategy and overall ('all'), the pairs, the preference accuracy and the
mean beta-scaled margin of the reference model (``before``) and of the trained model (``after``),
and the judge-free context probe. ``load_heldout`` reads it as a ``CapoHeldout``, which ``parrot report --capo-heldout FILE`` adds to a
report as a section (beside the asker scorecards of ``--asker-card``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parrot.errors import InvalidArgument
from parrot.reports.build import Section, Table, fmt

STRATEGY_ORDER = ("context_neglect", "context_hallucination", "context_misunderstanding", "all")
_ROW_KEYS = ("pairs", "accuracy", "margin")


@dataclass(frozen=True)
class CapoHeldout:
    """A ``heldout_preferences.json``: a report section and its figures in report.json."""

    name: str  # the file's path as given
    data: dict[str, Any]
    key = "capo_heldout"  # its list in report.json

    def section(self) -> Section:
        return heldout_section(self.data, self.name)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, **self.data}


def load_heldout(path: str | Path) -> CapoHeldout:
    """The file, checked: ``before`` and ``after`` map strategies to pairs/accuracy/margin."""
    where = f"--capo-heldout {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(where, "does not exist (the heldout_preferences.json of a `parrot train capo "
                                     "--eval-fraction` run folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(where, f"is not a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(where, f"holds a {type(data).__name__}; expected an object with 'before' and 'after'")
    for when in ("before", "after"):
        block = data.get(when)
        if not isinstance(block, dict) or not block:
            raise InvalidArgument(f"{where}: {when}", "is missing or empty; expected {strategy: {pairs, accuracy, margin}}")
        for strategy, row in block.items():
            if not isinstance(row, dict) or any(not isinstance(row.get(k), (int, float)) for k in _ROW_KEYS):
                raise InvalidArgument(f"{where}: {when}.{strategy}", f"must hold numbers {', '.join(_ROW_KEYS)}")
    return CapoHeldout(str(path), data)


def _strategies(data: dict[str, Any]) -> list[str]:
    names = set(data["before"]) | set(data["after"])
    known = [s for s in STRATEGY_ORDER if s in names]
    return [s for s in sorted(names) if s not in STRATEGY_ORDER] + known


def heldout_section(data: dict[str, Any], source: str = "") -> Section:
    """A report section: one row per strategy, reference (before) vs trained (after)."""
    rows = []
    for s in _strategies(data):
        before, after = data["before"].get(s) or {}, data["after"].get(s) or {}
        rows.append([s, str(int(after.get("pairs", before.get("pairs", 0)))),
                     fmt(before.get("accuracy"), 3), fmt(after.get("accuracy"), 3),
                     fmt(before.get("margin"), 3), fmt(after.get("margin"), 3)])
    table = Table(["strategy", "held-out pairs", "accuracy: reference", "accuracy: CaPO",
                   "margin: reference", "margin: CaPO"], rows)
    text = ("Pairs of sessions CaPO never trained on. Accuracy: share of pairs whose chosen answer is more "
            "likely than the rejected one given the prompt; margin: mean beta x (log p(chosen) - log p(rejected)).")
    probe = data.get("context_probe")
    if isinstance(probe, dict) and probe.get("pairs"):
        text += (f" Context probe over {int(probe['pairs'])} held-out prompts with history: mean log p(chosen | full "
                 f"history) - log p(chosen | history removed) = {fmt(probe.get('before'), 3)} (reference) -> "
                 f"{fmt(probe.get('after'), 3)} (CaPO).")
    if source:
        text += f" Source: `{source}`."
    return Section("CaPO on held-out pairs", text, [table])

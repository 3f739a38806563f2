"""The CaPO held-out report as a report section.

``parrot train capo --eval-fraction F`` (or ``--eval-dataset``) writes ``heldout_preferences.json``
in its run folder: per strategy and overall ('all'), the pairs, the preference accuracy and the
mean beta-scaled margin of the reference model (``before``) and of the trained model (``after``),
and the judge-free context probe. ``heldout_section`` turns that file into a table for
``parrot report --capo-heldout FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parrot.errors import InvalidArgument
from parrot.reports.build import Section, Table, fmt

STRATEGY_ORDER = ("context_neglect", "context_hallucination", "context_misunderstanding", "all")
_ROW_KEYS = ("pairs", "accuracy", "margin")


def load_heldout(path: str | Path) -> dict[str, Any]:
    """The parsed file, checked: ``before`` and ``after`` map strategies to pairs/accuracy/margin."""
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
    return data


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

"""The asker scorecard of `parrot bench asker --json` as a report section: the same caption and
the same table (``Scorecard.caption`` and ``Scorecard.table``) the bench prints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parrot.asking.scorecard import Scorecard
from parrot.errors import InvalidArgument
from parrot.reports.build import Section, Table


@dataclass(frozen=True)
class AskerCard:
    name: str  # the file's name, the section's title
    card: Scorecard
    data: str  # the DATA file the bench measured on
    holdout: float
    key = "asker_cards"  # its list in report.json

    def section(self) -> Section:
        header, rows = self.card.table()
        caption = self.card.caption(self.data, self.holdout) + " (`parrot bench asker`)."
        return Section(f"Asker scorecard: {self.name}", caption, [Table(header, rows)])

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "data": self.data, "holdout": self.holdout, **self.card.as_dict()}


def load_asker_card(path: str | Path) -> AskerCard:
    """A `parrot bench asker --json` file; InvalidArgument names the file and what is wrong with it."""
    where = f"--asker-card {path}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidArgument(where, f"cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(where, f"is not JSON ({e})") from None
    try:
        card = Scorecard.from_dict(raw)
    except ValueError as e:
        raise InvalidArgument(where, f"is not a `parrot bench asker --json` scorecard: {e}") from None
    holdout = raw.get("holdout") or 0.0
    return AskerCard(Path(path).name, card, str(raw.get("data") or "?"),
                     float(holdout) if isinstance(holdout, (int, float)) else 0.0)

"""Reading ratings and verdicts out of a judge's generated text (API judges).

Only the judge's own output is ever parsed, never the prompt: a graded answer that contains
"[[10]]" cannot set its own score. The *last* marker in the output counts, since judges
often quote the format ("I must answer with [[rating]]") before giving it.
"""

from __future__ import annotations

import re
from typing import Literal

PairLabel = Literal["A", "B", "tie"]

MIN_RATING = 1.0
MAX_RATING = 10.0

_RATING_RE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_PAIR_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
_PAIR_LABELS: dict[str, PairLabel] = {"A": "A", "B": "B", "C": "tie"}
# A label left dangling before the removed marker ("... Rating:", "Final verdict -").
_TRAILING_LABEL_RE = re.compile(r"(?:final\s+)?(?:rating|verdict|score)\s*[:=\-]?\s*$", re.IGNORECASE)


def parse_rating(text: str) -> float | None:
    """The last ``[[N]]`` in ``text`` as a float in 1..10, or None.

    Accepts "[[8]]", "[[8.5]]" and "Rating: [[ 7 ]]". When the last marker is out of range
    the result is None (an earlier marker is not used instead).
    """
    matches = list(_RATING_RE.finditer(text))
    if not matches:
        return None
    value = float(matches[-1].group(1))
    if not MIN_RATING <= value <= MAX_RATING:
        return None
    return value


def parse_pair(text: str) -> PairLabel | None:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in ``text``, or None."""
    matches = list(_PAIR_RE.finditer(text))
    if not matches:
        return None
    return _PAIR_LABELS[matches[-1].group(1).upper()]


def strip_rating(text: str) -> str:
    """The judge's text without its last rating marker (and the label just before it)."""
    return _strip_last(text, _RATING_RE)


def strip_verdict(text: str) -> str:
    """The judge's text without its last verdict marker (and the label just before it)."""
    return _strip_last(text, _PAIR_RE)


def _strip_last(text: str, pattern: re.Pattern[str]) -> str:
    matches = list(pattern.finditer(text))
    if not matches:
        return text.strip()
    m = matches[-1]
    head = _TRAILING_LABEL_RE.sub("", text[: m.start()].rstrip()).rstrip()
    tail = text[m.end() :].strip()
    return f"{head}\n{tail}".strip() if tail else head

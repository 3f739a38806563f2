"""Filters for generated follow-up queries: drop empty, too short, repetitive or blocked ones.

Parrot-Ask collection drops "repetitive, too short or unsafe" queries. ``FollowUpFilter.check``
returns the reason a query is dropped (one of ``REASONS``) or None to keep it, and
``FilterCounts`` tallies the outcomes so runs can report (and resume) them.

Near duplicates are found by the Jaccard similarity of the character 3-gram sets of the
normalized texts (NFKC, case-folded, punctuation removed, whitespace collapsed). It is robust to
small edits and word-order-preserving rewordings, costs O(length), and is skipped entirely when
the size ratio of the two sets already rules the threshold out. Texts shorter than 3 characters
after normalization are compared for equality.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

REASON_EMPTY = "empty"
REASON_TOO_SHORT = "too_short"
REASON_REPETITIVE = "repetitive"
REASON_BLOCKED = "blocked"
REASONS: tuple[str, ...] = (REASON_EMPTY, REASON_TOO_SHORT, REASON_REPETITIVE, REASON_BLOCKED)

_NON_WORD = re.compile(r"[^\w]+")
_SHINGLE = 3


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation and underscores replaced by spaces, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).replace("_", " ").split())


@lru_cache(maxsize=1024)  # earlier turns of the conversations in flight are compared again at every later turn
def shingles(text: str, n: int = _SHINGLE) -> frozenset[str]:
    """The character n-grams of the normalized text (the whole text if it is shorter than n)."""
    norm = normalize(text)
    if len(norm) < n:
        return frozenset({norm}) if norm else frozenset()
    return frozenset(norm[i : i + n] for i in range(len(norm) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Whether the character 3-gram Jaccard similarity of ``a`` and ``b`` is at least ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return _similar(shingles(a), shingles(b), threshold)


def repeats_any(text: str, earlier: Sequence[str]) -> bool:
    """Whether ``text`` equals (normalized) or nearly equals (``near_duplicate``) one of ``earlier``."""
    norm = normalize(text)
    return any(norm == normalize(u) or near_duplicate(text, u) for u in earlier)


def _similar(sa: frozenset[str], sb: frozenset[str], threshold: float) -> bool:
    small, large = sorted((len(sa), len(sb)))
    if large and small / large < threshold:  # Jaccard <= |small| / |large|
        return False
    return jaccard(sa, sb) >= threshold


@dataclass(frozen=True)
class FollowUpFilter:
    """Decides whether a generated follow-up query is kept.

    ``blocked_terms`` (optional) are words or phrases matched case-insensitively on word
    boundaries; a query containing one is dropped as "blocked" (a crude safety screen: use a
    real safety classifier where it matters).
    """

    min_chars: int = 8
    min_words: int = 2
    near_dup_threshold: float = 0.8
    blocked_terms: tuple[str, ...] = ()
    _blocked_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.min_words < 0:
            raise ValueError("min_chars and min_words must be >= 0")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        terms = [t.strip() for t in self.blocked_terms if t.strip()]
        if terms:
            pattern = r"(?<!\w)(?:" + "|".join(re.escape(normalize(t)) for t in terms) + r")(?!\w)"
            object.__setattr__(self, "_blocked_re", re.compile(pattern))

    def check(self, query: str, earlier_user_turns: Sequence[str] = ()) -> str | None:
        """The reason ``query`` is dropped, or None when it is kept."""
        text = query.strip()
        if not text:
            return REASON_EMPTY
        if len(text) < self.min_chars or len(text.split()) < self.min_words:
            return REASON_TOO_SHORT
        if self._blocked_re is not None and self._blocked_re.search(normalize(text)):
            return REASON_BLOCKED
        mine = shingles(text)
        for earlier in earlier_user_turns:
            if _similar(mine, shingles(earlier), self.near_dup_threshold):
                return REASON_REPETITIVE
        return None


@dataclass
class FilterCounts:
    """How many queries were checked, kept, and dropped for each reason."""

    checked: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def add(self, reason: str | None) -> None:
        """Counts one outcome of ``FollowUpFilter.check``."""
        self.checked += 1
        if reason is None:
            self.kept += 1
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def merge(self, other: "FilterCounts") -> "FilterCounts":
        """Adds ``other``'s counts to these (in place) and returns self."""
        self.checked += other.checked
        self.kept += other.kept
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        return self

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "kept": self.kept, "dropped": dict(self.dropped)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FilterCounts":
        """The inverse of ``as_dict`` (for resuming a run from its saved stats)."""
        counts = cls(checked=int(data.get("checked", 0)), kept=int(data.get("kept", 0)))
        for reason, n in dict(data.get("dropped", {})).items():
            counts.dropped[str(reason)] = int(n)
        return counts

    @classmethod
    def total(cls, parts: Iterable["FilterCounts"]) -> "FilterCounts":
        out = cls()
        for part in parts:
            out.merge(part)
        return out

"""The asker scorecard: do an asker's follow-ups look like the ones people really wrote?

Input: held-out *contexts* (a real conversation up to an assistant answer), the person's real next
user turn of each (``Context.human``), and each asker's follow-up for the same contexts
(``FollowUp``; ``text`` None when the asker gave none). Every row is a figure per column
("people" and one column per asker) with a bootstrap 95% interval that resamples *sessions* (all
contexts of a session go in or out together, as contexts of one session are not independent):

* ``perplexity`` / ``nll``: exp of (summed NLL / summed tokens) of the people's follow-ups under the
  asker's model (only for askers given as a model; computed by the caller, ``nll`` argument).
* ``no_followup``: share of contexts where the asker gave no follow-up.
* ``context_dependent``, ``anaphora``, ``ellipsis``: share of follow-ups the detector
  (``parrot.analysis.is_context_dependent``) marks dependent, or with a cue of that kind; like the
  rows below, over the follow-ups that came back for contexts where the person asked something.
* ``repeats``: share of follow-ups equal or near-equal (``parrot.analysis.near_duplicate``) to an
  earlier user turn of their context.
* ``distinct_2``: distinct word bigrams over all bigrams (a resample uses its distinct contexts,
  since repeated copies would count as repetition).
* ``words``: mean words per follow-up; ``words_w1``: 1-D Wasserstein distance between the asker's
  and the people's word-count distributions on the same contexts; ``first_word_tv``: total
  variation distance between the two first-word distributions (lower: closer to people).
* ``end_agreement``: share of contexts where the asker ends the conversation exactly when the
  person did (a person "ends" a context that has no next user turn); only when ended contexts
  are given or the asker ended one.

All figures are floats or None (not NaN), so ``Scorecard.as_dict`` is JSON-serializable.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from parrot.analysis import ANAPHORA, ELLIPSIS, distinct_n, is_context_dependent, normalize, repeats_any
from parrot.conversation import Message, Role

PEOPLE = "people"
ROWS: dict[str, str] = {
    "perplexity": "held-out perplexity of the real follow-ups",
    "nll": "NLL / token of the real follow-ups",
    "no_followup": "no-follow-up rate",
    "end_agreement": "ends where the person ended",
    "context_dependent": "context-dependent rate",
    "anaphora": "anaphora cue rate",
    "ellipsis": "ellipsis cue rate",
    "repeats": "repeats an earlier user turn",
    "distinct_2": "distinct-2",
    "words": "words / follow-up",
    "words_w1": "word-count distance to people's (Wasserstein-1)",
    "first_word_tv": "first-word distance to people's (total variation)",
}


@dataclass(frozen=True)
class Context:
    """A held-out context: the conversation so far (ends with an answer) and what the person did next."""

    id: str
    session: str
    messages: tuple[Message, ...]
    human: str | None  # the real next user turn; None: the person ended the session here
    example: Mapping[str, object] | None = field(default=None, compare=False)  # the asker-example row (for NLL)

    @property
    def user_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role is Role.USER]


@dataclass(frozen=True)
class FollowUp:
    """One asker's answer for one context."""

    text: str | None  # None: no follow-up (the asker failed or answered nothing)
    ended: bool = False  # the asker ended the conversation instead of asking
    error: str = ""


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    n: int  # contexts (or follow-ups) the figure is over

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def cell(self) -> str:
        if self.value is None:
            return "-"
        interval = f" [{self.low:.3g}, {self.high:.3g}]" if self.low is not None and self.high is not None else ""
        return f"{self.value:.3g}{interval}"


@dataclass
class Scorecard:
    contexts: int
    sessions: int
    columns: list[str]
    rows: dict[str, dict[str, Estimate]]

    def as_dict(self) -> dict[str, object]:
        return {"contexts": self.contexts, "sessions": self.sessions, "columns": list(self.columns),
                "rows": {k: {c: e.as_dict() for c, e in row.items()} for k, row in self.rows.items()}}

    def caption(self, data: str, holdout: float = 0.0) -> str:
        """The line above the table: what it was measured on."""
        return (f"{self.contexts} contexts from {self.sessions} sessions of {data}"
                + (f" (held-out {holdout})" if holdout else "") + "; 95% intervals resample sessions")

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of cell texts: what `parrot bench asker` prints and `parrot report` shows."""
        rows = [[ROWS[key], *(row[c].cell() if c in row else "-" for c in self.columns)]
                for key, row in self.rows.items()]
        return ["row", *self.columns], rows

    def markdown(self) -> str:
        header, rows = self.table()
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])

    @classmethod
    def from_dict(cls, data: object) -> "Scorecard":
        """Reads ``as_dict`` back (the JSON `parrot bench asker --json` writes); ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        for key in ("contexts", "sessions", "columns", "rows"):
            if key not in data:
                raise ValueError(f"has no {key!r} field (not a `parrot bench asker --json` scorecard)")
        columns, rows = data["columns"], data["rows"]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError("field 'columns' must be a list of names")
        if not isinstance(rows, dict):
            raise ValueError("field 'rows' must be an object")
        out: dict[str, dict[str, Estimate]] = {}
        for key, row in rows.items():
            if key not in ROWS:
                raise ValueError(f"field 'rows' has an unknown row {key!r}; known: {', '.join(ROWS)}")
            if not isinstance(row, dict):
                raise ValueError(f"row {key!r} must be an object of columns")
            out[key] = {}
            for col, e in row.items():
                try:
                    out[key][col] = Estimate(*(None if e[k] is None else float(e[k]) for k in ("value", "low", "high")),
                                             int(e["n"]))
                except (TypeError, KeyError, ValueError) as err:
                    raise ValueError(f"row {key!r}, column {col!r}: expected value, low, high, n ({err!r})") from None
        try:
            return cls(int(data["contexts"]), int(data["sessions"]), columns, out)
        except (TypeError, ValueError):
            raise ValueError("fields 'contexts' and 'sessions' must be counts") from None


# ----------------------------------------------------------------------------- per-follow-up measures


def repeats_earlier_user_turn(text: str, context: Context) -> bool:
    """Whether the follow-up equals (normalized) or nearly equals an earlier user turn of the context."""
    return repeats_any(text, context.user_turns)


def first_word(text: str) -> str:
    words = normalize(text).split()
    return words[0] if words else ""


def wasserstein_1d(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The 1-D Wasserstein (earth mover's) distance between two samples' empirical distributions."""
    if not len(a) or not len(b):
        return None
    xa, xb = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    points = np.concatenate([xa, xb])
    points.sort()
    widths = np.diff(points)
    cdf_a = np.searchsorted(xa, points[:-1], side="right") / xa.size
    cdf_b = np.searchsorted(xb, points[:-1], side="right") / xb.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def total_variation(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Half the L1 distance between the two samples' category frequencies (0 same, 1 disjoint)."""
    if not a or not b:
        return None
    ca, cb = Counter(a), Counter(b)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in set(ca) | set(cb))


# ----------------------------------------------------------------------------- bootstrap by session

Statistic = Callable[[np.ndarray], "float | None"]
Boot = Callable[..., Estimate]  # (statistic, n, recenter=False) -> Estimate, bound to the run's sessions


def session_bootstrap(sessions: Sequence[str], statistic: Statistic, n: int, n_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0, recenter: bool = False) -> Estimate:
    """The statistic over all items and its percentile interval when sessions are resampled.

    ``statistic`` gets an array of item indices (a session drawn twice gives its items twice) and
    returns a float or None (not defined on that resample; such resamples are left out).
    ``recenter`` shifts the resampled values so their mean is the full-sample value: for a
    statistic that is biased on resamples by construction (distinct-2 over the distinct drawn
    contexts is higher than over all of them).
    """
    everything = np.arange(len(sessions))
    value = statistic(everything)
    if value is None or not math.isfinite(value):
        return Estimate(None, None, None, n)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sessions):
        groups.setdefault(s, []).append(i)
    members = [np.asarray(g) for g in groups.values()]
    if len(members) < 2:
        return Estimate(value, value, value, n)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        picked = rng.integers(0, len(members), size=len(members))
        v = statistic(np.concatenate([members[j] for j in picked]))
        if v is not None and math.isfinite(v):
            draws.append(v)
    if not draws:
        return Estimate(value, None, None, n)
    if recenter:
        shift = float(np.mean(draws)) - value
        draws = [d - shift for d in draws]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(draws, [100 * alpha, 100 * (1 - alpha)])
    return Estimate(value, float(low), float(high), n)


def _mean_of(values: Sequence[float | None]) -> Statistic:
    def stat(idx: np.ndarray) -> float | None:
        picked = [values[i] for i in idx if values[i] is not None]
        return float(np.mean(picked)) if picked else None

    return stat


# ----------------------------------------------------------------------------- the scorecard


def _text_rows(contexts: Sequence[Context], texts: Sequence[str | None]) -> dict[str, list[float | None]]:
    """Per-context values of the rows that need only the follow-up text (None: no follow-up)."""
    out: dict[str, list[float | None]] = {k: [] for k in ("context_dependent", "anaphora", "ellipsis", "repeats", "words")}
    for ctx, text in zip(contexts, texts):
        if text is None:
            for v in out.values():
                v.append(None)
            continue
        verdict = is_context_dependent(text, len(ctx.user_turns))
        out["context_dependent"].append(float(verdict.dependent))
        out["anaphora"].append(float(ANAPHORA in verdict.kinds))
        out["ellipsis"].append(float(ELLIPSIS in verdict.kinds))
        out["repeats"].append(float(repeats_earlier_user_turn(text, ctx)))
        out["words"].append(float(len(text.split())))
    return out


def _column(contexts: Sequence[Context], texts: Sequence[str | None], people: Sequence[str | None],
            boot: "Boot", compare: bool = True) -> dict[str, Estimate]:
    """One column's text rows; with ``compare`` also its distances to the people's follow-ups."""
    values = _text_rows(contexts, texts)
    answered = sum(t is not None for t in texts)
    col = {k: boot(_mean_of(v), answered) for k, v in values.items()}

    def distinct(idx: np.ndarray) -> float | None:
        return distinct_n([texts[i] for i in np.unique(idx) if texts[i] is not None], 2)

    col["distinct_2"] = boot(distinct, answered, True)
    if compare:
        def w1(idx: np.ndarray) -> float | None:
            return wasserstein_1d([len(texts[i].split()) for i in idx if texts[i] is not None],
                                  [len(people[i].split()) for i in idx if people[i] is not None])

        def tv(idx: np.ndarray) -> float | None:
            return total_variation([first_word(texts[i]) for i in idx if texts[i] is not None],
                                   [first_word(people[i]) for i in idx if people[i] is not None])

        col["words_w1"] = boot(w1, answered)
        col["first_word_tv"] = boot(tv, answered)
    return col


def score(contexts: Sequence[Context], followups: Mapping[str, Sequence[FollowUp]],
          nll: Mapping[str, Sequence[tuple[float, int] | None]] | None = None,
          n_resamples: int = 1000, seed: int = 0) -> Scorecard:
    """The scorecard of each asker's follow-ups against the people's (rows in the module docstring).

    ``followups[name][i]`` answers ``contexts[i]``; ``nll[name][i]`` is (summed NLL, tokens) of the
    person's follow-up of context i under that asker's model, or None where it was not scored.
    """
    if not contexts:
        raise ValueError("the scorecard needs at least one context")
    for name, fs in followups.items():
        if len(fs) != len(contexts):
            raise ValueError(f"asker {name!r} has {len(fs)} follow-ups for {len(contexts)} contexts")
    sessions = [c.session for c in contexts]
    n = len(contexts)

    def boot(stat: Statistic, count: int, recenter: bool = False) -> Estimate:
        return session_bootstrap(sessions, stat, count, n_resamples, seed=seed, recenter=recenter)

    people = [c.human for c in contexts]
    asking = [i for i, c in enumerate(contexts) if c.human is not None]
    people_col = _column(contexts, people, people, boot, compare=False)
    rows: dict[str, dict[str, Estimate]] = {k: {} for k in ROWS}
    for k, e in people_col.items():
        rows[k][PEOPLE] = e
    any_end = any(c.human is None for c in contexts)
    for name, fs in followups.items():
        # text rows compare like with like: only contexts where the person asked something
        texts = [None if f.ended or c.human is None else f.text for c, f in zip(contexts, fs)]
        for k, e in _column(contexts, texts, people, boot).items():
            rows[k][name] = e
        missing = [None if contexts[i].human is None else float(fs[i].text is None and not fs[i].ended)
                   for i in range(n)]
        rows["no_followup"][name] = boot(_mean_of(missing), len(asking))
        if any_end or any(f.ended for f in fs):
            agree = [float(f.ended == (c.human is None)) for c, f in zip(contexts, fs)]
            rows["end_agreement"][name] = boot(_mean_of(agree), n)
        scored = (nll or {}).get(name)
        if scored is not None:
            rows["nll"][name], rows["perplexity"][name] = _nll_rows(scored, boot)
    rows = {k: v for k, v in rows.items() if v}
    return Scorecard(n, len(set(sessions)), [PEOPLE, *followups], rows)


def _nll_rows(scored: Sequence[tuple[float, int] | None], boot: "Boot") -> tuple[Estimate, Estimate]:
    def per_token(idx: np.ndarray) -> float | None:
        picked = [scored[i] for i in idx if scored[i] is not None]
        tokens = sum(t for _, t in picked)  # type: ignore[misc]
        return sum(s for s, _ in picked) / tokens if tokens else None  # type: ignore[misc]

    count = sum(s is not None for s in scored)
    nll = boot(per_token, count)
    if nll.value is None:
        return nll, nll
    ppl = Estimate(math.exp(nll.value), *(None if x is None else math.exp(x) for x in (nll.low, nll.high)), count)
    return nll, ppl

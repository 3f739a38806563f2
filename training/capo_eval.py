"""CaPO on held-out pairs: a by-session split of the preference pairs and the before/after report.

Split (``--eval-fraction F``): a pair belongs to the session of its ``source_id`` (the conversation
the negatives run took it from; ShareGPT's chunk suffix ``_N`` removed, so chunks of one session
stay together), or, without one, to the session that starts with its prompt's first message. A
session is held out when a SHA-256 of its key falls below F (``parrot.asking.training_data
.is_held_out``, the asker data's split): deterministic, independent of file order, and one session
is never on both sides.

Report, per strategy and overall ('all'), on the held-out pairs: ``before`` is the reference
model (the start checkpoint), ``after`` the trained policy; for each, the preference accuracy (share
of pairs whose chosen answer has a strictly higher log-probability given the prompt than the
rejected one) and the mean margin ``beta * (log p(chosen) - log p(rejected))``. The DPO implicit
reward margin of the trained model (``eval/<strategy>/margin``) is ``after - before``.

Context probe (judge-free): for each distinct held-out (prompt, chosen answer) whose prompt has
history, ``log p(chosen | full prompt) - log p(chosen | prompt without history)`` (the history
removed: only the system message, if any, and the last user turn stay), averaged; ``before``
under the reference, ``after`` under the trained model. CaPO should make the gap grow: the chosen
answer needs the context.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Sequence

from parrot.asking.training_data import is_held_out
from training.data import PreferencePair


def pair_session(pair: PreferencePair) -> str:
    """The conversation id a pair came from (``source_id``), or a key of its session's first message."""
    source = str(pair.extra.get("source_id") or "")
    if source:
        return source
    first = pair.prompt[0]["content"] if pair.prompt else ""
    return "prompt-" + hashlib.sha256(first.encode("utf-8")).hexdigest()[:16]


def split_pairs(pairs: Sequence[PreferencePair], fraction: float) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, held-out pairs), by session (module docstring)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"eval fraction is {fraction}; allowed 0 <= x < 1")
    train: list[PreferencePair] = []
    held: list[PreferencePair] = []
    for p in pairs:
        (held if fraction and is_held_out(pair_session(p), fraction) else train).append(p)
    return train, held


def likelihood_report(pairs: Sequence[PreferencePair], logps: Sequence[tuple[float, float]],
                      beta: float) -> dict[str, dict[str, float]]:
    """Per strategy and 'all': pairs, accuracy (chosen more likely) and mean beta-scaled log-prob margin."""
    groups: dict[str, list[float]] = defaultdict(list)
    for p, (chosen, rejected) in zip(pairs, logps):
        groups[p.strategy].append(chosen - rejected)
        groups["all"].append(chosen - rejected)
    return {name: {"pairs": len(gaps), "accuracy": sum(g > 0 for g in gaps) / len(gaps),
                   "margin": beta * sum(gaps) / len(gaps)} for name, gaps in groups.items()}


def before_after(pairs: Sequence[PreferencePair], ref: Sequence[tuple[float, float]],
                 policy: Sequence[tuple[float, float]], beta: float) -> dict[str, dict[str, dict[str, float]]]:
    """``{"before": report of the reference, "after": report of the policy}`` (see ``likelihood_report``)."""
    return {"before": likelihood_report(pairs, ref, beta), "after": likelihood_report(pairs, policy, beta)}


def flat_metrics(report: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``heldout/<before|after>/<strategy>/<accuracy|margin|pairs>`` for metrics.jsonl and the summary."""
    return {f"heldout/{when}/{strategy}/{key}": value
            for when, by_strategy in report.items() for strategy, row in by_strategy.items() for key, value in row.items()}


def without_history(pair: PreferencePair) -> PreferencePair:
    """The pair with its prompt cut to the leading system message(s) and the last user turn."""
    system = [m for m in pair.prompt if m["role"] == "system"][:1]
    return PreferencePair(pair.id, [*system, pair.prompt[-1]], pair.chosen, pair.rejected, pair.strategy, pair.line,
                          pair.extra)


def probe_indices(pairs: Sequence[PreferencePair]) -> list[int]:
    """Index of the first pair of each distinct (prompt, chosen) whose prompt has history."""
    seen: set[str] = set()
    out = []
    for i, p in enumerate(pairs):
        if len([m for m in p.prompt if m["role"] != "system"]) < 2:
            continue
        key = json.dumps([p.prompt, p.chosen], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def context_gap(full: Sequence[tuple[float, float]], bare: Sequence[tuple[float, float]],
                indices: Sequence[int]) -> float | None:
    """Mean of log p(chosen | full prompt) - log p(chosen | no history) over ``indices`` (``bare`` in that order)."""
    if not indices:
        return None
    return sum(full[i][0] - b[0] for i, b in zip(indices, bare)) / len(indices)

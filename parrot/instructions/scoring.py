"""Instructions attached to the turns of a session, their accumulation, and per-turn accuracy.

Record format (in a session / question record, one entry per user turn, ``null`` or ``{}`` for a
turn that adds nothing)::
    "instructions": [
        {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        null,
        {"instruction_id_list": ["length_constraints:number_words"],
         "kwargs": [{"num_words": 40, "relation": "less than"}]}
    ]

``kwargs`` entries may also be JSON strings (as some IFEval-style exports write them). The flat
per-turn keys ``turn_<N>_instruction_id_list`` / ``turn_<N>_kwargs`` (N from 1) are read when
``instructions`` is absent.

Accumulation: turn t is checked against every instruction given at turns 1..t that is still in
force. A later instruction replaces an earlier one with the same id (new arguments) or of the
same exclusive group (all-lowercase replaces all-capitals; a new answer language replaces the
old one).

Accuracy (IFEval's four figures, per turn): *prompt-level* is the share of turns whose
instructions in force are all followed; *instruction-level* the share of single instructions
followed. *Strict* checks the answer as it is; *loose* also accepts it when a variant passes:
the answer without its first line, without its last line, without both, each with and
without markdown asterisks (so "Sure, here it is:" or a bold wrapper does not fail it).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from parrot.analysis.bootstrap import bootstrap_ci
from parrot.instructions.registry import Instruction, InstructionError, make_instruction


@dataclass(frozen=True)
class InstructionSpec:
    """One instruction as given in a file, validated; ``turn`` is where it was given (1-based)."""

    instruction_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    turn: int = 1

    def build(self) -> Instruction:
        return make_instruction(self.instruction_id, self.kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {"instruction_id": self.instruction_id, "kwargs": dict(self.kwargs), "turn": self.turn}


def parse_turn_instructions(value: Any, where: str, turn: int) -> list[InstructionSpec]:
    """One turn's ``{"instruction_id_list", "kwargs"}`` entry (None or {} = nothing new)."""
    if value is None or value == {}:
        return []
    if not isinstance(value, Mapping):
        raise InstructionError(where, "expected an object with 'instruction_id_list' and 'kwargs' (or null)")
    ids = value.get("instruction_id_list")
    if not isinstance(ids, list):
        raise InstructionError(f"{where}.instruction_id_list", "expected a list of instruction ids")
    kwargs_list = value.get("kwargs")
    if kwargs_list is None:
        kwargs_list = [{}] * len(ids)
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise InstructionError(f"{where}.kwargs", f"expected a list with one object per instruction id ({len(ids)})")
    return _specs(ids, kwargs_list, where, turn)


def _specs(ids: list[Any], kwargs_list: list[Any], where: str, turn: int) -> list[InstructionSpec]:
    out: list[InstructionSpec] = []
    for i, (iid, kw) in enumerate(zip(ids, kwargs_list)):
        if isinstance(kw, str):
            try:
                kw = json.loads(kw) if kw.strip() else {}
            except ValueError as e:
                raise InstructionError(f"{where}.kwargs[{i}]", f"is a string but not JSON ({e})") from e
        if kw is None:
            kw = {}
        try:
            inst = make_instruction(iid, kw)
        except InstructionError as e:
            sub = "instruction_id_list" if e.field == "instruction_id" else f"kwargs[{i}].{e.field}"
            if e.field == "instruction_id":
                sub += f"[{i}]"
            raise InstructionError(f"{where}.{sub}", e.problem) from e
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in inst.kwargs.items() if v is not None}
        out.append(InstructionSpec(iid, kwargs, turn))
    return out


def parse_session_instructions(record: Mapping[str, Any], n_turns: int) -> list[list[InstructionSpec]] | None:
    """The per-turn instructions a record carries (a list of ``n_turns`` lists), or None if none."""
    if "instructions" in record and record["instructions"] is not None:
        value = record["instructions"]
        if not isinstance(value, list):
            raise InstructionError("instructions", "expected a list with one entry (or null) per turn")
        if len(value) > n_turns:
            raise InstructionError("instructions", f"has {len(value)} entries for {n_turns} turns; at most one per turn")
        per_turn = [parse_turn_instructions(v, f"instructions[{i}]", i + 1) for i, v in enumerate(value)]
    else:
        flat = [k for k in record if isinstance(k, str) and k.startswith("turn_") and k.endswith("_instruction_id_list")]
        if not flat:
            return None
        per_turn = []
        for t in range(1, n_turns + 1):
            key = f"turn_{t}_instruction_id_list"
            if record.get(key) is None:
                per_turn.append([])
                continue
            ids, kws = record[key], record.get(f"turn_{t}_kwargs")
            if not isinstance(ids, list):
                raise InstructionError(key, "expected a list of instruction ids")
            kws = [{}] * len(ids) if kws is None else kws
            if not isinstance(kws, list) or len(kws) != len(ids):
                raise InstructionError(f"turn_{t}_kwargs", f"expected a list with one object per instruction id ({len(ids)})")
            per_turn.append(_specs(ids, kws, key, t))
        extra = [k for k in flat if not k[len("turn_"):-len("_instruction_id_list")].isdigit()
                 or not 1 <= int(k[len("turn_"):-len("_instruction_id_list")]) <= n_turns]
        if extra:
            raise InstructionError(extra[0], f"names no turn of this session (it has {n_turns})")
    per_turn += [[] for _ in range(n_turns - len(per_turn))]
    return per_turn if any(per_turn) else None


def accumulate(per_turn: Sequence[Sequence[InstructionSpec]]) -> list[list[InstructionSpec]]:
    """The instructions in force at each turn (see the module docstring)."""
    active: list[InstructionSpec] = []
    out: list[list[InstructionSpec]] = []
    for specs in per_turn:
        for spec in specs:
            group = spec.build().group
            active = [a for a in active if a.instruction_id != spec.instruction_id
                      and not (group and a.build().group == group)]
            active.append(spec)
        out.append(list(active))
    return out


def loose_variants(response: str) -> list[str]:
    """The answer and the variants the loose check also accepts (non-empty ones only)."""
    lines = response.split("\n")
    bases = [response, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    out: list[str] = []
    for b in bases:
        for v in (b, b.replace("*", "")):
            if v.strip() and v not in out:
                out.append(v)
    return out


def check_turn(active: Sequence[InstructionSpec], response: str) -> list[dict[str, Any]]:
    """Strict and loose verdicts of every instruction in force on one answer."""
    variants = loose_variants(response)
    results = []
    for spec in active:
        inst = spec.build()
        # An empty answer follows no instruction (as the reference): a failed generation must not
        # pass "no commas" or "fewer than N words".
        strict = bool(response.strip()) and inst.check(response)
        loose = strict or any(inst.check(v) for v in variants)
        results.append({"instruction_id": spec.instruction_id, "kwargs": dict(spec.kwargs), "given_at_turn": spec.turn,
                        "strict": strict, "loose": loose})
    return results


def check_session(per_turn: Sequence[Sequence[InstructionSpec]], answers: Sequence[str],
                  accumulated: bool = True) -> list[dict[str, Any]]:
    """Per-turn results for a session's answers: one entry per answered turn. With ``accumulated``
    False each turn's list is taken as all that is in force (Multi-IF lists are cumulative)."""
    out = []
    in_force = accumulate(per_turn) if accumulated else [list(t) for t in per_turn]
    for t, (active, answer) in enumerate(zip(in_force, answers), 1):
        results = check_turn(active, answer)
        out.append({"turn": t, "results": results,
                    "prompt_strict": all(r["strict"] for r in results) if results else None,
                    "prompt_loose": all(r["loose"] for r in results) if results else None})
    return out


def instruction_summary(records: Iterable[Mapping[str, Any]], n_resamples: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> dict[str, Any]:
    """Accuracy per turn, per category and overall from ``{"category", "turn", "results"}`` records.

    Each block: ``prompt_strict``/``prompt_loose`` as ``{"mean", "low", "high", "n"}`` (bootstrap
    interval over the turns checked) and ``instruction_strict``/``instruction_loose`` as
    ``{"mean", "n"}``. ``turn_over_turn`` holds prompt-level strict accuracy change from the turn
    before; ``turn_drop`` the change from turn 1.
    """

    per_turn: dict[int, list[list[dict[str, Any]]]] = defaultdict(list)
    per_category: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    every: list[list[dict[str, Any]]] = []
    for rec in records:
        results = list(rec.get("results") or [])
        if not results:
            continue
        per_turn[int(rec["turn"])].append(results)
        per_category[str(rec.get("category", ""))].append(results)
        every.append(results)

    def block(groups: list[list[dict[str, Any]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mode in ("strict", "loose"):
            prompt = [1.0 if all(r[mode] for r in g) else 0.0 for g in groups]
            mean, low, high = bootstrap_ci(prompt, n_resamples, confidence, seed)
            out[f"prompt_{mode}"] = {"mean": _f(mean), "low": _f(low), "high": _f(high), "n": len(prompt)}
            flat = [1.0 if r[mode] else 0.0 for g in groups for r in g]
            out[f"instruction_{mode}"] = {"mean": (sum(flat) / len(flat)) if flat else None, "n": len(flat)}
        return out

    turns = sorted(per_turn)
    blocks = {t: block(per_turn[t]) for t in turns}
    means = {t: blocks[t]["prompt_strict"]["mean"] for t in turns}
    return {
        "overall": block(every),
        "per_turn": {str(t): blocks[t] for t in turns},
        "per_category": {c: block(per_category[c]) for c in sorted(per_category)},
        "turn_over_turn": {str(t): _diff(means[t], means.get(prev))
                           for prev, t in zip(turns, turns[1:])},
        "turn_drop": {str(t): _diff(means[t], means.get(1)) for t in turns if t > 1},
        "confidence": confidence,
    }


def _f(x: float) -> float | None:
    return None if x != x else x


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b

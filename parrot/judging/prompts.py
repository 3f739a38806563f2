"""Judge prompts: versioned data records, their loader, and their rendering.

A prompt file is JSON Lines, one record per line, with FastChat's ``llm_judge`` fields
plus ``version``:

``name``
    Unique name, used by callers in ``prompt_name``.
``type``
    ``"single"`` (grade one answer 1-10) or ``"pairwise"`` (compare two answers).
``system_prompt``, ``prompt_template``
    The judge's system message and user message. The template holds placeholders
    (``str.format`` syntax, ``{{``/``}}`` for literal braces), listed below.
``output_format``
    ``"[[rating]]"`` for single prompts, ``"[[A]]"`` for pairwise prompts (the verdict is
    ``[[A]]``, ``[[B]]`` or ``[[C]]`` for a tie).
``description``, ``category``, ``version``
    Optional strings. FastChat's own file has no ``version``.

Placeholders of our own N-turn templates (the whole conversation up to the graded turn):

``{conversation}`` (single), ``{conversation_a}`` and ``{conversation_b}`` (pairwise)
    Transcript of user turns 1..k with their answers, the graded answer (turn k) marked.
``{turn}``
    k, the 1-based index of the graded user turn.
``{reference}``
    The reference answer for turn k.

FastChat's fixed-slot placeholders are supported too: ``{question}``, ``{answer}``,
``{answer_a}``, ``{answer_b}`` (the graded turn alone) and the indexed ``{question_i}``,
``{answer_i}``, ``{answer_a_i}``, ``{answer_b_i}``, ``{ref_answer_i}``. A template with M
indexed slots shows the M turns that end with the graded one (fewer when the conversation
is shorter: slots with no turn render empty); ``ref_answer_i`` holds the reference in the
slot of the graded turn and a "not provided" note elsewhere, since a request carries one
reference only.

Rendering never formats answer text: values are substituted once, so braces inside an answer
are just text. Conversation text is quoted (``parrot.judging.quoting``): each message between
boundary lines it cannot contain, with rating/verdict markers, chat-template control tokens and
our section lines broken up, and the judge's system prompt says that quoted text is data.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

from parrot.conversation import Message, Role
from parrot.datasets import DatasetError, iter_jsonl
from parrot.errors import ConfigError
from parrot.errors import clip
from parrot.judging.quoting import DATA_NOTE, quote_key, quoted

logger = logging.getLogger(__name__)

PromptType = Literal["single", "pairwise"]
PROMPT_TYPES: tuple[str, ...] = ("single", "pairwise")
OUTPUT_FORMATS: dict[str, str] = {"single": "[[rating]]", "pairwise": "[[A]]"}

DEFAULT_PROMPTS_RESOURCE = "parrot-v1.jsonl"
# Per-benchmark prompts (MT-Bench-101's per-task criteria in our wording, MultiChallenge's rubric).
BENCHMARK_PROMPTS_RESOURCE = "benchmarks-v1.jsonl"
DEFAULT_SINGLE_PROMPT = "parrot-single-v1"
DEFAULT_SINGLE_REF_PROMPT = "parrot-single-ref-v1"
DEFAULT_PAIR_PROMPT = "parrot-pair-v1"
DEFAULT_PAIR_REF_PROMPT = "parrot-pair-ref-v1"
# Rates how much user turn k depends on the earlier turns (1 self-contained .. 10 needs them):
# the judge confirmation of context-dependent queries for CaPO negatives (GradeSingle, turn k).
CONTEXT_DEPENDENCE_PROMPT = "parrot-context-v1"

NO_REFERENCE_NOTE = "(no reference answer was given for this turn)"
MAX_TURN_SLOTS = 64

_REQUIRED_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")
_OPTIONAL_FIELDS = ("description", "category", "version")

_COMMON_PLACEHOLDERS = {"turn", "reference", "question"}
_PLACEHOLDERS: dict[str, set[str]] = {
    "single": _COMMON_PLACEHOLDERS | {"conversation", "answer"},
    "pairwise": _COMMON_PLACEHOLDERS | {"conversation_a", "conversation_b", "answer_a", "answer_b"},
}
_INDEXED_PLACEHOLDERS: dict[str, set[str]] = {
    "single": {"question", "answer", "ref_answer"},
    "pairwise": {"question", "answer_a", "answer_b", "ref_answer"},
}
_INDEXED_RE = re.compile(r"^(?P<base>[a-z_]+?)_(?P<index>[1-9][0-9]*)$")


class PromptFileError(ConfigError):
    """A prompt file could not be read or holds a malformed record."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field = clip(field, 200) if field else field
        self.problem = clip(problem)
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field {self.field!r}: " if self.field else ""
        super().__init__(f"judge prompts {where}: {what}{self.problem}")


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt record, with what its template needs derived at load time."""

    name: str
    type: PromptType
    system_prompt: str
    prompt_template: str
    output_format: str
    description: str = ""
    category: str = ""
    version: str = ""
    # Derived from the template's placeholders.
    uses_reference: bool = False
    multi_turn: bool = False
    turn_slots: int = 0  # highest FastChat index (question_2 -> 2); 0 if none
    placeholders: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Transcript:
    """A conversation cut at the graded turn: ``turns[-1]`` holds the graded answer."""

    turns: tuple[tuple[str, str], ...]  # (user message, assistant answer) for turns 1..k
    system: str | None = None  # the conversation's own system message, if any

    @property
    def graded_turn(self) -> int:
        return len(self.turns)


# ---------------------------------------------------------------------------- loading


def load_prompts(path: str | Path) -> list[JudgePrompt]:
    """Reads a prompt file in our format or FastChat's ``judge_prompts.jsonl``.

    Raises PromptFileError naming the file, line and field of the first malformed record.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(p, None, None, f"cannot be read: {e}") from e
    return parse_prompts(text, source=str(p))


def load_default_prompts() -> list[JudgePrompt]:
    """The prompts shipped with the package (``parrot/judging/prompts/parrot-v1.jsonl`` and the
    per-benchmark ``benchmarks-v1.jsonl``)."""
    out: list[JudgePrompt] = []
    for name in (DEFAULT_PROMPTS_RESOURCE, BENCHMARK_PROMPTS_RESOURCE):
        res = resources.files("parrot.judging").joinpath("prompts", name)
        out += parse_prompts(res.read_text(encoding="utf-8"), source=f"<package>/{name}")
    return out


def parse_prompts(text: str, *, source: str) -> list[JudgePrompt]:
    """Parses JSONL text into prompts; blank lines are skipped, names must be unique."""
    prompts: list[JudgePrompt] = []
    seen: dict[str, int] = {}
    try:
        records = list(iter_jsonl(source, text))
    except DatasetError as e:
        raise PromptFileError(source, e.line, e.field, e.problem) from e
    for lineno, record in records:
        prompt = _prompt_from_record(record, source=source, line=lineno)
        if prompt.name in seen:
            raise PromptFileError(source, lineno, "name", f"{prompt.name!r} is already defined on line {seen[prompt.name]}")
        seen[prompt.name] = lineno
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(source, None, None, "holds no prompt records")
    logger.debug("loaded %d judge prompts from %s", len(prompts), source)
    return prompts


def _prompt_from_record(record: object, *, source: str, line: int) -> JudgePrompt:
    if not isinstance(record, dict):
        raise PromptFileError(source, line, None, f"must be a JSON object, got {type(record).__name__}")
    values: dict[str, str] = {}
    for key in _REQUIRED_FIELDS + _OPTIONAL_FIELDS:
        if key not in record:
            if key in _REQUIRED_FIELDS:
                raise PromptFileError(source, line, key, f"is missing; required fields: {', '.join(_REQUIRED_FIELDS)}")
            values[key] = ""
            continue
        value = record[key]
        if not isinstance(value, str):
            raise PromptFileError(source, line, key, f"must be a string, got {type(value).__name__}")
        values[key] = value
    for key in sorted(set(record) - set(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)):
        logger.debug("%s:%d: ignoring unknown field %r", source, line, key)

    if not values["name"].strip():
        raise PromptFileError(source, line, "name", "is empty")
    ptype = values["type"]
    if ptype not in PROMPT_TYPES:
        raise PromptFileError(source, line, "type", f"is {ptype!r}; allowed: {', '.join(PROMPT_TYPES)}")
    if values["output_format"] != OUTPUT_FORMATS[ptype]:
        raise PromptFileError(
            source,
            line,
            "output_format",
            f"is {values['output_format']!r}; a {ptype} prompt must use {OUTPUT_FORMATS[ptype]!r}",
        )
    names, slots = _template_placeholders(values["prompt_template"], ptype, source=source, line=line)
    _check_graded_answer_shown(names, ptype, source=source, line=line)
    return JudgePrompt(
        name=values["name"],
        type=ptype,  # type: ignore[arg-type]
        system_prompt=values["system_prompt"],
        prompt_template=values["prompt_template"],
        output_format=values["output_format"],
        description=values["description"],
        category=values["category"],
        version=values["version"],
        uses_reference="reference" in names or any(n.startswith("ref_answer_") for n in names),
        multi_turn=_shows_several_turns(names),
        turn_slots=slots,
        placeholders=frozenset(names),
    )


def _template_placeholders(template: str, ptype: str, *, source: str, line: int) -> tuple[set[str], int]:
    """Checks every placeholder of a template; returns their names and the FastChat slot count."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise PromptFileError(
            source, line, "prompt_template", f"is not a valid template ({e}); write literal braces as {{{{ and }}}}"
        ) from e
    names: set[str] = set()
    slots = 0
    allowed = _PLACEHOLDERS[ptype]
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if spec or conversion:
            raise PromptFileError(
                source, line, "prompt_template", f"placeholder {{{field_name}}} may not have a format spec or conversion"
            )
        if field_name in allowed:
            names.add(field_name)
            continue
        m = _INDEXED_RE.match(field_name)
        if m and m.group("base") in _INDEXED_PLACEHOLDERS[ptype]:
            index = int(m.group("index"))
            if index > MAX_TURN_SLOTS:
                raise PromptFileError(
                    source, line, "prompt_template", f"placeholder {{{field_name}}}: at most {MAX_TURN_SLOTS} turn slots"
                )
            names.add(field_name)
            slots = max(slots, index)
            continue
        indexed = ", ".join(f"{{{b}_N}}" for b in sorted(_INDEXED_PLACEHOLDERS[ptype]))
        raise PromptFileError(
            source,
            line,
            "prompt_template",
            f"unknown placeholder {{{field_name}}} for a {ptype} prompt; allowed: "
            f"{', '.join('{' + a + '}' for a in sorted(allowed))}, {indexed}",
        )
    return names, slots


def _shows_several_turns(names: set[str]) -> bool:
    """Our transcripts, or FastChat slots beyond the first for questions/answers."""
    if any(n.startswith("conversation") for n in names):
        return True
    for n in names:
        m = _INDEXED_RE.match(n)
        if m and m.group("base") != "ref_answer" and int(m.group("index")) >= 2:
            return True
    return False


def _check_graded_answer_shown(names: set[str], ptype: str, *, source: str, line: int) -> None:
    def shows(prefix: str) -> bool:
        return any(n == prefix or n.startswith(prefix + "_") and n[len(prefix) + 1 :].isdigit() for n in names)

    if ptype == "single":
        ok = "conversation" in names or shows("answer")
        need = "{conversation}, {answer} or {answer_N}"
    else:
        ok = ("conversation_a" in names or shows("answer_a")) and ("conversation_b" in names or shows("answer_b"))
        need = "both {conversation_a} and {conversation_b} (or {answer_a}/{answer_b}, {answer_a_N}/{answer_b_N})"
    if not ok:
        raise PromptFileError(source, line, "prompt_template", f"never shows the graded answer; it must use {need}")


# -------------------------------------------------------------------------- rendering


def render_single(prompt: JudgePrompt, transcript: Transcript, reference: str = "") -> list[Message]:
    """The judge's chat messages for grading ``transcript``'s last answer."""
    if prompt.type != "single":
        raise ValueError(f"prompt {prompt.name} is {prompt.type}, not single")
    key = _key(transcript)
    values = _common_values(prompt, transcript, reference, key)
    if "conversation" in prompt.placeholders:
        values["conversation"] = render_transcript(transcript, label="the assistant", key=key)
    if "answer" in prompt.placeholders:
        values["answer"] = quoted(transcript.turns[-1][1], key)
    for slot, turn in _slot_turns(prompt, transcript):
        values[f"answer_{slot}"] = "" if turn is None else quoted(transcript.turns[turn][1], key)
    return _messages(prompt, values)


def render_pair(prompt: JudgePrompt, first: Transcript, second: Transcript, reference: str = "") -> list[Message]:
    """The judge's chat messages comparing ``first`` (shown as A) and ``second`` (shown as B).

    Both transcripts must have the same user turns; the user turns are taken from ``first``.
    """
    if prompt.type != "pairwise":
        raise ValueError(f"prompt {prompt.name} is {prompt.type}, not pairwise")
    if len(first.turns) != len(second.turns):
        raise ValueError("both transcripts must end at the same turn")
    key = _key(first, second)
    values = _common_values(prompt, first, reference, key)
    for side, tr in (("a", first), ("b", second)):
        if f"conversation_{side}" in prompt.placeholders:
            values[f"conversation_{side}"] = render_transcript(tr, label=f"Assistant {side.upper()}", key=key)
        if f"answer_{side}" in prompt.placeholders:
            values[f"answer_{side}"] = quoted(tr.turns[-1][1], key)
        for slot, turn in _slot_turns(prompt, tr):
            values[f"answer_{side}_{slot}"] = "" if turn is None else quoted(tr.turns[turn][1], key)
    return _messages(prompt, values)


def _key(*transcripts: Transcript) -> str:
    return quote_key(t for tr in transcripts for t in (tr.system or "", *(x for turn in tr.turns for x in turn)))


def render_transcript(transcript: Transcript, *, label: str, key: str | None = None) -> str:
    """Our N-turn transcript: every turn up to the graded one, each message quoted, the graded answer marked."""
    key = key or _key(transcript)
    k = transcript.graded_turn
    parts = [f"=== Conversation between the user and {label} ==="]
    if transcript.system:
        parts.append(f"--- System message given to {label} ---\n{quoted(transcript.system, key)}")
    for i, (user, answer) in enumerate(transcript.turns, start=1):
        parts.append(f"--- Turn {i}, user ---\n{quoted(user, key)}")
        mark = " (THE ANSWER TO EVALUATE)" if i == k else ""
        parts.append(f"--- Turn {i}, {label}{mark} ---\n{quoted(answer, key)}")
    parts.append(f"=== End of the conversation with {label} ===")
    return "\n\n".join(parts)


def _common_values(prompt: JudgePrompt, transcript: Transcript, reference: str, key: str) -> dict[str, str]:
    k = transcript.graded_turn
    if k < 1:
        raise ValueError("a transcript needs at least one turn")
    values: dict[str, str] = {"turn": str(k), "reference": reference, "question": quoted(transcript.turns[-1][0], key)}
    for slot, turn in _slot_turns(prompt, transcript):
        values[f"question_{slot}"] = "" if turn is None else quoted(transcript.turns[turn][0], key)
        if turn == k - 1:
            values[f"ref_answer_{slot}"] = reference
        else:
            values[f"ref_answer_{slot}"] = "" if turn is None else NO_REFERENCE_NOTE
    return values


def _slot_turns(prompt: JudgePrompt, transcript: Transcript) -> list[tuple[int, int | None]]:
    """Maps FastChat slots 1..M to 0-based turn indices: the M turns ending at the graded one."""
    m = prompt.turn_slots
    k = transcript.graded_turn
    start = max(0, k - m)
    out: list[tuple[int, int | None]] = []
    for slot in range(1, m + 1):
        idx = start + slot - 1
        out.append((slot, idx if idx < k else None))
    return out


def _messages(prompt: JudgePrompt, values: dict[str, str]) -> list[Message]:
    needed = {name: values.get(name, "") for name in prompt.placeholders}
    user = prompt.prompt_template.format_map(needed)
    return [Message(Role.SYSTEM, prompt.system_prompt + DATA_NOTE), Message(Role.USER, user)]


def transcript_from_messages(messages: Sequence[Message], turn: int) -> Transcript:
    """Cuts a validated alternating conversation at 1-based user turn ``turn``."""
    system = messages[0].content if messages and messages[0].role is Role.SYSTEM else None
    body = [m for m in messages if m.role is not Role.SYSTEM]
    turns = tuple((body[2 * i].content, body[2 * i + 1].content) for i in range(turn))
    return Transcript(turns=turns, system=system)

"""Prompt formats of the asker, and the checks that turn a raw sample into a user turn.

The asker writes the *user's* next turn of a conversation that ends with an assistant
message. Two prompt formats exist; the service picks one per model (``resolve_format``).

Role-swapped format (trained asker checkpoints)
-----------------------------------------------
This is the contract between asker training (``training/``) and serving: a checkpoint
trained by Parrot-Ask sees exactly these chat messages, rendered by its own chat template,
and its next *assistant* message is the user's next turn.

1. An optional first ``system`` message, present only when a persona or a topic is given.
   Its content is one line per given hint, in this order, joined by ``"\\n"``::

       Persona: <persona>
       Topic: <topic>

   (a hint that is empty or only whitespace is left out; the values are stripped).
2. Then every message of the conversation in order, with roles swapped: each ``user``
   message becomes an ``assistant`` message and each ``assistant`` message becomes a
   ``user`` message. Contents are copied unchanged (no stripping, no truncation).
3. The conversation's own ``system`` message, if any, is dropped: it instructed the
   responder and is not something the user wrote or saw.

So a conversation ``[user U1, assistant A1, user U2, assistant A2]`` becomes
``[(system S,) assistant U1, user A1, assistant U2, user A2]``, and the model generates
``assistant U3``. No prefill is used. For training, the loss is on the ``assistant``
messages (the user turns); the system message and the ``user`` messages are context.
The first non-system message is an ``assistant`` message, so the chat template must accept
that (ChatML, as used by SmolLM2 and Qwen, does).

Prompted format (an untrained instruct model)
---------------------------------------------
A system instruction (``PROMPTED_SYSTEM``) explains the task; one user message holds the
conversation rendered as a ``User:`` / ``Assistant:`` transcript (system message left out,
long messages shortened in the middle), the optional persona/topic hints and a closing
question (``PROMPTED_CLOSING``); the reply is prefilled with ``PROMPTED_PREFILL``
("Follow-up question:") so the model starts writing the question itself.

Ending a conversation
---------------------
Real users stop. Where a real session ended, asker training data (``training_data.py``, with
``end_examples``) has one more example whose target is ``END_OF_CONVERSATION``; a sample that
starts with it (after ``clean_question``) is the asker ending the conversation
(``ends_conversation``), which the service returns as a typed result, not as a question.

Degeneracy checks
-----------------
``clean_question`` strips role prefixes, quotes and anything after a second speaker
marker; ``rejection_reason`` then applies a small fixed rule set (see its docstring).
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

from parrot.conversation import Message, Role
from parrot.errors import ConfigError

logger = logging.getLogger(__name__)

AskerFormat = Literal["prompted", "role-swapped"]
FORMAT_PROMPTED: AskerFormat = "prompted"
FORMAT_ROLE_SWAPPED: AskerFormat = "role-swapped"
FORMAT_AUTO = "auto"
FORMATS = (FORMAT_AUTO, FORMAT_PROMPTED, FORMAT_ROLE_SWAPPED)

# A model folder holding this file with {"role": "asker"} is a trained (role-swapped) asker.
MODEL_MARKER_FILE = "parrot_model.json"
# The target of an asker example where the real user ended the session (see "Ending a conversation").
END_OF_CONVERSATION = "<end_of_conversation>"
ASKER_ROLE = "asker"


@dataclass(frozen=True)
class AskerPrompt:
    """What the backend is asked to continue: chat messages plus a forced reply start."""

    messages: list[Message]
    prefill: str = ""


# ----------------------------------------------------------------------------- formats


def _hint_lines(persona: str, topic: str) -> list[str]:
    lines = []
    if persona.strip():
        lines.append(f"Persona: {persona.strip()}")
    if topic.strip():
        lines.append(f"Topic: {topic.strip()}")
    return lines


def to_role_swapped(messages: Sequence[Message], persona: str = "", topic: str = "") -> list[Message]:
    """The role-swapped chat messages for a trained asker (format in the module docstring)."""
    out: list[Message] = []
    hints = _hint_lines(persona, topic)
    if hints:
        out.append(Message(Role.SYSTEM, "\n".join(hints)))
    for m in messages:
        if m.role is Role.USER:
            out.append(Message(Role.ASSISTANT, m.content))
        elif m.role is Role.ASSISTANT:
            out.append(Message(Role.USER, m.content))
        # Role.SYSTEM: dropped (it instructed the responder, not the user).
    return out


def from_role_swapped(messages: Sequence[Message]) -> tuple[list[Message], str, str]:
    """The inverse of ``to_role_swapped``: (conversation, persona, topic).

    A leading ``system`` message is read back as the ``Persona:`` / ``Topic:`` hint lines; the
    other messages get their roles swapped back. ``from_role_swapped(to_role_swapped(c, p, t))``
    is ``(c without its system message, p.strip(), t.strip())``. A persona or topic that itself
    spans several lines cannot be told apart from the hint layout and is not supported.
    Raises ValueError for a system message that is not leading or not in the hint layout.
    """
    persona = topic = ""
    body = list(messages)
    if body and body[0].role is Role.SYSTEM:
        for line in body.pop(0).content.split("\n"):
            key, sep, value = line.partition(": ")
            if sep and key == "Persona" and not persona:
                persona = value.strip()
            elif sep and key == "Topic" and not topic:
                topic = value.strip()
            else:
                raise ValueError(f"system message line {line!r} is not a 'Persona: ...' or 'Topic: ...' hint")
    out: list[Message] = []
    for i, m in enumerate(body):
        if m.role is Role.SYSTEM:
            raise ValueError(f"message {i + 1} is a system message; only a leading one (the hints) is allowed")
        out.append(Message(Role.USER if m.role is Role.ASSISTANT else Role.ASSISTANT, m.content))
    return out, persona, topic


# Chosen by trying variants on SmolLM2-135M-Instruct (6 conversations x 6 samples each):
# this wording, the closing question and the "Follow-up question:" prefill gave the most
# question-like samples (30/36 passed the checks, 27 of them questions). Examples in the
# instruction are tied to a topic of their own: bare examples ("What about the second
# one?") were copied verbatim into unrelated conversations.
PROMPTED_SYSTEM = (
    "You are role-playing a curious human user chatting with an AI assistant. "
    "Read the conversation and write the user's next short follow-up question about the assistant's last answer. "
    "Real users are brief and refer back to what was said: after an answer about sorting a list in Java, "
    'a user might ask "and in Python?" or "why is that one faster?"'
)
PROMPTED_CLOSING = "What does the user ask next?"
# The reply is forced to start with this label, so the model writes the question (not an
# answer); clean_question strips whatever label or quotes it adds after it.
PROMPTED_PREFILL = "Follow-up question:"
# Per-message cap in the transcript of the prompted format (the middle is elided) ...
PROMPTED_MAX_MESSAGE_CHARS = 1500
# ... and the cap on the whole transcript (older messages are left out), about 2K tokens.
PROMPTED_MAX_TRANSCRIPT_CHARS = 8000


def _shorten(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[: limit * 2 // 3].rstrip()
    tail = text[-(limit // 3) :].lstrip()
    return f"{head}\n[...]\n{tail}"


def render_transcript(
    messages: Sequence[Message],
    max_message_chars: int = PROMPTED_MAX_MESSAGE_CHARS,
    max_total_chars: int = PROMPTED_MAX_TRANSCRIPT_CHARS,
) -> str:
    """``User: ...`` / ``Assistant: ...`` blocks, one per message; system messages left out.

    Each message is shortened to ``max_message_chars``. When the blocks exceed
    ``max_total_chars``, the oldest ones after the first user message are replaced by a
    ``[N earlier messages left out]`` line (the first message and the latest exchange stay).
    """
    blocks = []
    for m in messages:
        if m.role is Role.SYSTEM:
            continue
        speaker = "User" if m.role is Role.USER else "Assistant"
        blocks.append(f"{speaker}: {_shorten(m.content, max_message_chars)}")
    if sum(len(b) + 2 for b in blocks) <= max_total_chars or len(blocks) <= 3:
        return "\n\n".join(blocks)
    budget = max_total_chars - len(blocks[0]) - 64  # room for the "left out" line
    kept: list[str] = []
    for block in reversed(blocks[1:]):
        if len(kept) >= 2 and budget - len(block) - 2 < 0:
            break
        kept.insert(0, block)
        budget -= len(block) + 2
    dropped = len(blocks) - 1 - len(kept)
    middle = [f"[{dropped} earlier messages left out]"] if dropped else []
    return "\n\n".join([blocks[0], *middle, *kept])


def to_prompted(
    messages: Sequence[Message],
    persona: str = "",
    topic: str = "",
    *,
    max_message_chars: int = PROMPTED_MAX_MESSAGE_CHARS,
) -> AskerPrompt:
    """The instruction + transcript prompt for an untrained instruct model."""
    parts = ["Conversation so far:", "", render_transcript(messages, max_message_chars), ""]
    if persona.strip():
        parts.append(f"The user is {persona.strip()}.")
    if topic.strip():
        parts.append(f"The user wants to steer the conversation toward: {topic.strip()}.")
    parts.append(PROMPTED_CLOSING)
    return AskerPrompt(
        messages=[Message(Role.SYSTEM, PROMPTED_SYSTEM), Message(Role.USER, "\n".join(parts))],
        prefill=PROMPTED_PREFILL,
    )


def build_prompt(fmt: AskerFormat, messages: Sequence[Message], persona: str = "", topic: str = "") -> AskerPrompt:
    """The prompt for ``fmt`` ("prompted" or "role-swapped")."""
    if fmt == FORMAT_ROLE_SWAPPED:
        return AskerPrompt(messages=to_role_swapped(messages, persona, topic), prefill="")
    if fmt == FORMAT_PROMPTED:
        return to_prompted(messages, persona, topic)
    raise ValueError(f"unknown asker format {fmt!r}; allowed: {FORMAT_PROMPTED}, {FORMAT_ROLE_SWAPPED}")


def resolve_format(fmt: str, model_dir: str | None) -> AskerFormat:
    """Turns "auto" into a concrete format by looking for ``parrot_model.json`` in ``model_dir``.

    "auto" is "role-swapped" when that file exists and says ``{"role": "asker"}``, otherwise
    "prompted". A marker file that is not a JSON object raises ConfigError.
    """
    if fmt == FORMAT_PROMPTED or fmt == FORMAT_ROLE_SWAPPED:
        return fmt
    if fmt != FORMAT_AUTO:
        raise ConfigError(f"asker format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not model_dir:
        return FORMAT_PROMPTED
    path = os.path.join(model_dir, MODEL_MARKER_FILE)
    if not os.path.isfile(path):
        return FORMAT_PROMPTED
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e}); fix or remove it") from e
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: must hold a JSON object such as {{\"role\": \"asker\"}}")
    fmt_found: AskerFormat = FORMAT_ROLE_SWAPPED if info.get("role") == ASKER_ROLE else FORMAT_PROMPTED
    logger.info("asker format %s (from %s, role=%r)", fmt_found, path, info.get("role"))
    return fmt_found


# ----------------------------------------------------------------------------- cleaning

_BOLD = r"(?:\*\*|__)?"
_LABEL_TAIL = (
    r"(?:'s)?(?:\s+(?:next|follow[- ]?up|short|user|message|question|turn|reply|response|request|answer"
    r"|asks|says|writes|replies|responds)){0,3}"
)
# Labels under which the *user* speaks ("User:", "Q:", "Next question:", "Your next message:",
# "User's follow-up question:"); stripped when a sample starts with one.
_USER_LABEL = rf"(?:q|(?:the\s+)?(?:user|human|me|you|your|question|follow[- ]?up|next){_LABEL_TAIL})"
# Labels under which the *assistant* speaks; a sample that starts with one is an answer.
_ASSISTANT_LABEL = rf"(?:a|(?:the\s+)?(?:assistant|ai|bot|chatbot|gpt|answer|response|system){_LABEL_TAIL})"
_LEADING_USER_LABEL = re.compile(rf"^\s*{_BOLD}\s*{_USER_LABEL}\s*{_BOLD}\s*:\s*{_BOLD}\s*", re.IGNORECASE)
_LEADING_ASSISTANT_LABEL = re.compile(rf"^\s*{_BOLD}\s*{_ASSISTANT_LABEL}\s*{_BOLD}\s*:", re.IGNORECASE)
# A second speaker: a line that starts with any speaker label ...
_NEXT_SPEAKER_LINE = re.compile(
    rf"\n\s*{_BOLD}\s*(?:{_USER_LABEL}|{_ASSISTANT_LABEL})\s*{_BOLD}\s*:", re.IGNORECASE
)
# ... or a capitalized "Assistant:" / "User:" / "Human:" inside a line.
_NEXT_SPEAKER_INLINE = re.compile(r"(?<=\s)(?:Assistant|User|Human)\s*:")
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</s>|<s>|<eos>|<end_of_turn>")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# A leading quoted sentence of at least this many words, followed by more text, is the question.
QUOTED_SENTENCE_MIN_WORDS = 3
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}
_CLOSE_QUOTES = "\"'\u201d\u2019\u00bb`"


def _strip_quotes(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        return t  # a code block, not a quoted question
    if len(t) >= 2 and t[0] in _QUOTE_PAIRS and t[-1] == _QUOTE_PAIRS[t[0]]:
        inner = t[1:-1]
        # Only when the quotes wrap the whole text ('"a" and "b"' stays as it is).
        if t[0] not in inner:
            return inner.strip()
    if t and t[0] in _QUOTE_PAIRS:
        close = t.find(_QUOTE_PAIRS[t[0]], 1)
        if close == -1 and not any(q in t[1:] for q in _CLOSE_QUOTES):
            return t[1:].strip()  # an opening quote whose closing one was cut off
        quoted = t[1:close].strip() if close > 0 else ""
        # '"Is it fast?" The user might ask this because ...': keep the quoted sentence.
        if len(quoted.split()) >= QUOTED_SENTENCE_MIN_WORDS and quoted[-1] in "?.!":
            return quoted
    return t


def _first_paragraph(text: str) -> str:
    """Text up to the first blank line that is not inside a ``` code block."""
    for m in _BLANK_LINE.finditer(text):
        if text.count("```", 0, m.start()) % 2 == 0:
            return text[: m.start()]
    return text


def _cut_point(text: str) -> int | None:
    """Where the user's turn ends in ``text`` (without its leading label), or None."""
    cuts = [m.start() for p in (_SPECIAL_TOKEN, _NEXT_SPEAKER_LINE, _NEXT_SPEAKER_INLINE) if (m := p.search(text))]
    return min(cuts) if cuts else None


def _strip_user_label(text: str) -> str:
    t = text
    for _ in range(3):  # "User: Q: ...", '"User: ..."'
        stripped = _strip_quotes(_LEADING_USER_LABEL.sub("", t, count=1))
        if stripped == t.strip():
            break
        t = stripped
    return t.strip()


def clean_question(text: str) -> str:
    """Turns a raw sample into the bare user turn.

    1. Strips leading user labels ("User:", "**User:**", "Q:", "Question:", "Next question:",
       "Your next message:", "User's follow-up question:", ...) and wrapping quotes.
    2. Cuts at a special token (``<|im_end|>``) or a second speaker: a line starting with
       a user or assistant label, or an inline capitalized "Assistant:" / "User:" / "Human:".
    3. Keeps the first paragraph: cuts at the first blank line outside a ``` code block
       (a follow-up is one paragraph; small models run on after it).
    4. Strips wrapping quotes again, and whitespace. A sample that starts with a quoted
       sentence (``QUOTED_SENTENCE_MIN_WORDS`` words or more, ending in ``?``, ``.`` or ``!``)
       followed by commentary keeps just the quoted sentence.

    A leading *assistant* label ("Assistant:", "A:", "Answer:") is kept, so that
    ``rejection_reason`` rejects the sample as assistant-style.
    """
    t = _strip_user_label(text)
    cut = _cut_point(t)
    if cut is not None:
        t = t[:cut]
    return _strip_quotes(_first_paragraph(t.strip())).strip()


def ends_conversation(text: str) -> bool:
    """Whether a raw sample is the asker ending the conversation (it starts with ``END_OF_CONVERSATION``)."""
    return clean_question(text).startswith(END_OF_CONVERSATION)


def has_next_turn(text: str) -> bool:
    """Whether a raw sample went on past the user's turn (special token, second speaker, blank line).

    The service reports such a sample as finished ("stop") even when it hit the length limit.
    """
    t = _strip_user_label(text)
    cut = _cut_point(t)
    if cut is not None:
        return True
    return _first_paragraph(t) != t


# ----------------------------------------------------------------------------- checks

_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026"})


_CONTRACTIONS = (
    (re.compile(r"\b(what|it|that|there|here|how|where|who|when|why|this)'s\b"), r"\1 is"),
    (re.compile(r"\bcan't\b"), "cannot"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'m\b"), " am"),
)


@lru_cache(maxsize=2048)  # the same history messages are checked again at every turn
def normalize(text: str) -> str:
    """Lower case, common contractions expanded, punctuation to spaces, whitespace collapsed.

    Used for the repeat, copy and duplicate checks ("What's" and "what is" are equal).
    """
    t = text.lower().replace("\u2019", "'")
    for pattern, repl in _CONTRACTIONS:
        t = pattern.sub(repl, t)
    return " ".join(t.replace("'", "").translate(_PUNCT_TABLE).split())


# Openers that mark a reply written by an assistant, matched on normalized text (so "Here's"
# is "here is", "I'd" is "id") at a word boundary. "Sure" / "Of course" / "Absolutely" alone
# are fine user replies ("Sure, go ahead"), so they count only when an assistant-like
# continuation follows ("Sure! Here's", "Of course, I can", "Sure, let me"). "Here is" /
# "Here's" counts only before "a/an/the/how/what/some": a user pasting "Here's the error I
# get" is rejected too; the cost of that false positive is one more sample.
_AGREEING = ("sure", "of course", "absolutely")
_ASSISTANT_CONTINUATIONS = ("here", "i can", "id", "let me", "lets", "thing", "no problem")
ASSISTANT_OPENERS: tuple[str, ...] = (
    "as an ai",
    "as a language model",
    "as an assistant",
    "as a helpful assistant",
    "certainly",
    *(f"{lead} {cont}" for lead in _AGREEING for cont in _ASSISTANT_CONTINUATIONS),
    "id be happy to",
    "id be glad to",
    "i would be happy to",
    "i would be glad to",
    "i am happy to help",
    "happy to help",
    "great question",
    "good question",
    "that is a great question",
    "that is a good question",
    "glad you asked",
    "i hope this helps",
    *(f"here is {obj}" for obj in ("a", "an", "the", "how", "what", "some", "my answer")),
    "here are",
)
# A sample that talks *about* the user instead of as the user.
NARRATION_OPENERS: tuple[str, ...] = (
    *(f"the user {verb}" for verb in ("wants", "asks", "is asking", "would", "might", "may", "could", "needs")),
    "the users next",
    "user wants",
    "your next message",
    "your next question",
)
MIN_LETTERS = 2
# A user turn longer than this is treated as an answer, whatever its shape.
MAX_WORDS = 150
# A markdown list of this many items without any question mark is an answer.
ANSWER_LIST_ITEMS = 3
# A sample of at least this many words found verbatim inside an assistant message copies it.
COPY_MIN_WORDS = 6
_NUMBERED_START = re.compile(r"^\s*\d+[.)]\s+\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)


def rejection_reason(text: str, history: Sequence[Message]) -> str | None:
    """Why a cleaned sample is not an acceptable user turn, or None when it is.

    The rule set, in order (the reason names are metrics labels):

    - ``empty``: nothing but whitespace.
    - ``too_short``: fewer than ``MIN_LETTERS`` letters ("?", "1.").
    - ``repeat``: equal to an earlier user turn after ``normalize`` (case, punctuation and
      whitespace ignored).
    - ``copies_assistant``: equal to an assistant message, or ``COPY_MIN_WORDS`` words or
      more found verbatim (normalized) inside one: the model parroted the answer.
    - ``assistant_style``: starts with an assistant speaker label ("Assistant:", "A:",
      "Answer:", ...) or with one of ``ASSISTANT_OPENERS`` ("Certainly", "Sure, here is",
      "As an AI", "I'd be happy to", "Great question", "Here are", ...).
    - ``narration``: talks about the user instead of as the user ("The user wants to know
      ...", "Your next question could be ...").
    - ``answer_like``: more than ``MAX_WORDS`` words; or a markdown list of
      ``ANSWER_LIST_ITEMS`` items or more with no question mark anywhere; or it starts
      like a numbered list item ("2. A pizza party"): the model continued the answer.

    Short elliptical follow-ups ("and in Python?", "why?", "make it shorter") pass.
    """
    if not text.strip():
        return "empty"
    if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        return "too_short"
    norm = normalize(text)
    if any(normalize(m.content) == norm for m in history if m.role is Role.USER):
        return "repeat"
    answers = [normalize(m.content) for m in history if m.role is Role.ASSISTANT]
    if norm in answers or (len(norm.split()) >= COPY_MIN_WORDS and any(f" {norm} " in f" {a} " for a in answers)):
        return "copies_assistant"
    padded = norm + " "
    if _LEADING_ASSISTANT_LABEL.match(text) or any(padded.startswith(opener + " ") for opener in ASSISTANT_OPENERS):
        return "assistant_style"
    if any(padded.startswith(opener + " ") for opener in NARRATION_OPENERS):
        return "narration"
    if len(text.split()) > MAX_WORDS:
        return "answer_like"
    if "?" not in text and len(_LIST_ITEM.findall(text)) >= ANSWER_LIST_ITEMS:
        return "answer_like"
    if _NUMBERED_START.match(text):
        return "answer_like"
    return None

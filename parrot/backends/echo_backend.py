"""The ``echo`` backend: instant, deterministic text with no model, for load tests and benchmarks.

It lets the coordinator, the services and the deployment be exercised at full speed (or at
a chosen latency, ``delay_s``) without loading anything. Every reply is a short follow-up
question built from the conversation, so it passes where an asker's output must pass:

    "And what about <the last words of the focus line> for <adjective> <noun>?"

* The *focus line* is the last line (with a word in it) of the last message; when that
  message has several lines and the last one is a question (the instruction closing of the
  asker's prompted format, "What does the user ask next?"), the line before it is used, so
  the words come from the latest answer rather than from the fixed instruction. A leading
  speaker label ("Assistant:") is dropped.
* ``<adjective> <noun>`` is picked from two small word lists by a hash of the whole prompt
  (messages, prefill) and, for sampled requests (temperature > 0), of the seed and of the
  request's position among identical sampled requests in the same batch. A growing
  conversation therefore gets a different question every turn, and distinct candidates
  come back from one batch of samples. Greedy requests with equal prompts get equal text.
* A reply that would already occur in the prompt (compared lower-cased, punctuation
  ignored) is re-drawn, so it never repeats an earlier user turn or copies an answer.

Parameters are honoured like a real model: ``max_tokens`` counts whitespace-separated
words (finish "length" when cut), the text is cut before the first stop sequence (finish
"stop"), and a prefill is continued, not repeated (the reply then starts with a space).
Token counts are whitespace words of the prompt and of the reply.

Scoring is supported with fixed log-probabilities: rating continuations "1]]" .. "10]]"
follow a discrete Gaussian around 7 (so a probability-weighted judge scores about 7.0
every time), the pairwise labels favour "C]]" (a tie), and any other continuation gets a
deterministic value from its length and a hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, AsyncIterator, Sequence

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent
from parrot.conversation import Message
from parrot.errors import ConfigError, InvalidArgument, NotReady
from parrot.metrics import GENERATED_TOKENS, PROMPT_TOKENS, child


@dataclass(frozen=True)
class EchoBackendConfig:
    """Settings of the ``echo`` backend."""

    delay_s: float = field(
        default=0.0,
        metadata={"flag": "echo-delay-s",
                  "help": "Artificial latency in seconds added to each generate, stream and score call (asyncio.sleep)."},
    )
    model_name: str = field(default="echo", metadata={"flag": "model", "help": "Model name reported in responses and metrics labels."})

    def __post_init__(self) -> None:
        if not math.isfinite(self.delay_s) or self.delay_s < 0:
            raise ConfigError(f"echo backend delay_s is {self.delay_s}; it must be a finite number of seconds >= 0")
        if not self.model_name.strip():
            raise ConfigError("echo backend model_name is empty; give the name to report in responses and metrics")


# Words of the focus line that go into the reply.
TAIL_WORDS = 4
# Function words dropped from the start of the tail ("... about with quiet caches" reads badly).
_LEADING_FILLERS = frozenset(
    "and or but with about what in of to for on at by from is are was were so then".split()
)
ADJECTIVES: tuple[str, ...] = (
    "small", "large", "fast", "slow", "simple", "nested", "sorted", "empty",
    "remote", "local", "cached", "shared", "typed", "async", "legacy", "modern",
)
NOUNS: tuple[str, ...] = (
    "lists", "files", "tables", "strings", "numbers", "dates", "images", "queues",
    "caches", "tests", "loops", "classes", "servers", "requests", "users", "errors",
    "logs", "graphs", "trees", "maps", "arrays", "streams", "threads", "models",
    "prompts", "recipes", "budgets", "trips", "poems", "stories", "emails", "reports",
)
# How many variants are tried before a reply that already occurs in the prompt is accepted anyway.
MAX_VARIANTS = 64

_WORD = re.compile(r"\w+(?:[-'.]\w+)*")
# A speaker label at the start of a transcript line ("Assistant:", "**User:**").
_SPEAKER_LABEL = re.compile(r"^[*_\s]*[A-Za-z]+[*_\s]*:[*_\s]*")
_NON_WORD = re.compile(r"[\W_]+")
_RATING = re.compile(r"\s*(\d{1,2})\s*\]\]\s*")
# Log-probabilities of the pairwise labels: the echo judge has no opinion, a tie is likeliest.
PAIR_LOGPROBS = {"A": -1.6, "B": -1.6, "C": -0.4}
# Peak and width of the rating distribution.
RATING_PEAK = 7
RATING_SIGMA = 1.0


def word_count(text: str) -> int:
    """Tokens as this backend counts them: whitespace-separated words."""
    return len(text.split())


@lru_cache(maxsize=2048)  # a conversation's messages come back at every later turn
def _normalized(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _json(*parts: Any) -> str:
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(_json(*parts).encode("utf-8"), digest_size=8).digest(), "big")


def focus_line(content: str) -> str:
    """The line of the last message that the reply is about (see the module docstring)."""
    lines: list[str] = []  # the last two lines with a word in them, last first (a judge prompt is long)
    for line in reversed(content.splitlines()):
        if _WORD.search(line):
            lines.append(line.strip())
            if len(lines) == 2:
                break
    if len(lines) > 1 and lines[0].endswith("?"):
        lines.pop(0)
    return _SPEAKER_LABEL.sub("", lines[0]) if lines else ""


def tail_phrase(content: str, n_words: int = TAIL_WORDS) -> str:
    """The last ``n_words`` words of the focus line, leading function words dropped; "that" if none."""
    words = _WORD.findall(focus_line(content))[-n_words:]
    while words and words[0].lower() in _LEADING_FILLERS:
        words.pop(0)
    return " ".join(words) or "that"


def echo_reply(messages: Sequence[Message], prefill: str = "", salt: str = "") -> str:
    """The full reply (before max_tokens, stop sequences and prefill spacing) for a prompt."""
    if not messages:
        raise InvalidArgument("messages", "is empty; the echo backend needs at least one message")
    tail = tail_phrase(messages[-1].content)
    contents = (*(m.content for m in messages), prefill)
    # The digest of (prompt, prefill, salt, variant) for every variant from one hashed prefix:
    # the same bytes as _digest's JSON of the four, without encoding the prompt again per variant.
    prompt = [[m.role.value, m.content] for m in messages]
    head = hashlib.blake2b(_json(prompt, prefill, salt)[:-1].encode("utf-8"), digest_size=8)
    lowered: list[str] | None = None
    seen: str | None = None
    text = ""
    for variant in range(MAX_VARIANTS):
        h = head.copy()
        h.update(f",{variant}]".encode())
        d = int.from_bytes(h.digest(), "big")
        adjective = ADJECTIVES[d % len(ADJECTIVES)]
        noun = NOUNS[(d // len(ADJECTIVES)) % len(NOUNS)]
        text = f"And what about {tail} for {adjective} {noun}?"
        # Quick test first: a reply whose adjective or noun is nowhere in the prompt cannot occur in it.
        if lowered is None:
            lowered = [x.lower() for x in contents]
        if not (any(adjective in x for x in lowered) and any(noun in x for x in lowered)):
            break
        if seen is None:
            # Normalized message by message (cached): words never join across messages, so this
            # equals normalizing the joined text.
            seen = " ".join(p for p in (_normalized(x) for x in contents) if p)
        if f" {_normalized(text)} " not in f" {seen} ":
            break
    return text


def apply_limits(text: str, max_tokens: int, stops: Sequence[str]) -> tuple[str, str]:
    """(text, finish_reason) after the max_tokens word limit and the stop sequences.

    Like a decoding loop: the words past ``max_tokens`` are never produced (finish
    "length"); a stop sequence within what was produced ends the text before it (finish
    "stop"). Leading whitespace (a prefill continuation) is kept.
    """
    finish = "stop"
    pieces = re.findall(r"\s*\S+", text)
    if len(pieces) > max_tokens:
        text = "".join(pieces[:max_tokens])
        finish = "length"
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        text = text[: min(hits)]
        finish = "stop"
    return text, finish


class EchoBackend(Backend):
    """Instant, deterministic replies with no model (see the module docstring)."""

    name = "echo"

    supports_scoring = True

    def __init__(self, config: EchoBackendConfig | None = None) -> None:
        super().__init__()
        self.config = config or EchoBackendConfig()
        self.generate_calls = 0
        self.requests_seen = 0
        self.score_calls = 0

    @property
    def model_name(self) -> str:
        return self.config.model_name

    async def load(self) -> None:
        self.ready = True

    async def close(self) -> None:
        self.ready = False

    def stats(self) -> dict[str, Any]:
        return {"generate_calls": self.generate_calls, "requests": self.requests_seen, "score_calls": self.score_calls}

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"echo backend {self.model_name} is not loaded")

    async def _delay(self) -> None:
        if self.config.delay_s > 0:
            await asyncio.sleep(self.config.delay_s)

    def _result(self, request: GenerationRequest, salt: str) -> GenerationResult:
        text = echo_reply(request.messages, request.prefill, salt)
        if request.prefill and not request.prefill[-1].isspace():
            text = " " + text  # continues "Follow-up question:" as " And what about ..."
        text, finish = apply_limits(text, request.params.max_tokens, request.params.stop)
        prompt_tokens = sum(word_count(m.content) for m in request.messages) + word_count(request.prefill)
        result = GenerationResult(
            text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=word_count(text)
        )
        child(GENERATED_TOKENS, self.model_name, self.name).inc(result.completion_tokens)
        child(PROMPT_TOKENS, self.model_name, self.name).inc(result.prompt_tokens)
        return result

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self._check_ready()
        self.generate_calls += 1
        self.requests_seen += len(requests)
        await self._delay()
        occurrences: dict[int, int] = {}
        results = []
        for request in requests:
            results.append(self._result(request, _sampling_salt(request, occurrences)))
        return results

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Yields the reply word by word (each with its leading space); the last word carries the result."""
        self._check_ready()
        self.generate_calls += 1
        self.requests_seen += 1
        await self._delay()
        result = self._result(request, _sampling_salt(request, {}))
        pieces = re.findall(r"\s*\S+", result.text)
        for piece in pieces[:-1]:
            yield StreamEvent(delta=piece)
            await asyncio.sleep(0)
        yield StreamEvent(delta=pieces[-1] if pieces else result.text, result=result)

    async def score(self, messages: Sequence[Message], prefill: str, continuations: Sequence[str]) -> list[float]:
        self._check_ready()
        if not messages:
            raise InvalidArgument("messages", "is empty; the echo backend needs at least one message")
        if not continuations:
            raise InvalidArgument("continuations", "is empty")
        self.score_calls += 1
        await self._delay()
        return [continuation_logprob(c) for c in continuations]


def _sampling_salt(request: GenerationRequest, occurrences: dict[int, int]) -> str:
    """What makes sampled requests differ: seed, and position among identical ones in the batch."""
    params = request.params
    if params.greedy:
        return ""
    key = hash((tuple((m.role, m.content) for m in request.messages), request.prefill, params.seed))
    index = occurrences.get(key, 0)
    occurrences[key] = index + 1
    return f"seed={params.seed}|n={index}"


@lru_cache(maxsize=1024)  # a judge scores the same rating labels on every call
def continuation_logprob(continuation: str) -> float:
    """The fixed log-probability the echo backend gives a continuation (see the module docstring)."""
    m = _RATING.fullmatch(continuation)
    if m and 1 <= int(m.group(1)) <= 10:
        return -0.5 * ((int(m.group(1)) - RATING_PEAK) / RATING_SIGMA) ** 2 - 1.0
    label = continuation.strip()
    if label.endswith("]]") and label[:-2] in PAIR_LOGPROBS:
        return PAIR_LOGPROBS[label[:-2]]
    return -1.0 - 0.1 * len(continuation) - (_digest(continuation) % 1000) / 10_000

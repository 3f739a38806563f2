"""The asker service: writes the user's next turn of a conversation (Parrot-Ask).

``AskerService.ask`` is the plain async API (used in-process by the coordinator and tests);
``AskerService.Ask`` is the ``parrot.v1.Asker`` gRPC method on top of it: validate,
convert, call ``ask``, convert.

Sampling: every requested candidate gets up to ``max_attempts`` samples. The first attempts
of all candidates go to the backend in one ``generate`` call, then each round of retries in
one more call. A sample is cleaned (``prompting.clean_question``) and checked
(``prompting.rejection_reason``); a rejected sample, or one equal to a candidate already
accepted, is re-drawn at a raised temperature and a new seed.

Ending: a sample that starts with the end-of-conversation marker (``prompting.ends_conversation``)
ends the conversation when the caller allows it (``allow_end``; ``ask_or_end``): if the first
candidate's accepted sample is the marker, the result is ``ended`` with no questions (other
candidates that ended are dropped). Without ``allow_end`` such a sample is rejected
(``end_of_conversation``) and re-drawn. With an end threshold (``rerank.end_threshold`` > 0,
`--end-threshold P`) the first time a round's sample that may end is the marker, the backend scores
the marker after the prompt; when its probability is below P, nothing in this request may end any
more: the sample is rejected (``end_below_threshold``) and re-drawn as a question.

Reranking (``rerank.samples`` > 1, `parrot serve asker --rerank-samples N`): each round draws N
samples per pending candidate (all in the round's one ``generate`` call); the first of them is the
sample the service draws without reranking (the first candidate's first one keeps the request's
parameters, so a greedy request keeps its greedy sample among the N), the others sample at
``max(temperature, retry_temperature)`` with their own seeds. Only the first sample of a candidate
may end the conversation, so reranking never changes whether the asker ends. Of the acceptable
samples, the one with the best ``candidate_score`` (own mean token
log-likelihood, context-dependence bonus, repeat penalty) is the candidate; the others are counted
as ``outranked`` in ``parrot_asker_samples_total``. A backend that cannot score fails at start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from prometheus_client import Counter

from parrot.analysis import is_context_dependent, repeats_any
from parrot.asking.rerank import RerankSettings
from parrot.backends.base import Backend, GenerationRequest, GenerationResult, gather_all_or_cancel
from parrot.conversation import MAX_SEED, Conversation, GenerationParams, InputLimits, Role, validate_messages
from parrot.errors import ConfigError, InvalidArgument, NoAcceptableOutput
from parrot.metrics import STAGE_LATENCY, child
from parrot.protoconv import conversation_from_pb, finish_reason_to_pb, params_from_pb, usage_to_pb
from parrot.v1 import asker_pb2, asker_pb2_grpc
from parrot.asking.prompting import (
    END_OF_CONVERSATION,
    FORMATS,
    AskerFormat,
    AskerPrompt,
    build_prompt,
    clean_question,
    ends_conversation,
    has_next_turn,
    normalize,
    rejection_reason,
    resolve_format,
)

logger = logging.getLogger(__name__)

ASKER_SAMPLES = Counter(
    "parrot_asker_samples_total",
    "Asker samples drawn, by model and outcome (accepted, outranked by a reranked sample, or the rejection reason).",
    ["model", "outcome"],
)

MAX_HINT_CHARS = 500


@dataclass(frozen=True)
class AskerConfig:
    """Settings of the asker service."""

    format: str = field(
        default="auto",
        metadata={
            "help": "Prompt format: 'prompted' (instruction + transcript, for an untrained instruct model), "
            "'role-swapped' (a trained asker checkpoint), or 'auto' (role-swapped when MODEL_DIR has "
            "parrot_model.json with {\"role\": \"asker\"}, else prompted)."
        },
    )
    model_dir: str | None = field(
        default=None, metadata={"help": "Folder of the served model; 'auto' looks for parrot_model.json in it."}
    )
    default_max_tokens: int = field(default=64, metadata={"help": "New tokens per sample when the request sets none."})
    default_temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature when the request sets none (the asker samples by default)."}
    )
    retry_temperature: float = field(
        default=0.7, metadata={"help": "Re-samples after a rejected sample use at least this temperature."}
    )
    max_attempts: int = field(default=4, metadata={"help": "Samples drawn per candidate before giving up."})
    max_candidates: int = field(default=8, metadata={"help": "Largest num_candidates a request may ask for."})
    limits: InputLimits = field(default_factory=InputLimits, metadata={"help": "Request size limits."})
    rerank: RerankSettings = field(default_factory=RerankSettings, metadata={"help": "Reranking of samples."})

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"asker format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.max_attempts < 1:
            raise ConfigError(f"asker max_attempts is {self.max_attempts}; it must be at least 1")
        if self.max_candidates < 1:
            raise ConfigError(f"asker max_candidates is {self.max_candidates}; it must be at least 1")
        if not 1 <= self.default_max_tokens <= self.limits.max_new_tokens:
            raise ConfigError(
                f"asker default_max_tokens is {self.default_max_tokens}; allowed 1..{self.limits.max_new_tokens}"
            )
        for name in ("default_temperature", "retry_temperature"):
            value = getattr(self, name)
            if not 0.0 <= value <= 2.0:
                raise ConfigError(f"asker {name} is {value}; allowed range is 0..2")


@dataclass(frozen=True)
class AskedQuestion:
    """One candidate next user turn."""

    text: str
    finish_reason: str  # "stop" | "length"
    # Summed over every sample drawn for this candidate (rejected ones included).
    prompt_tokens: int
    completion_tokens: int
    # Samples drawn for this candidate, the accepted one included.
    attempts: int


@dataclass(frozen=True)
class AskOutcome:
    """What the asker did: ended the conversation (no questions), or asked (at least one question)."""

    questions: list[AskedQuestion]
    ended: bool = False


@dataclass
class _Slot:
    """Bookkeeping for one requested candidate while it is being sampled."""

    index: int
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    accepted: AskedQuestion | None = None
    ended: bool = False
    last_reason: str = ""


class AskerService(asker_pb2_grpc.AskerServicer):
    """Writes the user's next turn; thin gRPC servicer over ``ask``."""

    def __init__(self, backend: Backend, config: AskerConfig | None = None) -> None:
        self.backend = backend
        self.config = config or AskerConfig()
        self.format: AskerFormat = resolve_format(self.config.format, self.config.model_dir)
        if self.config.rerank.needs_scoring and not backend.supports_scoring:
            setting = (f"--rerank-samples {self.config.rerank.samples}" if self.config.rerank.enabled
                       else f"--end-threshold {self.config.rerank.end_threshold}")
            raise ConfigError(f"asker {setting} needs a backend that scores "
                              f"continuations (transformers, echo, engine with --engine-tokenizer); {backend.name} cannot")
        logger.info("asker uses the %s prompt format with model %s", self.format, backend.model_name)

    # ------------------------------------------------------------------ plain API

    def default_params(self) -> GenerationParams:
        """Generation parameters for a request that sets none."""
        return GenerationParams(max_tokens=self.config.default_max_tokens, temperature=self.config.default_temperature)

    def build_prompt(self, conversation: Conversation, persona: str = "", topic: str = "") -> AskerPrompt:
        """The prompt this service sends for a conversation (its configured format)."""
        return build_prompt(self.format, conversation.messages, persona, topic)

    async def ask(self, conversation: Conversation, params: GenerationParams | None = None, persona: str = "",
                  topic: str = "", num_candidates: int = 1) -> list[AskedQuestion]:
        """Distinct candidate next user turns, in order; at least one.

        ``conversation`` must end with an assistant message. ``params`` None means the
        service defaults (``default_max_tokens``, ``default_temperature``). Fewer than
        ``num_candidates`` come back when the model cannot produce that many distinct
        acceptable ones within ``max_attempts`` each; none at all raises NoAcceptableOutput (ABORTED: the
        service is up, so callers must not take it for an outage).
        """
        return (await self.ask_or_end(conversation, params, persona, topic, num_candidates)).questions

    async def ask_or_end(
        self,
        conversation: Conversation,
        params: GenerationParams | None = None,
        persona: str = "",
        topic: str = "",
        num_candidates: int = 1,
        allow_end: bool = False,
    ) -> AskOutcome:
        """Like ``ask``; with ``allow_end`` the asker may end the conversation instead (module docstring)."""
        validate_messages(conversation.messages, last_role=Role.ASSISTANT, limits=self.config.limits)
        n = self._check_num_candidates(num_candidates)
        for name, value in (("persona", persona), ("topic", topic)):
            if len(value) > MAX_HINT_CHARS:
                raise InvalidArgument(name, f"is {len(value)} characters; at most {MAX_HINT_CHARS} are allowed")
        params = params or self.default_params()
        prompt = self.build_prompt(conversation, persona, topic)
        slots = [_Slot(i) for i in range(n)]
        accepted_norms: set[str] = set()
        started = time.perf_counter()
        k = self.config.rerank.samples if self.config.rerank.enabled else 1
        end_checked = self.config.rerank.end_threshold <= 0  # nothing to check without a threshold
        for attempt in range(self.config.max_attempts):
            pending = [s for s in slots if s.accepted is None and not s.ended]
            if not pending:
                break
            requests = [
                GenerationRequest(prompt.messages, self._sample_params(params, s.index, attempt, j), prompt.prefill)
                for s in pending for j in range(k)
            ]
            results = await self.backend.generate(requests)
            if allow_end and not end_checked and any(ends_conversation(results[i * k].text) for i in range(len(pending))):
                end_checked = True  # the marker's probability depends on the prompt only: scored once per request
                allow_end = await self._end_likely(prompt)
            if k == 1:
                for slot, result in zip(pending, results):
                    self._take(slot, result, conversation, accepted_norms, allow_end)
                continue
            picks = await gather_all_or_cancel([
                self._rerank(slot, results[i * k:(i + 1) * k], prompt, conversation, accepted_norms, allow_end)
                for i, slot in enumerate(pending)
            ])
            for slot, pick in zip(pending, picks):  # in candidate order, so duplicates across candidates are caught
                if pick is not None and normalize(pick[0]) not in accepted_norms:
                    self._accept(slot, *pick, accepted_norms)
                elif pick is not None:
                    slot.last_reason = "duplicate"
                    child(ASKER_SAMPLES, self.backend.model_name, "duplicate").inc()
        child(STAGE_LATENCY, self.backend.model_name, "ask").observe(time.perf_counter() - started)
        if slots[0].ended:
            return AskOutcome([], ended=True)
        questions = [s.accepted for s in slots if s.accepted is not None]
        if not questions:
            reasons = ", ".join(sorted({s.last_reason for s in slots}))
            raise NoAcceptableOutput(
                f"asker produced no acceptable question after {self.config.max_attempts} attempts (last rejected: {reasons})"
            )
        if len(questions) < n:
            logger.warning("asker returned %d of %d candidates for conversation %r", len(questions), n, conversation.id)
        return AskOutcome(questions)

    async def _end_likely(self, prompt: AskerPrompt) -> bool:
        """Whether the model's probability of the end marker after the prompt reaches the end threshold
        (module docstring); below it the refusal is counted as ``end_below_threshold``."""
        (logprob,) = await self.backend.score(prompt.messages, prompt.prefill, [END_OF_CONVERSATION])
        p, threshold = math.exp(logprob), self.config.rerank.end_threshold
        if p >= threshold:
            return True
        child(ASKER_SAMPLES, self.backend.model_name, "end_below_threshold").inc()
        logger.debug("asker end refused: p(marker) %.3f < threshold %.3f", p, threshold)
        return False

    def _check_num_candidates(self, num_candidates: int) -> int:
        n = 1 if num_candidates == 0 else int(num_candidates)
        if n < 1 or n > self.config.max_candidates:
            raise InvalidArgument(
                "num_candidates", f"is {num_candidates}; allowed range is 1..{self.config.max_candidates} (0 = 1)"
            )
        return n

    def _sample_params(self, params: GenerationParams, index: int, attempt: int, j: int = 0) -> GenerationParams:
        """Parameters for sample ``j`` (of the reranked ones, else 0) of round ``attempt`` of candidate ``index``.

        The very first sample of the first candidate uses ``params`` as given (greedy stays
        greedy). Every other sample (a retry, another candidate, or another reranked sample) needs
        to differ, so it samples at ``max(temperature, retry_temperature)`` and, when a seed was
        given, uses ``seed + (index * max_attempts + attempt) * k + j`` with ``k`` reranked
        samples (1 without reranking), wrapped into the allowed seed range.
        """
        if index == 0 and attempt == 0 and j == 0:
            return params
        temperature = max(params.temperature, self.config.retry_temperature)
        seed = params.seed
        if seed is not None:
            k = max(1, self.config.rerank.samples)
            seed = (seed + (index * self.config.max_attempts + attempt) * k + j) % (MAX_SEED + 1)
        return dataclasses.replace(params, temperature=temperature, seed=seed)

    def _take(self, slot: _Slot, result: GenerationResult, conversation: Conversation, accepted: set[str],
              allow_end: bool = False) -> None:
        self._count(slot, result)
        text = self._check(slot, result, conversation, accepted, allow_end)
        if text is not None:
            self._accept(slot, text, result, accepted)

    async def _rerank(self, slot: _Slot, results: list[GenerationResult], prompt: AskerPrompt,
                      conversation: Conversation, accepted: set[str],
                      allow_end: bool) -> tuple[str, GenerationResult] | None:
        """The best-scored acceptable sample of one candidate's round (module docstring), or None."""
        found: list[tuple[str, GenerationResult]] = []
        for result in results:
            self._count(slot, result)
        for j, result in enumerate(results):
            seen = accepted | {normalize(t) for t, _ in found}
            text = self._check(slot, result, conversation, seen, allow_end and j == 0)
            if slot.ended:
                return None
            if text is not None:
                found.append((text, result))
        if len(found) < 2:
            return found[0] if found else None
        logprobs = await self.backend.score(prompt.messages, prompt.prefill, [r.text for _, r in found])
        user_turns = [m.content for m in conversation.messages if m.role is Role.USER]
        scores = [candidate_score(t, lp, r.completion_tokens, user_turns, self.config.rerank)
                  for (t, r), lp in zip(found, logprobs)]
        best = best_index(scores)
        child(ASKER_SAMPLES, self.backend.model_name, "outranked").inc(len(found) - 1)
        logger.debug("asker reranked %d samples for candidate %d: scores %s, kept %r", len(found), slot.index,
                     [round(x, 3) for x in scores], found[best][0][:200])
        return found[best]

    @staticmethod
    def _count(slot: _Slot, result: GenerationResult) -> None:
        slot.attempts += 1
        slot.prompt_tokens += result.prompt_tokens
        slot.completion_tokens += result.completion_tokens

    def _check(self, slot: _Slot, result: GenerationResult, conversation: Conversation, accepted: set[str],
               allow_end: bool) -> str | None:
        """The cleaned sample when it is an acceptable question; None when rejected or it ends the conversation."""
        if ends_conversation(result.text) and allow_end:
            slot.ended = True
            child(ASKER_SAMPLES, self.backend.model_name, "end_of_conversation").inc()
            return None
        text = clean_question(result.text)
        reason = "end_of_conversation" if ends_conversation(result.text) else rejection_reason(text, conversation.messages)
        if reason is None and normalize(text) in accepted:
            reason = "duplicate"
        if reason is not None:
            child(ASKER_SAMPLES, self.backend.model_name, reason).inc()
            slot.last_reason = reason
            logger.debug("asker sample rejected (%s) for candidate %d: %r", reason, slot.index, result.text[:200])
            return None
        return text

    def _accept(self, slot: _Slot, text: str, result: GenerationResult, accepted: set[str]) -> None:
        child(ASKER_SAMPLES, self.backend.model_name, "accepted").inc()
        accepted.add(normalize(text))
        # A sample cut at a second speaker marker ended its question before the length limit.
        finish = "stop" if has_next_turn(result.text) else result.finish_reason
        slot.accepted = AskedQuestion(
            text=text,
            finish_reason=finish,
            prompt_tokens=slot.prompt_tokens,
            completion_tokens=slot.completion_tokens,
            attempts=slot.attempts,
        )

    # ------------------------------------------------------------------ gRPC

    def params_from_request(self, request: asker_pb2.AskRequest) -> GenerationParams:
        """Checked generation parameters; an unset temperature takes ``default_temperature``."""
        params = params_from_pb(
            request.params, default_max_tokens=self.config.default_max_tokens, limits=self.config.limits
        )
        if not request.params.HasField("temperature"):
            params = dataclasses.replace(params, temperature=self.config.default_temperature)
        return params

    async def Ask(self, request: asker_pb2.AskRequest, context: Any = None) -> asker_pb2.AskResponse:
        conversation = conversation_from_pb(request.conversation, last_role=Role.ASSISTANT, limits=self.config.limits)
        params = self.params_from_request(request)
        outcome = await self.ask_or_end(
            conversation,
            params,
            persona=request.persona,
            topic=request.topic,
            num_candidates=request.num_candidates,
            allow_end=request.allow_end,
        )
        return asker_pb2.AskResponse(
            candidates=[_candidate_to_pb(q) for q in outcome.questions],
            model=self.backend.model_name,
            conversation_id=conversation.id,
            end_of_conversation=outcome.ended,
        )


def candidate_score(text: str, logprob: float, tokens: int, user_turns: Sequence[str],
                    settings: RerankSettings) -> float:
    """The rerank score of one candidate (module docstring); ``user_turns``: the earlier user turns."""
    score = logprob / max(1, tokens)
    if is_context_dependent(text, len(user_turns)).dependent:
        score += settings.context_bonus
    if repeats_any(text, user_turns):
        score -= settings.repeat_penalty
    return score


def best_index(scores: Sequence[float]) -> int:
    """The highest score's index; ties go to the earliest candidate."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _candidate_to_pb(q: AskedQuestion) -> asker_pb2.AskCandidate:
    return asker_pb2.AskCandidate(
        text=q.text,
        finish_reason=finish_reason_to_pb(q.finish_reason),
        usage=usage_to_pb(q.prompt_tokens, q.completion_tokens),
        attempts=q.attempts,
    )


"""The parrot.v1 Judge servicer: validate the request, render the judge prompt, run, convert.

All judging logic lives in ``parrot.judging``; this module only checks input (before any
compute is spent), picks the prompt and converts to and from the protos. Errors are raised
as ``parrot.errors`` types; the server's interceptor maps them to status codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from parrot.backends.base import Backend
from parrot.conversation import GenerationParams, InputLimits, Message, Role
from parrot.errors import ConfigError, InvalidArgument, LimitExceeded
from parrot.judging.engine import JudgeEngine, PairVerdict, ScoreMethod
from parrot.judging.prompts import (
    DEFAULT_PAIR_PROMPT,
    DEFAULT_PAIR_REF_PROMPT,
    DEFAULT_SINGLE_PROMPT,
    DEFAULT_SINGLE_REF_PROMPT,
    JudgePrompt,
    PromptType,
    load_default_prompts,
    load_prompts,
    render_pair,
    render_single,
    transcript_from_messages,
)
from parrot.protoconv import conversation_from_pb, params_from_pb
from parrot.v1 import judge_pb2, judge_pb2_grpc

logger = logging.getLogger(__name__)

MAX_API_ATTEMPTS = 10
_METHOD_TO_PB: dict[ScoreMethod, int] = {
    "parsed": judge_pb2.SCORE_METHOD_PARSED,
    "probability_weighted": judge_pb2.SCORE_METHOD_PROBABILITY_WEIGHTED,
}
_WINNER_TO_PB = {"A": judge_pb2.PAIR_WINNER_A, "B": judge_pb2.PAIR_WINNER_B, "tie": judge_pb2.PAIR_WINNER_TIE}


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of the judge service."""

    prompts_file: str | None = field(
        default=None,
        metadata={
            "help": "Extra judge prompts (JSONL, our format or FastChat's judge_prompts.jsonl), loaded beside "
            "the built-in parrot-v1 prompts; names must not clash with them."
        },
    )
    default_max_tokens: int = field(
        default=256, metadata={"help": "Tokens for the judge's explanation when a request sets no params.max_tokens."}
    )
    api_max_attempts: int = field(
        default=3,
        metadata={
            "help": f"Judge calls per verdict for API judges when the output has no [[...]] marker (1..{MAX_API_ATTEMPTS})."
        },
    )
    limits: InputLimits = field(default_factory=InputLimits, metadata={"help": "Request size limits."})
    default_single_prompt: str = field(
        default=DEFAULT_SINGLE_PROMPT, metadata={"help": "GradeSingle prompt when none is named and there is no reference."}
    )
    default_single_ref_prompt: str = field(
        default=DEFAULT_SINGLE_REF_PROMPT,
        metadata={"help": "GradeSingle prompt when none is named and a reference is given."},
    )
    default_pair_prompt: str = field(
        default=DEFAULT_PAIR_PROMPT, metadata={"help": "ComparePair prompt when none is named and there is no reference."}
    )
    default_pair_ref_prompt: str = field(
        default=DEFAULT_PAIR_REF_PROMPT, metadata={"help": "ComparePair prompt when none is named and a reference is given."}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.api_max_attempts <= MAX_API_ATTEMPTS:
            raise ConfigError(f"api_max_attempts is {self.api_max_attempts}; allowed range is 1..{MAX_API_ATTEMPTS}")
        if not 1 <= self.default_max_tokens <= self.limits.max_new_tokens:
            raise ConfigError(
                f"default_max_tokens is {self.default_max_tokens}; allowed range is 1..{self.limits.max_new_tokens} "
                "(the max_new_tokens limit)"
            )
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise ConfigError(f"prompts_file {self.prompts_file!r} is not a readable file")


def load_prompt_library(config: JudgeConfig) -> dict[str, JudgePrompt]:
    """Built-in prompts plus those of ``config.prompts_file``; the defaults are checked."""
    prompts = {p.name: p for p in load_default_prompts()}
    if config.prompts_file:
        for p in load_prompts(config.prompts_file):
            if p.name in prompts:
                raise ConfigError(
                    f"prompts_file {config.prompts_file}: prompt {p.name!r} clashes with a built-in prompt name"
                )
            prompts[p.name] = p
    wanted: list[tuple[str, str, PromptType, bool]] = [
        ("default_single_prompt", config.default_single_prompt, "single", False),
        ("default_single_ref_prompt", config.default_single_ref_prompt, "single", True),
        ("default_pair_prompt", config.default_pair_prompt, "pairwise", False),
        ("default_pair_ref_prompt", config.default_pair_ref_prompt, "pairwise", True),
    ]
    for setting, name, ptype, ref in wanted:
        p = prompts.get(name)
        if p is None:
            raise ConfigError(f"{setting} is {name!r}, which is not a loaded prompt; loaded: {', '.join(prompts)}")
        if p.type != ptype or p.uses_reference != ref:
            need = f"a {ptype} prompt {'with' if ref else 'without'} a reference"
            raise ConfigError(f"{setting} is {name!r}, but it must name {need}")
    return prompts


class JudgeService(judge_pb2_grpc.JudgeServicer):
    """Grades answers of N-turn conversations (MT-Bench style) with one judge backend."""

    def __init__(self, backend: Backend, config: JudgeConfig) -> None:
        self.backend = backend
        self.config = config
        self.prompts = load_prompt_library(config)
        self.engine = JudgeEngine(backend, api_max_attempts=config.api_max_attempts)
        logger.info(
            "judge ready with %d prompts (%s judge, model %s)",
            len(self.prompts),
            "local" if self.engine.local else "API",
            backend.model_name,
        )

    async def GradeSingle(
        self, request: judge_pb2.GradeSingleRequest, context: object = None
    ) -> judge_pb2.GradeSingleResponse:
        limits = self.config.limits
        conv = conversation_from_pb(request.conversation, last_role=Role.ASSISTANT, limits=limits, field_name="conversation")
        turn = _resolve_turn(request.turn, conv.messages)
        reference = self._check_reference(request.reference_answer)
        prompt = self._pick_prompt(request.prompt_name, "single", reference, rpc="GradeSingle")
        params = self._params(request)
        judge_messages = render_single(prompt, transcript_from_messages(conv.messages, turn), reference)

        judgment = await self.engine.grade(judge_messages, params)
        logger.debug(
            "graded turn %d of %r with %s: %.3f (%s, %d attempts)",
            turn,
            conv.id,
            prompt.name,
            judgment.score,
            judgment.method,
            judgment.attempts,
        )
        return judge_pb2.GradeSingleResponse(
            score=judgment.score,
            explanation=judgment.explanation,
            raw_output=judgment.raw_output,
            method=_METHOD_TO_PB[judgment.method],
            rating_probabilities=judgment.rating_probabilities,
            prompt_name=prompt.name,
            model=self.backend.model_name,
            attempts=judgment.attempts,
            turn=turn,
        )

    async def ComparePair(
        self, request: judge_pb2.ComparePairRequest, context: object = None
    ) -> judge_pb2.ComparePairResponse:
        limits = self.config.limits
        conv_a = conversation_from_pb(
            request.conversation_a, last_role=Role.ASSISTANT, limits=limits, field_name="conversation_a"
        )
        conv_b = conversation_from_pb(
            request.conversation_b, last_role=Role.ASSISTANT, limits=limits, field_name="conversation_b"
        )
        _check_same_user_turns(conv_a.messages, conv_b.messages)
        turn = _resolve_turn(request.turn, conv_a.messages)
        reference = self._check_reference(request.reference_answer)
        prompt = self._pick_prompt(request.prompt_name, "pairwise", reference, rpc="ComparePair")
        params = self._params(request)
        tr_a = transcript_from_messages(conv_a.messages, turn)
        tr_b = transcript_from_messages(conv_b.messages, turn)

        judgment = await self.engine.compare(
            render_pair(prompt, tr_a, tr_b, reference), render_pair(prompt, tr_b, tr_a, reference), params
        )
        logger.debug(
            "compared turn %d of %r / %r with %s: %s (orders: %s)",
            turn,
            conv_a.id,
            conv_b.id,
            prompt.name,
            judgment.winner,
            [v.winner for v in judgment.verdicts],
        )
        return judge_pb2.ComparePairResponse(
            winner=_WINNER_TO_PB[judgment.winner],
            verdicts=[_verdict_to_pb(v) for v in judgment.verdicts],
            prompt_name=prompt.name,
            model=self.backend.model_name,
            turn=turn,
        )

    async def ListPrompts(
        self, request: judge_pb2.ListPromptsRequest, context: object = None
    ) -> judge_pb2.ListPromptsResponse:
        return judge_pb2.ListPromptsResponse(
            prompts=[
                judge_pb2.JudgePrompt(
                    name=p.name,
                    type=p.type,
                    uses_reference=p.uses_reference,
                    multi_turn=p.multi_turn,
                    version=p.version,
                )
                for p in self.prompts.values()
            ]
        )

    # ------------------------------------------------------------------ validation

    def _params(self, request: judge_pb2.GradeSingleRequest | judge_pb2.ComparePairRequest) -> GenerationParams:
        if request.params.stop:
            raise InvalidArgument("params.stop", "must be empty: the judge sets its own stop sequences")
        return params_from_pb(request.params, default_max_tokens=self.config.default_max_tokens, limits=self.config.limits)

    def _check_reference(self, reference: str) -> str:
        limit = self.config.limits.max_input_chars
        if len(reference) > limit:
            raise LimitExceeded("reference_answer", f"has {len(reference)} characters; at most {limit} are allowed",
                                "--max-input-chars / PARROT_MAX_INPUT_CHARS")
        return reference if reference.strip() else ""

    def _pick_prompt(self, name: str, ptype: PromptType, reference: str, *, rpc: str) -> JudgePrompt:
        if not name:
            cfg = self.config
            if ptype == "single":
                name = cfg.default_single_ref_prompt if reference else cfg.default_single_prompt
            else:
                name = cfg.default_pair_ref_prompt if reference else cfg.default_pair_prompt
            return self.prompts[name]
        allowed = [p.name for p in self.prompts.values() if p.type == ptype]
        prompt = self.prompts.get(name)
        if prompt is None:
            raise InvalidArgument("prompt_name", f"unknown prompt {name!r}; allowed for {rpc}: {', '.join(allowed)}")
        if prompt.type != ptype:
            raise InvalidArgument(
                "prompt_name", f"{name!r} is a {prompt.type} prompt; {rpc} needs a {ptype} prompt: {', '.join(allowed)}"
            )
        if prompt.uses_reference and not reference:
            without_ref = [p.name for p in self.prompts.values() if p.type == ptype and not p.uses_reference]
            raise InvalidArgument(
                "reference_answer",
                f"is empty but prompt {name!r} needs a reference answer; give one, "
                f"or use a prompt without: {', '.join(without_ref)}",
            )
        if reference and not prompt.uses_reference:
            with_ref = [p.name for p in self.prompts.values() if p.type == ptype and p.uses_reference]
            raise InvalidArgument(
                "reference_answer",
                f"is set but prompt {name!r} does not show a reference; leave it empty, or use: {', '.join(with_ref)}",
            )
        return prompt


def _resolve_turn(turn: int, messages: Sequence[Message]) -> int:
    """The 1-based graded user turn; 0 means the last. The conversation ends with an answer."""
    answered = sum(1 for m in messages if m.role is Role.ASSISTANT)
    if turn == 0:
        return answered
    if not 1 <= turn <= answered:
        raise InvalidArgument(
            "turn",
            f"is {turn}; the conversation has {answered} answered user turns, allowed range is 0..{answered} (0 = the last)",
        )
    return turn


def _check_same_user_turns(a: Sequence[Message], b: Sequence[Message]) -> None:
    """Both conversations must hold the same user messages, in the same order."""
    users_a = [(i, m.content) for i, m in enumerate(a) if m.role is Role.USER]
    users_b = [(i, m.content) for i, m in enumerate(b) if m.role is Role.USER]
    for n, ((ia, ca), (ib, cb)) in enumerate(zip(users_a, users_b), start=1):
        if ca != cb:
            raise InvalidArgument(
                f"conversation_b.messages[{ib}].content",
                f"user turn {n} differs from conversation_a.messages[{ia}]; "
                "both conversations must have the same user turns",
            )
    if len(users_a) != len(users_b):
        raise InvalidArgument(
            "conversation_b.messages",
            f"has {len(users_b)} user turns but conversation_a has {len(users_a)}; both must have the same user turns",
        )


def _verdict_to_pb(v: PairVerdict) -> judge_pb2.PairVerdict:
    return judge_pb2.PairVerdict(
        winner=_WINNER_TO_PB[v.winner],
        swapped=v.swapped,
        raw_output=v.raw_output,
        probabilities=v.probabilities,
    )

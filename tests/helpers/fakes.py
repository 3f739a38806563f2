"""Test doubles for unit tests of service logic. Integration tests use the real model."""

from __future__ import annotations

from typing import Callable, Sequence

from parrot.backends.base import Backend, GenerationRequest, GenerationResult
from parrot.conversation import Message


class ScriptedBackend(Backend):
    """Returns outputs from a function of the request; records every request it saw.

    ``reply(request, call_index) -> str``; ``scorer(messages, prefill, continuations) -> list[float]``.
    """

    supports_scoring = True
    name = "scripted"

    def __init__(
        self,
        reply: Callable[[GenerationRequest, int], str],
        scorer: Callable[[Sequence[Message], str, Sequence[str]], list[float]] | None = None,
    ) -> None:
        super().__init__()
        self._reply = reply
        self._scorer = scorer
        self.requests: list[GenerationRequest] = []
        self.score_calls: list[tuple[list[Message], str, list[str]]] = []
        self.ready = True

    @property
    def model_name(self) -> str:
        return "scripted-test-model"

    async def load(self) -> None:
        self.ready = True

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            idx = len(self.requests)
            self.requests.append(r)
            text = self._reply(r, idx)
            out.append(GenerationResult(text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=len(text.split())))
        return out

    async def score(self, messages: Sequence[Message], prefill: str, continuations: Sequence[str]) -> list[float]:
        self.score_calls.append((list(messages), prefill, list(continuations)))
        if self._scorer is None:
            return await super().score(messages, prefill, continuations)
        return self._scorer(messages, prefill, continuations)

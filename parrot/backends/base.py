"""The one narrow interface every generation backend implements.

A backend turns chat messages into text. It is chosen by name from a small registry
(``parrot.backends.create_backend``); services never know which backend they hold.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Sequence, TypeVar

from parrot.conversation import GenerationParams, Message
from parrot.errors import Unsupported

T = TypeVar("T")


@dataclass(frozen=True)
class GenerationRequest:
    messages: Sequence[Message]
    params: GenerationParams
    # Text the assistant reply is forced to start with. The model continues it; the
    # prefill itself is not part of the returned text. Backends whose API cannot
    # prefill raise Unsupported.
    prefill: str = ""


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    # Set by generate_scored: log-probabilities of the continuations after the scored prefix.
    scores: tuple[float, ...] | None = None


@dataclass(frozen=True)
class StreamEvent:
    """One piece of a streamed generation. The last event has ``result`` set."""

    delta: str
    result: GenerationResult | None = None


class Backend(abc.ABC):
    """Load, ready, generate a batch, stream, score."""

    name: ClassVar[str]
    # Whether ``score`` works (token log-probabilities of given continuations).
    supports_scoring: ClassVar[bool] = False

    def __init__(self) -> None:
        self.ready = False
        # Set by the server before ``load`` when a judge is served: a backend that scores with an
        # engine's log-probabilities checks at load that it gets them.
        self.needs_scoring = False

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The served model's name, reported in responses and metrics labels."""

    @abc.abstractmethod
    async def load(self) -> None:
        """Loads the model (or checks the remote endpoint); sets ``ready``."""

    @abc.abstractmethod
    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generates one result per request. Concurrent calls may be batched together."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Streams one generation. Default: generate, then yield it whole."""
        (result,) = await self.generate([request])
        yield StreamEvent(delta=result.text, result=result)

    async def score(self, messages: Sequence[Message], prefill: str, continuations: Sequence[str]) -> list[float]:
        """Log-probability of each continuation after the chat prompt plus ``prefill``."""
        raise Unsupported(f"backend {self.name} cannot score continuations")

    async def generate_scored(
        self,
        requests: Sequence[GenerationRequest],
        scored_prefix: Callable[[str], str],
        continuations: Sequence[str],
    ) -> list[GenerationResult]:
        """Generates, then scores ``continuations`` after ``prefill + scored_prefix(generated text)``.

        This is how a local judge rates: it writes an explanation, and the rating is read from the
        probabilities of the rating tokens after it. The default makes two calls (generate, then
        score); a backend that keeps the prompt's KV cache can score without reading the prompt again.
        """
        results = await self.generate(requests)
        scores = await asyncio.gather(*(
            self.score(req.messages, req.prefill + scored_prefix(res.text), continuations)
            for req, res in zip(requests, results)
        ))
        return [dataclasses.replace(res, scores=tuple(sc)) for res, sc in zip(results, scores)]

    async def close(self) -> None:
        """Releases resources (HTTP clients, worker threads)."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific counters (for tests and debugging)."""
        return {}


async def gather_all_or_cancel(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Runs ``coros`` concurrently; if one fails (or the caller is cancelled), cancels the rest first."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

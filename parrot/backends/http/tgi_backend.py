"""The ``tgi`` backend: a text-generation-inference server through its Messages API.

TGI serves OpenAI-compatible chat at ``{url}/v1/chat/completions`` (applying the model's
chat template), so this backend shares the HTTP, retry and SSE code of the ``openai``
backend (``parrot.backends.http.chat_completions``). TGI's Messages API cannot continue a partial
assistant message, so prefill is refused with ``Unsupported``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from parrot.backends.base import GenerationRequest
from parrot.backends.http.chat_completions import ChatCompletionsBackend
from parrot.backends.http.client import HTTPClient, HttpRetry, loggable_url
from parrot.conversation import GenerationParams
from parrot.errors import Unavailable, Unsupported

log = logging.getLogger(__name__)

# Label used when neither the config nor the server's /info names the model.
DEFAULT_MODEL_NAME = "tgi"


@dataclass(frozen=True)
class TGIBackendConfig:
    """Settings of the ``tgi`` backend."""

    url: str = field(
        default="http://127.0.0.1:3000",
        metadata={"flag": "base-url", "help": "Base URL of the text-generation-inference server (chat goes to {url}/v1/chat/completions)."},
    )
    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={"flag": "model", "help": "Model name reported in responses and metrics; empty = the server's model_id from GET {url}/info."},
    )
    timeout_s: float = field(
        default=120.0,
        metadata={"help": "Per-attempt request timeout in seconds; also how long load waits for {url}/health."},
    )
    max_retries: int = field(default=4, metadata={"help": "Retries after 429, 5xx, timeouts and connection errors."})
    backoff_initial_s: float = field(default=0.5, metadata={"help": "First retry backoff in seconds (doubles each retry, with jitter)."})
    backoff_max_s: float = field(default=8.0, metadata={"help": "Longest retry backoff in seconds."})
    max_concurrency: int = field(default=16, metadata={"flag": "upstream-concurrency", "help": "Most requests in flight to the server at once."})


class TGIBackend(ChatCompletionsBackend):
    """Generation through a TGI server's OpenAI-compatible Messages API."""

    name = "tgi"

    supports_scoring = False
    # Older TGI releases reject unknown request fields; usage is read whenever it is sent.
    stream_usage_option = False

    def __init__(self, config: TGIBackendConfig) -> None:
        super().__init__()
        self.config = config
        self._url = config.url.rstrip("/")
        self._model_name = config.model_name or DEFAULT_MODEL_NAME

    @property
    def model_name(self) -> str:
        return self._model_name

    def _chat_url(self) -> str:
        return f"{self._url}/v1/chat/completions"

    def _request_model(self) -> str:
        return "tgi"  # TGI serves one model and ignores the field

    def _check_request(self, request: GenerationRequest) -> None:
        if request.prefill:
            raise Unsupported(
                "backend tgi cannot prefill the assistant reply: TGI's Messages API has no way to continue "
                "a partial assistant message; use the openai backend (e.g. vLLM) or transformers for prefill"
            )

    def _sampling(self, params: GenerationParams) -> dict[str, Any]:
        """TGI wants no temperature for greedy decoding and a top_p strictly below 1."""
        body: dict[str, Any] = {"max_tokens": params.max_tokens}
        if not params.greedy:
            body["temperature"] = params.temperature
        if params.top_p < 1.0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def _make_client(self) -> HTTPClient:
        cfg = self.config
        return HTTPClient(
            backend=self.name,
            timeout_s=cfg.timeout_s,
            policy=HttpRetry(cfg.max_retries, cfg.backoff_initial_s, cfg.backoff_max_s),
            max_concurrency=cfg.max_concurrency,
        )

    async def load(self) -> None:
        """Waits (up to ``timeout_s``) for ``GET {url}/health`` to answer 200, then reads ``/info``."""
        if self._http is not None:
            await self._http.close()
        self._http = await self._make_client()
        await self._wait_healthy(self._http)
        if not self.config.model_name:
            self._model_name = await self._model_id_from_info(self._http) or DEFAULT_MODEL_NAME
        self.ready = True
        log.info("tgi backend ready: %s model=%s", loggable_url(self._url), self._model_name)

    async def _wait_healthy(self, http: HTTPClient) -> None:
        """Polls ``/health`` until it answers 200 or ``timeout_s`` has passed."""
        deadline = time.monotonic() + self.config.timeout_s
        policy = http.policy
        attempt = 0
        while True:
            response = await http.probe(f"{self._url}/health")
            if response is not None and response.status_code == 200:
                return
            last = "no connection" if response is None else f"HTTP {response.status_code}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"tgi backend: {loggable_url(self._url)}/health not healthy after {self.config.timeout_s:g} s ({last})"
                )
            delay = min(remaining, max(0.05, min(policy.backoff_max_s, policy.backoff_initial_s * 2**attempt)))
            log.info("tgi backend: waiting for %s/health (%s); next check in %.2f s", loggable_url(self._url), last, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _model_id_from_info(self, http: HTTPClient) -> str:
        """The ``model_id`` from ``GET {url}/info``, or "" when unavailable."""
        response = await http.probe(f"{self._url}/info")
        if response is None or response.status_code != 200:
            return ""
        try:
            model_id = response.json().get("model_id")
        except (ValueError, AttributeError):
            return ""
        return model_id if isinstance(model_id, str) else ""

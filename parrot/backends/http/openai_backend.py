"""The ``openai`` backend: any OpenAI-compatible ``/chat/completions`` endpoint.

vLLM, KServe's Hugging Face runtime (OpenAI route) and hosted APIs such as GPT-4 judges.
Plain ``httpx`` rather than the ``openai`` package, so that retries, timeouts and error
mapping are ours (see ``parrot.backends.http.client`` and ``chat_completions``).

Prefill follows vLLM's convention: the prefill is sent as a final assistant message with
``continue_final_message: true`` and ``add_generation_prompt: false``; our own responder's
OpenAI endpoint honours the same fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from parrot.backends.http.chat_completions import ChatCompletionsBackend
from parrot.backends.http.client import HTTPClient, HttpRetry, loggable_url, read_api_key
from parrot.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenAIBackendConfig:
    """Settings of the ``openai`` backend."""

    base_url: str = field(
        default="http://127.0.0.1:8080/v1",
        metadata={"help": "Base URL of the OpenAI-compatible API; requests go to {base_url}/chat/completions."},
    )
    model: str = field(default="", metadata={"help": "Model name sent in each request (e.g. the vLLM served model name)."})
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Name of the environment variable holding the API key (read at load; empty = no key)."},
    )
    api_key_file: str = field(
        default="",
        metadata={"help": "Path of a file holding the API key (e.g. a mounted Kubernetes secret); wins over api_key_env."},
    )
    timeout_s: float = field(default=120.0, metadata={"help": "Per-attempt request timeout in seconds."})
    max_retries: int = field(default=4, metadata={"help": "Retries after 429, 5xx, timeouts and connection errors."})
    backoff_initial_s: float = field(default=0.5, metadata={"help": "First retry backoff in seconds (doubles each retry, with jitter)."})
    backoff_max_s: float = field(default=8.0, metadata={"help": "Longest retry backoff in seconds."})
    max_concurrency: int = field(default=16, metadata={"flag": "upstream-concurrency", "help": "Most requests in flight to the upstream at once."})


class OpenAIBackend(ChatCompletionsBackend):
    """Generation through an OpenAI-compatible chat completions API."""

    name = "openai"

    supports_scoring = False
    stream_usage_option = True

    def __init__(self, config: OpenAIBackendConfig) -> None:
        super().__init__()
        self.config = config
        self._base_url = config.base_url.rstrip("/")

    @property
    def model_name(self) -> str:
        return self.config.model

    def _chat_url(self) -> str:
        return f"{self._base_url}/chat/completions"

    async def _make_client(self) -> HTTPClient:
        cfg = self.config
        key = read_api_key(key_file=cfg.api_key_file, key_env=cfg.api_key_env, backend=self.name)
        return HTTPClient(
            backend=self.name,
            timeout_s=cfg.timeout_s,
            policy=HttpRetry(cfg.max_retries, cfg.backoff_initial_s, cfg.backoff_max_s),
            max_concurrency=cfg.max_concurrency,
            api_key=key,
        )

    async def load(self) -> None:
        """Reads the API key and checks the endpoint with ``GET {base_url}/models`` (404 is fine)."""
        if self._http is not None:
            await self._http.close()
        self._http = await self._make_client()
        url = loggable_url(self._base_url)
        try:
            await self._http.request("GET", f"{self._base_url}/models", accept_statuses=frozenset({404, 405}))
        except InvalidArgument as exc:
            raise Unavailable(f"openai backend: GET {url}/models was rejected: {exc.problem}") from None
        except Unavailable:
            log.error("openai backend: endpoint %s is not reachable", url)
            raise
        self.ready = True
        log.info("openai backend ready: %s model=%s", url, self.config.model or "<server default>")

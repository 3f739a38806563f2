"""The embedded default backend: a Hugging Face causal LM in this process, with dynamic batching.

One worker thread loads and owns the model (all torch work on one thread: with the model loaded
on a helper thread, the batcher's packed steps took twice as long on the 2-core machine).
Requests from any number of coroutines go into a queue; the worker (``scheduler.BatchScheduler``,
the continuous-batching half of this class) steps the model for all of them at once. This module is
the adapter half: loading, prompts and the Backend API. A request that arrives
while others decode joins at the next step, and no row waits for a separate prefill or scoring
pass: on a 2-core CPU the weights are read once per step whatever the step holds, which is the
whole speed lever (DESIGN.md: 29 tok/s alone, over 200 tok/s at 16 at once).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent
from parrot.backends.transformers.prefix_cache import PrefixCache
from parrot.backends.transformers.scheduler import BatchScheduler, _Row
from parrot.conversation import GenerationParams, Message
from parrot.errors import InvalidArgument, NotReady, ResourceExhausted
from parrot.metrics import QUEUE_DEPTH, STAGE_LATENCY
from parrot.modelstore import BUNDLED_DIRNAME, BUNDLED_NAME, resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformersBackendConfig:
    model: str = field(
        default="smollm2",
        metadata={"help": "'smollm2' (the bundled SmolLM2-135M-Instruct) or a Hugging Face model folder."},
    )
    dtype: str = field(default="auto", metadata={
        "help": "auto, bfloat16, float16 or float32. auto: bfloat16 on CUDA and on CPUs with native bf16 (AMX, "
                "AVX512-BF16), else float32 (bf16 without native support was 2.8x slower on an AVX2 EPYC)."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when available)."})
    max_batch_size: int = field(default=32, metadata={"help": "Most sequences decoded together in one step."})
    batch_wait_ms: float = field(
        default=5.0,
        metadata={"help": "When idle, how long the first request waits for others to arrive and share its prefill."},
    )
    max_queue: int = field(default=1024, metadata={"help": "Waiting requests beyond this get RESOURCE_EXHAUSTED."})
    num_threads: int = field(default=0, metadata={"help": "torch intra-op threads (0 = torch default)."})
    prefix_cache_mib: int = field(
        default=1024,
        metadata={"help": "Memory for KV states of finished sequences, kept for prompts that extend them (later turns "
                          "of a session, shared system prompts); least recently used first out; 0 = off."},
    )
    prefill_chunk_tokens: int = field(
        default=512,
        metadata={"help": "Most prompt tokens fed in one step (longer prompts are fed over several steps), "
                          "which bounds how long decoding rows wait for a new prompt."},
    )


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on CUDA or a CPU with native bf16, else float32 (logged); others unchanged."""
    if dtype != "auto":
        return dtype
    chosen = "bfloat16" if device.startswith("cuda") or native_bf16() else "float32"
    log.info("dtype auto: %s (%s)", chosen, "CUDA" if device.startswith("cuda") else
             "CPU has native bf16" if chosen == "bfloat16" else "CPU has no native bf16 (no AMX / AVX512-BF16)")
    return chosen


class TransformersBackend(BatchScheduler, Backend):
    name = "transformers"
    supports_scoring = True

    def __init__(self, config: TransformersBackendConfig) -> None:
        super().__init__()
        if config.prefill_chunk_tokens < 1:
            raise InvalidArgument("prefill_chunk_tokens", f"is {config.prefill_chunk_tokens}; must be at least 1")
        self.config = config
        self.dtype = config.dtype  # resolved at load ("auto" -> bfloat16 or float32)
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._kv: Any = None
        self._no_mask: Any = None  # a 4-D mask makes transformers skip building its own (ragged steps need none)
        self._eos_ids: set[int] = set()
        self._max_context = 2048
        self._inbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._model_label = config.model
        self._waiting: list[_Row] = []  # admitted to the worker, not yet given a slot
        if config.prefix_cache_mib < 0:
            raise InvalidArgument("prefix_cache_mib", f"is {config.prefix_cache_mib}; must be 0 (off) or more")
        self._prefix_cache = PrefixCache(0)  # sized in MiB once the model's KV size per token is known
        self._trees: dict[tuple[str, ...], Any] = {}
        self._rows: list[_Row] = []  # admitted rows, in admission order; each holds one (pool, slot)
        # Counters read by tests and benchmarks.
        self.steps = 0
        self.batches_admitted = 0
        self.max_rows_seen = 0
        self.reused_tokens = 0  # prompt tokens whose KV came from the prefix cache or a live row

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model_label

    async def load(self) -> None:
        # The worker thread loads the model itself: every torch call of this backend runs on that
        # one thread. (With the model loaded on a helper thread, the batcher's packed steps took
        # 65 ms instead of 32.5 on the 2-core machine: each torch thread has its own OpenMP team.)
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future = loop.create_future()
        self._thread = threading.Thread(target=self._worker, args=(loop, loaded), name="parrot-batcher", daemon=True)
        self._thread.start()
        await loaded
        self.ready = True

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from parrot.backends.transformers import ragged  # lazy: torch
        from parrot.backends.transformers.cpu_linear import pack_linear_layers  # lazy: torch

        t0 = time.monotonic()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        if self.config.dtype not in (*dtypes, "auto"):
            raise InvalidArgument("dtype", f"is {self.config.dtype!r}; allowed: auto, {', '.join(dtypes)}")
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = resolve_dtype(self.config.dtype, device)
        folder = resolve_model(self.config.model)
        self._model_label = BUNDLED_DIRNAME if self.config.model == BUNDLED_NAME else folder.name
        self.watch_queue_depth()
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtypes[self.dtype])
        model.to(device)
        model.eval()
        ragged.install(model)
        packed = pack_linear_layers(model)
        self._model = model
        self._device = torch.device(device)
        self._no_mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self._device)
        cfg = model.config.get_text_config(decoder=True)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self._kv = ragged.SlotCache(cfg.num_hidden_layers, kv_heads, head_dim, dtypes[self.dtype], self._device)
        token_bytes = cfg.num_hidden_layers * 2 * kv_heads * head_dim * dtypes[self.dtype].itemsize
        self._prefix_cache = PrefixCache(self.config.prefix_cache_mib * 2**20 // token_bytes)
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        self._eos_ids = {int(e) for e in eos_list if e is not None}
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(int(self._tokenizer.eos_token_id))
        self._max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        STAGE_LATENCY.labels(self._model_label, "load").observe(time.monotonic() - t0)
        log.info(
            "model loaded",
            extra={"model": self._model_label, "folder": str(folder), "device": device, "dtype": self.dtype,
                   "seconds": round(time.monotonic() - t0, 2), "prefix_cache_tokens": self._prefix_cache.max_tokens,
                   "packed_linear_layers": packed},
        )

    async def close(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self.ready = False

    def stats(self) -> dict[str, Any]:
        pc = self._prefix_cache
        return {"steps": self.steps, "batches_admitted": self.batches_admitted, "max_rows_seen": self.max_rows_seen,
                "prefix_hits": pc.hits, "prefix_misses": pc.misses, "prefix_hit_tokens": self.reused_tokens,
                "prefix_cached_tokens": pc.tokens,
                "prefix_evicted_tokens": pc.evicted_tokens}

    # ---- prompts -----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def render_prompt(self, messages: Sequence[Message], prefill: str = "") -> str:
        """The model's chat template applied to the messages, opened for the assistant, plus prefill."""
        text = self._tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return text + prefill

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        return self._check_context(self._encode(self.render_prompt(request.messages, request.prefill)),
                                   request.params.max_tokens)

    def _check_context(self, ids: list[int], extra: int) -> list[int]:
        if len(ids) + extra > self._max_context:
            raise InvalidArgument(
                "conversation",
                f"{len(ids)} prompt tokens + max_tokens {extra} exceed the model context "
                f"of {self._max_context} tokens; shorten the conversation or lower max_tokens",
            )
        return ids

    def _tree(self, continuations: Sequence[str]) -> Any:
        """The continuation tree for these strings (cached: a judge scores the same labels every time)."""
        from parrot.backends.transformers.ragged import ContinuationTree  # lazy: torch

        if not continuations:
            raise InvalidArgument("continuations", "is empty")
        key = tuple(continuations)
        tree = self._trees.get(key)
        if tree is None:
            ids = [self._encode(c) for c in continuations]
            empty = [c for c, i in zip(continuations, ids) if not i]
            if empty:
                raise InvalidArgument("continuations", f"{empty[0]!r} has no tokens")
            tree = ContinuationTree.build(ids)
            if len(self._trees) < 64:
                self._trees[key] = tree
        return tree

    # ---- public API --------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"model {self._model_label} is loading")

    def _submit(self, row: _Row) -> _Row:
        if self._inbox.qsize() >= self.config.max_queue:
            raise ResourceExhausted(f"generation queue is full ({self.config.max_queue} waiting); retry later")
        self._inbox.put(row)
        return row

    def queue_depth(self) -> int:
        """Requests waiting for a slot now: in the inbox, or taken by the worker and not yet admitted."""
        return self._inbox.qsize() + len(self._waiting)

    def watch_queue_depth(self) -> None:
        """``parrot_queue_depth`` read at scrape time (a gauge set at events goes stale between them)."""
        QUEUE_DEPTH.labels(self._model_label).set_function(self.queue_depth)

    def _row(self, request: GenerationRequest, on_delta: Callable[[str], None] | None = None, **extra: Any) -> _Row:
        self._check_ready()
        loop = asyncio.get_running_loop()
        return _Row(prompt_ids=self._prompt_ids(request), params=request.params, loop=loop,
                    future=loop.create_future(), on_delta=on_delta, **extra)

    async def _await_row(self, row: _Row) -> Any:
        try:
            return await row.future
        except asyncio.CancelledError:
            row.cancelled = True  # the worker drops it at the next step
            raise

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        rows = [self._submit(self._row(r)) for r in requests]
        return list(await asyncio.gather(*(self._await_row(r) for r in rows)))

    async def generate_scored(self, requests: Sequence[GenerationRequest], scored_prefix: Callable[[str], str],
                              continuations: Sequence[str]) -> list[GenerationResult]:
        """Generates, then scores the continuations after the prompt's KV states (no second prefill):
        the scored text shares its prompt, and usually most of the explanation, with what was generated."""
        self._check_ready()
        tree = self._tree(continuations)
        rows = []
        for r in requests:
            base = self.render_prompt(r.messages, r.prefill)
            rows.append(self._row(r, tree=tree, score_text=lambda text, base=base: base + scored_prefix(text)))
        for row in rows:
            self._submit(row)
        return list(await asyncio.gather(*(self._await_row(r) for r in rows)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        deltas: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        row = self._submit(self._row(request, lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d)))
        try:
            while True:
                get = asyncio.ensure_future(deltas.get())
                done, _ = await asyncio.wait({get, row.future}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    yield StreamEvent(delta=get.result())
                    continue
                get.cancel()
                result = row.future.result()
                rest = []
                while not deltas.empty():
                    rest.append(deltas.get_nowait())
                yield StreamEvent(delta="".join(rest), result=result)
                return
        finally:
            if not row.future.done():
                row.cancelled = True

    async def score(self, messages: Sequence[Message], prefill: str, continuations: Sequence[str]) -> list[float]:
        self._check_ready()
        tree = self._tree(continuations)
        ids = self._encode(self.render_prompt(messages, prefill))
        if not ids:
            raise InvalidArgument("prefill", "the scored prompt is empty")
        self._check_context(ids, max(tree.depths) + 1)
        loop = asyncio.get_running_loop()
        row = _Row(prompt_ids=ids, params=GenerationParams(max_tokens=1), loop=loop, future=loop.create_future(),
                   tree=tree, score_only=True)
        return await self._await_row(self._submit(row))

"""The embedded default backend: a Hugging Face causal LM in this process, with dynamic batching.

One worker thread loads and owns the model (all torch work on one thread: with the model loaded
on a helper thread, the batcher's packed steps took twice as long on the 2-core machine).
Requests from any number of coroutines go into a queue. Every step the worker admits waiting
requests into free *slots* of its KV buffers and runs **one** forward pass for all rows together
(``parrot.backends.transformers.ragged``): one token for each decoding row, plus the new part of each admitted
prompt (whatever the prefix cache or a row being decoded cannot supply, in chunks of at most
``prefill_chunk_tokens`` per step), plus the scored prefix and rating continuations of judge
rows that finished their explanation. It then samples one token per row with that row's own
settings and retires rows that hit EOS, a stop sequence or max_tokens. A request that arrives
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

from parrot.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    StreamEvent,
)
from parrot.backends.transformers.prefix_cache import PrefixCache, common_prefix_len
from parrot.conversation import GenerationParams, Message
from parrot.errors import InvalidArgument, NotReady, ResourceExhausted
from parrot.metrics import (
    BATCH_SIZE,
    GENERATED_TOKENS,
    PREFIX_CACHE_EVICTED_TOKENS,
    PREFIX_CACHE_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_LATENCY,
)
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


# A row's phase: feeding its prompt, decoding, or feeding its scored prefix + continuation tree.
PREFILL, DECODE, SCORE = "prefill", "decode", "score"
# A new prompt waits one step for a prompt being fed this step when it would then reuse this many
# more of its tokens (concurrent judge prompts share hundreds of instruction tokens).
_WAIT_FOR_SHARED_TOKENS = 64


@dataclass
class _Row:
    """One request in flight, owned by the worker thread once admitted."""

    prompt_ids: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_delta: Callable[[str], None] | None = None
    generator: Any = None
    gen_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.monotonic)
    # Scoring: the continuation tree, and for generate_scored the full text to score given the
    # generated text (prompt + prefill + scored prefix). A score() row has no generation.
    tree: Any = None
    score_text: Callable[[str], str] | None = None
    score_only: bool = False
    # Worker state.
    phase: str = PREFILL
    pool: int = 0
    slot: int = -1
    kv_len: int = 0  # KV columns of this row held by its slot
    pending: list[int] = field(default_factory=list)  # tokens still to feed
    last_token: int = -1
    finish_reason: str = ""

    def seen(self) -> list[int]:
        """The tokens whose KV states the slot holds, in order."""
        return (self.prompt_ids + self.gen_ids)[: self.kv_len]


class TransformersBackend(Backend):
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

    # ---- worker thread -------------------------------------------------------------------

    def _worker(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future) -> None:
        try:
            self._load_sync()
        except BaseException as e:
            loop.call_soon_threadsafe(_set_exception, loaded, e)
            return
        loop.call_soon_threadsafe(_set_result, loaded, None)
        import torch

        waiting: list[_Row] = []
        with torch.inference_mode():
            while not self._stop.is_set():
                self._drain_inbox(waiting, block=not self._rows and not waiting)
                waiting = [r for r in waiting if not r.cancelled]
                self._waiting = waiting
                if waiting and len(self._rows) < self.config.max_batch_size:
                    self._admit(waiting)
                if self._rows:
                    try:
                        self._step()
                    except Exception as e:  # fail the rows, keep serving
                        log.exception("batch step failed")
                        for row in self._rows:
                            self._finish_error(row, e)
                        self._rows = []
                        self._kv.release()
        for row in waiting + self._rows:
            self._finish_error(row, NotReady("server is shutting down"))

    def _drain_inbox(self, waiting: list[_Row], block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        first_at = time.monotonic()
        while True:
            if isinstance(item, _Row):
                waiting.append(item)
            try:
                if block and self.config.batch_wait_ms > 0:
                    # Idle: give concurrent requests a moment to arrive and share the step.
                    left = self.config.batch_wait_ms / 1000 - (time.monotonic() - first_at)
                    item = self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait()
                else:
                    item = self._inbox.get_nowait()
            except queue.Empty:
                break

    def _admit(self, waiting: list[_Row]) -> None:
        """Gives waiting rows slots. A prompt starts from the longest prefix whose KV states exist:
        in the prefix cache (the session's previous turn, a shared system prompt) or in a row being
        decoded (concurrent judge prompts share their instructions); only the rest is fed. A row
        that would share much more with a prompt still being fed waits a step for it instead."""
        room = self.config.max_batch_size - len(self._rows)
        now = time.monotonic()
        admitted = 0
        deferred: list[_Row] = []
        for row in waiting:
            if admitted >= room:
                deferred.append(row)
                continue
            source, reuse = self._best_prefix(row.prompt_ids)
            upcoming = max((common_prefix_len(r.prompt_ids, row.prompt_ids) for r in self._rows
                            if r.phase != DECODE and r.pending), default=0) if self._prefix_cache.enabled else 0
            if upcoming - reuse >= _WAIT_FOR_SHARED_TOKENS:
                deferred.append(row)
                continue
            STAGE_LATENCY.labels(self._model_label, "queue").observe(now - row.enqueued_at)
            row.pool = self._pick_pool(len(row.prompt_ids))
            row.slot = sum(1 for r in self._rows if r.pool == row.pool)
            self._kv.reserve(row.pool, row.slot + 1, max(reuse, 1))
            if isinstance(source, _Row):
                self._kv.copy((source.pool, source.slot), (row.pool, row.slot), reuse)
            elif source is not None:
                self._kv.load(row.pool, row.slot, source.layers, reuse)
            if reuse:
                PREFIX_CACHE_TOKENS.labels(self._model_label).inc(reuse)
                self.reused_tokens += reuse
            self._rows.append(row)
            admitted += 1
            row.kv_len = reuse
            row.pending = row.prompt_ids[reuse:]
            row.phase = SCORE if row.score_only else PREFILL
            if not row.score_only:
                PROMPT_TOKENS.labels(self._model_label, self.name).inc(len(row.prompt_ids))
                self._seed(row)
        waiting[:] = deferred
        if admitted:
            self.batches_admitted += 1

    def _best_prefix(self, prompt: list[int]) -> tuple[Any, int]:
        """The longest reusable prefix of ``prompt``: (a prefix-cache entry or a live row, its length)."""
        hit = self._prefix_cache.lookup(prompt)
        source, reuse = (hit[0], hit[1]) if hit is not None else (None, 0)
        if self._prefix_cache.enabled:
            for r in self._rows:
                if r.phase == SCORE or r.kv_len <= reuse:
                    continue  # a scoring row's columns past its prompt are being rewritten
                n = min(common_prefix_len(r.seen(), prompt), len(prompt) - 1)
                if n > reuse and n >= self._prefix_cache.min_match:
                    source, reuse = r, n
        return source, reuse

    def _pick_pool(self, length: int) -> int:
        """The pool whose decode attention grows least with this row: rows of similar length share a pool,
        so a short answer is not padded to a long judge prompt."""
        best, best_cost = 0, None
        for pool in range(len(self._kv.pools)):
            members = [r.kv_len + len(r.pending) for r in self._rows if r.pool == pool]
            longest = max(members, default=0)
            cost = (len(members) + 1) * max(longest, length) - len(members) * longest
            if best_cost is None or cost < best_cost:
                best, best_cost = pool, cost
        return best

    def _step(self) -> None:
        """One forward pass for every admitted row, then sampling, scoring and retiring."""
        import torch

        from parrot.backends.transformers.ragged import Segment, build_plan  # lazy: torch

        t0 = time.monotonic()
        self._drop_cancelled()
        if not self._rows:
            return
        in_order = sorted(self._rows, key=lambda r: (r.pool, r.slot))
        decode_rows = [r for r in in_order if r.phase == DECODE]
        decode = [(r.pool, r.slot, r.last_token, r.kv_len) for r in decode_rows]
        budget = self.config.prefill_chunk_tokens
        fed: list[tuple[_Row, int, bool]] = []  # (row, plain tokens fed, pending done)
        segments = []
        for row in self._rows:
            if row.phase == DECODE or budget <= 0:
                continue
            n = min(len(row.pending), budget)
            budget -= n
            done = n == len(row.pending)
            tree = row.tree if done and row.phase == SCORE else None
            segments.append(Segment(row.pool, row.slot, row.kv_len, row.pending[:n], tree))
            fed.append((row, n, done))
        active = [0] * len(self._kv.pools)
        need = [0] * len(self._kv.pools)
        for r in self._rows:
            active[r.pool] += 1
        for pool, _, _, length in decode:
            need[pool] = max(need[pool], length + 1)
        for seg in segments:
            need[seg.pool] = max(need[seg.pool], seg.start + seg.length)
        for pool, n in enumerate(active):
            if n:
                self._kv.reserve(pool, n, need[pool])
        plan = build_plan(decode, segments, active, self._device)
        # Logits are needed for each decoding row, the last prompt token of each finished prefill,
        # and every node of a continuation tree (after its last prompt token).
        keep = list(range(len(decode)))
        where: list[tuple[int, int]] = []  # per segment: (first kept logit, how many)
        for (first, end, *_), (row, n, done) in zip(plan.segments, fed):
            if not done:
                where.append((len(keep), 0))
                continue
            where.append((len(keep), end - first - n + 1))
            keep.extend(range(first + n - 1, end))
        self._kv.plan = plan
        try:
            out = self._model(input_ids=plan.input_ids, position_ids=plan.position_ids,
                              attention_mask=self._no_mask, past_key_values=self._kv, use_cache=True,
                              logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self._device), ragged=plan)
        finally:
            self._kv.plan = None
        logits = out.logits[0]
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(decode) + len(segments))
        BATCH_SIZE.labels(self._model_label).observe(len(decode) + len(segments))
        stage = "score" if any(s.tree is not None for s in segments) else "prefill" if segments else "decode_step"
        # Sample decoding rows, then rows whose prompt is now complete; score finished trees.
        sampled: list[tuple[_Row, Any]] = []
        for i, row in enumerate(decode_rows):
            row.kv_len += 1
            sampled.append((row, logits[i]))
        for (row, n, done), (at, count) in zip(fed, where):
            row.kv_len += n
            row.pending = row.pending[n:]
            if not done:
                continue
            if row.phase == SCORE:
                logp = torch.log_softmax(logits[at:at + count].float(), dim=-1)
                self._deliver_scores(row, row.tree.logprobs(logp[0], logp[1:]))
            else:
                row.phase = DECODE
                sampled.append((row, logits[at]))
        self._sample(sampled)
        self._retire()
        STAGE_LATENCY.labels(self._model_label, stage).observe(time.monotonic() - t0)

    def _sample(self, sampled: list[tuple[_Row, Any]]) -> None:
        import torch

        if not sampled:
            return
        stacked = torch.stack([lg for _, lg in sampled])
        tokens = stacked.argmax(dim=-1).tolist()
        for i, (row, lg) in enumerate(sampled):
            if not row.params.greedy:
                tokens[i] = _sample_token(lg.float(), row.params, row.generator)
        for (row, _), tok in zip(sampled, tokens):
            if row.cancelled:
                continue
            if tok in self._eos_ids:
                self._end_generation(row, "stop")
                continue
            row.gen_ids.append(tok)
            if self._advance_text(row):
                continue
            if len(row.gen_ids) >= row.params.max_tokens:
                self._end_generation(row, "length")
                continue
            row.last_token = tok
        GENERATED_TOKENS.labels(self._model_label, self.name).inc(len(sampled))

    def _drop_cancelled(self) -> None:
        if any(r.cancelled for r in self._rows):
            for r in self._rows:
                if r.cancelled:
                    r.phase = ""
            self._retire()

    def _retire(self) -> None:
        """Frees the slots of rows that are done; in each pool, rows above the new end fill the holes
        (one copy each), so a pool's slots stay dense."""
        live = [r for r in self._rows if r.phase in (PREFILL, DECODE, SCORE) and not r.cancelled]
        if len(live) == len(self._rows):
            return
        for pool in range(len(self._kv.pools)):
            members = [r for r in live if r.pool == pool]
            n = len(members)
            holes = sorted(set(range(n)) - {r.slot for r in members})
            for row in members:
                if row.slot >= n:
                    dst = holes.pop(0)
                    self._kv.copy((pool, row.slot), (pool, dst), row.kv_len)
                    row.slot = dst
            if not n:
                self._kv.release(pool)
        self._rows = live

    def _seed(self, row: _Row) -> None:
        import torch

        if not row.params.greedy:
            g = torch.Generator(device=self._device)
            g.manual_seed(row.params.seed if row.params.seed is not None else int.from_bytes(_urandom8(), "little") >> 1)
            row.generator = g

    def _remember(self, row: _Row) -> None:
        """Keeps the KV states of everything the model has seen for a row, for later prompts."""
        if not self._prefix_cache.enabled or row.kv_len < self._prefix_cache.min_match:
            return
        try:
            evicted = self._prefix_cache.evicted_tokens
            self._prefix_cache.insert(row.seen(), self._kv.read(row.pool, row.slot, row.kv_len))
            if self._prefix_cache.evicted_tokens > evicted:
                PREFIX_CACHE_EVICTED_TOKENS.labels(self._model_label).inc(self._prefix_cache.evicted_tokens - evicted)
        except Exception:  # a cache is an optimisation: never fail the request for it
            log.exception("prefix cache insert failed")

    def _advance_text(self, row: _Row) -> bool:
        """Updates the row's decoded text; finishes it on a stop sequence. Streams safe deltas."""
        row.text = self._tokenizer.decode(row.gen_ids, skip_special_tokens=True)
        stops = row.params.stop
        if stops:
            hits = [row.text.find(s) for s in stops]
            found = [h for h in hits if h >= 0]
            if found:
                row.text = row.text[: min(found)]
                self._end_generation(row, "stop")
                return True
        if row.on_delta is not None:
            # Hold back a possible partial stop sequence and an incomplete UTF-8 character.
            safe = len(row.text) - (max((len(s) for s in stops), default=1) - 1)
            if row.text.endswith("\ufffd"):
                safe = min(safe, len(row.text) - 1)
            if safe > row.emitted:
                row.on_delta(row.text[row.emitted:safe])
                row.emitted = safe
        return False

    def _end_generation(self, row: _Row, reason: str) -> None:
        """The row has its text: remember its KV, then deliver it, or go on to score its rating."""
        if row.on_delta is not None and len(row.text) > row.emitted:
            row.on_delta(row.text[row.emitted:])
            row.emitted = len(row.text)
        self._remember(row)
        row.finish_reason = reason
        if row.score_text is None:
            self._deliver(row, None)
            return
        try:
            ids = self._check_context(self._encode(row.score_text(row.text)), max(row.tree.depths) + 1)
        except Exception as e:
            self._finish_error(row, e)
            return
        # Reuse the KV of the prompt and of as much of the explanation as re-tokenizes the same;
        # at least one token is fed so that its logits give the first continuation token.
        keep = min(common_prefix_len(row.seen(), ids), len(ids) - 1)
        row.kv_len = keep
        row.pending = ids[keep:]
        row.phase = SCORE

    def _deliver(self, row: _Row, scores: list[float] | None) -> None:
        row.phase = ""
        result = GenerationResult(
            text=row.text, finish_reason=row.finish_reason, prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.gen_ids), scores=None if scores is None else tuple(scores),
        )
        row.loop.call_soon_threadsafe(_set_result, row.future, result)

    def _deliver_scores(self, row: _Row, scores: list[float]) -> None:
        if row.score_only:
            self._remember(row)
            row.phase = ""
            row.loop.call_soon_threadsafe(_set_result, row.future, scores)
        else:
            self._deliver(row, scores)

    def _finish_error(self, row: _Row, exc: Exception) -> None:
        row.phase = ""
        row.loop.call_soon_threadsafe(_set_exception, row.future, exc)


def _sample_token(logits: Any, params: GenerationParams, generator: Any) -> int:
    import torch

    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(-1)
        cut = cum - sorted_probs > params.top_p  # keep the smallest set reaching top_p
        sorted_probs[cut] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _urandom8() -> bytes:
    import os

    return os.urandom(8)


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

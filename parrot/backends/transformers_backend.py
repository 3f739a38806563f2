"""The embedded default backend: a Hugging Face causal LM in this process, with dynamic batching.

One worker thread owns the model. Requests from any number of coroutines go into a queue;
at every decode step the worker admits waiting requests (prefills them as a small batch and
merges their KV cache into the running batch, left-padded), runs one forward pass for all
rows, samples one token per row with that row's own settings, and retires rows that hit EOS,
a stop sequence or max_tokens. So a request that arrives while a batch runs joins at the next
step instead of waiting for the batch to end. On a 2-core CPU this is the whole speed lever
(DESIGN.md: 29 tok/s alone, over 200 tok/s at 16 at once).

Scoring jobs (judge ratings) run between decode steps on the same thread, so two forward
passes never compete for the cores.
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
    register_backend,
)
from parrot.backends.prefix_cache import CachedPrefix, PrefixCache
from parrot.conversation import GenerationParams, Message
from parrot.errors import InvalidArgument, NotReady, ResourceExhausted
from parrot.metrics import (
    BATCH_SIZE,
    GENERATED_TOKENS,
    PREFIX_CACHE_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    STAGE_LATENCY,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformersBackendConfig:
    model: str = field(
        default="smollm2",
        metadata={"help": "'smollm2' (the bundled SmolLM2-135M-Instruct) or a Hugging Face model folder."},
    )
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16, float16 or float32."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when available)."})
    max_batch_size: int = field(default=32, metadata={"help": "Most sequences decoded together in one step."})
    batch_wait_ms: float = field(
        default=5.0,
        metadata={"help": "When idle, how long the first request waits for others to arrive and share its prefill."},
    )
    max_queue: int = field(default=1024, metadata={"help": "Waiting requests beyond this get RESOURCE_EXHAUSTED."})
    num_threads: int = field(default=0, metadata={"help": "torch intra-op threads (0 = torch default)."})
    prefix_cache_tokens: int = field(
        default=16384,
        metadata={"help": "KV states of finished sequences kept for reuse by prompts that share their prefix "
                          "(later turns of a session, shared system prompts); a budget in tokens, 0 = off."},
    )


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
    # generate_scored: text -> prefix to score after, and the continuations' token ids.
    scored_prefix: Callable[[str], str] | None = None
    score_cont_ids: list[list[int]] | None = None


@dataclass
class _Job:
    """An exclusive job (scoring) run on the worker thread between steps."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _Running:
    """The batch being decoded: rows, their KV cache, attention mask and positions."""

    def __init__(self, rows: list[_Row], cache: Any, mask: Any, next_pos: Any, last_tokens: Any):
        self.rows = rows
        self.cache = cache
        self.mask = mask
        self.next_pos = next_pos
        self.last_tokens = last_tokens


@register_backend("transformers", TransformersBackendConfig)
class TransformersBackend(Backend):
    supports_scoring = True

    def __init__(self, config: TransformersBackendConfig) -> None:
        super().__init__()
        self.config = config
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._eos_ids: set[int] = set()
        self._max_context = 2048
        self._inbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._model_label = config.model
        self._prefix_cache = PrefixCache(config.prefix_cache_tokens)
        # Counters read by tests and benchmarks.
        self.steps = 0
        self.batches_admitted = 0
        self.max_rows_seen = 0

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model_label

    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)
        self._thread = threading.Thread(target=self._worker, name="parrot-batcher", daemon=True)
        self._thread.start()
        self.ready = True

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from parrot.modelstore import BUNDLED_DIRNAME, BUNDLED_NAME, resolve_model

        t0 = time.monotonic()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        if self.config.dtype not in dtypes:
            raise InvalidArgument("dtype", f"is {self.config.dtype!r}; allowed: {', '.join(dtypes)}")
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = resolve_model(self.config.model)
        self._model_label = BUNDLED_DIRNAME if self.config.model == BUNDLED_NAME else folder.name
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtypes[self.config.dtype])
        model.to(device)
        model.eval()
        self._model = model
        self._device = torch.device(device)
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
            extra={"model": self._model_label, "folder": str(folder), "device": device, "dtype": self.config.dtype,
                   "seconds": round(time.monotonic() - t0, 2)},
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
                "prefix_hits": pc.hits, "prefix_misses": pc.misses, "prefix_hit_tokens": pc.hit_tokens,
                "prefix_cached_tokens": pc.tokens}

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
        ids = self._encode(self.render_prompt(request.messages, request.prefill))
        if len(ids) + request.params.max_tokens > self._max_context:
            raise InvalidArgument(
                "conversation",
                f"{len(ids)} prompt tokens + max_tokens {request.params.max_tokens} exceed the model context "
                f"of {self._max_context} tokens; shorten the conversation or lower max_tokens",
            )
        return ids

    # ---- public API --------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"model {self._model_label} is loading")

    def _submit(self, request: GenerationRequest, on_delta: Callable[[str], None] | None,
                scored_prefix: Callable[[str], str] | None = None, score_cont_ids: list[list[int]] | None = None) -> _Row:
        self._check_ready()
        if self._inbox.qsize() >= self.config.max_queue:
            raise ResourceExhausted(f"generation queue is full ({self.config.max_queue} waiting); retry later")
        loop = asyncio.get_running_loop()
        row = _Row(
            prompt_ids=self._prompt_ids(request), params=request.params, loop=loop,
            future=loop.create_future(), on_delta=on_delta, scored_prefix=scored_prefix, score_cont_ids=score_cont_ids,
        )
        self._inbox.put(row)
        QUEUE_DEPTH.labels(self._model_label).set(self._inbox.qsize())
        return row

    async def _await_row(self, row: _Row) -> GenerationResult:
        try:
            return await row.future
        except asyncio.CancelledError:
            row.cancelled = True  # the worker drops it at the next step
            raise

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        rows = [self._submit(r, None) for r in requests]
        return list(await asyncio.gather(*(self._await_row(r) for r in rows)))

    async def generate_scored(self, requests: Sequence[GenerationRequest], scored_prefix: Callable[[str], str],
                              continuations: Sequence[str]) -> list[GenerationResult]:
        """Generates, then scores the continuations reusing the prompt's KV cache (no second prefill)."""
        if not continuations:
            raise InvalidArgument("continuations", "is empty")
        self._check_ready()
        cont_ids = [self._encode(c) for c in continuations]
        rows = [self._submit(r, None, lambda text, p=r.prefill: p + scored_prefix(text), cont_ids) for r in requests]
        return list(await asyncio.gather(*(self._await_row(r) for r in rows)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        deltas: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        row = self._submit(request, lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d))
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
        if not continuations:
            raise InvalidArgument("continuations", "is empty")
        prompt_ids = self._encode(self.render_prompt(messages, prefill))
        cont_ids = [self._encode(c) for c in continuations]
        if len(prompt_ids) + max(len(c) for c in cont_ids) > self._max_context:
            raise InvalidArgument("conversation", f"{len(prompt_ids)} prompt tokens exceed the model context of {self._max_context}")
        loop = asyncio.get_running_loop()
        job = _Job(fn=lambda: self._score_sync(prompt_ids, cont_ids), loop=loop, future=loop.create_future())
        self._inbox.put(job)
        return await job.future

    # ---- worker thread -------------------------------------------------------------------

    def _worker(self) -> None:
        import torch

        running: _Running | None = None
        waiting: list[_Row] = []
        with torch.inference_mode():
            while not self._stop.is_set():
                idle = running is None and not waiting
                jobs = self._drain_inbox(waiting, block=idle)
                for job in jobs:
                    self._run_job(job)
                waiting = [r for r in waiting if not r.cancelled]
                if waiting and (running is None or len(running.rows) < self.config.max_batch_size):
                    running = self._admit(running, waiting)
                if running is not None:
                    try:
                        running = self._decode_step(running)
                    except Exception as e:  # fail the rows, keep serving
                        log.exception("decode step failed")
                        for row in running.rows:
                            self._finish_error(row, e)
                        running = None
        for row in waiting + (running.rows if running else []):
            self._finish_error(row, NotReady("server is shutting down"))

    def _drain_inbox(self, waiting: list[_Row], block: bool) -> list[_Job]:
        jobs: list[_Job] = []
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return jobs
        first_at = time.monotonic()
        while True:
            if isinstance(item, _Job):
                jobs.append(item)
            elif isinstance(item, _Row):
                waiting.append(item)
            try:
                if block and self.config.batch_wait_ms > 0:
                    # Idle: give concurrent requests a moment to arrive and share the prefill.
                    left = self.config.batch_wait_ms / 1000 - (time.monotonic() - first_at)
                    item = self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait()
                else:
                    item = self._inbox.get_nowait()
            except queue.Empty:
                break
        QUEUE_DEPTH.labels(self._model_label).set(len(waiting))
        return jobs

    def _run_job(self, job: _Job) -> None:
        try:
            out = job.fn()
        except Exception as e:
            job.loop.call_soon_threadsafe(_set_exception, job.future, e)
        else:
            job.loop.call_soon_threadsafe(_set_result, job.future, out)

    def _admit(self, running: _Running | None, waiting: list[_Row]) -> _Running | None:
        room = self.config.max_batch_size - (len(running.rows) if running else 0)
        new, waiting[:] = waiting[:room], waiting[room:]
        now = time.monotonic()
        for r in new:
            STAGE_LATENCY.labels(self._model_label, "queue").observe(now - r.enqueued_at)
        # A prompt that extends a cached sequence (the session's previous turn, a shared system
        # prompt) runs only its new suffix; the rest prefill in groups of similar prompt length, so
        # that short prompts are not padded to the longest one (prefill dominates on CPU).
        cold: list[_Row] = []
        for r in new:
            hit = self._prefix_cache.lookup(r.prompt_ids)
            if hit is None:
                cold.append(r)
                continue
            fresh = self._prefill_cached(r, *hit)
            if fresh is not None:
                running = fresh if running is None else self._merge(running, fresh)
        for group in _length_groups(cold):
            fresh = self._prefill(group)
            if fresh is not None:
                running = fresh if running is None else self._merge(running, fresh)
        return running

    def _prefill(self, rows: list[_Row]) -> _Running | None:
        import torch
        from transformers import DynamicCache

        t0 = time.monotonic()
        longest = max(len(r.prompt_ids) for r in rows)
        pad = self._tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (longest - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=self._device)
        mask = torch.tensor(
            [[0] * (longest - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows], device=self._device
        )
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True, logits_to_keep=1)
        self.steps += 1
        self.batches_admitted += 1
        BATCH_SIZE.labels(self._model_label).observe(len(rows))
        for r in rows:
            PROMPT_TOKENS.labels(self._model_label, self.name).inc(len(r.prompt_ids))
            self._seed(r)
        batch = _Running(rows, out.past_key_values, mask, mask.sum(-1), None)
        STAGE_LATENCY.labels(self._model_label, "prefill").observe(time.monotonic() - t0)
        return self._sample_and_retire(batch, out.logits[:, -1, :])

    def _prefill_cached(self, row: _Row, entry: CachedPrefix, reuse: int) -> _Running | None:
        """Prefills one row whose first ``reuse`` prompt tokens have cached KV states."""
        import torch
        from transformers import DynamicCache

        t0 = time.monotonic()
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :reuse], v[:, :, :reuse]) for k, v in entry.layers])
        total = len(row.prompt_ids)
        ids = torch.tensor([row.prompt_ids[reuse:]], device=self._device)
        mask = torch.ones((1, total), dtype=torch.long, device=self._device)
        pos = torch.arange(reuse, total, device=self._device)[None]
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True, logits_to_keep=1)
        self.steps += 1
        self.batches_admitted += 1
        BATCH_SIZE.labels(self._model_label).observe(1)
        PROMPT_TOKENS.labels(self._model_label, self.name).inc(total)
        PREFIX_CACHE_TOKENS.labels(self._model_label).inc(reuse)
        self._seed(row)
        batch = _Running([row], out.past_key_values, mask, mask.sum(-1), None)
        STAGE_LATENCY.labels(self._model_label, "prefill").observe(time.monotonic() - t0)
        return self._sample_and_retire(batch, out.logits[:, -1, :])

    def _seed(self, row: _Row) -> None:
        import torch

        if not row.params.greedy:
            g = torch.Generator(device=self._device)
            g.manual_seed(row.params.seed if row.params.seed is not None else int.from_bytes(_urandom8(), "little") >> 1)
            row.generator = g

    def _remember(self, batch: _Running, index: int, row: _Row) -> None:
        """Keeps the KV states of everything the model has seen for a finishing row."""
        if not self._prefix_cache.enabled:
            return
        columns = batch.mask[index].nonzero().squeeze(-1)
        fed = len(columns) - len(row.prompt_ids)  # generated tokens already run through the model
        if fed < 0:
            return
        layers = [(layer.keys[index:index + 1, :, columns], layer.values[index:index + 1, :, columns])
                  for layer in batch.cache.layers]
        self._prefix_cache.insert(row.prompt_ids + row.gen_ids[:fed], layers)

    def _merge(self, a: _Running, b: _Running) -> _Running:
        """Joins two running batches: left-pads the shorter KV cache and mask, concatenates rows."""
        import torch

        la, lb = a.mask.shape[1], b.mask.shape[1]
        length = max(la, lb)

        def pad_left(t: Any, n: int, dim: int) -> Any:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        for layer_a, layer_b in zip(a.cache.layers, b.cache.layers):
            layer_a.keys = torch.cat([pad_left(layer_a.keys, length - la, 2), pad_left(layer_b.keys, length - lb, 2)], 0)
            layer_a.values = torch.cat(
                [pad_left(layer_a.values, length - la, 2), pad_left(layer_b.values, length - lb, 2)], 0
            )
        mask = torch.cat([pad_left(a.mask, length - la, 1), pad_left(b.mask, length - lb, 1)], 0)
        return _Running(
            a.rows + b.rows, a.cache, mask, torch.cat([a.next_pos, b.next_pos]),
            torch.cat([a.last_tokens, b.last_tokens]),
        )

    def _decode_step(self, batch: _Running) -> _Running | None:
        import torch

        t0 = time.monotonic()
        ones = torch.ones((batch.mask.shape[0], 1), dtype=batch.mask.dtype, device=self._device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self._model(
            input_ids=batch.last_tokens[:, None], attention_mask=batch.mask, position_ids=batch.next_pos[:, None],
            past_key_values=batch.cache, use_cache=True, logits_to_keep=1,
        )
        self.steps += 1
        batch.next_pos = batch.next_pos + 1
        self.max_rows_seen = max(self.max_rows_seen, len(batch.rows))
        STAGE_LATENCY.labels(self._model_label, "decode_step").observe(time.monotonic() - t0)
        return self._sample_and_retire(batch, out.logits[:, -1, :])

    def _sample_and_retire(self, batch: _Running, logits: Any) -> _Running | None:
        """Samples one token per row, finishes rows that are done, and shrinks the batch."""
        import torch

        tokens = logits.argmax(dim=-1)
        for i, row in enumerate(batch.rows):
            if not row.params.greedy:
                tokens[i] = _sample(logits[i].float(), row.params, row.generator)
        token_list = tokens.tolist()
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(batch.rows, token_list)):
            if row.cancelled:
                continue
            if tok in self._eos_ids:
                self._finish(row, "stop", batch, i)
                continue
            row.gen_ids.append(tok)
            if self._advance_text(row, batch, i):
                continue
            if len(row.gen_ids) >= row.params.max_tokens:
                self._finish(row, "length", batch, i)
                continue
            keep.append(i)
        GENERATED_TOKENS.labels(self._model_label, self.name).inc(len(batch.rows))
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            idx = torch.tensor(keep, device=self._device)
            batch.cache.batch_select_indices(idx)
            batch.rows = [batch.rows[i] for i in keep]
            batch.mask = batch.mask[idx]
            batch.next_pos = batch.next_pos[idx]
            tokens = tokens[idx]
            # Drop leading columns that are padding for every remaining row.
            first_used = int(batch.mask.any(dim=0).int().argmax())
            if first_used > 0:
                batch.mask = batch.mask[:, first_used:]
                for layer in batch.cache.layers:
                    layer.keys = layer.keys[:, :, first_used:]
                    layer.values = layer.values[:, :, first_used:]
        batch.last_tokens = tokens
        return batch

    def _advance_text(self, row: _Row, batch: _Running, index: int) -> bool:
        """Updates the row's decoded text; finishes it on a stop sequence. Streams safe deltas."""
        row.text = self._tokenizer.decode(row.gen_ids, skip_special_tokens=True)
        stops = row.params.stop
        if stops:
            hits = [row.text.find(s) for s in stops]
            found = [h for h in hits if h >= 0]
            if found:
                row.text = row.text[: min(found)]
                self._finish(row, "stop", batch, index)
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

    def _finish(self, row: _Row, reason: str, batch: _Running | None = None, index: int = -1) -> None:
        if row.on_delta is not None and len(row.text) > row.emitted:
            row.on_delta(row.text[row.emitted:])
            row.emitted = len(row.text)
        scores = None
        if batch is not None:
            try:
                self._remember(batch, index, row)
            except Exception:  # a cache is an optimisation: never fail the request for it
                log.exception("prefix cache insert failed")
        if row.scored_prefix is not None and batch is not None:
            try:
                scores = tuple(self._score_row(batch, index, row))
            except Exception as e:
                log.exception("scoring after generation failed")
                self._finish_error(row, e)
                return
        result = GenerationResult(
            text=row.text, finish_reason=reason, prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.gen_ids),
            scores=scores,
        )
        row.loop.call_soon_threadsafe(_set_result, row.future, result)

    def _score_row(self, batch: _Running, index: int, row: _Row) -> list[float]:
        """Scores a finished row's continuations from its prompt's KV cache, still held by the batch."""
        from transformers import DynamicCache

        assert row.scored_prefix is not None and row.score_cont_ids is not None
        columns = batch.mask[index].nonzero().squeeze(-1)[: len(row.prompt_ids)]  # the prompt's own positions
        cache = DynamicCache(ddp_cache_data=[
            (layer.keys[index:index + 1, :, columns], layer.values[index:index + 1, :, columns])
            for layer in batch.cache.layers
        ])
        prefix_ids = self._encode(row.scored_prefix(row.text))
        return self._score_from(cache, len(row.prompt_ids), prefix_ids, row.score_cont_ids)

    def _finish_error(self, row: _Row, exc: Exception) -> None:
        row.loop.call_soon_threadsafe(_set_exception, row.future, exc)

    def _score_sync(self, prompt_ids: list[int], cont_ids: list[list[int]]) -> list[float]:
        """Sum of log-probabilities of each continuation after the prompt (one prefill, one batch)."""
        from transformers import DynamicCache

        return self._score_from(DynamicCache(), 0, prompt_ids, cont_ids)

    def _score_from(self, cache: Any, past: int, prefix_ids: list[int], cont_ids: list[list[int]]) -> list[float]:
        """Feeds ``prefix_ids`` after ``past`` cached tokens, then scores every continuation in one batch."""
        import torch

        t0 = time.monotonic()
        if not prefix_ids:
            raise InvalidArgument("prefill", "the scored prefix is empty")
        total = past + len(prefix_ids)
        ids = torch.tensor([prefix_ids], device=self._device)
        pos = torch.arange(past, total, device=self._device)[None]
        mask = torch.ones((1, total), dtype=torch.long, device=self._device)
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                          logits_to_keep=1)
        first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        n = len(cont_ids)
        longest = max(len(c) for c in cont_ids)
        scores = [float(first_logp[c[0]]) for c in cont_ids]
        if longest > 1:
            cache.batch_repeat_interleave(n)
            pad = self._tokenizer.pad_token_id
            rest = torch.tensor([c + [pad] * (longest - len(c)) for c in cont_ids], device=self._device)
            mask2 = torch.cat(
                [torch.ones((n, total), dtype=torch.long, device=self._device),
                 torch.tensor([[1] * len(c) + [0] * (longest - len(c)) for c in cont_ids], device=self._device)], 1
            )
            pos2 = torch.arange(total, total + longest, device=self._device)[None].expand(n, -1)
            out2 = self._model(input_ids=rest, attention_mask=mask2, position_ids=pos2, past_key_values=cache, use_cache=True)
            logp = torch.log_softmax(out2.logits.float(), dim=-1)
            for i, c in enumerate(cont_ids):
                for j in range(1, len(c)):
                    scores[i] += float(logp[i, j - 1, c[j]])
        self.steps += 1
        STAGE_LATENCY.labels(self._model_label, "score").observe(time.monotonic() - t0)
        return scores


def _length_groups(rows: list[_Row], slack: float = 1.25, min_pad: int = 32) -> list[list[_Row]]:
    """Splits rows into groups whose longest prompt is at most ``slack`` x the shortest (+ min_pad)."""
    groups: list[list[_Row]] = []
    for row in sorted(rows, key=lambda r: len(r.prompt_ids)):
        if groups and len(row.prompt_ids) <= len(groups[-1][0].prompt_ids) * slack + min_pad:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _sample(logits: Any, params: GenerationParams, generator: Any) -> int:
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


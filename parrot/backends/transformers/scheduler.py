"""The continuous-batching scheduler of the ``transformers`` backend: the worker thread.

Requests from any number of coroutines go into a queue. Every step the worker admits waiting
requests into free *slots* of its KV buffers and runs **one** forward pass for all rows together
(``parrot.backends.transformers.ragged``): one token for each decoding row, plus the new part of
each admitted prompt (whatever the prefix cache or a row being decoded cannot supply, in chunks of
at most ``prefill_chunk_tokens`` per step), plus the scored prefix and rating continuations of judge
rows that finished their explanation. It then samples one token per row with that row's own
settings and retires rows that hit EOS, a stop sequence or max_tokens.

``BatchScheduler`` is the worker half of ``TransformersBackend`` (``backend.py``, the adapter: model
loading, prompts, the Backend API); the two share the backend's state.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from parrot.backends.base import GenerationResult
from parrot.backends.transformers.prefix_cache import common_prefix_len
from parrot.conversation import GenerationParams
from parrot.errors import NotReady
from parrot.metrics import (
    BATCH_SIZE,
    GENERATED_TOKENS,
    PREFIX_CACHE_EVICTED_TOKENS,
    PREFIX_CACHE_TOKENS,
    PROMPT_TOKENS,
    STAGE_LATENCY,
)

log = logging.getLogger(__name__)

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


class BatchScheduler:
    """The worker thread: admits rows, steps the model for all of them, samples, scores, retires."""

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

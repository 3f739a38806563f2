"""A prefix cache of KV states for the transformers backend.

Multi-turn traffic repeats itself: turn k+1 of a session is turn k's prompt plus the answer plus
one new question, and every judge prompt starts with the same long instructions. Re-running the
model over those tokens (prefill) dominates the cost of long conversations on CPU. When a
request finishes, the batcher stores the KV states of everything the model has seen for it
(prompt + generated tokens); a new prompt that starts with the same tokens reuses them and only
its new suffix is prefilled.

Entries are keyed by token ids, so any cached sequence serves any prompt that shares a prefix
with it (keys and values of a causal model at position i depend only on tokens 0..i). Capacity is
a budget of cached tokens; the least recently used entries go first. Owned by the batcher's
single worker thread (no locking).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class CachedPrefix:
    tokens: list[int]
    # Per layer (keys, values), each [1, heads, len(tokens), head_dim].
    layers: list[tuple[Any, Any]]


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (binary search on C-level slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # a[:lo] == b[:lo] holds; the answer is at most hi
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    def __init__(self, max_tokens: int, min_match: int = 16) -> None:
        self.max_tokens = max_tokens
        self.min_match = min_match
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._next_id = 0
        self.tokens = 0
        self.hits = 0
        self.misses = 0
        self.hit_tokens = 0
        self.evicted_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def lookup(self, prompt: list[int]) -> tuple[CachedPrefix, int] | None:
        """The entry sharing the longest prefix with ``prompt`` and that length, leaving at least one
        prompt token to run (the model must produce logits for the last one); None below min_match."""
        if not self.enabled:
            return None
        best_id, best_len = -1, 0
        limit = len(prompt) - 1
        for key, entry in self._entries.items():
            if entry.tokens[0] != prompt[0]:
                continue
            n = min(common_prefix_len(entry.tokens, prompt), limit)
            if n > best_len:
                best_id, best_len = key, n
        if best_len < self.min_match:
            self.misses += 1
            return None
        self._entries.move_to_end(best_id)
        self.hits += 1
        self.hit_tokens += best_len
        return self._entries[best_id], best_len

    def insert(self, tokens: list[int], layers: list[tuple[Any, Any]]) -> None:
        """Stores a sequence's KV states; entries that are prefixes of it are dropped (it covers them)."""
        if not self.enabled or len(tokens) < self.min_match or len(tokens) > self.max_tokens:
            return
        for key in [k for k, e in self._entries.items()
                    if len(e.tokens) <= len(tokens) and tokens[:len(e.tokens)] == e.tokens]:
            self.tokens -= len(self._entries.pop(key).tokens)
        self._entries[self._next_id] = CachedPrefix(tokens, layers)
        self._next_id += 1
        self.tokens += len(tokens)
        while self.tokens > self.max_tokens:
            _, old = self._entries.popitem(last=False)
            self.tokens -= len(old.tokens)
            self.evicted_tokens += len(old.tokens)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

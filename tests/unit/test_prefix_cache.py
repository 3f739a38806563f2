"""The prefix cache's bookkeeping (the model path is tested in test_transformers_backend.py)."""

from __future__ import annotations

import pytest

from parrot.backends.transformers.prefix_cache import PrefixCache, common_prefix_len


@pytest.mark.parametrize("a,b,n", [
    ([], [], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2, 3], [4], 0),
    ([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], 2), (list(range(1000)), list(range(999)) + [0], 999),
])
def test_common_prefix_len(a, b, n):
    assert common_prefix_len(a, b) == n == common_prefix_len(b, a)


def layers(n: int) -> list:
    return [(f"k{n}", f"v{n}")]


def test_lookup_picks_the_longest_shared_prefix_and_leaves_one_token_to_run():
    c = PrefixCache(max_tokens=1000, min_match=3)
    c.insert([1, 2, 3, 4, 5, 6], layers(1))
    c.insert([1, 2, 3, 7, 8], layers(2))
    entry, n = c.lookup([1, 2, 3, 4, 5, 9])
    assert entry.layers == layers(1) and n == 5
    entry, n = c.lookup([1, 2, 3, 7, 8])  # an exact repeat still runs its last token
    assert entry.layers == layers(2) and n == 4
    assert c.lookup([1, 2, 9, 9]) is None  # 2 shared tokens: below min_match
    assert (c.hits, c.misses, c.hit_tokens) == (2, 1, 9)


def test_insert_drops_entries_it_extends_and_evicts_least_recently_used():
    c = PrefixCache(max_tokens=10, min_match=2)
    c.insert([1, 2, 3], layers(1))
    c.insert([1, 2, 3, 4, 5], layers(2))  # extends the first: it replaces it
    assert len(c) == 1 and c.tokens == 5
    c.insert([7, 8, 9], layers(3))
    c.lookup([1, 2, 3, 4, 5, 6])  # touch the first entry: [7, 8, 9] is now the oldest
    c.insert([4, 4, 4, 4], layers(4))  # 12 tokens > 10: evict the least recently used
    assert c.tokens == 9 and c.lookup([7, 8, 9, 1]) is None
    assert c.lookup([1, 2, 3, 4, 5, 6]) is not None


def test_disabled_and_oversized():
    off = PrefixCache(max_tokens=0)
    off.insert(list(range(50)), layers(1))
    assert len(off) == 0 and off.lookup(list(range(60))) is None
    small = PrefixCache(max_tokens=20, min_match=2)
    small.insert(list(range(21)), layers(1))  # larger than the whole budget: not kept
    assert len(small) == 0

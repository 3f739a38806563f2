"""Ragged steps for the transformers backend: every row of a step in one forward pass.

The batcher's rows live in *slots* of KV buffers, ``[slots, kv_heads, capacity, head_dim]`` per
layer; each row has its own length (right-padded: no left padding, and nothing is copied when a
row joins, one row's columns when one leaves). The slots come in two *pools*: decode attention
reads every slot of a pool up to the pool's longest row, so short answers and long judge prompts
go to different pools instead of being padded to each other. A step feeds the model one packed
sequence ``[1, T]``:

* one token for every decoding row, and
* *segments*: the new part of an admitted prompt (after what the prefix cache supplied), or a
  judge's scored prefix followed by the rating continuations laid out as a token tree.

The model's linear layers see all T tokens together, so the weights are read once per step: on a
CPU a short prefill costs what its tokens cost, not a whole extra forward pass. Attention is the
only ragged part (``ragged_attention``): one SDPA call for the decoding rows of each pool (each
row masked to its own length), and one per segment, with a causal mask or the segment's tree mask.

Plugged into transformers as an attention implementation (``parrot_ragged``) plus a ``Cache``
whose ``update`` writes the step's keys and values into the slots. A forward pass without a
``ragged`` plan (``model.generate`` in tests, training code) falls through to plain SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

ATTN_IMPLEMENTATION = "parrot_ragged"

# Spare KV columns allocated past what is needed when the buffer grows (amortizes the copy).
MIN_HEADROOM = 64


# ---- continuation trees (scoring) ------------------------------------------------------


@dataclass(frozen=True)
class ContinuationTree:
    """Continuations as a token trie, flattened: scoring them all costs one pass over the nodes.

    Node i holds ``tokens[i]`` at depth ``depths[i]`` below ``parents[i]`` (-1: it follows the
    scored prefix). ``paths[c]`` lists the nodes of continuation c in order.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, continuations: Sequence[Sequence[int]]) -> "ContinuationTree":
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for cont in continuations:
            if not cont:
                raise ValueError("a continuation has no tokens")
            node, path = -1, []
            for depth, tok in enumerate(cont):
                key = (node, tok)
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(tok)
                    parents.append(node)
                    depths.append(depth)
                node = children[key]
                path.append(node)
            paths.append(tuple(path))
        return cls(tuple(tokens), tuple(parents), tuple(depths), tuple(paths))

    @cached_property
    def attend(self) -> torch.Tensor:
        """[nodes, nodes] bool: node i sees itself and its ancestors (built once per tree)."""
        n = len(self.tokens)
        mask = torch.zeros((n, n), dtype=torch.bool)
        for i in range(n):
            j = i
            while j >= 0:
                mask[i, j] = True
                j = self.parents[j]
        return mask

    def logprobs(self, first: torch.Tensor, nodes: torch.Tensor) -> list[float]:
        """Sum of log-probabilities of each continuation.

        ``first``: [vocab] log-probabilities after the scored prefix; ``nodes``: [nodes, vocab]
        log-probabilities after each node.
        """
        out = []
        for path in self.paths:
            total = 0.0
            prev = -1
            for node in path:
                dist = first if prev < 0 else nodes[prev]
                total += float(dist[self.tokens[node]])
                prev = node
            out.append(total)
        return out


# ---- one step's layout -------------------------------------------------------------------


@dataclass
class Segment:
    """Tokens fed to one slot after its first ``start`` KV columns."""

    pool: int
    slot: int
    start: int
    tokens: list[int]
    tree: ContinuationTree | None = None  # appended after ``tokens`` when scoring

    @property
    def length(self) -> int:
        return len(self.tokens) + (len(self.tree.tokens) if self.tree else 0)


@dataclass
class DecodeGroup:
    """The decoding rows of one pool: packed tokens [first, first + count), one SDPA call."""

    pool: int
    first: int
    count: int
    active_slots: int  # attention runs over slots [0, active_slots) of the pool
    scatter: torch.Tensor | None  # [count] slot of each token; None when it is arange(active_slots)
    mask: torch.Tensor  # [active_slots, 1, 1, length]
    length: int


@dataclass
class StepPlan:
    """Where every packed token goes, and the masks its attention needs. Built once per step."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    # Per pool: (packed token indices or None for "all tokens", slot of each, KV column of each).
    writes: list[tuple[int, torch.Tensor | None, torch.Tensor, torch.Tensor]]
    decode: list[DecodeGroup]
    # (first packed index, end, pool, slot, kv length, mask [1, 1, n, kv length])
    segments: list[tuple[int, int, int, int, int, torch.Tensor]] = field(default_factory=list)


def build_plan(decode: Sequence[tuple[int, int, int, int]], segments: Sequence[Segment], active: Sequence[int],
               device: torch.device) -> StepPlan:
    """``decode``: (pool, slot, token, kv length before the token) per decoding row, sorted by (pool, slot);
    ``active``: rows held by each pool (its slots [0, n) are in use)."""
    ids: list[int] = []
    pos: list[int] = []
    where: list[list[tuple[int, int, int]]] = [[] for _ in active]  # per pool: (packed index, slot, column)
    groups: list[DecodeGroup] = []
    for pool in range(len(active)):
        rows = [d for d in decode if d[0] == pool]
        if not rows:
            continue
        first = len(ids)
        length = max(n for *_, n in rows) + 1
        lengths = torch.ones(active[pool], dtype=torch.long)  # idle slots see column 0 only (no NaN rows)
        for i, (_, slot, token, n) in enumerate(rows):
            ids.append(token)
            pos.append(n)
            where[pool].append((first + i, slot, n))
            lengths[slot] = n + 1
        mask = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :].to(device)
        order = [slot for _, slot, _, _ in rows]
        scatter = None if order == list(range(active[pool])) else torch.tensor(order, dtype=torch.long, device=device)
        groups.append(DecodeGroup(pool, first, len(rows), active[pool], scatter, mask, length))
    seg_info = []
    for seg in segments:
        first = len(ids)
        n_plain = len(seg.tokens)
        ids.extend(seg.tokens)
        pos.extend(range(seg.start, seg.start + n_plain))
        intra = torch.ones((n_plain, n_plain), dtype=torch.bool).tril()
        if seg.tree is not None:
            tree = seg.tree
            ids.extend(tree.tokens)
            base = seg.start + n_plain
            pos.extend(base + d for d in tree.depths)
            n = n_plain + len(tree.tokens)
            full = torch.zeros((n, n), dtype=torch.bool)
            full[:n_plain, :n_plain] = intra
            full[n_plain:, :n_plain] = True
            full[n_plain:, n_plain:] = tree.attend
            intra = full
        n = seg.length
        where[seg.pool].extend((first + i, seg.slot, seg.start + i) for i in range(n))
        kv_len = seg.start + n
        mask = torch.cat([torch.ones((n, seg.start), dtype=torch.bool), intra], dim=1)[None, None].to(device)
        seg_info.append((first, first + n, seg.pool, seg.slot, kv_len, mask))
    writes = []
    for pool, items in enumerate(where):
        if not items:
            continue
        index = [i for i, _, _ in items]
        packed = None if index == list(range(len(ids))) else torch.tensor(index, dtype=torch.long, device=device)
        writes.append((pool, packed, torch.tensor([s for _, s, _ in items], dtype=torch.long, device=device),
                       torch.tensor([c for _, _, c in items], dtype=torch.long, device=device)))
    return StepPlan(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        position_ids=torch.tensor([pos], dtype=torch.long, device=device),
        writes=writes, decode=groups, segments=seg_info,
    )


# ---- the KV slots ------------------------------------------------------------------------


class _Pool:
    """One group of slots: per-layer KV buffers ``[slots, kv_heads, capacity, head_dim]``."""

    def __init__(self, owner: "SlotCache") -> None:
        self.owner = owner
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def slots(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def reserve(self, slots: int, columns: int) -> None:
        have_s, have_c = self.slots, self.capacity
        if slots <= have_s and columns <= have_c:
            return
        # Slots grow by half again (rows usually arrive one by one); columns with headroom.
        new_s = have_s if slots <= have_s else max(slots, have_s + max(2, have_s // 2))
        new_c = have_c if columns <= have_c else columns + max(MIN_HEADROOM, columns // 4)
        o = self.owner
        shape = (new_s, o.kv_heads, new_c, o.head_dim)
        for store in (self.keys, self.values):
            for i in range(o.num_layers):
                # Zeros, not empty: unused columns are read under a mask, and NaN garbage would leak through.
                fresh = torch.zeros(shape, dtype=o.dtype, device=o.device)
                if i < len(store):
                    fresh[:have_s, :, :have_c] = store[i]
                    store[i] = fresh
                else:
                    store.append(fresh)

    def release(self) -> None:
        self.keys.clear()
        self.values.clear()


class SlotCache(Cache):
    """The batcher's KV slots, in ``pools`` groups so that rows of very different lengths are not
    padded to each other in decode attention; the batcher owns the rows' places and lengths."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 pools: int = 2) -> None:
        super().__init__(layers=[])
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.pools = [_Pool(self) for _ in range(pools)]
        self.plan: StepPlan | None = None

    def reserve(self, pool: int, slots: int, columns: int) -> None:
        """Makes room in a pool for ``slots`` rows of ``columns`` KV columns (keeps the contents)."""
        self.pools[pool].reserve(slots, columns)

    def release(self, pool: int | None = None) -> None:
        """Frees a pool's buffers (all pools by default); the batcher calls this when one holds no row."""
        for i, p in enumerate(self.pools):
            if pool is None or i == pool:
                p.release()

    def load(self, pool: int, slot: int, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Copies the first ``length`` columns of per-layer (keys, values) ``[1, h, n, d]`` into a slot."""
        p = self.pools[pool]
        for i, (k, v) in enumerate(layers):
            p.keys[i][slot, :, :length] = k[0, :, :length]
            p.values[i][slot, :, :length] = v[0, :, :length]

    def read(self, pool: int, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of a slot's first ``length`` columns, per layer, as ``[1, h, length, d]``."""
        p = self.pools[pool]
        return [(k[slot:slot + 1, :, :length].clone(), v[slot:slot + 1, :, :length].clone())
                for k, v in zip(p.keys, p.values)]

    def copy(self, src: tuple[int, int], dst: tuple[int, int], length: int) -> None:
        """Copies the first ``length`` columns of slot ``src`` = (pool, slot) to ``dst``."""
        a, b = self.pools[src[0]], self.pools[dst[0]]
        for ta, tb in ((a.keys, b.keys), (a.values, b.values)):
            for x, y in zip(ta, tb):
                y[dst[1], :, :length] = x[src[1], :, :length]

    # transformers' Cache interface, as LlamaAttention uses it
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[Any, Any]:
        plan = self.plan
        assert plan is not None, "SlotCache.update outside a ragged step"
        k_new = key_states[0].transpose(0, 1)  # [T, heads, dim]
        v_new = value_states[0].transpose(0, 1)
        for pool, packed, slots, cols in plan.writes:
            p = self.pools[pool]
            p.keys[layer_idx][slots, :, cols] = k_new if packed is None else k_new[packed]
            p.values[layer_idx][slots, :, cols] = v_new if packed is None else v_new[packed]
        # The attention function gets every pool's buffers of this layer.
        return ([p.keys[layer_idx] if p.keys else None for p in self.pools],
                [p.values[layer_idx] if p.values else None for p in self.pools])


def ragged_attention(module: torch.nn.Module, query: torch.Tensor, key: Any, value: Any,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     ragged: StepPlan | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention for a packed step (see the module docstring); plain SDPA when there is no plan."""
    if ragged is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q = query[0]  # [heads, T, dim]
    heads, total, dim = q.shape
    out = query.new_empty((total, heads, dim))
    for g in ragged.decode:
        k, v = key[g.pool], value[g.pool]
        qd = q[:, g.first:g.first + g.count].transpose(0, 1)  # [count, heads, dim]
        if g.scatter is None:
            qs = qd[:, :, None, :]
        else:
            qs = query.new_zeros((g.active_slots, heads, 1, dim))
            qs[g.scatter, :, 0] = qd
        o = F.scaled_dot_product_attention(qs, k[: g.active_slots, :, : g.length], v[: g.active_slots, :, : g.length],
                                           attn_mask=g.mask, scale=scaling, enable_gqa=True)
        out[g.first:g.first + g.count] = o[:, :, 0] if g.scatter is None else o[g.scatter, :, 0]
    for first, end, pool, slot, kv_len, mask in ragged.segments:
        k, v = key[pool], value[pool]
        o = F.scaled_dot_product_attention(
            q[None, :, first:end], k[slot:slot + 1, :, :kv_len], v[slot:slot + 1, :, :kv_len],
            attn_mask=mask, scale=scaling, enable_gqa=True)
        out[first:end] = o[0].transpose(0, 1)
    return out[None], None


def install(model: Any) -> None:
    """Registers the ragged attention with transformers and switches ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, ragged_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)  # for passes without a plan
    model.set_attn_implementation(ATTN_IMPLEMENTATION)

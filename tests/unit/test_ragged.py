"""Ragged steps (parrot.backends.transformers.ragged) on a tiny random Llama: packed rows, segments and
continuation trees give the logits of ordinary one-sequence forward passes; the KV slots keep
their contents through growth and copies; packed CPU linear layers match nn.Linear."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parrot.backends.transformers import cpu_linear
from parrot.backends.transformers.ragged import ContinuationTree, Segment, SlotCache, build_plan, install

NO_MASK = torch.ones((1, 1, 1, 1), dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    install(m)
    return m


def slots(model, pools: int = 2) -> SlotCache:
    cfg = model.config
    return SlotCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads,
                     torch.float32, torch.device("cpu"), pools=pools)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits of every position of one sequence, by an ordinary forward pass (SDPA, causal)."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


def step(model, kv: SlotCache, decode, segments, active, keep):
    plan = build_plan(decode, segments, active, torch.device("cpu"))
    kv.plan = plan
    with torch.inference_mode():
        out = model(input_ids=plan.input_ids, position_ids=plan.position_ids, attention_mask=NO_MASK,
                    past_key_values=kv, use_cache=True, logits_to_keep=torch.tensor(keep), ragged=plan)
    kv.plan = None
    return out.logits[0]


def test_continuation_tree_shares_prefixes():
    tree = ContinuationTree.build([[5, 9], [6, 9], [5, 7, 9], [5, 9]])
    assert tree.tokens == (5, 9, 6, 9, 7, 9)
    assert tree.parents == (-1, 0, -1, 2, 0, 4)
    assert tree.depths == (0, 1, 0, 1, 1, 2)
    assert tree.paths == ((0, 1), (2, 3), (0, 4, 5), (0, 1))
    mask = tree.attend
    assert mask[5].tolist() == [True, False, False, False, True, True]  # node 5 sees 0 and 4 and itself
    with pytest.raises(ValueError):
        ContinuationTree.build([[1], []])


def test_packed_step_matches_one_sequence_forward_passes(model):
    """Two prompts fed as segments of one step, then decoded with a third joining mid-way, in two
    pools: every logit equals that of an ordinary forward pass over the same sequence."""
    prompts = [[3, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59], [16, 18, 3, 39, 88, 74, 9, 4, 1, 10, 33]]
    kv = slots(model)
    for pool in (0, 1):
        kv.reserve(pool, 2, 64)
    place = {0: (0, 0), 1: (1, 0), 2: (0, 1)}  # row -> (pool, slot)
    seqs = {0: list(prompts[0]), 1: list(prompts[1])}
    logits = step(model, kv, [], [Segment(*place[0], 0, prompts[0]), Segment(*place[1], 0, prompts[1])], [1, 1],
                  [len(prompts[0]) - 1, len(prompts[0]) + len(prompts[1]) - 1])
    for row, lg in zip((0, 1), logits):
        assert torch.allclose(lg, full_logits(model, seqs[row])[-1], atol=1e-4)
        seqs[row].append(int(lg.argmax()))
    for t in range(4):
        joining = t == 1
        decode = sorted((*place[r], seqs[r][-1], len(seqs[r]) - 1) for r in seqs)
        rows = [r for r in sorted(seqs, key=lambda r: place[r])]
        segments = [Segment(*place[2], 0, prompts[2])] if joining else []
        active = [1 + (2 in seqs or joining), 1]
        keep = list(range(len(decode))) + ([len(decode) + len(prompts[2]) - 1] if joining else [])
        logits = step(model, kv, decode, segments, active, keep)
        for r, lg in zip(rows, logits):
            assert torch.allclose(lg, full_logits(model, seqs[r])[-1], atol=1e-4), (t, r)
            seqs[r].append(int(lg.argmax()))
        if joining:
            seqs[2] = list(prompts[2])
            assert torch.allclose(logits[-1], full_logits(model, seqs[2])[-1], atol=1e-4)
            seqs[2].append(int(logits[-1].argmax()))


def test_prompt_fed_in_chunks_after_a_copied_prefix(model):
    """A slot that starts from another slot's KV columns and feeds the rest in two chunks."""
    base = [7, 8, 9, 10, 11, 12, 13, 14, 15]
    prompt = base[:6] + [40, 41, 42, 43, 44]
    kv = slots(model, pools=1)
    kv.reserve(0, 2, 32)
    step(model, kv, [], [Segment(0, 0, 0, base)], [1], [len(base) - 1])
    kv.copy((0, 0), (0, 1), 6)
    step(model, kv, [], [Segment(0, 1, 6, prompt[6:8])], [2], [1])
    logits = step(model, kv, [], [Segment(0, 1, 8, prompt[8:])], [2], [len(prompt) - 8 - 1])
    assert torch.allclose(logits[0], full_logits(model, prompt)[-1], atol=1e-4)


def test_continuation_tree_scores_equal_one_pass_per_continuation(model):
    prompt = [5, 6, 7, 8, 9, 10]
    conts = [[20, 21], [22, 21], [20, 23, 21], [24]]
    tree = ContinuationTree.build(conts)
    kv = slots(model, pools=1)
    kv.reserve(0, 1, 32)
    n = len(prompt)
    logits = step(model, kv, [], [Segment(0, 0, 0, prompt, tree)], [1], list(range(n - 1, n + len(tree.tokens))))
    logp = torch.log_softmax(logits.float(), -1)
    got = tree.logprobs(logp[0], logp[1:])
    for cont, score in zip(conts, got):
        lp = torch.log_softmax(full_logits(model, prompt + cont).float(), -1)
        want = sum(float(lp[n - 1 + j, tok]) for j, tok in enumerate(cont))
        assert abs(score - want) < 1e-4, (cont, score, want)


def test_slots_keep_their_contents_when_the_buffers_grow(model):
    kv = slots(model, pools=2)
    kv.reserve(1, 1, 4)
    layers = [(torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)) for _ in range(2)]
    kv.load(1, 0, layers, 4)
    kv.reserve(1, 5, 300)  # more slots and columns: reallocated
    assert kv.pools[1].slots >= 5 and kv.pools[1].capacity >= 300
    kv.copy((1, 0), (1, 3), 4)
    for (k, v), (k2, v2) in zip(layers, kv.read(1, 3, 4)):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    kv.release(1)
    assert kv.pools[1].slots == 0 and kv.pools[0].slots == 0


def test_a_forward_pass_without_a_plan_is_plain_sdpa(model):
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        ours = model(input_ids=ids).logits
        model.set_attn_implementation("sdpa")
        try:
            theirs = model(input_ids=ids).logits
        finally:
            install(model)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_packed_linear_layers_match_nn_linear():
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    torch.manual_seed(1)
    m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.inference_mode():
        before = m(input_ids=ids).logits.float()
        n = cpu_linear.pack_linear_layers(m)
        after = m(input_ids=ids).logits.float()
    if n == 0:
        pytest.skip("this torch build has no mkldnn packed linear")
    assert n == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert torch.allclose(before, after, atol=0.05, rtol=0.05)


def test_packing_falls_back_to_nn_linear_when_the_op_fails(monkeypatch):
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
    m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()

    def broken(*args, **kwargs):
        raise RuntimeError("no such op")

    monkeypatch.setattr(cpu_linear, "_packed_forward", broken)
    assert cpu_linear.pack_linear_layers(m) == 0
    assert not any(hasattr(mod, "_parrot_packed") for mod in m.modules())
    with torch.inference_mode():
        m(input_ids=torch.tensor([[1, 2, 3]]))  # still the ordinary forward
    assert cpu_linear.pack_linear_layers(m.float()) == 0  # float32: not packed

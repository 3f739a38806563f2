"""Fixtures for the training tests: a tiny random-init Llama with the SmolLM2 tokenizer, and made-up data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parrot.conversation import Message, Role
from parrot.datasets import to_sharegpt_record
from parrot.asking.prompting import to_role_swapped

TOPICS = [
    ("How do I sort a list in Python?", "Use sorted(xs) or xs.sort().", "And in reverse?", "Pass reverse=True."),
    ("What is the capital of France?", "Paris.", "How many people live there?", "About two million."),
    ("Name a prime number.", "Seven is prime.", "Is it odd?", "Yes, seven is odd."),
    ("Suggest a fruit for breakfast.", "A banana.", "Why that one?", "It is quick to eat."),
]


def tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama from a LlamaConfig, random init, with the bundled SmolLM2 tokenizer (found through
    parrot.modelstore), saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from parrot.modelstore import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def conversation(i: int) -> list[Message]:
    q1, a1, q2, a2 = TOPICS[i % len(TOPICS)]
    return [Message(Role.USER, q1), Message(Role.ASSISTANT, a1), Message(Role.USER, q2), Message(Role.ASSISTANT, a2)]


def sharegpt_rows(n: int) -> list[dict[str, Any]]:
    """ShareGPT records (built through the project's writer, as the collection output is)."""
    return [to_sharegpt_record(f"conv-{i}", conversation(i), {"source": "fixture"}) for i in range(n)]


def asker_rows(n: int) -> list[dict[str, Any]]:
    """Role-swapped asker rows: the chat up to the first answer, then the follow-up as the target."""
    rows = []
    for i in range(n):
        conv = conversation(i)
        swapped = [m.as_dict() for m in to_role_swapped(conv[:2])]
        rows.append({"id": f"ask-{i}", "messages": swapped + [{"role": "assistant", "content": conv[2].content}],
                     "source": "fixture"})
    return rows


def preference_rows(n: int) -> list[dict[str, Any]]:
    strategies = ["context_neglect", "context_hallucination", "context_misunderstanding"]
    rows = []
    for i in range(n):
        conv = conversation(i)
        rows.append({
            "prompt": [m.as_dict() for m in conv[:3]],
            "chosen": [{"role": "assistant", "content": conv[3].content}],
            "rejected": [{"role": "assistant", "content": f"I do not know what you mean by that ({i})."}],
            "strategy": strategies[i % 3], "source_id": f"conv-{i}", "turn": 2,
            "models": {"responder": "fixture"},
        })
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

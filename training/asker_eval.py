"""Held-out likelihood of people's follow-ups under an asker model (the scorecard's perplexity row).

The asker's own training objective on held-out data: each asker-example row (role-swapped context,
then the person's real next user turn as the final ``assistant`` message) is tokenized exactly as
training tokenizes it (``training.data.tokenize_example``, loss only on that last message), and
the summed negative log-likelihood of its target tokens is returned with their count. Rows whose
target lies past ``max_length`` give None, as training leaves them out.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from training.data import IGNORE, ChatExample, tokenize_example


def followup_nll(model_spec: str, rows: Sequence[Mapping[str, Any] | None],
                 max_length: int = 512) -> list[tuple[float, int] | None]:
    """(summed NLL, target tokens) per asker-example row under the model (None: row None or not scored)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parrot.modelstore import resolve_model

    folder = resolve_model(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    out: list[tuple[float, int] | None] = []
    for row in rows:
        if row is None:
            out.append(None)
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        enc = tokenize_example(tokenizer, ChatExample(str(row["id"]), messages, [len(messages) - 1]), max_length)
        if enc is None:
            out.append(None)
            continue
        ids = torch.tensor([enc["input_ids"]])
        target = torch.tensor(enc["labels"][1:])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        keep = target != IGNORE
        logp = torch.log_softmax(logits[keep], dim=-1)
        out.append((-float(logp.gather(1, target[keep][:, None]).sum()), int(keep.sum())))
    return out

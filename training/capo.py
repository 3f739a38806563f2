"""`parrot train capo`: context-aware preference optimization, DPO on context-perturbed pairs (TRL DPOTrainer).

Start from an SFT checkpoint (``--model``). The reference model is a frozen copy of the start
model, made before training (TRL prepares it for DeepSpeed; with ZeRO-3 it is partitioned too).
``--beta`` sets the DPO temperature; ``--sft-weight`` > 0 adds an NLL term on the chosen answers
(TRL's ``loss_type=["sigmoid", "sft"]``).

Per-strategy report: at every ``--eval-steps`` and at the end, the implicit rewards
``beta * (log p_policy(answer | prompt) - log p_ref(answer | prompt))`` of the chosen and the
rejected answer are computed for up to ``--eval-max-pairs`` pairs (the eval set, or the training
pairs without one); per strategy (context_neglect, context_hallucination,
context_misunderstanding) and overall we log the preference accuracy (share of pairs with the
chosen reward strictly higher) and the mean reward margin, to metrics.jsonl, the logs and
Prometheus (``parrot_train_reward_accuracy`` / ``parrot_train_reward_margin``). TRL's own
batch metrics (``rewards/accuracies``, ``rewards/margins``) are logged beside them.

Held-out pairs (``--eval-fraction F``, split by session in ``training/capo_eval.py``, or
``--eval-dataset``): the report also gives, per strategy, preference accuracy and margin of the
reference model (before) and of the trained model (after) on them
(``heldout/<before|after>/<strategy>/...`` in metrics.jsonl and summary.json), and writes the
final table, with the context probe of ``training/capo_eval.py`` (before / after), to
``heldout_preferences.json`` in the run folder, beside the checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from parrot.errors import ConfigError
from training import metrics as m
from training.capo_eval import (
    before_after,
    context_gap,
    flat_metrics,
    probe_indices,
    split_pairs,
    without_history,
)
from training.config import STRATEGIES, CaPOConfig
from training.data import PreferencePair, load_preference_pairs, read_input, render
from training.runtime import RunState, TrainResult, copy_model, is_main, run_training, training_arguments

log = logging.getLogger(__name__)


def prompt_length(tokenizer: Any, prompt: Sequence[dict]) -> int:
    """Tokens of the prompt rendered with the generation prompt: where every answer to it starts."""
    return len(tokenizer(render(tokenizer, prompt, generation_prompt=True), add_special_tokens=False)["input_ids"])


def completion_ids(tokenizer: Any, prompt: Sequence[dict], answer: Sequence[dict]) -> tuple[list[int], int]:
    """Token ids of prompt + answer as the chat template renders them, and where the answer starts
    (TRL's split: the prompt rendered with the generation prompt, the rest is the completion)."""
    full_ids = tokenizer(render(tokenizer, list(prompt) + list(answer)), add_special_tokens=False)["input_ids"]
    return list(full_ids), prompt_length(tokenizer, prompt)


def pairs_within(tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int,
                 what: str = "training") -> list[PreferencePair]:
    """The pairs whose answers start within ``max_length`` tokens (chosen and rejected share the prompt).

    A pair whose prompt alone fills ``max_length`` has no answer token left after truncation. TRL
    drops such "fully truncated" rows from training on its own, but the per-strategy report would
    still score them, both rewards 0, as wrong preferences. Dropping them here keeps training and
    report on the same pairs and says how many went; none left is a ConfigError naming --max-length.
    """
    kept = [p for p in pairs if prompt_length(tokenizer, p.prompt) < max_length]
    if len(kept) < len(pairs):
        log.warning("dropped preference pairs whose prompt fills max_length (no answer token left)",
                    extra={"dropped": len(pairs) - len(kept), "kept": len(kept), "max_length": max_length, "split": what})
    if not kept:
        raise ConfigError(f"no {what} preference pair has an answer token within max_length={max_length}; "
                          "raise --max-length or shorten the prompts (parrot negatives --max-history-turns)")
    return kept


def answer_logps(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int,
                 batch_size: int = 4) -> list[tuple[float, float]]:
    """Summed log-probabilities of the chosen and the rejected answer of each pair."""
    import torch

    seqs = []
    for p in pairs:
        for answer in (p.chosen, p.rejected):
            ids, start = completion_ids(tokenizer, p.prompt, answer)
            seqs.append((ids[:max_length], start))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                chunk = seqs[i:i + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.bool)
                for r, (ids, start) in enumerate(chunk):
                    input_ids[r, :len(ids)] = torch.tensor(ids)
                    attn[r, :len(ids)] = 1
                    mask[r, start:len(ids)] = True
                logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits.float().cpu()
                logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
                out.extend((logp * mask[:, 1:]).sum(-1).tolist())
    finally:
        model.train(was_training)
    return [(out[2 * k], out[2 * k + 1]) for k in range(len(pairs))]


def preference_report(pairs: Sequence[PreferencePair], policy: list[tuple[float, float]],
                      ref: list[tuple[float, float]], beta: float) -> dict[str, dict[str, float]]:
    """Per strategy and overall ('all'): pairs, accuracy, mean margin, mean chosen/rejected reward."""
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p, (pc, pr), (rc, rr) in zip(pairs, policy, ref):
        reward = (beta * (pc - rc), beta * (pr - rr))
        groups[p.strategy].append(reward)
        groups["all"].append(reward)
    report = {}
    for name, rewards in groups.items():
        n = len(rewards)
        report[name] = {
            "pairs": n,
            "accuracy": sum(1 for c, r in rewards if c > r) / n,
            "margin": sum(c - r for c, r in rewards) / n,
            "chosen_reward": sum(c for c, _ in rewards) / n,
            "rejected_reward": sum(r for _, r in rewards) / n,
        }
    return report


def train(cfg: CaPOConfig) -> TrainResult:
    def build(local: Path, state: RunState) -> tuple[Any, Any, dict[str, Any]]:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from training.runtime import load_model_and_tokenizer

        pairs = load_preference_pairs(*read_input(cfg.dataset))
        eval_pairs = load_preference_pairs(*read_input(cfg.eval_dataset)) if cfg.eval_dataset else None
        if cfg.eval_fraction:
            pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction)
            if not pairs or not eval_pairs:
                raise ConfigError(f"--eval-fraction {cfg.eval_fraction} leaves {len(pairs)} training and {len(eval_pairs)} "
                                  "held-out pairs; both sides need pairs from at least one session")
            log.info("held-out split", extra={"train_pairs": len(pairs), "eval_pairs": len(eval_pairs),
                                              "eval_fraction": cfg.eval_fraction})
        model, tokenizer, _ = load_model_and_tokenizer(cfg.model)
        pairs = pairs_within(tokenizer, pairs, cfg.max_length)
        if eval_pairs is not None:
            eval_pairs = pairs_within(tokenizer, eval_pairs, cfg.max_length, "eval")
        counts = {s: sum(1 for p in pairs if p.strategy == s) for s in STRATEGIES}
        log.info("preference pairs", extra={"pairs": len(pairs), **counts})
        ref_model = copy_model(model)  # TRL needs an explicit reference for an in-memory model
        loss = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.sft_weight]} if cfg.sft_weight > 0 \
            else {"loss_type": ["sigmoid"]}
        args = training_arguments(DPOConfig, cfg, local, beta=cfg.beta, **loss)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                             train_dataset=Dataset.from_list([p.trl_row() for p in pairs]),
                             processing_class=tokenizer)
        report_pairs = (eval_pairs or pairs)[: cfg.eval_max_pairs]
        split = "eval" if eval_pairs else "train"
        ref_cache: list[tuple[float, float]] = []
        labels = {"method": cfg.method, "run": cfg.name}

        def probe_report(ref: Any, policy_model: Any, policy: list[tuple[float, float]]) -> dict[str, float | None]:
            """The context probe (``training/capo_eval.py``) on the report pairs, reference vs trained model."""
            indices = probe_indices(report_pairs)
            bare = [without_history(report_pairs[i]) for i in indices]
            return {"pairs": len(indices),
                    "before": context_gap(ref_cache, answer_logps(ref, tokenizer, bare, cfg.max_length), indices),
                    "after": context_gap(policy, answer_logps(policy_model, tokenizer, bare, cfg.max_length), indices)}

        def report(step: int) -> dict[str, float]:
            if cfg.eval_steps == 0 and step < trainer.state.max_steps:
                return {}
            if cfg.eval_steps and step % cfg.eval_steps and step < trainer.state.max_steps:
                return {}
            if not ref_cache:
                ref_cache.extend(answer_logps(trainer.ref_model or ref_model, tokenizer, report_pairs, cfg.max_length))
            policy = answer_logps(trainer.model, tokenizer, report_pairs, cfg.max_length)
            rep = preference_report(report_pairs, policy, ref_cache, cfg.beta)
            flat: dict[str, float] = {}
            if split == "eval":
                held = before_after(report_pairs, ref_cache, policy, cfg.beta)
                flat.update(flat_metrics(held))
                if is_main():
                    log.info("held-out preferences", extra={
                        "step": step, **{f"{w}_{k}_accuracy": round(r["accuracy"], 4) for w, by in held.items()
                                         for k, r in by.items()}})
                if step >= trainer.state.max_steps:
                    probe = probe_report(trainer.ref_model or ref_model, trainer.model, policy)
                    flat.update({f"heldout/context_probe/{k}": v for k, v in probe.items() if v is not None})
                    if is_main():
                        state.store.put("heldout_preferences.json",
                                        json.dumps({"step": step, **held, "context_probe": probe}, indent=2).encode())
            for strategy, r in rep.items():
                flat[f"{split}/{strategy}/accuracy"] = r["accuracy"]
                flat[f"{split}/{strategy}/margin"] = r["margin"]
                flat[f"{split}/{strategy}/pairs"] = r["pairs"]
                if is_main():
                    m.REWARD_ACCURACY.labels(**labels, strategy=strategy, split=split).set(r["accuracy"])
                    m.REWARD_MARGIN.labels(**labels, strategy=strategy, split=split).set(r["margin"])
            if is_main():
                log.info("preference report", extra={"step": step, "split": split,
                                                     **{f"{s}_accuracy": round(r["accuracy"], 4) for s, r in rep.items()},
                                                     **{f"{s}_margin": round(r["margin"], 4) for s, r in rep.items()}})
            return flat

        state.extra_log = report
        return trainer, tokenizer, {"role": "responder", "beta": cfg.beta, "sft_weight": cfg.sft_weight}

    return run_training(cfg, build)

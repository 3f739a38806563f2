"""`parrot train sft`: multi-turn SFT with the loss only on assistant tokens (TRL SFTTrainer).

Input: ShareGPT records or ``{"messages"}`` chats (``training.data.load_sft_examples``). The
sequences are tokenized here with exact label masks (``training.data.tokenize_example``) and
handed to TRL pre-tokenized, so what carries loss does not depend on template markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import SFTConfig
from training.data import ChatExample, load_sft_examples, read_input, tokenize_examples
from training.runtime import RunState, TrainResult, load_model_and_tokenizer, run_training, training_arguments


def load_examples(cfg: Any, url: str) -> list[ChatExample]:
    return load_sft_examples(*read_input(url))


def chat_trainer(cfg: Any, local: Path, examples: list[ChatExample], eval_examples: list[ChatExample] | None) -> tuple[Any, Any]:
    """An SFTTrainer over pre-tokenized chats with their label masks (shared by SFT and the asker)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    model, tokenizer, _ = load_model_and_tokenizer(cfg.model)
    train_rows = tokenize_examples(tokenizer, examples, cfg.max_length)
    eval_rows = tokenize_examples(tokenizer, eval_examples, cfg.max_length) if eval_examples else None
    args = training_arguments(TRLSFTConfig, cfg, local, packing=False,
                              eval_strategy="steps" if eval_rows else "no",
                              eval_steps=cfg.save_steps if eval_rows else None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, processing_class=tokenizer)
    return trainer, tokenizer


def train(cfg: SFTConfig) -> TrainResult:
    def build(local: Path, state: RunState) -> tuple[Any, Any, dict[str, Any]]:
        examples = load_examples(cfg, cfg.dataset)
        eval_examples = load_examples(cfg, cfg.eval_dataset) if cfg.eval_dataset else None
        trainer, tokenizer = chat_trainer(cfg, local, examples, eval_examples)
        return trainer, tokenizer, {"role": "responder"}

    return run_training(cfg, build)

"""`parrot train asker`: Parrot-Ask, SFT on role-swapped chats with the loss on the user turns.

Rows are ``{"id", "messages", "source"}`` in the format of
``parrot.asking.prompting.to_role_swapped`` plus the target user turn as the final
``assistant`` message; the loss is on that message (``--loss-on all``: on every user turn).
The checkpoint's ``parrot_model.json`` says ``{"role": "asker"}``, so the asker service serves it
with the role-swapped format (``parrot.asking.prompting.resolve_format``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import AskerConfig
from training.data import load_asker_examples, read_input
from training.runtime import RunState, TrainResult, run_training
from training.sft import chat_trainer


def train(cfg: AskerConfig) -> TrainResult:
    from parrot.asking.prompting import ASKER_ROLE, FORMAT_ROLE_SWAPPED

    def build(local: Path, state: RunState) -> tuple[Any, Any, dict[str, Any]]:
        examples = load_asker_examples(*read_input(cfg.dataset), loss_on=cfg.loss_on)
        eval_examples = load_asker_examples(*read_input(cfg.eval_dataset), loss_on=cfg.loss_on) if cfg.eval_dataset else None
        trainer, tokenizer = chat_trainer(cfg, local, examples, eval_examples)
        return trainer, tokenizer, {"role": ASKER_ROLE, "format": FORMAT_ROLE_SWAPPED}

    return run_training(cfg, build)

"""`--launcher local`: train on this machine.

One process (the default): the method runs in this process; DeepSpeed gets a process group of
one (gloo on CPU; ``training.runtime.setup_process``). ``--nproc-per-node N`` > 1: the resolved
config is written to the work folder and ``torchrun --standalone --nproc-per-node N`` starts N
copies of ``parrot train <method> --config <that file>``; each joins the group through the
torchrun environment. Under torchrun (``RANK`` set) the method always runs in-process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from training.config import TrainConfig
from training.runtime import TrainResult, finish_process, work_dir

log = logging.getLogger(__name__)


def train_in_process(cfg: TrainConfig) -> TrainResult:
    import importlib

    module = importlib.import_module(f"training.{cfg.method}")
    return module.train(cfg)


def torchrun_command(cfg: TrainConfig, config_file: Path) -> list[str]:
    parrot = Path(sys.executable).parent / "parrot"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc_per_node}",
            "--no-python", str(parrot), "train", cfg.method, "--config", str(config_file)]


def launch(cfg: TrainConfig) -> TrainResult | None:
    """Trains; returns the result when this process trained, None when torchrun's children did."""
    if cfg.nproc_per_node > 1 and "RANK" not in os.environ:
        cfg.validate_for_run()
        local = work_dir(cfg)
        local.mkdir(parents=True, exist_ok=True)
        config_file = local / "launch-config.yaml"
        data: dict[str, Any] = cfg.to_dict()
        data.pop("kubernetes", None)
        config_file.write_text(yaml.safe_dump(data, sort_keys=False))
        cmd = torchrun_command(cfg, config_file)
        log.info("starting torchrun", extra={"command": " ".join(cmd)})
        rc = subprocess.call(cmd)
        if rc != 0:
            raise SystemExit(rc)
        return None
    try:
        return train_in_process(cfg)
    finally:
        finish_process()

"""What every method shares: process setup, DeepSpeed presets, the run folder in the object store,
checkpoint upload and resume, metrics, and the final model folder.

Run folder (``--output``, an object-store URL), written by global rank 0:

- ``config.json``: the resolved config of the latest attempt;
- ``checkpoints/checkpoint-N/``: the Trainer's checkpoint (weights, DeepSpeed optimizer shards,
  scheduler, RNG, trainer state), uploaded after each save; ``checkpoints/checkpoint-N/COMPLETE``
  is written last, so a checkpoint without it (a killed upload) is ignored;
- ``metrics.jsonl``: one row per logging step (loss, step time, tokens/s, lr, method extras),
  rewritten at each log so it never holds a step twice across resumes;
- ``logs/train-<start time>.log``: the JSON log lines of each attempt;
- ``model/``: the final Hugging Face folder (weights, tokenizer with its chat template,
  ``parrot_model.json`` written last) that ``parrot serve --model <output>/model`` loads.

Resume: at start the latest complete checkpoint in the store is downloaded into the local work
folder (unless already there) and the Trainer resumes from it: optimizer, scheduler, RNG and the
position in the data are restored, so no step is lost or done twice (at most the steps since the
last save are redone).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from parrot.errors import ConfigError
from training import metrics as m
from training.config import TrainConfig

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------- process


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup_process() -> None:
    """Environment DeepSpeed needs: a process group of one when not launched by torchrun, a cached
    extensions folder, and no JIT-compiled shared-memory op on CPU (gloo does the communication)."""
    from parrot.client import free_port
    from parrot.modelstore import cache_dir

    if "RANK" not in os.environ:  # not under torchrun / deepspeed launcher: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        try:
            import deepspeed.ops

            # The shm all-reduce op is JIT-compiled on first use (minutes on a small CPU); gloo needs nothing.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        except ImportError:
            pass


def finish_process() -> None:
    """Tears the process group down (DeepSpeed runs may abort at exit otherwise). Through DeepSpeed
    when it set the group up, so that it also drops the groups it cached (its world-group clone): a
    later run in the same process (tests, notebooks) would otherwise use a destroyed group."""
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and getattr(ds_comm, "cdb", None) is not None:
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def deepspeed_config(name: str) -> str | None:
    """Path of a DeepSpeed JSON: a shipped preset (zero2, zero3), a file, or None for 'none'."""
    if name == "none":
        return None
    if name in ("zero2", "zero3"):
        return str(resources.files("training").joinpath("deepspeed", f"{name}.json"))
    if not Path(name).is_file():
        raise ConfigError(f"deepspeed: {name} is not a file; use zero2, zero3, none or a JSON file")
    return name


def use_bf16(precision: str) -> bool:
    """bf16 when asked, or with 'auto' where the hardware has it (CUDA bf16, or CPU AVX512-BF16/AMX)."""
    import torch

    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ----------------------------------------------------------------------------- run folder


class RunStore:
    """Blocking helpers over the run's object store (training code is synchronous)."""

    def __init__(self, url: str) -> None:
        from parrot.storage import open_store

        self.url = url
        self.store = open_store(url)

    def _run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def put(self, key: str, data: bytes) -> None:
        self._run(self.store.put(key, data))

    def get(self, key: str) -> bytes:
        return self._run(self.store.get(key))

    def exists(self, key: str) -> bool:
        return self._run(self.store.exists(key))

    def list(self, prefix: str) -> list[str]:
        return self._run(self.store.list(prefix))

    def delete_prefix(self, prefix: str) -> None:
        async def go() -> None:
            for key in await self.store.list(prefix):
                await self.store.delete(key)

        self._run(go())

    def upload_dir(self, local: Path, prefix: str, last: str | None = None) -> int:
        """Uploads every file under ``local`` to ``prefix/``; ``last`` (a relative name) goes last."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        ordered = [p for p in files if p.relative_to(local).as_posix() != last]
        ordered += [p for p in files if p.relative_to(local).as_posix() == last]

        async def go() -> None:
            for p in ordered:
                await self.store.put(f"{prefix}/{p.relative_to(local).as_posix()}", p.read_bytes())

        self._run(go())
        return len(ordered)

    def download_prefix(self, prefix: str, local: Path) -> int:
        async def go() -> int:
            keys = await self.store.list(prefix + "/")
            for key in keys:
                dest = local / key[len(prefix) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(await self.store.get(key))
            return len(keys)

        return self._run(go())

    def complete_checkpoints(self) -> list[int]:
        """Steps of the checkpoints whose upload finished, ascending."""
        steps = []
        for key in self.list("checkpoints/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == COMPLETE and (mt := CHECKPOINT_RE.match(parts[1])):
                steps.append(int(mt.group(1)))
        return sorted(steps)


def work_dir(cfg: TrainConfig) -> Path:
    from parrot.modelstore import cache_dir

    if cfg.work_dir:
        return Path(cfg.work_dir).expanduser()
    digest = hashlib.sha256(cfg.output.encode()).hexdigest()[:10]
    return cache_dir() / "training" / f"{cfg.name}-{digest}"


def prepare_resume(cfg: TrainConfig, store: RunStore, local: Path) -> str | None:
    """The local checkpoint folder to resume from (downloaded from the store if needed), or None."""
    if not cfg.resume:
        return None
    steps = store.complete_checkpoints()
    if not steps:
        return None
    name = f"checkpoint-{steps[-1]}"
    target = local / name
    if not (target / COMPLETE).is_file():
        tmp = local / f".{name}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        n = store.download_prefix(f"checkpoints/{name}", tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        log.info("checkpoint downloaded", extra={"checkpoint": name, "files": n})
    barrier()
    log.info("resuming", extra={"checkpoint": name, "step": steps[-1]})
    return str(target)


# ----------------------------------------------------------------------------- callbacks


def trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


@dataclass
class RunState:
    """What the callbacks share."""

    cfg: TrainConfig
    store: RunStore
    local: Path
    log_file: Path
    log_key: str
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)
    extra_log: Callable[[int], dict[str, float]] | None = None  # method metrics computed at log steps


def make_callback(state: RunState) -> Any:
    """Step timing, tokens/s, Prometheus, metrics.jsonl, checkpoint upload and pruning."""
    Base = trainer_callback_base()
    labels = {"method": state.cfg.method, "run": state.cfg.name}

    class ParrotCallback(Base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.step_t0 = 0.0
            self.interval_t0 = time.monotonic()
            self.interval_tokens0 = 0
            self.step_times: list[float] = []

        def on_train_begin(self, args: Any, tstate: Any, control: Any, **kw: Any) -> None:
            self.interval_t0 = time.monotonic()
            self.interval_tokens0 = tstate.num_input_tokens_seen
            # A resumed run keeps the metric rows of the steps it did not redo.
            state.metrics_rows[:] = [r for r in state.metrics_rows if r.get("step", 0) <= tstate.global_step]
            m.STEP.labels(**labels).set(tstate.global_step)

        def on_step_begin(self, args: Any, tstate: Any, control: Any, **kw: Any) -> None:
            self.step_t0 = time.monotonic()

        def on_step_end(self, args: Any, tstate: Any, control: Any, **kw: Any) -> None:
            dt = time.monotonic() - self.step_t0
            self.step_times.append(dt)
            m.STEP_SECONDS.labels(**labels).observe(dt)
            m.STEP.labels(**labels).set(tstate.global_step)

        def on_log(self, args: Any, tstate: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            logs = dict(logs or {})
            if "loss" not in logs:  # the end-of-training summary: recorded by run() instead
                return
            now = time.monotonic()
            tokens = tstate.num_input_tokens_seen - self.interval_tokens0
            row: dict[str, Any] = {"step": tstate.global_step, "epoch": round(tstate.epoch or 0.0, 4), "ts": time.time()}
            row.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            if self.step_times:
                row["step_seconds"] = sum(self.step_times) / len(self.step_times)
            if now > self.interval_t0:
                row["tokens_per_second"] = tokens / (now - self.interval_t0)
            if state.extra_log is not None:
                row.update(state.extra_log(tstate.global_step))
            self.interval_t0, self.interval_tokens0, self.step_times = now, tstate.num_input_tokens_seen, []
            if not is_main():
                return
            m.LOSS.labels(**labels).set(row["loss"])
            m.TOKENS.labels(**labels).inc(max(tokens, 0))
            if "tokens_per_second" in row:
                m.TOKENS_PER_SECOND.labels(**labels).set(row["tokens_per_second"])
            if "learning_rate" in row:
                m.LEARNING_RATE.labels(**labels).set(row["learning_rate"])
            state.metrics_rows.append(row)
            log.info("train step", extra={k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()
                                          if k != "ts" and "/" not in k})
            state.store.put("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.metrics_rows).encode())
            if state.cfg.pushgateway:
                m.push(state.cfg.pushgateway, "parrot-train", labels)

        def on_save(self, args: Any, tstate: Any, control: Any, **kw: Any) -> None:
            name = f"checkpoint-{tstate.global_step}"
            folder = Path(args.output_dir) / name
            barrier()  # every rank has written its shards
            # One uploader per node: the local disk of node k holds the shards of its ranks.
            if int(os.environ.get("LOCAL_RANK", "0")) == 0 and folder.is_dir():
                t0 = time.monotonic()
                n = state.store.upload_dir(folder, f"checkpoints/{name}")
                log.info("checkpoint uploaded", extra={"checkpoint": name, "files": n,
                                                       "seconds": round(time.monotonic() - t0, 2)})
            barrier()
            if is_main():
                state.store.put(f"checkpoints/{name}/{COMPLETE}", b"")
                (folder / COMPLETE).write_bytes(b"")
                m.CHECKPOINTS.labels(**labels).inc()
                for step in state.store.complete_checkpoints()[: -state.cfg.save_total_limit]:
                    # the marker goes first: a half-deleted checkpoint is never taken for complete
                    state.store.delete_prefix(f"checkpoints/checkpoint-{step}/{COMPLETE}")
                    state.store.delete_prefix(f"checkpoints/checkpoint-{step}/")
                upload_log(state)
            barrier()

    return ParrotCallback()


def upload_log(state: RunState) -> None:
    if state.log_file.is_file():
        state.store.put(state.log_key, state.log_file.read_bytes())


# ----------------------------------------------------------------------------- model I/O


def load_model_and_tokenizer(spec: str) -> tuple[Any, Any, Path]:
    """The start model in fp32 (DeepSpeed keeps fp32 master weights and casts for bf16) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parrot.modelstore import resolve_model

    folder = resolve_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template is None:
        raise ConfigError(f"model {spec!r}: its tokenizer has no chat template; chat training needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer, folder


def save_final_model(trainer: Any, tokenizer: Any, cfg: TrainConfig, store: RunStore, local: Path,
                     info: dict[str, Any]) -> str:
    """Writes model/ (weights, tokenizer + chat template, parrot_model.json last); returns its URL."""
    out = local / "model"
    if is_main():
        shutil.rmtree(out, ignore_errors=True)
    barrier()
    trainer.save_model(str(out))  # every rank: ZeRO-3 gathers the weights
    if is_main():
        tokenizer.save_pretrained(str(out))
        (out / "parrot_model.json").write_text(json.dumps(info, indent=2))
        store.delete_prefix("model/")
        store.upload_dir(out, "model", last="parrot_model.json")
    barrier()
    return store.url.rstrip("/") + "/model"


# ----------------------------------------------------------------------------- orchestration


@dataclass
class TrainResult:
    model_url: str
    model_dir: Path
    global_step: int
    resumed_from: str | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


def training_arguments(args_cls: type, cfg: TrainConfig, local: Path, **extra: Any) -> Any:
    """The TRL/transformers arguments every method shares, from the config."""
    import torch

    bf16 = use_bf16(cfg.precision)
    return args_cls(
        output_dir=str(local),
        run_name=cfg.name,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=False,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        deepspeed=deepspeed_config(cfg.deepspeed),
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        **extra,
    )


def run_training(cfg: TrainConfig, build: Callable[[Path, RunState], tuple[Any, Any, dict[str, Any]]]) -> TrainResult:
    """Runs one method: ``build(local_dir, state)`` returns (trainer, tokenizer, model info) and may set
    ``state.extra_log``. Handles the run folder, resume, metrics, logs and the final model."""
    from parrot.logs import JsonFormatter

    cfg.validate_for_run()
    setup_process()
    store = RunStore(cfg.output)
    local = work_dir(cfg)
    local.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    log_file = local / f"train-{started}-rank{rank()}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    state = RunState(cfg, store, local, log_file, f"logs/train-{started}.log")
    try:
        if cfg.metrics_port and is_main():
            m.expose(cfg.metrics_port)
        if is_main():
            store.put("config.json", json.dumps({"method": cfg.method, **cfg.to_dict()}, indent=2).encode())
            if store.exists("metrics.jsonl"):
                state.metrics_rows = [json.loads(x) for x in store.get("metrics.jsonl").decode().splitlines() if x]
        resume = prepare_resume(cfg, store, local)
        t0 = time.monotonic()
        trainer, tokenizer, info = build(local, state)
        trainer.add_callback(make_callback(state))
        log.info("training", extra={"method": cfg.method, "run": cfg.name, "output": cfg.output,
                                    "deepspeed": cfg.deepspeed, "bf16": trainer.args.bf16,
                                    "world_size": int(os.environ.get("WORLD_SIZE", "1")), "resume": resume})
        out = trainer.train(resume_from_checkpoint=resume)
        step = trainer.state.global_step
        summary = {"method": cfg.method, "run": cfg.name, "global_step": step, "resumed_from": resume,
                   "train_seconds": round(time.monotonic() - t0, 2),
                   **{k: v for k, v in (out.metrics or {}).items() if isinstance(v, (int, float))}}
        if state.extra_log is not None:
            summary.update(state.extra_log(step))
        info = {**info, "method": cfg.method, "base_model": cfg.model, "global_step": step, "written_at": time.time()}
        model_url = save_final_model(trainer, tokenizer, cfg, store, local, info)
        if is_main():
            summary["model"] = model_url
            store.put("summary.json", json.dumps(summary, indent=2).encode())
            log.info("training finished", extra={k: v for k, v in summary.items() if "/" not in k})
            upload_log(state)
        return TrainResult(model_url, local / "model", step, resume, list(state.metrics_rows), summary)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def copy_model(model: Any) -> Any:
    """A frozen copy (the DPO reference model)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


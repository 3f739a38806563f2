"""Training speed: tokens/s, seconds/step and MFU for SFT and CaPO on SmolLM2-135M (ZeRO-2, bf16).

Runs the real training code (`training.sft.train`, `training.capo.train`) in this process on
made-up data (each sequence ~``--seq-len`` tokens), for ``--steps`` optimizer steps, and reads
step times and non-padding tokens/s from the run's metrics.jsonl; the first step (warm-up) is
left out of the means. MFU = 6 * parameters * tokens/s / peak FLOP/s (attention FLOPs left out;
CaPO counts the chosen and rejected sequences of the policy, not the reference model's forward,
so its MFU understates the work). The peak is ``--peak-tflops``, else an estimate: on CPU
cores x GHz x 64 bf16 FLOP/cycle (AVX512-BF16), on CUDA the card's dense bf16 peak for H100/H200/A100.
GPU rows appear only when CUDA is available.

    .venv/bin/python bench/training.py                       # both methods, 6 steps each
    .venv/bin/python bench/training.py --methods sft --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
SENTENCE = "The river bends past the old mill, where the baker sells bread every morning to the early walkers. "


def cpu_peak_tflops() -> float:
    ghz = 2.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                ghz = float(line.split(":")[1]) / 1000
                break
    except OSError:
        pass
    return (os.cpu_count() or 1) * ghz * 64 / 1000


def make_data(folder: Path, seq_len: int, n: int) -> tuple[Path, Path]:
    from tests.helpers.training_fixtures import write_jsonl

    words = max(seq_len // 2 - 20, 8)  # ~2 tokens a word for the answer, the rest for the question
    text = (SENTENCE * (words // 15 + 1)).split()[:words]
    sft_rows, pairs = [], []
    strategies = ["context_neglect", "context_hallucination", "context_misunderstanding"]
    for i in range(n):
        q = f"Tell me about the mill, part {i}."
        a = " ".join(text)
        sft_rows.append({"id": f"b{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        half = " ".join(text[: len(text) // 2])
        pairs.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": half}],
                      "rejected": [{"role": "assistant", "content": half[::-1]}], "strategy": strategies[i % 3],
                      "source_id": f"b{i}", "turn": 1, "models": {}})
    return write_jsonl(folder / "sft.jsonl", sft_rows), write_jsonl(folder / "pairs.jsonl", pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="sft,capo")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--deepspeed", default="zero2")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--json", action="store_true", help="Print rows as JSON too.")
    args = ap.parse_args()
    os.environ.setdefault("PARROT_LOG_LEVEL", "WARNING")
    from parrot.logs import setup_logging

    setup_logging()
    import torch

    from training import capo, sft
    from training.config import CaPOConfig, SFTConfig
    from training.runtime import finish_process

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    peak = args.peak_tflops or (next((v for k, v in GPU_PEAK_TFLOPS.items() if k in device), 0.0) if cuda
                                else cpu_peak_tflops())
    tmp = Path(tempfile.mkdtemp(prefix="parrot-bench-train-"))
    rows = []
    try:
        sft_data, pair_data = make_data(tmp, args.seq_len, max(args.steps * args.batch_size, 8))
        for method in args.methods.split(","):
            common = dict(model=args.model, output=str(tmp / f"out-{method}"), work_dir=str(tmp / f"work-{method}"),
                          max_steps=args.steps, batch_size=args.batch_size, logging_steps=1, save_steps=10**6,
                          deepspeed=args.deepspeed, precision=args.precision, max_length=args.seq_len,
                          warmup_ratio=0.0, resume=False)
            t0 = time.monotonic()
            if method == "sft":
                result = sft.train(SFTConfig(dataset=str(sft_data), **common))
            else:
                result = capo.train(CaPOConfig(dataset=str(pair_data), **common))
            wall = time.monotonic() - t0
            steady = result.metrics[1:] or result.metrics
            step_s = sum(r["step_seconds"] for r in steady) / len(steady)
            tok_s = sum(r["tokens_per_second"] for r in steady) / len(steady)
            from parrot.modelstore import resolve_model

            n_params = _param_count(resolve_model(args.model))
            mfu = 6 * n_params * tok_s / (peak * 1e12) if peak else float("nan")
            rows.append({"method": method, "device": device, "deepspeed": args.deepspeed, "precision": args.precision,
                         "batch": f"{args.batch_size}x{args.seq_len}", "steps": args.steps, "s_per_step": step_s,
                         "tokens_per_s": tok_s, "mfu": mfu, "peak_tflops": peak, "wall_s": wall})
    finally:
        finish_process()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nTraining speed, {time.strftime('%Y-%m-%d')}, {device}, model {args.model}"
          f"{'' if cuda else ' (no GPU on this machine: CPU rows only)'}")
    print("| method | ZeRO | precision | batch x tokens | s/step | tokens/s | MFU | peak TFLOP/s assumed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['deepspeed']} | {r['precision']} | {r['batch']} | {r['s_per_step']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {100 * r['mfu']:.2f}% | {r['peak_tflops']:.1f} |")
    if args.json:
        print(json.dumps(rows, indent=2))


def _param_count(folder: Path) -> int:
    """Parameters stored in the model folder (tied embeddings counted once)."""
    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                count = 1
                for d in shape:
                    count *= d
                n += count
    return n


if __name__ == "__main__":
    main()

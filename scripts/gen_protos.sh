#!/usr/bin/env bash
# Generates the parrot.v1 Python stubs from protos/ into parrot/v1/ (git-ignored).
# Usage: scripts/gen_protos.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
rm -rf parrot/v1
mkdir -p parrot/v1
"$PY" -m grpc_tools.protoc -I protos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/parrot/v1/*.proto
echo '"""Generated from protos/parrot/v1 by scripts/gen_protos.sh. Do not edit."""' > parrot/v1/__init__.py
echo "generated $(ls parrot/v1/*_pb2*.py | wc -l) stub modules into parrot/v1/"

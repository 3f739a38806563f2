#!/usr/bin/env bash
# The test command: sets everything up (idempotent) and runs the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k e2e -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}
exec .venv/bin/python -m pytest -ra "$@"

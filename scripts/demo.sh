#!/usr/bin/env bash
# The main job on the embedded default: set up, start the local stack (`parrot up`: asker,
# responder and judge sharing the bundled SmolLM2, plus the coordinator with a local object
# store under .parrot/), then run an N-turn evaluation and a small Parrot-Ask collection
# through the coordinator, with live progress. Stops the stack at the end.
# Data: ../shared/data (MT-Bench questions, ShareGPT sample) when present, else small examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}
export PARROT_HOME=${PARROT_HOME:-$PWD/.parrot}
export PATH="$PWD/.venv/bin:$PATH"
OUT=${PARROT_DEMO_OUT:-$PWD/.parrot/demo}
LOG=$(mktemp -t parrot-up.XXXXXX.log)
mkdir -p "$OUT"

parrot up >"$LOG" 2>&1 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
echo "[demo] parrot up (pid $UP, log $LOG): waiting for the model services and the coordinator ..."
until grep -q "parrot is up" "$LOG"; do
  kill -0 $UP 2>/dev/null || { echo "[demo] parrot up exited:"; tail -20 "$LOG"; exit 1; }
  sleep 1
done

ENGINE_LINE=$(grep -m1 '"msg": "engine: llama.cpp llama-server"' "$LOG" || true)
if [ -n "$ENGINE_LINE" ]; then
  echo "[demo] engine: llama.cpp llama-server, model file $(printf '%s' "$ENGINE_LINE" | sed -n 's/.*"model_file": "\([^"]*\)".*/\1/p')"
else
  echo "[demo] engine: the in-process transformers engine (llama-server is not built: run 'parrot engine build')"
fi
echo; echo "[demo] chat with the responder:"
parrot chat "In one sentence, what is a multi-turn conversation?" -t 127.0.0.1:50051 --max-tokens 48

QUESTIONS=../shared/data/mt_bench/question.jsonl
if [ ! -f "$QUESTIONS" ]; then
  QUESTIONS="$OUT/example_questions.jsonl"
  cat >"$QUESTIONS" <<'JSON'
{"question_id": 1, "category": "writing", "turns": ["Write a two-line poem about autumn.", "Now make it rhyme.", "Give it a title."]}
{"question_id": 2, "category": "math", "turns": ["What is 12 times 12?", "And half of that?"]}
JSON
fi
echo; echo "[demo] evaluation run on $QUESTIONS (first 5 sessions):"
parrot eval --questions "$QUESTIONS" --limit 5 --model-id smollm2-135m --max-tokens 96 --judge-max-tokens 64 --out "$OUT/eval"

SEEDS=../shared/data/sharegpt/sample300.jsonl
if [ ! -f "$SEEDS" ]; then
  SEEDS="$OUT/example_seeds.jsonl"
  printf '%s\n' '{"query": "How do I start learning to draw?"}' '{"query": "Explain what an API is."}' >"$SEEDS"
fi
echo; echo "[demo] collection run (Parrot-Ask) from $SEEDS (3 seeds, 3 turns):"
parrot collect --seeds "$SEEDS" --limit 3 --turns 3 --max-tokens 96 --out "$OUT/collect"
echo; echo "[demo] outputs in $OUT; all runs: parrot runs list"
parrot runs list

#!/usr/bin/env bash
# The CaPO recipe end to end on the embedded default (README: "Recipe: CaPO end to end"):
#   1. CaPO pairs from ShareGPT logs (`parrot negatives`, a coordinator run)
#   2. CaPO training on SmolLM2 (`parrot train capo`, DeepSpeed ZeRO-2 on CPU)
#   3. the checkpoint served as a second responder next to the base model
#   4. both evaluated on an 8-turn MT-Bench-format file, graded by the same judge
#   5. one report comparing them (`parrot report`)
# Prints each step's wall time. Outputs under $OUT (default .parrot/recipe-capo); the local stack's
# runs in $PARROT_HOME/store. Every size is an env var, so the same script scales up:
#   CONVERSATIONS=16 STEPS=40 bash scripts/recipe_capo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}
export PARROT_HOME=${PARROT_HOME:-$PWD/.parrot}
export PATH="$PWD/.venv/bin:$PATH"
[ -x .venv/bin/parrot ] || bash scripts/setup.sh

LOGS=${LOGS:-../shared/data/sharegpt/sample300.jsonl}         # ShareGPT conversations (read where they lie)
QUESTIONS=${QUESTIONS:-docs/examples/eight_turn_sessions.jsonl}  # 8-turn sessions, MT-Bench format
CONVERSATIONS=${CONVERSATIONS:-16}   # conversations the negatives run reads (one query each, 3 pairs per query)
STEPS=${STEPS:-40}                   # CaPO optimizer steps
MAX_TOKENS=${MAX_TOKENS:-48}         # new tokens per generated answer (negatives and evaluation)
OUT=${OUT:-$PWD/.parrot/recipe-capo}
COORD_PORT=${COORD_PORT:-50060}
TRAINED_PORT=${TRAINED_PORT:-50071}
mkdir -p "$OUT"
[ -f "$LOGS" ] || { echo "[recipe] error: LOGS=$LOGS does not exist (a ShareGPT JSON/JSONL file)" >&2; exit 2; }
[ -f "$QUESTIONS" ] || { echo "[recipe] error: QUESTIONS=$QUESTIONS does not exist" >&2; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { echo; echo "[recipe] $(date -u +%H:%M:%S) $*"; }
timed() { local t0=$SECONDS; "$@"; echo "[recipe] took $((SECONDS - t0)) s"; }
wait_for() {  # wait_for LOG PATTERN PID
  until grep -q "$2" "$1"; do
    kill -0 "$3" 2>/dev/null || { echo "[recipe] error: process $3 exited; log $1:" >&2; tail -20 "$1" >&2; exit 1; }
    sleep 1
  done
}

step "starting the local stack (parrot up): log $OUT/up.log"
parrot up >"$OUT/up.log" 2>&1 &
pids+=($!)
wait_for "$OUT/up.log" "parrot is up" "${pids[0]}"

step "1. CaPO pairs from $LOGS ($CONVERSATIONS conversations)"
timed parrot negatives --conversations "$LOGS" --limit "$CONVERSATIONS" --max-queries 1 --max-history-turns 1 \
  --max-tokens "$MAX_TOKENS" --concurrency 8 --seed 1 --out "$OUT/negatives"

step "2. CaPO on SmolLM2 ($STEPS steps): run folder $OUT/capo-smollm2"
timed parrot train capo --model smollm2 --dataset "$OUT/negatives/preferences.jsonl" --output "$OUT/capo-smollm2" \
  --max-steps "$STEPS" --batch-size 2 --max-length 512 --learning-rate 5e-6 --beta 0.1 --sft-weight 0.1 \
  --logging-steps 10 --save-steps "$STEPS" --no-resume >"$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
grep -o "\"msg\": \"preference report[^}]*" "$OUT/train.log" | tail -1 || true

step "3. serving the trained model as a second responder on 127.0.0.1:$TRAINED_PORT"
parrot serve responder --model "$OUT/capo-smollm2/model" --host 127.0.0.1 --grpc-port "$TRAINED_PORT" \
  --http-port $((TRAINED_PORT + 1000)) >"$OUT/trained.log" 2>&1 &
pids+=($!)
python - "$TRAINED_PORT" "${pids[1]}" <<'EOF'
import os, sys
from parrot.client import wait_until_serving
pid = int(sys.argv[2])
def alive():
    try:
        os.kill(pid, 0)
    except OSError:
        return "the trained responder exited; see its log"
wait_until_serving(f"127.0.0.1:{sys.argv[1]}", "parrot.v1.Responder", 300, alive)
EOF

step "4. evaluating base and trained on $QUESTIONS (same judge: the base SmolLM2)"
t0=$SECONDS
parrot eval -q "$QUESTIONS" --model-id smollm2-base --name recipe-base --max-tokens "$MAX_TOKENS" \
  --judge-max-tokens 32 --seed 1 --out "$OUT/eval-base" >"$OUT/eval-base.log" 2>&1 &
e1=$!
parrot eval -q "$QUESTIONS" --model-id smollm2-capo --name recipe-capo --responder "127.0.0.1:$TRAINED_PORT" \
  --max-tokens "$MAX_TOKENS" --judge-max-tokens 32 --seed 1 --out "$OUT/eval-capo" >"$OUT/eval-capo.log" 2>&1 &
e2=$!
wait $e1 || { tail -20 "$OUT/eval-base.log"; exit 1; }
wait $e2 || { tail -20 "$OUT/eval-capo.log"; exit 1; }
echo "[recipe] took $((SECONDS - t0)) s (both runs together)"

step "5. report"
base_id=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$OUT/eval-base/summary.json")
capo_id=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$OUT/eval-capo/summary.json")
parrot report "$base_id" "$capo_id" --title "SmolLM2 base vs CaPO ($STEPS steps)" --out "$OUT/report"
echo "[recipe] done: $OUT/report/report.md"

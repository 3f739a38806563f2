#!/usr/bin/env bash
# The whole Parrot method on the embedded default, in one command (README: "Recipe: the Parrot
# method end to end"):
#   1. asker data from ShareGPT logs, sessions split into training and held-out (`parrot data asker`)
#   2. asker training (`parrot train asker`)
#   3. the asker scorecard, prompted base vs trained, on the held-out sessions (`parrot bench asker`)
#   4. collection with the trained asker (`parrot collect`, a coordinator run)
#   5. CaPO negatives from the collected conversations (`parrot negatives`)
#   6. CaPO with a held-out split by session (`parrot train capo --eval-fraction`): preference
#      accuracy and margin per strategy before and after, and the context probe
#   7. per-turn evaluation of base and CaPO on an 8-turn file, graded by the same judge (`parrot eval`)
#   8. one report: evaluation runs side by side, the scorecard and the held-out CaPO report
#      (`parrot report --asker-card --capo-heldout`)
# Resumable: each finished step leaves a marker in $OUT/done/, and a rerun skips it (training steps
# also resume from their latest checkpoint). `FRESH=1` starts over. Prints each step's wall time and
# writes them to $OUT/steps.tsv. Outputs under $OUT (default .parrot/recipe-parrot); the local
# stack's runs in $PARROT_HOME/store. Every size is an env var:
#   ASKER_STEPS=100 CAPO_STEPS=60 COLLECT=120 bash scripts/recipe_parrot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}
export PARROT_HOME=${PARROT_HOME:-$PWD/.parrot}
export PATH="$PWD/.venv/bin:$PATH"
# From step 4 on a second llama.cpp server runs beside the stack's (the trained asker, then the CaPO
# model): it gets one thread, so the two do not spin against each other for the cores (measured on 2
# cores: 4.3 answer tokens/s in collection with two servers of 2 threads each), while the stack's server, which
# also answers and judges, keeps every core.
EXTRA_THREADS=${EXTRA_THREADS:-1}
[ -x .venv/bin/parrot ] || bash scripts/setup.sh

LOGS=${LOGS:-../shared/data/sharegpt/sample300.jsonl}           # ShareGPT conversations (read where they lie)
QUESTIONS=${QUESTIONS:-docs/examples/eight_turn_sessions.jsonl}  # 8-turn sessions, MT-Bench format
HOLDOUT=${HOLDOUT:-0.2}              # share of the log sessions held out of asker training (scorecard)
ASKER_STEPS=${ASKER_STEPS:-100}      # asker optimizer steps
ASKER_LR=${ASKER_LR:-5e-5}           # asker learning rate
ASKER_LOSS_ON=${ASKER_LOSS_ON:-all}  # last or all (every user turn of the context is a target)
RERANK=${RERANK:-4}                  # >1: the scorecard also measures the trained asker reranking this many samples
COLLECT_RERANK=${COLLECT_RERANK:-0}  # >1: the collection's asker reranks too (4x the asker's work; set
                                     # ASKER_BACKEND=transformers: it scores a sample in one forward pass,
                                     # llama.cpp's completions API a token per call)
ASKER_BACKEND=${ASKER_BACKEND:-auto} # of the trained asker in collection
CARD_CONTEXTS=${CARD_CONTEXTS:-60}   # held-out contexts the scorecard asks about
COLLECT=${COLLECT:-120}              # conversations collected with the trained asker (more: more held-out CaPO pairs)
COLLECT_TURNS=${COLLECT_TURNS:-3}    # user turns per collected conversation
MIN_TURNS=${MIN_TURNS:-2}            # the asker may end a conversation after this many user turns
CAPO_STEPS=${CAPO_STEPS:-60}         # CaPO optimizer steps
CAPO_LR=${CAPO_LR:-5e-6}
EVAL_FRACTION=${EVAL_FRACTION:-0.3}  # share of the collected sessions whose pairs are held out of CaPO
MAX_TOKENS=${MAX_TOKENS:-48}         # new tokens per generated answer
OUT=${OUT:-$PWD/.parrot/recipe-parrot}
ASKER_PORT=${ASKER_PORT:-50081}
TRAINED_PORT=${TRAINED_PORT:-50071}
[ -f "$LOGS" ] || { echo "[recipe] error: LOGS=$LOGS does not exist (a ShareGPT JSON/JSONL file)" >&2; exit 2; }
[ -f "$QUESTIONS" ] || { echo "[recipe] error: QUESTIONS=$QUESTIONS does not exist" >&2; exit 2; }
[ "${FRESH:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT/done"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
say() { echo "[recipe] $(date -u +%H:%M:%S) $*"; }
# run_step NAME COMMAND...: skipped when $OUT/done/NAME exists; otherwise timed, then marked done.
run_step() {
  local name=$1; shift
  if [ -f "$OUT/done/$name" ]; then say "$name: done in an earlier run, skipped"; return; fi
  say "$name"
  local t0=$SECONDS
  "$@"
  local took=$((SECONDS - t0))
  printf '%s\t%s\n' "$name" "$took" >>"$OUT/steps.tsv"
  touch "$OUT/done/$name"
  say "$name took $took s"
}
wait_for() {  # wait_for LOG PATTERN PID
  until grep -q "$2" "$1"; do
    kill -0 "$3" 2>/dev/null || { echo "[recipe] error: process $3 exited; log $1:" >&2; tail -20 "$1" >&2; exit 1; }
    sleep 1
  done
}
serve() {  # serve ROLE MODEL PORT LOG [FLAGS...]: a model service on loopback, waits until it answers
  PARROT_ENGINE_THREADS=$EXTRA_THREADS parrot serve "$1" --model "$2" --host 127.0.0.1 --grpc-port "$3" \
    --http-port $(($3 + 1000)) "${@:5}" >"$4" 2>&1 &
  pids+=($!)
  python - "$1" "$3" "$!" <<'EOF'
import os, sys
from parrot.client import wait_until_serving
role, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
def alive():
    try:
        os.kill(pid, 0)
    except OSError:
        return f"the {role} on port {port} exited; see its log"
wait_until_serving(f"127.0.0.1:{port}", f"parrot.v1.{role.capitalize()}", 300, alive)
EOF
}
train() {  # train LOG parrot train ...: the log kept, its tail shown on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
}

run_step 1-asker-data parrot data asker --input "$LOGS" --output "$OUT/asker.jsonl" --holdout "$HOLDOUT" \
  --max-tokens 512 --max-target-tokens 128 --end-examples

run_step 2-asker-training train "$OUT/asker-train.log" parrot train asker --dataset "$OUT/asker.jsonl" \
  --output "$OUT/asker" --max-steps "$ASKER_STEPS" --batch-size 2 --max-length 512 --learning-rate "$ASKER_LR" \
  --loss-on "$ASKER_LOSS_ON" --logging-steps 10 --save-steps 50

run_step 3-asker-scorecard parrot bench asker "$LOGS" --holdout "$HOLDOUT" --limit "$CARD_CONTEXTS" --seed 0 \
  --asker base=smollm2 --asker trained="$OUT/asker/model" \
  $( [ "$RERANK" -gt 1 ] && echo "--asker trained-rerank$RERANK=$OUT/asker/model@rerank=$RERANK") \
  --json "$OUT/asker-card.json"

if [ ! -f "$OUT/done/4-collection" ] || [ ! -f "$OUT/done/5-negatives" ] || [ ! -f "$OUT/done/7-evaluation" ]; then
  say "starting the local stack (parrot up): log $OUT/up.log"
  parrot up >"$OUT/up.log" 2>&1 &
  pids+=($!)
  wait_for "$OUT/up.log" "parrot is up" "$!"
fi

if [ ! -f "$OUT/done/4-collection" ]; then
  say "serving the trained asker on 127.0.0.1:$ASKER_PORT"
  serve asker "$OUT/asker/model" "$ASKER_PORT" "$OUT/asker-serve.log" --backend "$ASKER_BACKEND" --rerank-samples "$COLLECT_RERANK"
fi
run_step 4-collection parrot collect --seeds "$LOGS" --limit "$COLLECT" --asker "127.0.0.1:$ASKER_PORT" \
  --min-turns "$MIN_TURNS" --max-turns "$COLLECT_TURNS" --max-tokens "$MAX_TOKENS" --concurrency 8 --seed 1 \
  --name recipe-collect --out "$OUT/collection"

run_step 5-negatives parrot negatives --conversations "$OUT/collection/dataset.jsonl" --max-queries 2 \
  --max-history-turns 1 --max-tokens "$MAX_TOKENS" --concurrency 8 --seed 1 --name recipe-negatives \
  --out "$OUT/negatives"

run_step 6-capo train "$OUT/capo-train.log" parrot train capo --model smollm2 \
  --dataset "$OUT/negatives/preferences.jsonl" --eval-fraction "$EVAL_FRACTION" --output "$OUT/capo" \
  --max-steps "$CAPO_STEPS" --batch-size 2 --max-length 512 --learning-rate "$CAPO_LR" --beta 0.1 \
  --sft-weight 0.1 --logging-steps 10 --save-steps "$CAPO_STEPS"

if [ ! -f "$OUT/done/7-evaluation" ]; then
  say "serving the CaPO model as a second responder on 127.0.0.1:$TRAINED_PORT"
  serve responder "$OUT/capo/model" "$TRAINED_PORT" "$OUT/capo-serve.log"
fi
evaluate_both() {
  parrot eval -q "$QUESTIONS" --model-id smollm2-base --name recipe-eval-base --max-tokens "$MAX_TOKENS" \
    --judge-max-tokens 32 --seed 1 --out "$OUT/eval-base" >"$OUT/eval-base.log" 2>&1 &
  local e1=$!
  parrot eval -q "$QUESTIONS" --model-id smollm2-capo --name recipe-eval-capo --responder "127.0.0.1:$TRAINED_PORT" \
    --max-tokens "$MAX_TOKENS" --judge-max-tokens 32 --seed 1 --out "$OUT/eval-capo" >"$OUT/eval-capo.log" 2>&1 &
  local e2=$!
  wait $e1 || { tail -20 "$OUT/eval-base.log" >&2; exit 1; }
  wait $e2 || { tail -20 "$OUT/eval-capo.log" >&2; exit 1; }
}
run_step 7-evaluation evaluate_both

rm -f "$OUT/done/8-report"  # cheap; always rebuilt from what the steps left
run_step 8-report parrot report "$OUT/eval-base" "$OUT/eval-capo" \
  --title "The Parrot method on SmolLM2-135M: asker $ASKER_STEPS steps, CaPO $CAPO_STEPS steps" \
  --asker-card "$OUT/asker-card.json" --capo-heldout "$OUT/capo/heldout_preferences.json" --out "$OUT/report"
say "steps (seconds):"; column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
say "done: $OUT/report/report.md"

#!/usr/bin/env bash
# The main job on the embedded default: set up, start `parrot serve all` (asker, responder and
# judge sharing the bundled SmolLM2 on loopback), then chat, ask for a follow-up, and judge the
# answer with the CLI clients. Stops the server at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PARROT_CACHE_DIR=${PARROT_CACHE_DIR:-$PWD/.cache/parrot}
export PATH="$PWD/.venv/bin:$PATH"
GRPC_PORT=${PARROT_GRPC_PORT:-50051}
HTTP_PORT=${PARROT_HTTP_PORT:-8080}
TARGET=127.0.0.1:$GRPC_PORT
LOG=$(mktemp -t parrot-serve.XXXXXX.log)

parrot serve all --host 127.0.0.1 --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "[demo] parrot serve all (pid $SERVER, log $LOG), waiting for the model ..."
for _ in $(seq 1 240); do
  if curl -sf "http://127.0.0.1:$HTTP_PORT/v2/models/judge/ready" >/dev/null 2>&1; then break; fi
  kill -0 $SERVER 2>/dev/null || { echo "[demo] server exited:"; tail -20 "$LOG"; exit 1; }
  sleep 1
done

Q="How do I read a CSV file in Python?"
echo; echo "[demo] user: $Q"; echo -n "[demo] responder: "
A=$(parrot chat "$Q" -t "$TARGET" --max-tokens 96 --no-stream)
echo "$A"
CONV=$(mktemp -t parrot-conv.XXXXXX.json)
python3 -c 'import json,sys; print(json.dumps([{"role":"user","content":sys.argv[1]},{"role":"assistant","content":sys.argv[2]}]))' "$Q" "$A" >"$CONV"
echo; echo "[demo] asker (next user turns):"
parrot ask -f "$CONV" -t "$TARGET" --candidates 2 --seed 1
echo; echo "[demo] judge:"
parrot judge "$CONV" -t "$TARGET" --max-tokens 64
echo; echo "[demo] KServe readiness: $(curl -s "http://127.0.0.1:$HTTP_PORT/v2/models/responder/ready")"
echo "[demo] OpenAI endpoint: POST http://127.0.0.1:$HTTP_PORT/v1/chat/completions"

#!/usr/bin/env bash
# Runs the OpenAI Python SDK tests against a real `sluice serve`.
#
#   SLUICE_BIN           the sluice binary (default: target/release/sluice)
#   SLUICE_TEST_MODELS   the test models directory (required; see DESIGN.md)
#   SLUICE_SDK_MODEL     model file relative to it (default: SmolLM2-135M-Instruct Q4_1)
#
# Needs: python3 -m pip install openai==1.* pytest
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${SLUICE_BIN:-target/release/sluice}
: "${SLUICE_TEST_MODELS:?set SLUICE_TEST_MODELS to the test models directory}"
MODEL="$SLUICE_TEST_MODELS/${SLUICE_SDK_MODEL:-smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -x "$BIN" ] || { echo "run.sh: no sluice binary at $BIN (cargo build --release -p sluice-cli)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "run.sh: no model at $MODEL" >&2; exit 1; }

# A free port: bind port 0 and read what the kernel picked.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
LOG=$(mktemp -t sluice-sdk-XXXXXX.log)
KEY="sdk-test-key-$$"

"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" \
  --served-model-name smollm2 --max-model-len 2048 >"$LOG" 2>&1 &
SERVER=$!
stop() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}
trap stop EXIT

# Wait for /health (the model loads first).
up=0
for _ in $(seq 1 300); do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "run.sh: sluice serve exited early:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
    up=1
    break
  fi
  sleep 0.2
done
if [ "$up" -ne 1 ]; then
  echo "run.sh: sluice serve did not answer /health within 60 s:" >&2
  cat "$LOG" >&2
  exit 1
fi

status=0
SLUICE_URL="http://127.0.0.1:$PORT" SLUICE_API_KEY="$KEY" \
  python3 -m pytest -q -p no:cacheprovider tests/openai_sdk/test_openai_sdk.py || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- sluice serve log ---" >&2
  cat "$LOG" >&2
fi
rm -f "$LOG"
exit "$status"

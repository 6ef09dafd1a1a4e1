#!/usr/bin/env bash
# Speculative decoding benchmark (docs/speculative.md): greedy tokens/s without and with
# each method, with acceptance rates, on SmolLM2-135M-Instruct:
#   (a) free story generation, batch 1;
#   (b) "repeat the following text exactly", batch 1 (prompt lookup's best case);
#   (c) aggregate throughput at concurrency $CONCURRENCY (half stories, half repeats).
# Target: a Q8_0 file (made once with `sluice quantize` from the Q4_1 file when none is
# found: Q8_0 of a Q4_1 model keeps its values, it just costs more bytes per step, which
# is the case speculation is for), else the Q4_1 file.
#   scripts/bench_spec.sh [TARGET.gguf]
# Env: THREADS (all cores), MAX_TOKENS (128), CONCURRENCY (8), K (5),
#      CONFIGS ("off,ngram,draft-layers:24,draft-quant:q4_0"), OUT (target/bench_spec.md)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR=${SLUICE_TEST_MODELS:-../shared/models}
Q41="$MODELS_DIR/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
QUANT_DIR=${QUANT_DIR:-$HOME/.cache/sluice/quant}
MAX_TOKENS=${MAX_TOKENS:-128}; CONCURRENCY=${CONCURRENCY:-8}; K=${K:-5}
CONFIGS=${CONFIGS:-off,ngram,draft-layers:24,draft-quant:q4_0}
OUT=${OUT:-target/bench_spec.md}
cargo build --release -q -p sluice-cli
SLUICE=target/release/sluice
TARGET=${1:-}
if [ -z "$TARGET" ]; then
  TARGET=$(find "$QUANT_DIR" -maxdepth 2 -iname '*smollm2*q8_0*.gguf' 2>/dev/null | head -1 || true)
  if [ -z "$TARGET" ]; then
    mkdir -p "$QUANT_DIR"
    TARGET="$QUANT_DIR/SmolLM2-135M-Instruct.Q8_0.gguf"
    if ! "$SLUICE" quantize --quiet -T Q8_0 "$Q41" "$TARGET"; then
      echo "note: could not make a Q8_0 target; using the Q4_1 file" >&2
      TARGET="$Q41"
    fi
  fi
fi
THREAD_ARGS=()
[ -n "${THREADS:-}" ] && THREAD_ARGS=(--threads "$THREADS")
{
  echo "## Speculative decoding: $(basename "$TARGET")"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); greedy, $MAX_TOKENS tokens per request, K = $K (adaptive)."
  echo "Command: \`$SLUICE bench spec -m $TARGET ${THREAD_ARGS[*]} --configs $CONFIGS --max-tokens $MAX_TOKENS --concurrency $CONCURRENCY --num-speculative-tokens $K\`"
  echo
  "$SLUICE" bench spec -m "$TARGET" "${THREAD_ARGS[@]}" --configs "$CONFIGS" \
    --max-tokens "$MAX_TOKENS" --concurrency "$CONCURRENCY" --num-speculative-tokens "$K"
} | tee "$OUT"
echo "report written to $OUT" >&2

#!/usr/bin/env bash
# Side-by-side CPU benchmark: sluice vs llama.cpp's llama-bench on the same GGUF files, in
# the same run, same thread count. Prints markdown tables (paste into docs/BENCHMARKS.md).
#   scripts/bench_cpu.sh [MODEL.gguf ...]     default: SmolLM2-135M-Instruct Q4_1
# Env: THREADS (default 2), REPS (default 5), PP (512), TG (128), BATCHES (1,4,8,16)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}; REPS=${REPS:-5}; PP=${PP:-512}; TG=${TG:-128}; BATCHES=${BATCHES:-1,4,8,16}
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=("${SLUICE_TEST_MODELS:-../shared/models}/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
fi
cargo build --release -q -p sluice-cli
LLAMA_BIN=$(scripts/build_llamacpp.sh | tail -1)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads $THREADS; $(date -u +%F)"
for M in "${MODELS[@]}"; do
  echo
  echo "### $(basename "$M")"
  echo
  echo "llama.cpp (llama-bench, commit of llama-cpp-python ${LLAMACPP_VERSION:-0.3.36}):"
  echo
  "$LLAMA_BIN/llama-bench" -m "$M" -p "$PP" -n "$TG" -t "$THREADS" -r "$REPS" -o md 2>/dev/null
  echo
  echo "sluice (\`sluice bench model\`):"
  echo
  target/release/sluice bench model -m "$M" -t "$THREADS" -p "$PP" -n "$TG" -b "$BATCHES" -r "$REPS"
done

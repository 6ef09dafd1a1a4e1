#!/usr/bin/env bash
# One device call: all CUDA tests, then the quantized weight types (FP8, Q4_K, Q6_K)
# against bf16 on the same card (decode at several batch sizes, one 16 x 1,024 prefill).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
bash scripts/cuda/device_run.sh tests
B=/tmp/sluice-bin/sluice
python3 scripts/cuda/copy_bw.py | tee "$OUT/copy_bw.txt"
q() { echo "=== $*"; timeout 300 $B "$@" 2>&1 | grep -v "^\s*$" | tail -12 | tee -a "$OUT/quant.txt"; }
q bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1,32,64 -r 1
q bench model --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.2-1b-bench --dtype fp8 -p 512 -n 128 -b 1,8,64 -r 1
q bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --batch-size 16 --input-len 1024 --output-len 2 -r 2
q bench model --device cuda --random-weights llama-3.1-8b-bench --random-weights-type q4_k -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.2-1b-bench --dtype q6_k -p 512 -n 128 -b 1,8 -r 1

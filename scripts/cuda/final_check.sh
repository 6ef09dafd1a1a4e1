#!/usr/bin/env bash
# One device call: every CUDA test, FP8 against bf16 on the same card (decode and a
# 16 x 1,024 prefill), and Nsight Compute per-kernel profiles of batch-1 decode steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
mkdir -p "$OUT"
bash scripts/cuda/device_run.sh tests
B=/tmp/sluice-bin/sluice
python3 scripts/cuda/copy_bw.py | tee "$OUT/copy_bw.txt"
q() { echo "=== $*"; timeout 300 $B "$@" 2>&1 | grep -v "^\s*$" | tail -12 | tee -a "$OUT/final.txt"; }
q bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.2-1b-bench --dtype fp8 -p 512 -n 128 -b 1,8,64 -r 1
q bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 2 -r 2
q bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --batch-size 16 --input-len 1024 --output-len 2 -r 2
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
M="--clock-control none --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
for spec in "llama-3.1-8b-bench bf16" "llama-3.2-1b-bench q4_k"; do
  set -- $spec
  echo "=== ncu decode $1 $2 batch 1"
  timeout 240 $NCU $M --launch-count 3000 $B bench model --device cuda --random-weights $1 --random-weights-type $2 -p 16 -n 6 -b 1 -r 1 > "$OUT/ncu-$1-$2.csv" 2>/dev/null
  python3 scripts/cuda/ncu_summary.py "$OUT/ncu-$1-$2.csv" --step-marker embedding --title "decode $1 $2 b1" | tee -a "$OUT/profile.md"
done

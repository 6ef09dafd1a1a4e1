#!/usr/bin/env bash
# One device call that measures every figure issue 7 sets a goal for, on one card, next
# to the copy-bandwidth anchor, and writes them as one table ($OUT/goals.md) with the
# ratios the goals are stated in (scripts/cuda/goals_table.py). Needs the staged
# binaries of scripts/cuda/prepare.sh; about 6 minutes on an H100.
# `torch` adds the PyTorch/transformers baseline in the same call (about 4 more minutes),
# which the "10x PyTorch" goal is measured against; without it the issue's quoted
# figures (another machine) stand in.
#   usage: bash scripts/cuda/goals.sh [tests] [torch]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
LOGS=/tmp/sluice-goals
mkdir -p "$OUT" "$LOGS"
if [[ " ${*:-} " == *" tests "* ]]; then bash scripts/cuda/device_run.sh tests; else bash scripts/cuda/device_run.sh none >/dev/null 2>&1; fi
B=/tmp/sluice-bin/sluice
export SLUICE_CUDA_CACHE=/tmp/sluice-cuda-cache
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader > "$LOGS/gpu.txt"
python3 scripts/cuda/copy_bw.py > "$LOGS/copy.txt"
for m in llama-3.1-8b-bench llama-3.2-1b-bench; do
  # Batch 1 (llama-bench's tg128: 128 tokens from an empty context).
  timeout 300 $B bench model --device cuda --random-weights $m -p 512 -n 128 -b 1 -r 3 > "$LOGS/b1-$m.txt" 2>&1
  # The sweep against PyTorch in PyTorch's own workload (torch_baseline.py: 128 prompt
  # tokens prefilled together, then 64 decoded; decode tokens/s).
  timeout 400 $B bench latency --device cuda --random-weights $m --batch-size 1,8,32,128,256 --input-len 128 --output-len 64 -r 1 > "$LOGS/sweep-$m.txt" 2>&1
  # llama-batched-bench's setting: 512 in, 128 out per sequence.
  timeout 300 $B bench latency --device cuda --random-weights $m --batch-size 32,64 --input-len 512 --output-len 128 -r 1 > "$LOGS/lat-$m.txt" 2>&1
done
timeout 200 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 2 -r 2 > "$LOGS/prefill.txt" 2>&1
if [[ " ${*:-} " == *" torch "* ]]; then
  PYTHONUNBUFFERED=1 timeout 400 python3 scripts/cuda/torch_baseline.py llama-3.1-8b,llama-3.2-1b 1,8,32,128,256 > "$LOGS/torch.txt" 2>&1
fi
python3 scripts/cuda/goals_table.py "$LOGS" | tee "$OUT/goals.md"

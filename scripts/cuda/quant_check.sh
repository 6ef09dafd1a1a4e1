#!/usr/bin/env bash
# One device call: all CUDA tests, then the quantized weight types (FP8, Q4_K, Q6_K)
# against bf16 on the same card (decode at several batch sizes, one 16 x 1,024 prefill).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
bash scripts/cuda/device_run.sh tests
B=/tmp/sluice-bin/sluice
python3 - <<'PY' | tee "$OUT/copy_bw.txt"
import torch
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
print(f"device copy: {2 * x.numel() / (s.elapsed_time(e) / 20) / 1e6:.0f} GB/s (read + write)")
PY
q() { echo "=== $*"; timeout 300 $B "$@" 2>&1 | grep -v "^\s*$" | tail -12 | tee -a "$OUT/quant.txt"; }
q bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1,32,64 -r 1
q bench model --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.2-1b-bench --dtype fp8 -p 512 -n 128 -b 1,8,64 -r 1
q bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --batch-size 16 --input-len 1024 --output-len 2 -r 2
q bench model --device cuda --random-weights llama-3.1-8b-bench --random-weights-type q4_k -p 512 -n 128 -b 1,8,32,64 -r 1
q bench model --device cuda --random-weights llama-3.2-1b-bench --dtype q6_k -p 512 -n 128 -b 1,8 -r 1

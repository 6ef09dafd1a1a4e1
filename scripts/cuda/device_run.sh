#!/usr/bin/env bash
# One call on the GPU machine (the `device` tool): every CUDA test, then benchmarks.
# Nothing is built here: scripts/cuda/prepare.sh (on the CPU machine) puts the release
# binary and the test binaries in .devbin/ and the small test models in .devmodels/.
#   usage: bash scripts/cuda/device_run.sh [tests|bench|eager|q8|prefill|latency|roofline|torch|serve|offline|profile|fp8|kq|all]...
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
mkdir -p "$OUT"
BIN=/tmp/sluice-bin
LOGS=/tmp/sluice-logs
mkdir -p $BIN $LOGS
for f in .devbin/*.xz; do
  b=$BIN/$(basename "$f" .xz)
  # Extracted again when the archive is newer (a warm machine keeps the last call's).
  [ "$b" -nt "$f" ] || xz -dc "$f" > "$b" 2>/dev/null || python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$f" > "$b"
  chmod +x "$b"
done
export SLUICE_BIN=$BIN/sluice
export SLUICE_TEST_MODELS=$PWD/.devmodels
export SLUICE_CUDA_SMOLLM=$PWD/.devmodels/smollm2-small.gguf
export SLUICE_REQUIRE_CUDA=1
export SLUICE_CUDA_CACHE=/tmp/sluice-cuda-cache
# The cubin prepare.sh compiled, if any (used where the NVRTC versions match).
mkdir -p $SLUICE_CUDA_CACHE
for f in .devcache/*.cubin.xz; do [ -e "$f" ] && xz -dc "$f" > "$SLUICE_CUDA_CACHE/$(basename "$f" .xz)"; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
what=${*:-all}
status=0

run_tests() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
  # SLUICE_CUDA_TESTS: a subset, when a call has little device time.
  for t in ${SLUICE_CUDA_TESTS:-cuda_nvrtc cuda_ops cuda_attention cuda_fp8 cuda_kquant cuda_legacy_quant cuda_fused_decode cuda_overlap forward_reference cuda_golden cuda_batch_invariance overlapped_steps}; do
    echo "=== test $t"
    # Full logs stay on the machine (the device tool returns at most 8 files); what is
    # printed also goes to $OUT/tests.txt. A test that hangs (a kernel waiting on a flag
    # that never comes) is cut off after 5 minutes and counts as failed.
    if ! timeout 300 $BIN/test-$t --nocapture --test-threads=1 2>&1 | tee "$LOGS/test-$t.log" | grep -E "rel err|test result|panicked|error|first .* greedy|generation|identical" | tee -a "$OUT/tests.txt"; then
      status=1
    fi
    grep -q "test result: ok" "$LOGS/test-$t.log" || { echo "FAILED: $t" | tee -a "$OUT/tests.txt"; grep -A3 panicked "$LOGS/test-$t.log" | tee -a "$OUT/tests.txt"; status=1; }
  done
  # The bf16 batch-1 GEMVs of before session 16 (two loads in flight), kept for
  # comparisons (SLUICE_GEMV_UNROLL=2): the fusion tests run on them too.
  if [[ " ${SLUICE_CUDA_TESTS:-cuda_fused_decode} " == *" cuda_fused_decode "* ]]; then
    echo "=== test cuda_fused_decode, SLUICE_GEMV_UNROLL=2"
    SLUICE_GEMV_UNROLL=2 $BIN/test-cuda_fused_decode --test-threads=1 > "$LOGS/test-fused-u2.log" 2>&1
    grep -E "test result" "$LOGS/test-fused-u2.log" | tee -a "$OUT/tests.txt"
    grep -q "test result: ok" "$LOGS/test-fused-u2.log" || { echo "FAILED: cuda_fused_decode (SLUICE_GEMV_UNROLL=2)" | tee -a "$OUT/tests.txt"; status=1; }
  fi
}

bench_model() { # preset, extra args...
  local p=$1; shift
  echo "=== bench model $p $*"
  timeout 300 $SLUICE_BIN bench model --device cuda --random-weights "$p" -p 512 -n 128 -b 1,8,32,64,128,256 -r 2 "$@" 2>&1 | tee -a "$OUT/bench-$p.txt"
}

run_roofline() {
  echo "=== roofline llama-3.1-8b on the GPU"
  timeout 300 $SLUICE_BIN roofline --device cuda --model llama-3.1-8b-bench --random-weights --bench --measure \
    -b 1,8,32,64 -c 512,4096 -p 512,1024 -r 3 --plot "$OUT/roofline-h" --json "$OUT/roofline.json" 2>&1 | tee "$OUT/roofline.txt"
}

run_serve() { # sluice serve --device cuda under sluice bench serve, several request rates
  python3 - <<'PY'
# The synthetic tokenizer of --random-weights (t0..t49151, whitespace-split) as a
# tokenizer.json, so the load generator counts tokens exactly as the server does.
from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(49152)}, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.save("/tmp/synthetic-tokenizer.json")
PY
  $SLUICE_BIN serve --device cuda --random-weights llama-3.1-8b-bench --port 8089 \
    --max-num-seqs 128 --max-num-batched-tokens 4096 > "$OUT/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 180); do curl -sf http://127.0.0.1:8089/health >/dev/null && break; sleep 1; done
  # greedy, then sampled on the device (temperature 0.8, top-p 0.95)
  for spec in "16 0" "16 0.8" "64 0.8"; do
    set -- $spec
    echo "=== bench serve, 8B shape, 512 in / 128 out, rate $1/s, temperature $2"
    timeout 120 $SLUICE_BIN bench serve --base-url http://127.0.0.1:8089 --model random-llama-3.1-8b-bench \
      --tokenizer /tmp/synthetic-tokenizer.json --num-prompts 200 --random-input-len 512 \
      --random-output-len 128 --ignore-eos --request-rate $1 --temperature $2 --extra-body '{"top_p": 0.95}' 2>&1 | tee -a "$OUT/serve-bench.txt"
  done
  kill $pid 2>/dev/null
}

run_bench() {
  python3 scripts/cuda/copy_bw.py 2>&1 | tee "$OUT/copy_bw.txt"
  bench_model llama-3.2-1b-bench
  bench_model llama-3.1-8b-bench
}

run_latency() {
  for b in 1 32 64; do
    echo "=== latency llama-3.1-8b batch $b 512 in / 128 out"
    $SLUICE_BIN bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1 2>&1 | tee -a "$OUT/latency-8b.txt"
  done
}

run_eager() { # the same decode benchmark op by op (no CUDA graphs): what the graphs save
  for p in llama-3.2-1b-bench llama-3.1-8b-bench; do
    echo "=== bench model $p --enforce-eager"
    timeout 200 $SLUICE_BIN bench model --device cuda --random-weights "$p" -p 512 -n 128 -b 1,64 -r 2 --enforce-eager 2>&1 | tee -a "$OUT/bench-eager-$p.txt"
  done
}

run_q8() { # Q8_0 weights on the GPU (GEMV for decode, dequantize + cuBLASLt above 4 rows)
  for p in llama-3.2-1b-bench llama-3.1-8b-bench; do
    echo "=== bench model $p, Q8_0 weights"
    timeout 240 $SLUICE_BIN bench model --device cuda --random-weights "$p" --random-weights-type q8_0 -p 512 -n 128 -b 1,8,32,64 -r 2 2>&1 | tee -a "$OUT/bench-q8-$p.txt"
  done
}

run_fp8() { # FP8 weights (GEMV for decode, cuBLASLt's FP8 GEMM above 4 rows on sm_89+)
  for p in llama-3.2-1b-bench llama-3.1-8b-bench; do
    echo "=== bench model $p, FP8 weights"
    timeout 240 $SLUICE_BIN bench model --device cuda --random-weights "$p" --dtype fp8 -p 512 -n 128 -b 1,8,32,64 -r 2 2>&1 | tee -a "$OUT/bench-fp8-$p.txt"
  done
  echo "=== prefill llama-3.1-8b batch 16 x 1024, FP8 weights"
  timeout 200 $SLUICE_BIN bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --batch-size 16 --input-len 1024 --output-len 2 -r 3 2>&1 | tee -a "$OUT/prefill-fp8-8b.txt"
}

run_kq() { # GGUF K-quant weights: Q4_K as a file would have them (auto keeps them), Q6_K quantized at load
  for p in llama-3.2-1b-bench llama-3.1-8b-bench; do
    echo "=== bench model $p, Q4_K weights"
    timeout 400 $SLUICE_BIN bench model --device cuda --random-weights "$p" --random-weights-type q4_k -p 512 -n 128 -b 1,8,32,64 -r 2 2>&1 | tee -a "$OUT/bench-q4k-$p.txt"
    echo "=== bench model $p, --dtype q6_k"
    timeout 400 $SLUICE_BIN bench model --device cuda --random-weights "$p" --dtype q6_k -p 512 -n 128 -b 1,8,32,64 -r 2 2>&1 | tee -a "$OUT/bench-q6k-$p.txt"
  done
}

run_prefill() { # 16 x 1,024-token prompts in one step (issue 7's MFU goal), and one of 512
  for b in 1 16; do
    echo "=== prefill llama-3.1-8b batch $b x 1024"
    timeout 200 $SLUICE_BIN bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 1024 --output-len 2 -r 3 2>&1 | tee -a "$OUT/prefill-8b.txt"
  done
}

run_offline() { # 1,000 requests of 1,024 in / 1,024 out (TensorRT-LLM's published setting)
  echo "=== offline throughput llama-3.1-8b 1000 x 1024/1024"
  timeout 420 $SLUICE_BIN bench throughput --device cuda --random-weights llama-3.1-8b-bench --input-len 1024 --output-len 1024 \
    --num-prompts 1000 --max-num-seqs 192 --max-num-batched-tokens 8192 2>&1 | tee -a "$OUT/offline-8b.txt"
}

run_torch() {
  PYTHONUNBUFFERED=1 timeout 240 python3 scripts/cuda/torch_baseline.py llama-3.1-8b,llama-3.2-1b 1,32,128 2>&1 | grep -v Warning | tee "$OUT/torch.txt"
}

run_profile() { # Nsight Compute: every kernel of one decode step (batch 1) and one prefill step, timed alone
  local NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [ -n "$NCU" ] || { echo "no ncu"; return; }
  local M="--clock-control none --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
  for p in llama-3.1-8b-bench llama-3.2-1b-bench; do
    echo "=== ncu decode $p batch 1"
    timeout 300 $NCU $M --launch-count 3000 $SLUICE_BIN bench model --device cuda --random-weights $p -p 16 -n 6 -b 1 -r 1 ${PROFILE_ARGS:-} > "$OUT/ncu-decode-$p.csv" 2> "$OUT/ncu-decode-$p.err"
    python3 scripts/cuda/ncu_summary.py "$OUT/ncu-decode-$p.csv" --step-marker embedding --title "decode $p b1" | tee -a "$OUT/profile.md"
  done
  echo "=== ncu prefill 8B 16 x 1024"
  timeout 300 $NCU $M --launch-count 1500 $SLUICE_BIN bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 1 -r 1 > "$OUT/ncu-prefill.csv" 2> "$OUT/ncu-prefill.err"
  python3 scripts/cuda/ncu_summary.py "$OUT/ncu-prefill.csv" --step-marker embedding --title "prefill 8B 16x1024" | tee -a "$OUT/profile.md"
}

for w in $what; do
  case $w in
    tests) run_tests ;;
    bench) run_bench ;;
    torch) run_torch ;;
    roofline) run_roofline ;;
    latency) run_latency ;;
    serve) run_serve ;;
    eager) run_eager ;;
    q8) run_q8 ;;
    fp8) run_fp8 ;;
    kq) run_kq ;;
    prefill) run_prefill ;;
    offline) run_offline ;;
    profile) run_profile ;;
    all) run_tests; run_bench; run_roofline; run_torch ;;
  esac
done
exit $status

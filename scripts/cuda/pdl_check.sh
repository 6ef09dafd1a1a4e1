#!/usr/bin/env bash
# One device call: every CUDA test, then the batch-1 decode step with programmatic
# dependent launch (PDL) and the fused norm/residual GEMVs each on and off (environment
# switches SLUICE_PDL and SLUICE_FUSED_DECODE), on the same card, against the device copy
# bandwidth measured in the same call.
#   usage: bash scripts/cuda/pdl_check.sh [tests] [ab] [ab2] [sweep] [batched] [fp8] [latency] [offline_fp8] [final] [prefill_ab] [fp8_ab] [profile64] [decode_ab] [norm_ab] [attn_stalls] [epi_ab] [knobs] [pairs] [pinned] [splits] [async] [cluster] [session11] [serve_ab] [kvfp8] [offline_kvfp8] [serve_kv] [qmma] [qmma_profile] [qmma_splits] [logprobs] [penalties] [gemv] [gemv_step] [prewait] [profile1] [layers] [idle] [splits18] [tiles] [final18] [gemvpre] [stage] [stage2] [trigger] [final21] [ahead] [ahead2] [ahead3] [final22] [ahead128] [next23] [pad23] [push23] [final23] [carve23] [pad24] [wl24] [wlq24] [wl24b] [next25] [next25b] [chunks26] [tail26] [profile128] [attn128] [attn_stalls128] [warp27] [gemm27] [sweep27] [step28] [readback28] [long28] [splits28] [warp29] [widen29] [offline29] [auto30]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
mkdir -p "$OUT"
what=${*:-tests ab}
if [[ " $what " == *" tests "* ]]; then bash scripts/cuda/device_run.sh tests; else bash scripts/cuda/device_run.sh none >/dev/null 2>&1; fi
B=/tmp/sluice-bin/sluice
export SLUICE_CUDA_CACHE=/tmp/sluice-cuda-cache
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
python3 scripts/cuda/copy_bw.py | tee -a "$OUT/copy_bw.txt"
q() { echo "=== $*" | tee -a "$OUT/pdl.txt"; timeout 300 env "$@" 2>&1 | grep -E "tg|pp|tok/s|decode|prefill|warn|error|Error" | tail -8 | tee -a "$OUT/pdl.txt"; }
# The kernel timeline of the `layers` probe (SLUICE_CUDA_TRACE=1) for each setting given.
trace_layers() { for cfg in "$@"; do echo "=== trace layers $cfg" | tee -a "$OUT/layers.txt"; timeout 120 env SLUICE_CUDA_TRACE=1 $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -E "timeline:|per step|attention inside" | tee -a "$OUT/layers.txt"; done; }
if [[ " $what " == *" ab "* ]]; then
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_PDL=0 SLUICE_FUSED_DECODE=0" "SLUICE_PDL=0 SLUICE_FUSED_DECODE=1" "SLUICE_PDL=1 SLUICE_FUSED_DECODE=0" "SLUICE_PDL=1 SLUICE_FUSED_DECODE=1"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
  q SLUICE_PDL=1 $B bench model --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 -p 512 -n 128 -b 1 -r 3
  q SLUICE_PDL=1 $B bench model --device cuda --random-weights llama-3.1-8b-bench --dtype q8_0 -p 512 -n 128 -b 1 -r 3
fi
if [[ " $what " == *" ab2 "* ]]; then # against the previous build (.devbin/sluice-old, staged by hand) and the prefetch size
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=old" "SLUICE_GEMV_PREFETCH=0" "SLUICE_GEMV_PREFETCH=8388608" "SLUICE_GEMV_PREFETCH=25165824"; do
      bin=$B; [ "$cfg" = "X=old" ] && bin=/tmp/sluice-bin/sluice-old
      q $cfg $bin bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" sweep "* ]]; then # prefetch sizes around the default (8 MiB)
  for pf in 4194304 12582912 16777216; do
    q SLUICE_GEMV_PREFETCH=$pf $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 3
  done
  q X=default $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 3
fi
if [[ " $what " == *" batched "* ]]; then
  q SLUICE_PDL=0 $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 8,32,64 -r 1
  q SLUICE_PDL=1 $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 8,32,64 -r 1
  for b in 32 64; do
    q SLUICE_PDL=1 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1
  done
fi
if [[ " $what " == *" fp8 "* ]]; then
  CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE=$OUT/cublaslt-%i.log timeout 120 /tmp/sluice-bin/test-cuda_fp8 --nocapture --test-threads=1 fp8_gemm_matches 2>&1 | grep -E "path|fallback|FP8|test result" | head -20 | tee -a "$OUT/pdl.txt"
  grep -h -iE "error|not.supported|fail" $OUT/cublaslt-*.log 2>/dev/null | head -20 | tee -a "$OUT/pdl.txt"
  q SLUICE_PDL=1 $B bench model --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 -p 512 -n 128 -b 8,32,64 -r 1
  q SLUICE_PDL=1 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 2 -r 2
  q SLUICE_PDL=1 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --batch-size 16 --input-len 1024 --output-len 2 -r 2
fi
if [[ " $what " == *" latency "* ]]; then # llama-batched-bench's setting, bf16
  for b in 1 32 64; do
    q $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1
  done
fi
if [[ " $what " == *" offline_fp8 "* ]]; then # TensorRT-LLM's published setting (FP8 weights there too)
  echo "=== offline throughput 8B FP8 1000 x 1024/1024" | tee -a "$OUT/pdl.txt"
  timeout 300 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --input-len 1024 --output-len 1024 \
    --num-prompts 1000 --max-num-seqs 256 --max-num-batched-tokens 8192 2>&1 | grep -vE "^\s*$" | tail -14 | tee -a "$OUT/pdl.txt"
fi
if [[ " $what " == *" final "* ]]; then # this build's headline figures on one card
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    q $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    q $B bench model --device cuda --random-weights $preset --dtype fp8 -p 512 -n 128 -b 1 -r 3
  done
  for dt in bf16 fp8; do
    for b in 32 64; do
      q $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype $dt --batch-size $b --input-len 512 --output-len 128 -r 1
    done
    q $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype $dt --batch-size 16 --input-len 1024 --output-len 2 -r 2
  done
fi
if [[ " $what " == *" prefill_ab "* ]]; then # the vectorised staging/GLU kernels against the previous build (.devbin/sluice-old)
  for bin in /tmp/sluice-bin/sluice-old $B /tmp/sluice-bin/sluice-old $B; do
    q $bin bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 2 -r 2
  done
  for bin in /tmp/sluice-bin/sluice-old $B; do
    q $bin bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 64 --input-len 512 --output-len 128 -r 1
  done
fi
if [[ " $what " == *" fp8_ab "* ]]; then # FP8 batch 1 against the session-5 build (.devbin/sluice-old), and which change costs what
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=old" "X=new" "SLUICE_GEMV_PREFETCH=0" "SLUICE_FUSED_DECODE=0"; do
      bin=$B; [ "$cfg" = "X=old" ] && bin=/tmp/sluice-bin/sluice-old
      q $cfg $bin bench model --device cuda --random-weights $preset --dtype fp8 -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" profile64 "* ]]; then # every kernel of one decode step (8B bf16, ~530 context) at 64 and 32 sequences, timed alone
  # --launch-skip passes the prefill steps (and the warm-up run's), so the window holds decode steps only.
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  M="--clock-control none --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
  for b in 64 32; do
    timeout 200 $NCU $M --launch-skip 12000 --launch-count 900 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 200 -r 1 > "$OUT/ncu-b$b.csv" 2> "$OUT/ncu-b$b.err"
    python3 scripts/cuda/ncu_summary.py "$OUT/ncu-b$b.csv" --step-marker embedding --title "decode 8B bf16 b$b ctx ~530" | tee -a "$OUT/profile.md"
  done
fi
if [[ " $what " == *" decode_ab "* ]]; then # batched decode: the previous build (.devbin/sluice-base) against this one, autotune on/off
  for b in 32 64; do
    for cfg in "X=base" "SLUICE_GEMM_AUTOTUNE=0" "SLUICE_LOG=sluice_backend=debug"; do
      bin=$B; [ "$cfg" = "X=base" ] && bin=/tmp/sluice-bin/sluice-base
      echo "=== $cfg $bin b$b" | tee -a "$OUT/pdl.txt"
      timeout 300 env $cfg $bin bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1 > "$OUT/lat-$b.log" 2>&1
      grep -a "decode |" "$OUT/lat-$b.log" | tee -a "$OUT/pdl.txt"
      grep -a "autotune" "$OUT/lat-$b.log" | sed 's/.*cuBLASLt/cuBLASLt/' | sort -u | tee -a "$OUT/pdl.txt"
    done
  done
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for bin in /tmp/sluice-bin/sluice-base $B; do
      q X=$bin $bin bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" norm_ab "* ]]; then # the vectorised norm kernels: previous build (.devbin/sluice-base) against this one, batch 64
  for preset in llama-3.2-1b-bench llama-3.1-8b-bench; do
    for bin in /tmp/sluice-bin/sluice-base $B; do
      echo "=== $preset b64 $bin" | tee -a "$OUT/pdl.txt"
      timeout 120 $bin bench latency --device cuda --random-weights $preset --batch-size 64 --input-len 512 --output-len 128 -r 1 2>&1 | grep -a "decode |" | tee -a "$OUT/pdl.txt"
    done
  done
fi
if [[ " $what " == *" attn_stalls "* ]]; then # why the decode attention reads K/V at ~2.3 TB/s at short contexts: ncu stall reasons and memory sections, 8B b64 ctx ~530
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 240 $NCU --clock-control none --kernel-name flash_decode_bf16_d128 --launch-skip 200 --launch-count 2 \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy --section SpeedOfLight \
    $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 64 --input-len 512 --output-len 64 -r 1 \
    > "$OUT/ncu-attn.txt" 2>&1
  grep -aE "Stall|Warp Cycles|Throughput|Achieved Occupancy|Memory Throughput|DRAM|L2 Hit|Duration" "$OUT/ncu-attn.txt" | head -60 | tee -a "$OUT/pdl.txt"
fi
if [[ " $what " == *" epi_ab "* ]]; then # the GEMM epilogues and bf16 activations (SLUICE_GEMM_EPILOGUES) off and on: prefill 16 x 1,024, batched decode, batch 1
  for e in 0 1; do
    echo "=== forward_reference bf16 SLUICE_GEMM_EPILOGUES=$e" | tee -a "$OUT/pdl.txt"
    SLUICE_GEMM_EPILOGUES=$e SLUICE_REQUIRE_CUDA=1 timeout 60 /tmp/sluice-bin/test-forward_reference --nocapture bf16 2>&1 | grep -aE "logit error|over|test result" | tee -a "$OUT/pdl.txt"
  done
  for e in 0 1 0 1; do
    echo "=== prefill 8B 16 x 1024 SLUICE_GEMM_EPILOGUES=$e" | tee -a "$OUT/pdl.txt"
    timeout 200 env SLUICE_GEMM_EPILOGUES=$e $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 16 --input-len 1024 --output-len 2 -r 2 2>&1 | grep -a "prefill |" | tee -a "$OUT/pdl.txt"
  done
  for preset in "llama-3.1-8b-bench 64 0 1" "llama-3.1-8b-bench 32 0 1" "llama-3.2-1b-bench 64 0 1 0 1"; do
    set -- $preset
    m=$1; b=$2; shift 2
    for e in "$@"; do
      echo "=== $m b$b SLUICE_GEMM_EPILOGUES=$e" | tee -a "$OUT/pdl.txt"
      timeout 200 env SLUICE_GEMM_EPILOGUES=$e $B bench latency --device cuda --random-weights $m --batch-size $b --input-len 512 --output-len 128 -r 1 2>&1 | grep -a "prefill |\|decode |" | tee -a "$OUT/pdl.txt"
    done
  done
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    q X=b1 $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
  done
fi
if [[ " $what " == *" knobs "* ]]; then # session 9: where the host's time per step goes, and the tuning knobs of the GEMV grid, the decode attention's splits and cuBLASLt's candidates
  for b in 1 32 64; do
    q X=base $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1
  done
  for b in 32 64; do
    for n in 8 12; do
      q SLUICE_DECODE_BLOCKS_PER_SM=$n $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1
    done
    q SLUICE_GEMM_CANDIDATES=64 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $b --input-len 512 --output-len 128 -r 1
  done
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for n in 2 4 8; do
      q SLUICE_GEMV_BLOCKS_PER_SM=$n $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
fi
if [[ " $what " == *" pairs "* ]]; then # session 9: the GLU and RoPE in the batch-1 GEMV epilogues (SLUICE_FUSED_PAIRS) off and on, alternating; the GEMV grid
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in SLUICE_FUSED_PAIRS=0 SLUICE_FUSED_PAIRS=1 SLUICE_FUSED_PAIRS=0 SLUICE_FUSED_PAIRS=1; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  q SLUICE_GEMV_BLOCKS_PER_SM=8 $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  # (Session 9 also A/B'd an L2 prefetch of the decode attention's first K/V tiles before
  # its PDL wait here, at 32 and 64 sequences: no difference, so it was removed.)
fi
if [[ " $what " == *" pinned "* ]]; then # session 9: step uploads through pinned staging (SLUICE_PINNED_UPLOADS) off and on, alternating
  for cfg in SLUICE_PINNED_UPLOADS=0 SLUICE_PINNED_UPLOADS=1 SLUICE_PINNED_UPLOADS=0 SLUICE_PINNED_UPLOADS=1; do
    q $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 1 --input-len 512 --output-len 128 -r 1
    q $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 64 --input-len 512 --output-len 128 -r 1
  done
fi
if [[ " $what " == *" splits "* ]]; then # session 9: fewer key splits for the decode attention at batch 1 (SLUICE_DECODE_MAX_SPLITS; splits > 1 need the merge kernel)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in X=default SLUICE_DECODE_MAX_SPLITS=1 X=default SLUICE_DECODE_MAX_SPLITS=1; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in X=default SLUICE_DECODE_MAX_SPLITS=1 SLUICE_DECODE_MAX_SPLITS=2 X=default SLUICE_DECODE_MAX_SPLITS=1; do
    for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
      q $cfg $B bench latency --device cuda --random-weights $preset --batch-size 1 --input-len 512 --output-len 128 -r 1
    done
  done
  for cfg in X=default SLUICE_DECODE_MAX_SPLITS=1 X=default SLUICE_DECODE_MAX_SPLITS=1; do
    q $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 32 --input-len 512 --output-len 128 -r 1
  done
fi
if [[ " $what " == *" async "* ]]; then # session 10: overlapped steps (--async-scheduling) off and on, alternating
  for a in off on off on; do
    q X=$a $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1,32,64,128,256 -r 1 --async-scheduling $a
  done
  for a in off on; do
    q X=$a $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1,64,256 -r 1 --async-scheduling $a
  done
  for a in off on; do
    q X=$a $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 64 --input-len 512 --output-len 128 -r 1 --async-scheduling $a
  done
fi
if [[ " $what " == *" cluster "* ]]; then # session 11: the decode attention's key splits merged in a thread-block cluster (default) or by the merge kernel (SLUICE_DECODE_CLUSTER=0), alternating
  for rep in ${CLUSTER_REPS:-1 2}; do
    for cfg in SLUICE_DECODE_CLUSTER=0 SLUICE_LOG=sluice_backend=debug; do
      for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
        echo "=== $cfg latency $preset b1,8,32" | tee -a "$OUT/pdl.txt"
        timeout 300 env $cfg $B bench latency --device cuda --random-weights $preset --batch-size 1,8,32 --input-len 512 --output-len 128 -r 1 2>&1 | grep -E "^batch|\| decode|warn|error|clusters of" | sed 's/(kernel.*//' | awk '!seen[$0]++' | tee -a "$OUT/pdl.txt"
      done
    done
  done
fi
if [[ " $what " == *" session11 "* ]]; then # session 11's last call: PyTorch (best of 3) next to sluice's sweep in its workload, then offline throughput and serving if time is left
  SECONDS=0
  PYTHONUNBUFFERED=1 timeout 300 python3 scripts/cuda/torch_baseline.py llama-3.1-8b 1,8,32,128,256 2>&1 | grep -v Warning | tee "$OUT/torch.txt"
  timeout 150 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 1,8,32,128,256 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^batch|\| decode" | tee "$OUT/sweep-8b.txt"
  echo "=== offline throughput 8B bf16 1000 x 1024/1024 (at ${SECONDS} s)" | tee "$OUT/offline.txt"
  timeout 230 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --input-len 1024 --output-len 1024 \
    --num-prompts 1000 --max-num-seqs 192 --max-num-batched-tokens 8192 2>&1 | grep -vE "^\s*$" | tail -6 | tee -a "$OUT/offline.txt"
  echo "at ${SECONDS} s" | tee -a "$OUT/offline.txt"
  if [ "$SECONDS" -lt 420 ]; then bash scripts/cuda/device_run.sh serve > /dev/null 2>&1; fi
fi
if [[ " $what " == *" serve_ab "* ]]; then # session 11: serving TTFT with overlapped steps on and off (rate 64/s, 200 requests of 512 in / 128 out, each server warmed by one run first)
  python3 -c 'from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(49152)}, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.save("/tmp/synthetic-tokenizer.json")'
  for mode in off on; do
    $B serve --device cuda --random-weights llama-3.1-8b-bench --port 8089 --max-num-seqs 128 --max-num-batched-tokens 4096 --async-scheduling $mode > "$OUT/serve-$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 180); do curl -sf http://127.0.0.1:8089/health >/dev/null && break; sleep 1; done
    for run in warm 1 2; do
      echo "=== async $mode, rate 64/s, run $run" | tee -a "$OUT/pdl.txt"
      timeout 120 $B bench serve --base-url http://127.0.0.1:8089 --model random-llama-3.1-8b-bench \
        --tokenizer /tmp/synthetic-tokenizer.json --num-prompts 200 --random-input-len 512 \
        --random-output-len 128 --ignore-eos --request-rate 64 --temperature 0.8 --extra-body '{"top_p": 0.95}' 2>&1 \
        | grep -E "Request throughput|Output token|P50 TTFT|P99 TTFT|P50 TPOT|P99 TPOT" | tee -a "$OUT/pdl.txt"
    done
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
  done
fi
if [[ " $what " == *" kvfp8 "* ]]; then # session 12: bf16 against FP8 (E4M3) KV cache, decode steps by batch (512 + 128; bench latency prefills the whole batch in one step, so the 8B shape stops at 128) and at a long context (4,000 + 64)
  for kv in bf16 fp8; do
    for spec in "llama-3.2-1b-bench 1,32,64,128,256 512 128" "llama-3.1-8b-bench 1,32,64,128 512 128" "llama-3.1-8b-bench 1,16 4000 64"; do
      set -- $spec
      [ "$1" = llama-3.2-1b-bench ] && [ -n "${SKIP_1B:-}" ] && continue
      [ "$1" = llama-3.1-8b-bench ] && [ -n "${SKIP_8B:-}" ] && continue
      echo "=== $1 kv $kv batch $2, $3 + $4" | tee -a "$OUT/kvfp8.txt"
      timeout 200 $B bench latency --device cuda --random-weights $1 --kv-cache-dtype $kv --batch-size $2 --input-len $3 --output-len $4 -r 1 2>&1 | grep -E "^batch|\| decode|error|Error" | tee -a "$OUT/kvfp8.txt"
    done
  done
fi
if [[ " $what " == *" offline_kvfp8 "* ]]; then # session 12: offline 1000 x 1024/1024 with an FP8 KV cache (bf16 weights, then FP8 weights: TensorRT-LLM's published setting), then the bf16 anchor if time is left
  SECONDS=0
  for args in "--kv-cache-dtype fp8 --max-num-seqs 384" "--kv-cache-dtype fp8 --dtype fp8 --max-num-seqs 384" "--max-num-seqs 192"; do
    [ "$SECONDS" -gt 380 ] && break
    echo "=== offline 8B $args, 1000 x 1024/1024 (at ${SECONDS} s)" | tee -a "$OUT/offline.txt"
    timeout 190 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench $args --input-len 1024 --output-len 1024 \
      --num-prompts 1000 --max-num-batched-tokens 8192 2>&1 | grep -vE "^\s*$" | tail -8 | tee -a "$OUT/offline.txt"
  done
  echo "at ${SECONDS} s" | tee -a "$OUT/offline.txt"
fi
if [[ " $what " == *" serve_kv "* ]]; then # session 12: serving with a bf16 and an FP8 KV cache (max 256 sequences): 400 requests of 1,024 in / 512 out all at once, then rate 64/s of 512 in / 128 out
  python3 -c 'from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(49152)}, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.save("/tmp/synthetic-tokenizer.json")'
  for kv in bf16 fp8; do
    $B serve --device cuda --random-weights llama-3.1-8b-bench --port 8089 --max-num-seqs 256 --max-num-batched-tokens 8192 --kv-cache-dtype $kv > "$OUT/serve-$kv.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 180); do curl -sf http://127.0.0.1:8089/health >/dev/null && break; sleep 1; done
    grep -m1 "KV cache" "$OUT/serve-$kv.log" | tee -a "$OUT/serve_kv.txt"
    for spec in "warm 50 128 128 inf" "burst 400 1024 512 inf" "rate64 200 512 128 64"; do
      set -- $spec
      echo "=== kv $kv $1: $2 requests of $3 in / $4 out, rate $5/s" | tee -a "$OUT/serve_kv.txt"
      timeout 150 $B bench serve --base-url http://127.0.0.1:8089 --model random-llama-3.1-8b-bench \
        --tokenizer /tmp/synthetic-tokenizer.json --num-prompts $2 --random-input-len $3 \
        --random-output-len $4 --ignore-eos --request-rate $5 --temperature 0.8 --extra-body '{"top_p": 0.95}' 2>&1 \
        | grep -E "Request throughput|Output token|P50 TTFT|P99 TTFT|P50 TPOT|P99 TPOT|Benchmark duration" | tee -a "$OUT/serve_kv.txt"
    done
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
  done
fi
if [[ " $what " == *" qmma "* ]]; then # session 13: quantized batched decode, the tensor-core kernel (SLUICE_QMMA_MAX_ROWS=128) against dequantize + cuBLASLt (0), and bf16 as the anchor
  for preset in ${QMMA_PRESETS:-llama-3.1-8b-bench llama-3.2-1b-bench}; do
    for dt in ${QMMA_DTYPES:-q8_0 bf16}; do
      for rows in ${QMMA_ROWS:-0 128}; do # "auto": each format's default limit
        [ "$dt" = bf16 ] && [ "$rows" = 0 ] && continue
        echo "=== $preset --dtype $dt SLUICE_QMMA_MAX_ROWS=$rows (at ${SECONDS} s)" | tee -a "$OUT/qmma.txt"
        timeout 240 env $( [ "$rows" = auto ] || echo SLUICE_QMMA_MAX_ROWS=$rows ) $B bench latency --device cuda --random-weights $preset --dtype $dt --batch-size ${QMMA_BATCHES:-8,16,32,64,128} --input-len 512 --output-len 128 -r 1 2>&1 | grep -E "^batch|\| decode|error|Error" | tee -a "$OUT/qmma.txt"
      done
    done
  done
fi
if [[ " $what " == *" qmma_profile "* ]]; then # session 13: Nsight Compute on the quantized mma (8B Q8_0, decode steps at 8 and 32 sequences): where its time goes
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for b in 32 8; do
    timeout 200 env SLUICE_QMMA_MAX_ROWS=128 $NCU --kernel-name regex:qmma --launch-skip 260 --launch-count 4 \
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
      $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype q8_0 --batch-size $b --input-len 512 --output-len 8 -r 1 > "$OUT/ncu-qmma-b$b.txt" 2> "$OUT/ncu-qmma-b$b.err"
    grep -E "qmma_|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Stall|Issued Warp|No Eligible|Active Warps|Eligible Warps|L2 Hit|Registers|Block Limit|Dynamic Shared|stalled" "$OUT/ncu-qmma-b$b.txt" | grep -vE " 0(\.0+)?$| 0\.0[0-4]" | head -150 | tee -a "$OUT/qmma_profile.txt"
  done
fi
if [[ " $what " == *" qmma_splits "* ]]; then # session 13: the quantized mma's K splits (SLUICE_QMMA_BLOCKS_PER_SM: the blocks per SM the split aims for; default the driver's occupancy)
  for bps in auto 6 12 auto; do
    echo "=== 8B q8_0 SLUICE_QMMA_BLOCKS_PER_SM=$bps (at ${SECONDS} s)" | tee -a "$OUT/qmma_splits.txt"
    env $( [ "$bps" = auto ] || echo SLUICE_QMMA_BLOCKS_PER_SM=$bps ) timeout 200 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype q8_0 --batch-size 8,16,32,64 --input-len 512 --output-len 128 -r 1 2>&1 | grep -E "\| decode|error|Error" | tee -a "$OUT/qmma_splits.txt"
  done
fi
if [[ " $what " == *" logprobs "* ]]; then # session 14: requests with top_logprobs, device sampler (only their logits rows to the host) against --host-sampling (the whole batch's logits, every row sampled on the host: what one such request used to cost)
  IFS=';' read -ra cfgs <<< "${LOGPROBS_CFGS:- ;--logprobs 5 --logprobs-every 64;--logprobs 5 --logprobs-every 64 --host-sampling;--logprobs 5;--logprobs 5 --host-sampling; }"
  for cfg in "${cfgs[@]}"; do
    echo "=== 8B 256 x (128 + 128) $cfg (at ${SECONDS} s)" | tee -a "$OUT/logprobs.txt"
    timeout 120 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --input-len 128 --output-len 128 --num-prompts 256 --max-num-seqs 256 --max-num-batched-tokens 8192 $cfg 2>&1 | grep -E "requests of|per step|rror" | tee -a "$OUT/logprobs.txt"
  done
fi
if [[ " $what " == *" penalties "* ]]; then # session 15: requests with penalties, overlapped steps (the device sampler counts the token in flight) against --async-scheduling off (what any penalty request used to force on the whole batch)
  IFS=';' read -ra cfgs <<< "${PENALTY_CFGS:---repetition-penalty 1.1 --penalties-every 64;--repetition-penalty 1.1 --penalties-every 64 --async-scheduling off;--repetition-penalty 1.1 --frequency-penalty 0.3 --presence-penalty 0.2;--repetition-penalty 1.1 --frequency-penalty 0.3 --presence-penalty 0.2 --async-scheduling off}"
  for cfg in "${cfgs[@]}"; do
    echo "=== 8B 256 x (128 + 128) $cfg (at ${SECONDS} s)" | tee -a "$OUT/penalties.txt"
    timeout 120 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --input-len 128 --output-len 128 --num-prompts 256 --max-num-seqs 256 --max-num-batched-tokens 8192 $cfg 2>&1 | grep -E "requests of|per step|rror" | tee -a "$OUT/penalties.txt"
  done
fi
if [[ " $what " == *" gemv "* ]]; then # session 16: the batch-1 GEMV probe (benches/cuda_gemv.rs) per kernel variant and grid
  for cfg in "X=default" "SLUICE_GEMV_UNROLL=2" "SLUICE_GEMV_PREFETCH=8388608" "SLUICE_GEMV_BLOCKS_PER_SM=4"; do
    echo "=== probe $cfg (at ${SECONDS} s)" | tee -a "$OUT/gemv.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv ${GEMV_PROBE:-8b 1b chain} 2>&1 | tee -a "$OUT/gemv.txt"
  done
fi
if [[ " $what " == *" gemv_step "* ]]; then # session 16: the decode step (tg128) with the bf16 GEMVs of before (two loads in flight, 8 MiB prefetch), a prefetch, another grid
  IFS=';' read -ra cfgs <<< "${STEP_CFGS:-X=default;SLUICE_GEMV_UNROLL=2;SLUICE_GEMV_PREFETCH=8388608;SLUICE_GEMV_BLOCKS_PER_SM=4;X=default}"
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "${cfgs[@]}"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" prewait "* ]]; then # session 17: the decode attention's loads before the PDL wait and the unrolled argmax, against the previous build (.devbin/sluice-base)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "X=base" "X=default"; do
      bin=$B; [ "$cfg" = "X=base" ] && bin=/tmp/sluice-bin/sluice-base
      q $cfg $bin bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
  for bin in /tmp/sluice-bin/sluice-base $B; do # the attention at batch 64 (more tiles per block)
    echo "=== 8B b64 $bin" | tee -a "$OUT/pdl.txt"
    timeout 120 $bin bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 64 --input-len 512 --output-len 128 -r 1 2>&1 | grep -a "decode |" | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" profile1 "* ]]; then # session 17: every kernel of one batch-1 decode step (8B and 1B bf16, ~600 context), timed alone by ncu
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  M="--clock-control none --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    timeout 200 $NCU $M --launch-skip ${PROFILE1_SKIP:-4000} --launch-count 500 $B bench latency --device cuda --random-weights $preset --batch-size 1 --input-len 512 --output-len 200 -r 1 > "$OUT/ncu-$preset.csv" 2> "$OUT/ncu-$preset.err"
    python3 scripts/cuda/ncu_summary.py "$OUT/ncu-$preset.csv" --step-marker embedding --title "batch-1 decode $preset ctx ~600" | tee -a "$OUT/profile.md"
  done
fi
if [[ " $what " == *" layers "* ]]; then # session 17 (written, not yet run on a GPU): the step's layers replayed whole, without the attention, and the attention alone (benches/cuda_layers): the attention's cost inside the overlapped step
  timeout 240 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/gemv.txt"
fi
if [[ " $what " == *" idle "* ]]; then # session 18: the batch-1 GEMV after the decode attention (or the embedding) prefetches its whole weight into L2; per-row heads for the other bf16 GEMVs (SLUICE_GEMV_ROW_PREFETCH, in that call's build only: it cost 1-7%)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_IDLE_PREFETCH=0" "X=default" "SLUICE_GEMV_ROW_PREFETCH=2048" "SLUICE_GEMV_ROW_PREFETCH=4096" "SLUICE_IDLE_PREFETCH=0" "X=default"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" splits18 "* ]]; then # session 18: the batch-1 decode attention's key splits (cluster merge) and the merge kernel instead of the cluster
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_MAX_SPLITS=8" "SLUICE_DECODE_MAX_SPLITS=4" "SLUICE_DECODE_CLUSTER=0" "X=default"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
if [[ " $what " == *" tiles "* ]]; then # session 18: fewest 64-key tiles per decode-attention key split (SLUICE_DECODE_SPLIT_TILES; 1 was the rule before)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_DECODE_SPLIT_TILES=1" "X=default" "SLUICE_DECODE_SPLIT_TILES=2" "SLUICE_DECODE_SPLIT_TILES=5" "SLUICE_DECODE_SPLIT_TILES=1" "X=default"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
  for cfg in "SLUICE_DECODE_SPLIT_TILES=1" "X=default" "SLUICE_DECODE_MAX_SPLITS=16"; do # a 4k context: 64 / 22 / 16 splits
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 4096 -n 128 -b 1 -r 1
  done
  for cfg in "SLUICE_DECODE_SPLIT_TILES=1" "X=default"; do # batch 8: 8 / 4 splits
    echo "=== 8B b8 $cfg" | tee -a "$OUT/pdl.txt"
    timeout 120 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 8 --input-len 512 --output-len 128 -r 1 2>&1 | grep -a "decode |" | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" final18 "* ]]; then # session 18's defaults (idle-memory prefetch, two tiles per split; SLUICE_DECODE_CLUSTER_TILES, splits cut back to a cluster's, was in that call's build only: no difference at 4k) against the settings before
  OLD="SLUICE_IDLE_PREFETCH=0 SLUICE_DECODE_SPLIT_TILES=1 SLUICE_DECODE_CLUSTER_TILES=0"
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    q X=new $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    q $OLD $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    q X=new $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
  done
  q X=new $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 4096 -n 128 -b 1 -r 1
  q $OLD $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 4096 -n 128 -b 1 -r 1
fi
if [[ " $what " == *" gemvpre "* ]]; then # session 20: the batch-1 GEMVs' first weight loads before the PDL wait (SLUICE_GEMV_PREWAIT), with and without the idle-memory L2 prefetch
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in ${GEMVPRE_CFGS:-"SLUICE_GEMV_PREWAIT=0" "X=default" "SLUICE_GEMV_PREWAIT=0" "X=default" "SLUICE_IDLE_PREFETCH=0"}; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 3
    done
  done
fi
# The kernel cache after the call: one file (the cubin prepare.sh staged) means the staged
# cubin was used; a second name means this machine's NVRTC version differs and compiled.
echo "cubin cache: $(ls $SLUICE_CUDA_CACHE 2>/dev/null | tr '\n' ' ')"
if [[ " $what " == *" stage "* ]]; then # session 21: the staged GEMV after the attention (SLUICE_GEMV_STAGE), and the kernel timeline
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_GEMV_STAGE=4" "SLUICE_GEMV_STAGE=2" "SLUICE_GEMV_STAGE=0" "SLUICE_GEMV_STAGE=0 SLUICE_IDLE_PREFETCH=0" "SLUICE_GEMV_STAGE=4 X=again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "SLUICE_GEMV_STAGE=4" "SLUICE_GEMV_STAGE=0"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
    # The timeline build (SLUICE_CUDA_TRACE=1: its own cubin, staged by prepare.sh).
    echo "=== layers traced $cfg" | tee -a "$OUT/layers.txt"
    timeout 150 env $cfg SLUICE_CUDA_TRACE=1 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" stage2 "* ]]; then # session 21: staged chunks 1 / 2 / 4, one shared-memory carveout for all kernels, the timeline with marks
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_GEMV_STAGE=2" "SLUICE_GEMV_STAGE=1" "SLUICE_GEMV_STAGE=0" "SLUICE_GEMV_STAGE=4 SLUICE_SMEM_CARVEOUT=100" "SLUICE_GEMV_STAGE=2 SLUICE_SMEM_CARVEOUT=100" "SLUICE_GEMV_STAGE=0 SLUICE_SMEM_CARVEOUT=100"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "SLUICE_GEMV_STAGE=2" "SLUICE_GEMV_STAGE=0"; do
    echo "=== layers traced $cfg" | tee -a "$OUT/layers.txt"
    timeout 150 env $cfg SLUICE_CUDA_TRACE=1 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" trigger "* ]]; then # session 21: the decode attention's late PDL trigger, with the staged GEMV after it
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_LATE_TRIGGER=0" "SLUICE_DECODE_SPLIT_TILES=1" "SLUICE_GEMV_STAGE=4" "SLUICE_DECODE_LATE_TRIGGER=0 SLUICE_GEMV_STAGE=0"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  echo "=== layers traced default" | tee -a "$OUT/layers.txt"
  timeout 150 env SLUICE_CUDA_TRACE=1 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
fi
if [[ " $what " == *" final21 "* ]]; then # session 21's build against session 20's (.devbin/sluice-s20.xz, its cubin staged; .devbin/sluice-main.xz = this build), staged GEMV on and off
  AB_SETUP="" AB_BUILDS="s20 main" AB_CFGS="SLUICE_GEMV_STAGE=2 SLUICE_GEMV_STAGE=0" AB_LAYERS="" AB_ROUNDS="1 2" bash scripts/cuda/ab_builds.sh
  echo "=== layers (this build)" | tee -a "$OUT/layers.txt"
  timeout 120 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
fi
if [[ " $what " == *" ahead "* ]]; then # session 22: the batch-1 decode attention with each split's tiles requested before the wait (SLUICE_DECODE_AHEAD), with its late PDL trigger and without
  echo "=== test cuda_attention decode_attention" | tee -a "$OUT/tests.txt"
  SLUICE_REQUIRE_CUDA=1 timeout 200 /tmp/sluice-bin/test-cuda_attention --nocapture --test-threads=1 decode_attention 2>&1 | tee /tmp/ahead-test.log | grep -E "test result|panicked|FAILED|> 2e-2" | tee -a "$OUT/tests.txt"
  grep -E "rel err" /tmp/ahead-test.log | sort -t' ' -k1,1 | awk '{print $NF, $0}' | sort -g -k4 | tail -3 | tee -a "$OUT/tests.txt"
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in ${AHEAD_CFGS:-"SLUICE_DECODE_AHEAD=0" "X=late" "SLUICE_DECODE_LATE_TRIGGER=0" "SLUICE_DECODE_AHEAD=0 X=again" "X=late-again"}; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in ${AHEAD_TRACE:-"X=late" "SLUICE_DECODE_LATE_TRIGGER=0"}; do
    echo "=== layers traced $cfg" | tee -a "$OUT/layers.txt"
    timeout 150 env $cfg SLUICE_CUDA_TRACE=1 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" ahead2 "* ]]; then # session 22: why the ahead kernel is slower in the engine (8 splits: the table is 64 blocks wide) than in the layers probe (5)
  for cfg in "SLUICE_DECODE_AHEAD=0" "X=late" "SLUICE_DECODE_LATE_TRIGGER=0"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
  for cfg in "SLUICE_DECODE_AHEAD=0" "X=late"; do
    echo "=== layers traced $cfg" | tee -a "$OUT/layers.txt"
    timeout 150 env $cfg SLUICE_CUDA_TRACE=1 /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep "8B layers" | tee -a "$OUT/layers.txt"
  done
  for cfg in "SLUICE_DECODE_MAX_SPLITS=5" "SLUICE_DECODE_MAX_SPLITS=5 SLUICE_DECODE_AHEAD=0" "SLUICE_DECODE_AHEAD=0" "X=late" "SLUICE_DECODE_SPLIT_TILES=3"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
fi
if [[ " $what " == *" ahead3 "* ]]; then # session 22: flash_decode_ahead at head_dim 64 only (the default), against none, and with 1 / 3 tiles per split
  for preset in llama-3.2-1b-bench llama-3.1-8b-bench; do
    for cfg in "SLUICE_DECODE_AHEAD=0" "X=default" "SLUICE_DECODE_AHEAD=0 X=again" "X=default-again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "SLUICE_DECODE_SPLIT_TILES=1" "SLUICE_DECODE_SPLIT_TILES=3"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "SLUICE_DECODE_AHEAD=0" "X=default"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" final22 "* ]]; then # session 22's defaults against flash_decode_ahead off and the staged output projection off (SLUICE_*=0 now parsed as 0: before, env_usize read 0 as the default)
  for preset in llama-3.2-1b-bench llama-3.1-8b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_AHEAD=0" "SLUICE_GEMV_STAGE=0" "X=default-again" "SLUICE_DECODE_AHEAD=0 X=again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "X=default" "SLUICE_DECODE_AHEAD=0" "SLUICE_GEMV_STAGE=0"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" ahead128 "* ]]; then # session 22: flash_decode_ahead at head_dim 128 held to 128 registers (SLUICE_DECODE_AHEAD=2) against the general kernel
  for cfg in "X=default" "SLUICE_DECODE_AHEAD=2" "X=default-again" "SLUICE_DECODE_AHEAD=2 X=again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "X=default" "SLUICE_DECODE_AHEAD=2"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep "8B" | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" next23 "* ]]; then # prepared in session 22, not yet run: the spill-free head_dim 128 flash_decode_ahead (SLUICE_DECODE_AHEAD=2) and staging every plain bf16 GEMV (SLUICE_GEMV_STAGE_ALL=1), against the defaults
  echo "=== test cuda_attention decode_attention" | tee -a "$OUT/tests.txt"
  SLUICE_REQUIRE_CUDA=1 timeout 200 /tmp/sluice-bin/test-cuda_attention --test-threads=1 decode_attention 2>&1 | grep -E "test result|panicked|> 2e-2" | tee -a "$OUT/tests.txt"
  echo "=== test cuda_fused_decode, SLUICE_GEMV_STAGE_ALL=1" | tee -a "$OUT/tests.txt"
  SLUICE_GEMV_STAGE_ALL=1 SLUICE_REQUIRE_CUDA=1 timeout 100 /tmp/sluice-bin/test-cuda_fused_decode --test-threads=1 2>&1 | grep -E "test result|panicked" | tee -a "$OUT/tests.txt"
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_AHEAD=2" "SLUICE_GEMV_STAGE_ALL=1" "X=default-again" "SLUICE_DECODE_AHEAD=2 X=again" "SLUICE_GEMV_STAGE_ALL=1 X=again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "X=default" "SLUICE_DECODE_AHEAD=2" "SLUICE_GEMV_STAGE_ALL=1"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" pad23 "* ]]; then # session 23: the batch-1 decode attention's blocks padded with dynamic shared memory (SLUICE_DECODE_SMEM_PAD) so that no (or one) output-projection block runs beside them
  for cfg in "SLUICE_DECODE_SMEM_PAD=163840" "SLUICE_DECODE_SMEM_PAD=133120" "SLUICE_DECODE_AHEAD=2 SLUICE_DECODE_SMEM_PAD=143360" "X=default-3"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "SLUICE_DECODE_SMEM_PAD=163840" "SLUICE_DECODE_SMEM_PAD=133120" "X=default-3"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "SLUICE_DECODE_SMEM_PAD=163840"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" push23 "* ]]; then # session 23: the one-barrier (push) cluster merge of flash_decode_ahead against the two-barrier one, and padding its blocks (SLUICE_DECODE_PUSH_MERGE: branch wip/push-merge, first version)
  echo "=== test cuda_attention decode_attention" | tee -a "$OUT/tests.txt"
  SLUICE_REQUIRE_CUDA=1 timeout 200 /tmp/sluice-bin/test-cuda_attention --test-threads=1 decode_attention 2>&1 | grep -E "test result|panicked|> 2e-2" | tee -a "$OUT/tests.txt"
  echo "=== test cuda_golden" | tee -a "$OUT/tests.txt"
  SLUICE_REQUIRE_CUDA=1 timeout 200 /tmp/sluice-bin/test-cuda_golden --test-threads=1 2>&1 | grep -E "test result|panicked" | tee -a "$OUT/tests.txt"
  for cfg in "X=default" "SLUICE_DECODE_PUSH_MERGE=0" "X=default-again" "SLUICE_DECODE_PUSH_MERGE=0 X=again" "SLUICE_DECODE_SMEM_PAD=30720" "SLUICE_DECODE_SMEM_PAD=66560"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "X=default" "SLUICE_DECODE_PUSH_MERGE=0" "X=default-again" "SLUICE_DECODE_PUSH_MERGE=0 X=again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "X=default" "SLUICE_DECODE_PUSH_MERGE=0"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" final23 "* ]]; then # session 23's shipped build (flash_decode_ahead at both head dims) against flash_decode_ahead_push (SLUICE_DECODE_PUSH_MERGE=1, a 16 KB receive buffer; branch wip/push-merge)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_PUSH_MERGE=1" "X=default-again" "SLUICE_DECODE_PUSH_MERGE=1 X=again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "X=default" "SLUICE_DECODE_PUSH_MERGE=1"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 120 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" carve23 "* ]]; then # session 23: one preferred carveout for the Q/K/V GEMV, the batch-1 attention and the staged output projection only (SLUICE_DECODE_CARVEOUT)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_DECODE_CARVEOUT=100" "SLUICE_DECODE_CARVEOUT=50"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "SLUICE_DECODE_CARVEOUT=100"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 60 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" pad24 "* ]]; then # prepared in session 23, not yet run: the shipped flash_decode_ahead (75 KB at head_dim 128, 40 KB at 64) padded so that two or one output-projection blocks (32 KB staged each) fit beside it instead of three
  for cfg in "X=default" "SLUICE_DECODE_SMEM_PAD=65536" "SLUICE_DECODE_SMEM_PAD=100352" "X=default-again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "X=default" "SLUICE_DECODE_SMEM_PAD=99328" "SLUICE_DECODE_SMEM_PAD=134144" "X=default-again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1 -r 2
  done
fi
if [[ " $what " == *" wl24 "* ]]; then # session 24: the GEMVs' weight loads with other cache hints (SLUICE_WEIGHT_LOAD, kernels/common.cuh ld_weight; stage the cubins with SLUICE_PREP_VARIANTS), alone and with a full carveout around the attention
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_WEIGHT_LOAD=1" "SLUICE_WEIGHT_LOAD=2" "SLUICE_WEIGHT_LOAD=3" "SLUICE_WEIGHT_LOAD=1 SLUICE_DECODE_CARVEOUT=100" "X=default-again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "X=default" "SLUICE_WEIGHT_LOAD=1" "SLUICE_WEIGHT_LOAD=1 SLUICE_DECODE_CARVEOUT=100"; do
    echo "=== layers $cfg" | tee -a "$OUT/layers.txt"
    timeout 60 env $cfg /tmp/sluice-bin/bench-cuda_gemv layers 2>&1 | grep -v timeline | tee -a "$OUT/layers.txt"
  done
fi
if [[ " $what " == *" wlq24 "* ]]; then # session 24: the quantized batch-1 GEMVs with .L1::no_allocate weight loads (the default now) against __ldg (SLUICE_WEIGHT_LOAD=0), 8B shape
  for dt in fp8 q8_0 q4_0 q4_k; do
    for cfg in "X=default" "SLUICE_WEIGHT_LOAD=0"; do
      q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench --dtype $dt -p 512 -n 128 -b 1 -r 2
    done
  done
fi
if [[ " $what " == *" wl24b "* ]]; then # session 24: with .L1::no_allocate weight loads the default, the knobs tuned under the old L1 pressure again, and the L2 evict-first policy (SLUICE_WEIGHT_LOAD=4)
  for cfg in "X=default" "SLUICE_WEIGHT_LOAD=4" "SLUICE_DECODE_SMEM_PAD=65536" "SLUICE_GEMV_STAGE_ALL=1" "SLUICE_DECODE_CARVEOUT=50" "X=default-again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.1-8b-bench -p 512 -n 128 -b 1 -r 2
  done
  for cfg in "X=default" "SLUICE_WEIGHT_LOAD=4" "SLUICE_DECODE_SMEM_PAD=99328" "SLUICE_GEMV_STAGE_ALL=1" "SLUICE_DECODE_CARVEOUT=50" "X=default-again"; do
    q $cfg $B bench model --device cuda --random-weights llama-3.2-1b-bench -p 512 -n 128 -b 1 -r 2
  done
fi
if [[ " $what " == *" next25 "* ]]; then # prepared in session 24, not yet run: with the weights out of L1 (.L1::no_allocate), the batch-1 knobs tuned under the old L1 pressure once more (GEMV grid size, loads in flight, the L2 prefetches, the staged projection's chunks, the attention's tiles per split)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_GEMV_BLOCKS_PER_SM=3" "SLUICE_GEMV_BLOCKS_PER_SM=4" "SLUICE_GEMV_BLOCKS_PER_SM=1" "SLUICE_GEMV_UNROLL=2" "SLUICE_GEMV_PREFETCH=8388608" "SLUICE_IDLE_PREFETCH=0" "SLUICE_GEMV_STAGE=4" "SLUICE_DECODE_SPLIT_TILES=3" "X=default-again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
fi
if [[ " $what " == *" next25b "* ]]; then # session 25: next25's likeliest knobs only (the device budget)
  for preset in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_GEMV_BLOCKS_PER_SM=3" "SLUICE_GEMV_UNROLL=2" "SLUICE_IDLE_PREFETCH=0" "SLUICE_DECODE_SPLIT_TILES=3"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
fi
if [[ " $what " == *" chunks26 "* ]]; then # session 26 (measured, then removed: 1B -0.5%, 8B level): SLUICE_GEMV_MIN_CHUNKS=4, fewer warps per row where a lane would get less than a full iteration of chunks (the 1B Q/K/V GEMV: 4 -> 2 warps per row); the fused-decode test with it first
  SLUICE_GEMV_MIN_CHUNKS=4 timeout 300 /tmp/sluice-bin/test-cuda_fused_decode --test-threads=1 2>&1 | grep -E "test result|panicked|FAILED" | tee -a "$OUT/pdl.txt"
  for preset in llama-3.2-1b-bench llama-3.1-8b-bench; do
    for cfg in "X=default" "SLUICE_GEMV_MIN_CHUNKS=4" "X=default-again" "SLUICE_GEMV_MIN_CHUNKS=4 X=again"; do
      q $cfg $B bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  trace_layers "X=default" "SLUICE_GEMV_MIN_CHUNKS=4"
fi
if [[ " $what " == *" tail26 "* ]]; then # session 26 (measured, then removed: 1B -1.6..-7.8%, 8B -0.4..-3.9% against off, and the build with it off -0.3%; code in git, 6f6cd2c): SLUICE_TAIL_PREFETCH=<bytes>, each batch-1 GEMV prefetches the front of the next weight's rows into L2 as its warps finish (cuda/tail_prefetch.rs); against the build before it (.devbin/sluice-old, staged by hand)
  export SLUICE_BIN=$B SLUICE_TEST_MODELS=$PWD/.devmodels SLUICE_CUDA_SMOLLM=$PWD/.devmodels/smollm2-small.gguf SLUICE_REQUIRE_CUDA=1
  timeout 300 /tmp/sluice-bin/test-cuda_fused_decode --test-threads=1 2>&1 | grep -E "test result|panicked|FAILED" | tee -a "$OUT/pdl.txt"
  SLUICE_TAIL_PREFETCH=4194304 timeout 300 /tmp/sluice-bin/test-cuda_golden --test-threads=1 2>&1 | grep -E "test result|panicked|FAILED" | tee -a "$OUT/pdl.txt"
  for preset in llama-3.2-1b-bench llama-3.1-8b-bench; do
    for cfg in "X=old" "X=default" "SLUICE_TAIL_PREFETCH=2097152" "SLUICE_TAIL_PREFETCH=4194304" "SLUICE_TAIL_PREFETCH=8388608" "SLUICE_TAIL_PREFETCH=16777216" "X=default-again" "SLUICE_TAIL_PREFETCH=4194304 X=again"; do
      bin=$B; [ "$cfg" = "X=old" ] && bin=/tmp/sluice-bin/sluice-old
      q $cfg $bin bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r 2
    done
  done
  trace_layers "X=default" "SLUICE_TAIL_PREFETCH=4194304"
fi
if [[ " $what " == *" profile128 "* ]]; then # session 26: every kernel of one decode step at 128 sequences (8B bf16, the sweep's 128 + 64 workload), timed alone: what keeps batch 128 below 10x the issue's PyTorch figure
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  M="--clock-control none --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
  timeout 150 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "decode|step|tok" | tail -6 | tee -a "$OUT/profile.md"
  timeout 300 $NCU $M --launch-skip 12000 --launch-count 700 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 > "$OUT/ncu-b128.csv" 2> "$OUT/ncu-b128.err"
  python3 scripts/cuda/ncu_summary.py "$OUT/ncu-b128.csv" --step-marker embedding --title "decode 8B bf16 b128 ctx ~130-190" | tee -a "$OUT/profile.md"
  tail -3 "$OUT/ncu-b128.err"
fi
if [[ " $what " == *" attn128 "* ]]; then # session 26: the decode attention at 128 and 256 sequences (2.3 TB/s in profile128: one split per (sequence, KV head), 1,024 blocks in 1.94 waves) with more key splits
  for cfg in "X=default" "SLUICE_DECODE_BLOCKS_PER_SM=16" "SLUICE_DECODE_BLOCKS_PER_SM=16 SLUICE_DECODE_SPLIT_TILES=1" "SLUICE_DECODE_BLOCKS_PER_SM=32 SLUICE_DECODE_SPLIT_TILES=1" "X=default-again"; do
    echo "=== $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128,256 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^\| *(128|256)|decode" | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" attn_stalls128 "* ]]; then # session 26: the decode attention at 128 sequences (~130-190 keys, 2.3 TB/s in profile128): occupancy, memory and stall sections, for the next step
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 200 $NCU --clock-control none --kernel-name flash_decode_bf16_d128 --launch-skip 600 --launch-count 1 \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy --section SpeedOfLight --section LaunchStats \
    $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 \
    > "$OUT/ncu-attn128.txt" 2>&1
  grep -aE "Stall|Warp Cycles|Throughput|Occupancy|Block Limit|Registers|Shared Memory|Grid Size|Waves|DRAM|L2 Hit|Duration" "$OUT/ncu-attn128.txt" | head -80 | tee -a "$OUT/pdl.txt"
fi
if [[ " $what " == *" warp27 "* ]]; then # session 27: flash_decode_warp (a warp per (sequence, KV head), 16-key tiles in a ring of 2-4) against the block kernel, 8B and 1B at 64-256 sequences
  for m in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "SLUICE_DECODE_WARP=0" "SLUICE_DECODE_WARP=2" "SLUICE_DECODE_WARP=3" "SLUICE_DECODE_WARP=4" "SLUICE_DECODE_WARP=0"; do
      echo "=== $m $cfg" | tee -a "$OUT/pdl.txt"
      timeout 200 env $cfg $B bench latency --device cuda --random-weights $m --batch-size 64,128,256 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^batch|^\| decode" | tee -a "$OUT/pdl.txt"
    done
  done
  # Each kernel alone under Nsight Compute at 128 sequences (8B): time and DRAM bytes.
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for kc in "0 flash_decode_bf16_d128" "3 flash_decode_warp3_bf16_d128"; do
    set -- $kc
    SLUICE_DECODE_WARP=$1 timeout 200 $NCU --clock-control none --kernel-name $2 --launch-skip 600 --launch-count 5 --csv --page raw --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active \
      $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 > "$OUT/ncu-$2.csv" 2>/dev/null
    echo "=== ncu $2" | tee -a "$OUT/pdl.txt"; grep -a "$2" "$OUT/ncu-$2.csv" | tail -5 | awk -F'","' '{print $(NF-3), $(NF-2), $(NF-1), $NF}' | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" gemm27 "* ]]; then # session 27: more cuBLASLt candidates for the autotuner (the batch-128 GEMMs ran at 2.6-3.7 TB/s in profile128), 8B at 128 sequences
  for cfg in "X=default" "SLUICE_GEMM_CANDIDATES=64" "SLUICE_GEMM_CANDIDATES=128" "X=default-again"; do
    echo "=== $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^batch|^\| decode" | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" sweep27 "* ]]; then # session 27: batch 128 ran 6% slower inside goals.sh's sweep (after batch 1, 8, 32) than alone in the same call: which earlier run, and whether the GEMM autotuner's picks are the difference
  for cfg in "128" "32,128" "1,8,32,128" "1,8,32,128 SLUICE_GEMM_AUTOTUNE=0" "128 SLUICE_GEMM_AUTOTUNE=0"; do
    set -- $cfg
    echo "=== batch sizes $1 ${2:-}" | tee -a "$OUT/pdl.txt"
    timeout 200 env ${2:-X=1} $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size $1 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^batch 128|^\| decode" | tail -1 | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" step28 "* ]]; then # session 28: the step boundary: the seven uploads as one kernel (SLUICE_PACKED_UPLOADS) and the greedy argmax over several blocks per row (SLUICE_ARGMAX_SPLIT), each off against the defaults, batch 1 of both shapes alternating, then 8B at 128 sequences
  for m in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_PACKED_UPLOADS=0" "SLUICE_ARGMAX_SPLIT=0" "SLUICE_PACKED_UPLOADS=0 SLUICE_ARGMAX_SPLIT=0" "X=default-again" "SLUICE_PACKED_UPLOADS=0 SLUICE_ARGMAX_SPLIT=0"; do
      q $cfg $B bench model --device cuda --random-weights $m -p 512 -n 128 -b 1 -r 2
    done
  done
  for cfg in "X=default" "SLUICE_PACKED_UPLOADS=0 SLUICE_ARGMAX_SPLIT=0" "X=default-again"; do
    echo "=== b128 $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --batch-size 128 --input-len 128 --output-len 64 -r 1 2>&1 | grep -E "^batch|^\| decode" | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" long28 "* ]]; then # session 28: decode at long contexts (64 sequences of 1,536 keys), bf16 and FP8 weights + caches: step time against the bytes, and the decode attention alone under Nsight Compute
  for ty in bf16 fp8; do
    echo "=== long $ty" | tee -a "$OUT/pdl.txt"
    timeout 200 $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype $ty --kv-cache-dtype $ty --batch-size 64 --input-len 1536 --output-len 16 -r 1 2>&1 | grep -E "^batch|^\| (decode|prefill)|KV|capacity" | tee -a "$OUT/pdl.txt"
  done
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for kc in "bf16 flash_decode_bf16_d128" "fp8 flash_decode_fp8_d128"; do
    set -- $kc
    timeout 240 $NCU --clock-control none --kernel-name $2 --launch-skip 96 --launch-count 3 --csv --page raw --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__registers_per_thread \
      $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype $1 --kv-cache-dtype $1 --batch-size 64 --input-len 1536 --output-len 16 -r 1 > "$OUT/ncu-long-$1.csv" 2>/dev/null
    echo "=== ncu long $1 $2" | tee -a "$OUT/pdl.txt"; grep -a "$2" "$OUT/ncu-long-$1.csv" | tail -3 | awk -F'","' '{print $(NF-5), $(NF-4), $(NF-3), $(NF-2), $(NF-1), $NF}' | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" readback28 "* ]]; then # session 28: the sampled ids written into the mapped readback slot by a kernel (SLUICE_KERNEL_READBACK, default) against a copy, batch 1 of both shapes alternating
  for m in llama-3.1-8b-bench llama-3.2-1b-bench; do
    for cfg in "X=default" "SLUICE_KERNEL_READBACK=0" "X=default-again" "SLUICE_KERNEL_READBACK=0"; do
      q $cfg $B bench model --device cuda --random-weights $m -p 512 -n 128 -b 1 -r 2
    done
  done
fi
if [[ " $what " == *" splits28 "* ]]; then # session 28: more key splits at long contexts (64 sequences of 1,536 keys: one split per (sequence, KV head) by default, ~4 blocks per SM), through the slots the split count aims at (SLUICE_DECODE_BLOCKS_PER_SM 4 = default, 8, 12)
  for ty in fp8 bf16; do
    for bps in 4 8 12 4; do
      echo "=== long $ty SLUICE_DECODE_BLOCKS_PER_SM=$bps" | tee -a "$OUT/pdl.txt"
      timeout 200 env SLUICE_DECODE_BLOCKS_PER_SM=$bps $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype $ty --kv-cache-dtype $ty --batch-size 64 --input-len 1536 --output-len 16 -r 1 2>&1 | grep -E "^\| decode" | tee -a "$OUT/pdl.txt"
    done
  done
fi
if [[ " $what " == *" warp29 "* ]]; then # session 29: flash_decode_warp over an FP8 cache (ring of 4 / 6 / 8 16-key tiles) against the FP8 block kernel: 64 x 1,536 (one wave of the block kernel: the warp kernel forced), 128 x 768 (two waves: the warp kernel by default), then both alone under Nsight Compute
  for cfg in "SLUICE_DECODE_WARP_FP8=0" "SLUICE_DECODE_WARP_ALWAYS=1 SLUICE_DECODE_WARP_FP8=4" "SLUICE_DECODE_WARP_ALWAYS=1 SLUICE_DECODE_WARP_FP8=6" "SLUICE_DECODE_WARP_ALWAYS=1 SLUICE_DECODE_WARP_FP8=8" "SLUICE_DECODE_WARP_FP8=0"; do
    echo "=== fp8 64 x 1536 $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --batch-size 64 --input-len 1536 --output-len 16 -r 1 2>&1 | grep -E "^\| decode|rror" | tee -a "$OUT/pdl.txt"
  done
  for cfg in "SLUICE_DECODE_WARP_FP8=0" "SLUICE_DECODE_WARP_FP8=4" "SLUICE_DECODE_WARP_FP8=6" "SLUICE_DECODE_WARP_FP8=8" "SLUICE_DECODE_WARP_FP8=0"; do
    echo "=== fp8 128 x 768 $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --batch-size 128 --input-len 768 --output-len 16 -r 1 2>&1 | grep -E "^\| decode|rror" | tee -a "$OUT/pdl.txt"
  done
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for kc in "SLUICE_DECODE_WARP_FP8=0 flash_decode_fp8_d128" "SLUICE_DECODE_WARP_FP8=6 flash_decode_warp6_fp8_d128"; do
    set -- $kc
    timeout 240 env $1 SLUICE_DECODE_WARP_ALWAYS=1 $NCU --clock-control none --kernel-name $2 --launch-skip 96 --launch-count 3 --csv --page raw --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__registers_per_thread \
      $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --batch-size 64 --input-len 1536 --output-len 16 -r 1 > "$OUT/ncu-warp29-$2.csv" 2>/dev/null
    echo "=== ncu 64 x 1536 $2" | tee -a "$OUT/pdl.txt"; grep -a "$2" "$OUT/ncu-warp29-$2.csv" | tail -3 | awk -F'","' '{print $(NF-5), $(NF-4), $(NF-3), $(NF-2), $(NF-1), $NF}' | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" offline29 "* ]]; then # session 29: offline 1,000 x (1,024 + 1,024), FP8 weights and cache, 512 sequences (TensorRT-LLM's published setting), the FP8 warp kernel (default) against the block kernel
  for cfg in ${OFFLINE_CFGS:-"X=default" "SLUICE_DECODE_WARP_FP8=0"}; do
    echo "=== offline 8B fp8 + fp8 cache, 512 sequences, $cfg" | tee -a "$OUT/pdl.txt"
    timeout 200 env $cfg $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --input-len 1024 --output-len 1024 \
      --num-prompts 1000 --max-num-seqs 512 --max-num-batched-tokens 8192 2>&1 | grep -vE "^\s*$" | tail -8 | tee -a "$OUT/pdl.txt"
  done
fi
if [[ " $what " == *" widen29 "* ]]; then # session 29: the decode attention's instructions per key: the hardware E4M3 widening, the lazy O rescale and unmasked inner tiles (default) against the old code (SLUICE_CUDA_DEFINES="SLUICE_FD8_SOFT SLUICE_EAGER_RESCALE"), FP8 block and warp kernels and the bf16 ones
  OLD="SLUICE_CUDA_DEFINES=SLUICE_FD8_SOFT,SLUICE_EAGER_RESCALE"
  lat() { echo "=== $1 | $2" | tee -a "$OUT/pdl.txt"; timeout 200 env $2 $B bench latency --device cuda --random-weights llama-3.1-8b-bench $1 -r 1 2>&1 | grep -E "^\| decode|rror" | tee -a "$OUT/pdl.txt"; }
  F64="--dtype fp8 --kv-cache-dtype fp8 --batch-size 64 --input-len 1536 --output-len 16"
  F128="--dtype fp8 --kv-cache-dtype fp8 --batch-size 128 --input-len 768 --output-len 16"
  B64="--batch-size 64 --input-len 1536 --output-len 16"
  B128="--batch-size 128 --input-len 128 --output-len 64"
  for cfg in "X=new" "$OLD" "X=new-again" "$OLD"; do lat "$F64" "$cfg"; done
  for cfg in "X=new" "$OLD" "SLUICE_DECODE_WARP_FP8=0" "X=new-again" "$OLD"; do lat "$F128" "$cfg"; done
  lat "$F64" "SLUICE_DECODE_WARP_ALWAYS=1"
  for cfg in "X=new" "$OLD" "X=new-again"; do lat "$B64" "$cfg"; lat "$B128" "$cfg"; done
fi
if [[ " $what " == *" auto30 "* ]]; then # prepared in session 29, not yet run: the FP8 warp kernel's automatic depth (6 while one wave of those warps holds every item, else 4) against fixed depths around its threshold (8 warps per SM x 132 SMs = 1,056 items at head_dim 128), its instruction mix under Nsight Compute, then the offline run with the default (steps with prompt tokens timed apart)
  # (Batch x prompt near 98k tokens: bench latency prefills each batch in one step.)
  for shape in "96 1024" "128 768" "160 608" "192 512" "256 384"; do
    set -- $shape
    for cfg in "X=auto" "SLUICE_DECODE_WARP_FP8=4" "SLUICE_DECODE_WARP_FP8=6"; do
      echo "=== fp8 $1 x $2 $cfg" | tee -a "$OUT/pdl.txt"
      timeout 200 env $cfg $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --batch-size $1 --input-len $2 --output-len 16 -r 1 2>&1 | grep -E "^\| decode|rror" | tee -a "$OUT/pdl.txt"
    done
  done
  # What the FP8 warp kernel's instructions are (128 x 768, 6 stages): per pipe, and how
  # full the issue slots are. If the ALU/FMA pipes dominate, the widening and softmax
  # are the target; if issue is low, latency.
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 240 $NCU --clock-control none --kernel-name flash_decode_warp6_fp8_d128 --launch-skip 96 --launch-count 2 --csv --page raw --print-units base \
    --metrics gpu__time_duration.sum,smsp__inst_executed.sum,sm__inst_executed_pipe_alu.sum,sm__inst_executed_pipe_fma.sum,sm__inst_executed_pipe_fmaheavy.sum,sm__inst_executed_pipe_xu.sum,sm__inst_executed_pipe_lsu.sum,sm__inst_executed_pipe_tensor.sum,sm__inst_executed_pipe_uniform.sum,sm__inst_issued.avg.pct_of_peak_sustained_active,smsp__warps_issue_stalled_long_scoreboard.avg,smsp__warps_issue_stalled_wait.avg,smsp__warps_issue_stalled_math_pipe_throttle.avg \
    $B bench latency --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --batch-size 128 --input-len 768 --output-len 16 -r 1 > "$OUT/ncu-auto30.csv" 2>/dev/null
  python3 - "$OUT/ncu-auto30.csv" <<'PY' | tee -a "$OUT/pdl.txt"
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr = next((r for r in rows if "Kernel Name" in r), None)
for r in rows:
    if hdr and len(r) == len(hdr) and r[hdr.index("Kernel Name")].startswith("flash"):
        print({k: r[i] for i, k in enumerate(hdr) if k.startswith(("gpu__", "sm__", "smsp__"))})
PY
  echo "=== offline 8B fp8 + fp8 cache, 512 sequences, default" | tee -a "$OUT/pdl.txt"
  timeout 200 $B bench throughput --device cuda --random-weights llama-3.1-8b-bench --dtype fp8 --kv-cache-dtype fp8 --input-len 1024 --output-len 1024 \
    --num-prompts 1000 --max-num-seqs 512 --max-num-batched-tokens 8192 2>&1 | grep -vE "^\s*$" | tail -8 | tee -a "$OUT/pdl.txt"
fi

#!/usr/bin/env bash
# One device call: builds staged side by side (.devbin/sluice-<name>.xz and
# bench-<name>.xz, each with its cubin in .devcache: scripts/cuda/stage_build.sh REV NAME
# [bench]; `main` is this checkout's own build), alternating, batch-1 tg128 on the
# 8B and 1B shapes with the environment settings given, and the `layers` probe of each.
#   usage: AB_BUILDS="A B" AB_CFGS="X=default SLUICE_GEMV_PREWAIT=0" bash scripts/cuda/ab_builds.sh
# (AB_ROUNDS="1 2": repeat; AB_PRESETS, AB_ARGS: other shapes or bench arguments, e.g.
# "--dtype fp8"; AB_LAYERS="": no probe; AB_SETUP="": skip unpacking and the copy anchor.)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sluice-out}
mkdir -p "$OUT"
[ -n "${AB_SETUP-1}" ] && bash scripts/cuda/device_run.sh none >/dev/null 2>&1
export SLUICE_CUDA_CACHE=/tmp/sluice-cuda-cache
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[ -n "${AB_SETUP-1}" ] && python3 scripts/cuda/copy_bw.py | tee -a "$OUT/copy_bw.txt"
for round in ${AB_ROUNDS:-1}; do
  for preset in ${AB_PRESETS:-llama-3.1-8b-bench llama-3.2-1b-bench}; do
    for b in ${AB_BUILDS:-A B}; do
      for cfg in ${AB_CFGS:-X=default}; do
        bin=/tmp/sluice-bin/sluice-$b; [ "$b" = main ] && bin=/tmp/sluice-bin/sluice
        r=$(timeout 200 env $cfg $bin bench model --device cuda --random-weights $preset -p 512 -n 128 -b 1 -r ${AB_REPS:-2} ${AB_ARGS:-} 2>&1 | grep -a "tg128" | tail -1)
        echo "$preset ${AB_ARGS:-} build $b $cfg round $round: $r" | tee -a "$OUT/ab.txt"
      done
    done
  done
done
if [ -n "${AB_LAYERS-1}" ]; then
  for b in ${AB_BUILDS:-A B}; do
    echo "=== layers, build $b" | tee -a "$OUT/ab.txt"
    probe=/tmp/sluice-bin/bench-$b; [ "$b" = main ] && probe=/tmp/sluice-bin/bench-cuda_gemv
    timeout 120 $probe layers 2>&1 | tee -a "$OUT/ab.txt"
  done
fi
echo "cubin cache: $(ls $SLUICE_CUDA_CACHE 2>/dev/null | tr '\n' ' ')"

#!/usr/bin/env bash
# On the CPU machine: builds the release binary and the CUDA test binaries and stages
# them (stripped) with small test models for scripts/cuda/device_run.sh, inside the
# device tool's 64 MiB upload limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${SLUICE_TEST_MODELS:-../shared/models}
mkdir -p .devbin .devmodels
cargo build --release -p sluice-cli
cp target/release/sluice .devbin/sluice
for spec in "sluice-backend cuda_nvrtc" "sluice-backend cuda_ops" "sluice-backend cuda_attention" "sluice-backend cuda_fp8" "sluice-backend cuda_kquant" "sluice-backend cuda_legacy_quant" "sluice-backend cuda_fused_decode" "sluice-backend cuda_overlap" "sluice-model forward_reference" "sluice-cli cuda_golden" "sluice-engine cuda_batch_invariance" "sluice-engine overlapped_steps"; do
  set -- $spec
  exe=$(cargo test --release -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]==sys.argv[1]: print(m["executable"])' "$2" | tail -1)
  cp "$exe" ".devbin/test-$2"
done
# The batch-1 GEMV probe (crates/backend/benches/cuda_gemv.rs).
exe=$(cargo bench -p sluice-backend --bench cuda_gemv --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="cuda_gemv": print(m["executable"])' | tail -1)
cp "$exe" .devbin/bench-cuda_gemv
# The sm_90 kernels compiled here with the NVRTC wheel (.ci/run installs it), under the
# name of the device's cubin cache: a call there then skips the ~60 s NVRTC compile,
# where its NVRTC has the same version (the cache key names it; otherwise it compiles).
NVRTC_LIB=$HOME/.cache/sluice/nvrtc/site/nvidia/cu13/lib
rm -rf .devcache
if [ -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
  LD_LIBRARY_PATH=$NVRTC_LIB SLUICE_STAGE_CUBIN_DIR=$PWD/.devcache cargo test --release -p sluice-backend --test cuda_nvrtc stage_sm90_cubin -- --ignored >/dev/null 2>&1 \
    || echo "note: no precompiled cubin staged"
  # And the timeline build's (SLUICE_CUDA_TRACE=1, cuda/trace.rs), under its own name.
  LD_LIBRARY_PATH=$NVRTC_LIB SLUICE_CUDA_TRACE=1 SLUICE_STAGE_CUBIN_DIR=$PWD/.devcache cargo test --release -p sluice-backend --test cuda_nvrtc stage_sm90_cubin -- --ignored >/dev/null 2>&1 \
    || echo "note: no precompiled timeline cubin staged"
  # And each build variant an experiment names (SLUICE_PREP_VARIANTS="SLUICE_WEIGHT_LOAD=1 ...":
  # environment settings that change the kernel source, hence the cache name).
  for v in ${SLUICE_PREP_VARIANTS:-}; do
    env LD_LIBRARY_PATH=$NVRTC_LIB "$v" SLUICE_STAGE_CUBIN_DIR=$PWD/.devcache cargo test --release -p sluice-backend --test cuda_nvrtc stage_sm90_cubin -- --ignored >/dev/null 2>&1 \
      || echo "note: no precompiled cubin staged for $v"
  done
  xz -T2 -6 -f .devcache/*.cubin 2>/dev/null || true
fi
strip .devbin/* 2>/dev/null || true
# Compressed: the binaries are 3-4x smaller in xz, and the upload limit is 64 MiB.
for f in .devbin/*; do case $f in *.xz) ;; *) xz -T2 -6 -f "$f" ;; esac; done
rm -rf .devmodels/stories260K && cp -r "$MODELS/stories260K" .devmodels/
if [ ! -f .devmodels/smollm2-small.gguf ]; then
  python3 scripts/cuda/truncate_gguf.py "$MODELS/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf" .devmodels/smollm2-small.gguf 6
fi
du -sh .devbin .devmodels .devcache 2>/dev/null

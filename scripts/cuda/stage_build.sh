#!/usr/bin/env bash
# On the CPU machine, after scripts/cuda/prepare.sh: stages another git revision's
# release binary, and its sm_90 cubin, beside this build, for scripts/cuda/ab_builds.sh
# (builds compared in one device call; across calls the same build moves by ±1%).
#   usage: bash scripts/cuda/stage_build.sh REV NAME [bench]
# gives .devbin/sluice-NAME.xz (with `bench`: .devbin/bench-NAME.xz, the GEMV probe of that
# revision, for ab_builds.sh's `layers` runs) and .devcache/<its cubin's cache name>.xz.
# The revision is built in a worktree under /tmp with a target folder of its own
# (/tmp/sluice-target-NAME, kept: a second run only rebuilds what changed). In
# ab_builds.sh the build named `main` is this checkout's (.devbin/sluice.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { echo "usage: $0 REV NAME [bench]" >&2; exit 2; }
REV=$1
NAME=$2
ROOT=$PWD
WT=/tmp/sluice-wt-$NAME
export CARGO_TARGET_DIR=/tmp/sluice-target-$NAME
NVRTC_LIB=$HOME/.cache/sluice/nvrtc/site/nvidia/cu13/lib
mkdir -p .devbin .devcache
git worktree remove --force "$WT" 2>/dev/null || true
git worktree add -f --detach "$WT" "$REV" >/dev/null
trap 'cd "$ROOT"; git worktree remove --force "$WT" 2>/dev/null || true' EXIT
cd "$WT"
cargo build --release -p sluice-cli
strip -o /tmp/sluice-$NAME "$CARGO_TARGET_DIR/release/sluice"
xz -T2 -6 -c /tmp/sluice-$NAME > "$ROOT/.devbin/sluice-$NAME.xz"
if [ "${3:-}" = bench ]; then
  exe=$(cargo bench -p sluice-backend --bench cuda_gemv --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="cuda_gemv": print(m["executable"])' | tail -1)
  strip -o /tmp/bench-$NAME "$exe"
  xz -T2 -6 -c /tmp/bench-$NAME > "$ROOT/.devbin/bench-$NAME.xz"
fi
if [ -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
  CUBINS=/tmp/sluice-cubin-$NAME
  rm -rf "$CUBINS"
  LD_LIBRARY_PATH=$NVRTC_LIB SLUICE_STAGE_CUBIN_DIR=$CUBINS cargo test --release -p sluice-backend --test cuda_nvrtc stage_sm90_cubin -- --ignored >/dev/null 2>&1 \
    && for c in "$CUBINS"/*.cubin; do xz -T2 -6 -c "$c" > "$ROOT/.devcache/$(basename "$c").xz"; done \
    || echo "note: no cubin staged for $NAME (the device compiles it, ~60 s)"
fi
cd "$ROOT"
du -sh .devbin .devmodels .devcache 2>/dev/null

#!/usr/bin/env bash
# Runs the backend's kernel tests for AArch64 (the NEON paths) on an x86-64 machine:
# cross-compiles them for aarch64-unknown-linux-musl (static, linked by rust-lld, no
# cross C toolchain needed) and runs them under qemu user-mode emulation for two CPU
# models:
#   max         (ARMv8.x with dotprod: runs scalar, neon and neon-dotprod paths)
#   cortex-a53  (ARMv8.0, no dotprod: runs scalar and the plain-NEON fallback)
# Only correctness is checked: timings under qemu mean nothing.
#
# Setup is idempotent: the rustup target is added if missing; qemu-user-static is
# fetched once with `apt-get download` (no root install) and unpacked under
# ~/.cache/sluice/qemu. Exits non-zero, with a summary, if anything fails.
#
# With SLUICE_ARM_GOLDEN=1 and SLUICE_TEST_MODELS set, it also builds
# scripts/arm_golden (model + engine, about 8 more minutes of build on 2 cores) and
# checks greedy text of SmolLM2 Q4_1 (and Gemma-3 Q4_K_M when present) against the
# references in the models' README.txt, on each CPU model.
#
# Environment: SLUICE_ARM_TARGET_DIR (default: <repo>/target-arm), SLUICE_ARM_CPUS
# (default: "max cortex-a53"), SLUICE_QEMU (an existing qemu-aarch64 binary to use),
# SLUICE_TEST_MODELS (models for matmul_real_weights and the golden check),
# SLUICE_ARM_GOLDEN (1: run the golden generations too).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=aarch64-unknown-linux-musl
TARGET_DIR="${SLUICE_ARM_TARGET_DIR:-$ROOT/target-arm}"
CPUS="${SLUICE_ARM_CPUS:-max cortex-a53}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/qemu"
TESTS=(--test matmul_kernels --test matmul_real_weights --test attention_reference --test neon_paths)

log() { printf '[test_arm] %s\n' "$*" >&2; }
die() {
    printf '[test_arm] FAILED: %s\n' "$*" >&2
    exit 1
}

# 1. Rust target.
if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "adding rustup target $TARGET"
    rustup target add "$TARGET" >&2 || die "rustup target add $TARGET"
fi

# 2. qemu-aarch64 (user mode, static).
QEMU="${SLUICE_QEMU:-}"
if [ -z "$QEMU" ]; then
    QEMU="$CACHE/root/usr/bin/qemu-aarch64-static"
    if [ ! -x "$QEMU" ]; then
        command -v apt-get >/dev/null || die "no qemu-aarch64 (set SLUICE_QEMU) and no apt-get to fetch one"
        mkdir -p "$CACHE"
        log "downloading qemu-user-static into $CACHE"
        (cd "$CACHE" && rm -f qemu-user-static_*.deb && apt-get download qemu-user-static >&2) ||
            die "apt-get download qemu-user-static (try apt-get update first)"
        deb=$(ls "$CACHE"/qemu-user-static_*.deb | head -n1)
        dpkg-deb -x "$deb" "$CACHE/root" || die "unpacking $deb"
        rm -f "$deb"
    fi
fi
[ -x "$QEMU" ] || die "qemu not executable: $QEMU"
log "qemu: $("$QEMU" --version | head -n1)"

# 3. Build once (the runner is only used to execute).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
mkdir -p "$TARGET_DIR"
# Keep the build folder out of `git status` when it lives inside the repository.
[ -f "$TARGET_DIR/.gitignore" ] || printf '*\n' >"$TARGET_DIR/.gitignore"
cd "$ROOT"
log "building backend tests for $TARGET (target dir $TARGET_DIR)"
start=$SECONDS
cargo test -p sluice-backend --target "$TARGET" --target-dir "$TARGET_DIR" \
    "${TESTS[@]}" --no-run >&2 || die "cross build"
log "built in $((SECONDS - start)) s"

# 4. Run under each CPU model.
declare -a SUMMARY=()
status=0
for cpu in $CPUS; do
    log "running under qemu -cpu $cpu"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER="$QEMU -cpu $cpu"
    outf=$(mktemp)
    t0=$SECONDS
    if cargo test -p sluice-backend --target "$TARGET" --target-dir "$TARGET_DIR" \
        "${TESTS[@]}" --no-fail-fast -- --nocapture >"$outf" 2>&1; then
        ok=1
    else
        ok=0
        status=1
    fi
    paths=$(grep -m1 '^paths:' "$outf" || echo 'paths: ?')
    passed=$( (grep -E '^test result:' "$outf" || true) |
        awk '{p += $4; f += $6} END {printf "%d passed, %d failed", p, f}')
    if [ "$ok" = 1 ]; then
        SUMMARY+=("PASS  -cpu $cpu  ($passed; $paths; $((SECONDS - t0)) s)")
    else
        # The failing tests' messages, or the tail when no test ran (e.g. qemu failed).
        if grep -qE 'panicked|FAILED' "$outf"; then
            grep -E 'panicked|FAILED' -A2 "$outf" | head -n 60 >&2
        else
            tail -n 20 "$outf" >&2
        fi
        SUMMARY+=("FAIL  -cpu $cpu  ($passed; $paths)")
    fi
    rm -f "$outf"
done

# 5. Optional: greedy generations on real models (end to end through the NEON paths).
if [ "${SLUICE_ARM_GOLDEN:-0}" = 1 ]; then
    MODELS="${SLUICE_TEST_MODELS:-}"
    [ -n "$MODELS" ] || die "SLUICE_ARM_GOLDEN=1 needs SLUICE_TEST_MODELS"
    src="$TARGET_DIR/arm-golden-src"
    mkdir -p "$src"
    sed "s|@ROOT@|$ROOT|g" "$ROOT/scripts/arm_golden/Cargo.toml.in" >"$src/Cargo.toml"
    cp "$ROOT/scripts/arm_golden/main.rs" "$src/main.rs"
    cp "$ROOT/Cargo.lock" "$src/Cargo.lock"
    log "building scripts/arm_golden for $TARGET"
    t0=$SECONDS
    cargo build --release --manifest-path "$src/Cargo.toml" --target "$TARGET" \
        --target-dir "$TARGET_DIR" >&2 || die "building arm_golden"
    log "built in $((SECONDS - t0)) s"
    BIN="$TARGET_DIR/$TARGET/release/arm_golden"
    # References: the models' README.txt (as in crates/cli/tests/golden.rs).
    declare -a CASES=(
        "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf|, the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling streets. But as the years went by, the city began to lose its original essence. The once-blue skies of"
        "gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf|, there was a little girl named Lily. She was a very smart girl, and she loved to play with her friends. One day, Lily was playing with her friends, and she was very excited"
    )
    for case in "${CASES[@]}"; do
        file="$MODELS/${case%%|*}"
        ref="${case#*|}"
        name=$(basename "$file")
        if [ ! -f "$file" ]; then
            SUMMARY+=("SKIP  golden $name (not in $MODELS)")
            continue
        fi
        for cpu in $CPUS; do
            t0=$SECONDS
            if line=$("$QEMU" -cpu "$cpu" "$BIN" "$file" "Once upon a time" "$ref"); then
                SUMMARY+=("PASS  golden $name -cpu $cpu (${line%%:*}; $((SECONDS - t0)) s)")
            else
                status=1
                SUMMARY+=("FAIL  golden $name -cpu $cpu: $line")
            fi
        done
    done
fi

echo "== AArch64 kernel tests under qemu (correctness only) =="
for line in "${SUMMARY[@]}"; do
    echo "  $line"
done
[ "$status" = 0 ] || die "some AArch64 tests failed (see above)"
echo "  all passed"

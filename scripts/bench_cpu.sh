#!/usr/bin/env bash
# Side-by-side CPU benchmark: sluice vs llama.cpp's llama-bench on the same GGUF files, in
# the same run, same thread counts. Writes a markdown report (and prints it).
#   scripts/bench_cpu.sh [MODEL.gguf ...]
# Default models: SmolLM2-135M-Instruct Q4_1 ($SLUICE_TEST_MODELS or ../shared/models)
# plus every *.gguf in $QUANT_DIR (default ~/.cache/sluice/quant: the Q8_0, Q4_K_M and
# F16 files `sluice quantize` makes).
# For each model and thread count: llama-bench pp/tg, then sluice on its default path
# and on each path of PATHS (forced through SLUICE_CPU_FEATURES), with batched decode.
# Env: THREADS ("1 2"), REPS (3), PP (512), TG (128), BATCHES (1,4,8,16),
#      PATHS ("avx2"; extra paths besides the default), OUT (target/bench_cpu.md),
#      SLUICE_BIN (use this sluice binary instead of building target/release/sluice)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}; REPS=${REPS:-3}; PP=${PP:-512}; TG=${TG:-128}
BATCHES=${BATCHES:-1,4,8,16}; PATHS=${PATHS:-avx2}; OUT=${OUT:-target/bench_cpu.md}
QUANT_DIR=${QUANT_DIR:-$HOME/.cache/sluice/quant}
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=("${SLUICE_TEST_MODELS:-../shared/models}/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
  if [ -d "$QUANT_DIR" ]; then
    while IFS= read -r f; do MODELS+=("$f"); done < <(find "$QUANT_DIR" -maxdepth 2 -name '*.gguf' | sort)
  fi
fi
if [ -n "${SLUICE_BIN:-}" ]; then
  SLUICE=$SLUICE_BIN  # a prebuilt binary (e.g. to compare two builds)
else
  cargo build --release -q -p sluice-cli
  SLUICE=target/release/sluice
fi
cargo build --release -q -p sluice-backend --example membw
LLAMA_BIN=$(scripts/build_llamacpp.sh | tail -1)
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT

i=0
for M in "${MODELS[@]}"; do
  for T in $THREADS; do
    tag="$i.$T"
    echo "== $(basename "$M"), $T threads" >&2
    LD_LIBRARY_PATH="$LLAMA_BIN" "$LLAMA_BIN/llama-bench" -m "$M" -p "$PP" -n "$TG" -t "$T" \
      -r "$REPS" -o json > "$RAW/llama.$tag.json" 2>/dev/null
    env -u SLUICE_CPU_FEATURES "$SLUICE" bench model -m "$M" -t "$T" -p "$PP" -n "$TG" \
      -b "$BATCHES" -r "$REPS" --json "$RAW/sluice.$tag.default.jsonl" > "$RAW/sluice.$tag.default.txt"
    for P in $PATHS; do
      SLUICE_CPU_FEATURES=$P "$SLUICE" bench model -m "$M" -t "$T" -p "$PP" -n "$TG" \
        -b "$BATCHES" -r "$REPS" --json "$RAW/sluice.$tag.$P.jsonl" > "$RAW/sluice.$tag.$P.txt"
    done
  done
  echo "$M" > "$RAW/model.$i"
  i=$((i + 1))
done
for T in $THREADS; do
  target/release/examples/membw "$T" 2>/dev/null | awk '{print $NF}' > "$RAW/bw.$T"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RAW" "$PP" "$TG" "$THREADS" "$PATHS" "$i" > "$OUT" <<'EOF'
import json, os, re, sys, datetime
raw, pp, tg, threads, paths, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split(), int(sys.argv[6])
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
print(f"machine: {cpu}, {os.cpu_count()} cores; {datetime.date.today()}; pp{pp}/tg{tg}; tokens/s, mean of the reps\n")
def llama(tag):
    rows = json.load(open(f"{raw}/llama.{tag}.json"))
    get = lambda p, g: next((r['avg_ts'] for r in rows if r['n_prompt'] == p and r['n_gen'] == g), float('nan'))
    return get(pp, 0), get(0, tg)
def sluice(tag, path):
    rows = [json.loads(l) for l in open(f"{raw}/sluice.{tag}.{path}.jsonl") if l.strip()]
    mb = float(re.search(r'\(([\d.]+) MB of weights', open(f"{raw}/sluice.{tag}.{path}.txt").read()).group(1))
    d = {(r['test'], r['batch']): r['tokens_per_s'] for r in rows}
    return d, mb
bw = {t: float(open(f"{raw}/bw.{t}").read() or 'nan') for t in threads}
print("| model | threads | llama.cpp pp | sluice pp | x | llama.cpp tg | sluice tg | x | weight GB/s | % of read floor | " + " | ".join(f"{p} pp | {p} tg" for p in paths) + " |")
print("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | " + " | ".join("--: | --:" for _ in paths) + " |")
batch_rows = []
for i in range(n):
    name = os.path.basename(open(f"{raw}/model.{i}").read().strip())
    for t in threads:
        tag = f"{i}.{t}"
        lp, lt = llama(tag)
        d, mb = sluice(tag, 'default')
        sp, st = d.get((f"pp{pp}", 1), float('nan')), d.get((f"tg{tg}", 1), float('nan'))
        gbs = st * mb / 1e3
        extra = []
        for p in paths:
            e, _ = sluice(tag, p)
            extra.append(f"{e.get((f'pp{pp}', 1), float('nan')):.0f} | {e.get((f'tg{tg}', 1), float('nan')):.0f}")
        print(f"| {name} | {t} | {lp:.0f} | {sp:.0f} | {sp / lp:.2f} | {lt:.0f} | {st:.0f} | {st / lt:.2f} | {gbs:.1f} | {100 * gbs / bw[t]:.0f}% | " + " | ".join(extra) + " |")
        for p in ['default'] + paths:
            e, _ = sluice(tag, p)
            bs = sorted(b for (k, b) in e if k == f"tg{tg}")
            batch_rows.append((name, t, p, [(b, e[(f"tg{tg}", b)]) for b in bs]))
print(f"\nRead bandwidth floor (examples/membw): " + ", ".join(f"{t} threads {bw[t]:.1f} GB/s" for t in threads) + ".\n")
print(f"Batched decode, tg{tg} aggregate tokens/s; in brackets the step time over batch x the batch-1 step time (1.00 = no gain from batching):\n")
bs_all = sorted({b for r in batch_rows for b, _ in r[3]})
print("| model | threads | path | " + " | ".join(f"batch {b}" for b in bs_all) + " |")
print("| --- | --: | --- | " + " | ".join("--:" for _ in bs_all) + " |")
for name, t, p, vals in batch_rows:
    v = dict(vals); b1 = v.get(1)
    cells = [f"{v[b]:.0f}" + (f" ({b1 / v[b]:.2f})" if b1 and b != 1 else "") if b in v else "-" for b in bs_all]
    print(f"| {name} | {t} | {p} | " + " | ".join(cells) + " |")
EOF
cat "$OUT"
echo "(written to $OUT)" >&2

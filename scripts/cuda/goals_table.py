#!/usr/bin/env python3
"""Reads the logs of scripts/cuda/goals.sh and prints issue 7's goals as one markdown
table: measured figure, the goal's yardstick (llama.cpp's and PyTorch's figures quoted in
the issue, measured by its author on an H100) and whether it is met."""
import json
import re
import sys
from pathlib import Path

LOGS = Path(sys.argv[1])
# Quoted in issue 7 (H100): llama.cpp tg128 and llama-batched-bench generation tokens/s
# (512 + 128 per sequence), PyTorch eager generate (8B shape).
LLAMA_TG = {"llama-3.1-8b-bench": 172.0, "llama-3.2-1b-bench": 780.0}
LLAMA_BATCHED = {
    "llama-3.1-8b-bench": {32: 3204.0, 64: 5431.0},
    "llama-3.2-1b-bench": {32: 10267.0, 64: 17391.0},
}
TORCH_QUOTED = {"llama-3.1-8b-bench": {1: 17.8, 32: 576.0, 128: 2122.0}}
# FLOPs per token of a 16 x 1,024 prefill of the 8B bench shape (docs/BENCHMARKS.md):
# 2 x 6.98 G matmul weights plus causal attention; H100 dense bf16 peak.
PREFILL_FLOP_PER_TOKEN = 14.23e9
PEAK_FLOPS = 989e12


def read(name):
    p = LOGS / name
    return p.read_text(errors="replace") if p.exists() else ""


def table_row(text, phase):
    """The numbers of a `bench latency` row (| phase | mean | p50 | p90 | p99 | tok/s | GB/s |)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == phase:
            try:
                return [float(c) for c in cells[1:]]
            except ValueError:
                return None
    return None


def latency_row(text, batch, phase):
    """`table_row` of the table for `batch` sequences in a `bench latency` log that may
    hold several batch sizes (each table follows its "batch B x (...)" line)."""
    parts = re.split(r"^batch (\d+) x ", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        if int(parts[i]) == batch:
            return table_row(parts[i + 1], phase)
    return None


def tg(text, batch):
    """tokens/s of a `bench model` tg row at `batch`."""
    m = re.search(rf"\|\s*tg\d+\s*\|\s*{batch}\s*\|\s*([\d.]+)", text)
    return float(m.group(1)) if m else None


def weight_mb(text):
    m = re.search(r"\(([\d.]+) MB of weights read per decode step\)", text)
    return float(m.group(1)) if m else None


def torch_baseline():
    """PyTorch decode tokens/s by (preset, batch) from the same call (torch_baseline.py),
    else the figures quoted in issue 7; and where they came from."""
    same = {}
    for line in read("torch.txt").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "decode_tokens_per_s" in r:
            same.setdefault(r["shape"] + "-bench", {})[r["batch"]] = r["decode_tokens_per_s"]
    return (same, "PyTorch eager (best of 3 runs), same call") if same else (TORCH_QUOTED, "PyTorch as quoted in issue 7")


TORCH, TORCH_SOURCE = torch_baseline()
copy = re.search(r"([\d.]+) GB/s", read("copy.txt"))
copy_gbs = float(copy.group(1)) if copy else None
gpu = read("gpu.txt").strip() or "?"
print(f"Card: {gpu}; device copy {copy_gbs or '?'} GB/s (read + write), same call; "
      f"yardstick of the throughput rows: {TORCH_SOURCE}.\n")
print("| goal | shape | measured | yardstick | ratio | met |")
print("| --- | --- | ---: | ---: | ---: | --- |")


def row(goal, shape, measured, yard, ratio, ok):
    fmt = lambda v: "—" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v))
    met = "—" if ok is None else ("yes" if ok else "**no**")
    r = "—" if ratio is None else f"{ratio:.2f}"
    print(f"| {goal} | {shape} | {fmt(measured)} | {fmt(yard)} | {r} | {met} |")


for m in LLAMA_TG:
    text = read(f"b1-{m}.txt")
    t1, mb = tg(text, 1), weight_mb(text)
    mbu = t1 * mb / 1e3 / copy_gbs if (t1 and mb and copy_gbs) else None
    row("batch 1: ≥ 90% MBU (ratio: MBU %)", m, t1, None, None if mbu is None else round(100 * mbu, 1), None if mbu is None else mbu >= 0.9)
    row("batch 1: ahead of llama.cpp", m, t1, LLAMA_TG[m], None if t1 is None else round(t1 / LLAMA_TG[m], 2), None if t1 is None else t1 > LLAMA_TG[m])
    for b in (32, 64):
        dec = latency_row(read(f"lat-{m}.txt"), b, "decode")
        tps = dec[4] if dec else None
        yard = LLAMA_BATCHED[m][b]
        ratio = None if tps is None else tps / yard
        row(f"batched {b} × (512 + 128): ≥ 1.5× llama.cpp", m, tps, yard, None if ratio is None else round(ratio, 2), None if ratio is None else ratio >= 1.5)
    # Against PyTorch in its own workload: 128 prompt tokens per sequence prefilled
    # together, then 64 decoded (decode tokens/s, as torch_baseline.py measures it).
    sweep = read(f"sweep-{m}.txt")
    for b in (1, 8, 32, 128, 256):
        dec = latency_row(sweep, b, "decode")
        t = dec[4] if dec else None
        torch = TORCH.get(m, {}).get(b)
        ratio = None if (t is None or torch is None) else t / torch
        row(f"throughput at batch {b} (128 + 64, ≥ 10× PyTorch)", m, t, torch, None if ratio is None else round(ratio, 1), None if ratio is None else ratio >= 10)
pre = table_row(read("prefill.txt"), "prefill")
if pre:
    mfu = 16 * 1024 * PREFILL_FLOP_PER_TOKEN / (pre[0] / 1e3) / PEAK_FLOPS
    row("prefill 16 × 1,024: ≥ 60% MFU (step mean ms; ratio = MFU %)", "llama-3.1-8b-bench", pre[0], None, round(100 * mfu, 1), mfu >= 0.6)
else:
    row("prefill 16 × 1,024: ≥ 60% MFU", "llama-3.1-8b-bench", None, None, None, None)

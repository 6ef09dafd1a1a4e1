#!/usr/bin/env python3
"""Summarises an Nsight Compute CSV (ncu --csv --page raw --print-units base) per kernel.

usage: ncu_summary.py FILE.csv [--step-marker NAME] [--title TEXT]

With --step-marker, only the kernels from the last-but-one launch of NAME (the first
kernel of a step, e.g. the embedding kernel) up to the next launch of NAME are counted:
one whole step. ncu serialises kernels and (by default) flushes caches before each, so
these are isolated kernel times, not the overlapped times of a real step.
"""
import csv, sys, collections

def main():
    path = sys.argv[1]
    marker = None
    title = path
    if "--step-marker" in sys.argv:
        marker = sys.argv[sys.argv.index("--step-marker") + 1]
    if "--title" in sys.argv:
        title = sys.argv[sys.argv.index("--title") + 1]
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    reader = csv.DictReader(lines)
    for r in reader:
        try:
            t = float(r["gpu__time_duration.sum"].replace(",", ""))
        except (KeyError, ValueError):
            continue  # the units row
        name = r.get("Kernel Name", r.get("Function Name", "?"))
        rd = float((r.get("dram__bytes_read.sum") or "0").replace(",", ""))
        wr = float((r.get("dram__bytes_write.sum") or "0").replace(",", ""))
        rows.append((name, t, rd, wr))
    if marker:
        idx = [i for i, r in enumerate(rows) if marker in r[0]]
        if len(idx) >= 2:
            rows = rows[idx[-2]:idx[-1]]
        elif idx:
            rows = rows[idx[-1]:]
    agg = collections.OrderedDict()
    for name, t, rd, wr in rows:
        short = name.split("(")[0][:60]
        a = agg.setdefault(short, [0, 0.0, 0.0, 0.0])
        a[0] += 1; a[1] += t; a[2] += rd; a[3] += wr
    total = sum(a[1] for a in agg.values())
    print(f"## {title}: {len(rows)} kernels, {total / 1e6:.3f} ms of kernel time (serialised)")
    print("| kernel | launches | total µs | share | mean µs | DRAM read MB | GB/s (r+w) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (n, t, rd, wr) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        gbs = (rd + wr) / t if t else 0
        print(f"| {name} | {n} | {t / 1e3:.1f} | {100 * t / total:.1f}% | {t / n / 1e3:.2f} | {rd / 1e6:.1f} | {gbs:.0f} |")

if __name__ == "__main__":
    main()

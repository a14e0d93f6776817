#!/usr/bin/env python3
"""Draws BENCHMARKS.md's chart from the GPU benchmark's output (bench.csv, bench.json, sdpa.json):
decode bandwidth vs context length per mode, next to the copy kernel and PyTorch SDPA from the
same run, and the f16 decode time as a fraction of SDPA's per shape.

    python3 benches/chart.py OUT_DIR [PNG]      (needs matplotlib; PNG defaults to OUT_DIR/bench.png)
"""
import csv
import json
import os
import re
import sys


def main():
    out = sys.argv[1]
    png = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "bench.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart.py: matplotlib not installed; no chart drawn", file=sys.stderr)
        return 0
    rows = list(csv.DictReader(open(os.path.join(out, "bench.csv"))))
    meta = json.load(open(os.path.join(out, "bench.json")))
    sdpa = {}
    sdpa_path = os.path.join(out, "sdpa.json")
    if os.path.exists(sdpa_path):
        for r in json.load(open(sdpa_path)).get("rows", []):
            sdpa[r["name"]] = r

    def ctx_of(name):
        m = re.fullmatch(r"decode_b1_l(\d+)k", name)
        return int(m.group(1)) * 1024 if m else None

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.5))
    # Left: decode B=1, default path (auto split, the library's kernel choice), GB/s read.
    series = {}
    for r in rows:
        L = ctx_of(r["shape"])
        if L is None or not r["split"].startswith("auto") or "forced" in r["kernel"]:
            continue
        series.setdefault(r["mode"], []).append((L, float(r["gbs"])))
    for mode, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"quantkv {mode}")
    spts = sorted((ctx_of(n), r["sdpa_gbs"]) for n, r in sdpa.items() if ctx_of(n) and "sdpa_gbs" in r)
    if spts:
        ax.plot([p[0] for p in spts], [p[1] for p in spts], "k--", marker="s",
                label="torch SDPA fp16 (contiguous)")
    ax.axhline(meta["copy_gbs"], color="gray", linestyle=":", label="WGSL copy kernel")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (B=1, Hq 32, Hkv 8, D 128)")
    ax.set_ylabel("GB/s actually read")
    ax.set_title("Decode bandwidth vs context length")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    # Right: f16 decode, speed as a fraction of SDPA (SDPA time / ours) per shape.
    f16 = [r for r in rows if r["mode"] == "none" and r["split"].startswith("auto")
           and float(r["vs_sdpa"] or 0) > 0 and r["shape"].startswith("decode")]
    for label, pick, color in (
            ("quantkv (AttentionPath::Auto)", lambda k: "forced" not in k, "tab:blue"),
            ("unified kernel (forced)", lambda k: k.startswith("unified"), "tab:gray")):
        pts = [r for r in f16 if pick(r["kernel"])]
        if pts:
            bx.scatter([r["shape"].replace("decode_", "") for r in pts],
                       [float(r["vs_sdpa"]) for r in pts], label=label, color=color)
    bx.axhline(1.0, color="k", linestyle="--", label="SDPA")
    bx.axhline(0.8, color="r", linestyle=":", label="target 0.8x")
    bx.set_yscale("log")
    bx.set_ylabel("speed vs SDPA (SDPA µs / ours)")
    bx.set_title("f16 paged decode vs torch SDPA, same run")
    bx.tick_params(axis="x", rotation=60)
    bx.legend(fontsize=8)
    bx.grid(True, alpha=0.3)
    fig.suptitle(meta.get("device", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"chart.py: wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

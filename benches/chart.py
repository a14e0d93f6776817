#!/usr/bin/env python3
"""Draws BENCHMARKS.md's chart from the GPU benchmark's output (bench.csv, bench.json, sdpa.json):
the f16-equivalent decode bandwidth of every mode per shape, next to the copy kernel and PyTorch
SDPA on an f16 cache from the same run, and the f16 decode time as a fraction of SDPA's per shape.

    python3 benches/chart.py OUT_DIR [PNG]      (needs matplotlib; PNG defaults to OUT_DIR/bench.png)
"""
import csv
import json
import os
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

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.5))
    # Left: f16-equivalent bandwidth per mode and decode shape (the f16 cache's bytes over the
    # time: what a quantized cache delivers in f16 terms), default path (Auto), next to SDPA on
    # an f16 cache and the copy kernel from the same run.
    shapes = []
    val = {}
    for r in rows:
        if (not r["shape"].startswith("decode_") or not r["split"].startswith("auto")
                or "forced" in r["kernel"] or "_d" in r["shape"][len("decode_"):]):
            continue
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
        val[(r["mode"], r["shape"])] = float(r["f16_equiv_gbs"])
    modes = sorted({m for m, _ in val}, key=lambda m: (m != "none", m))
    width = 0.8 / max(len(modes), 1)
    for i, mode in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(shapes))]
        ax.bar(xs, [val.get((mode, sh), 0.0) for sh in shapes], width,
               label="f16 (none)" if mode == "none" else mode)
    sx = [j for j, sh in enumerate(shapes) if "sdpa_gbs" in sdpa.get(sh, {})]
    if sx:
        ax.plot(sx, [sdpa[shapes[j]]["sdpa_gbs"] for j in sx], "k_", markersize=40,
                markeredgewidth=2, linestyle="none", label="torch SDPA, f16 cache")
    ax.axhline(meta["copy_gbs"], color="gray", linestyle=":", label="WGSL copy kernel")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([sh.replace("decode_", "") for sh in shapes])
    ax.set_ylabel("f16-equivalent GB/s (f16 cache bytes / time)")
    ax.set_title("Decode, every mode: effective bandwidth (Hq 32, Hkv 8, D 128)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
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

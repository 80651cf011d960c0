#!/usr/bin/env python3
"""Task accuracy against KV bytes per policy, from kvplan eval --tasks --grid outputs.

    plot_tasks.py [--min-full A] OUT.png DIR [DIR ...]

Each DIR holds summary.csv (one length each). Families whose full-cache accuracy is below A
(default 0.5) at a length are left out there (and named). Prints, per length, a Markdown table of the
mean accuracy over the kept families (policy × compression, with the full cache), the same for
answer-token ΔNLL, and how well answer ΔNLL and needle tokens kept track accuracy across
configurations (Spearman); draws one panel per length: accuracy against mean KV bytes per sequence.
"""
import csv
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from validate_calibration import spearman  # noqa: E402  (rank correlation with ties averaged)


def main():
    args = sys.argv[1:]
    min_full = 0.5
    if args[:1] == ["--min-full"]:
        min_full, args = float(args[1]), args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    out, dirs = args[0], args[1:]
    panels = []
    for d in dirs:
        rows = list(csv.DictReader(open(os.path.join(d, "summary.csv"))))
        length = rows[0]["length"]
        full = {r["family"]: float(r["accuracy"]) for r in rows if r["policy"] == "full"}
        kept = sorted(f for f, a in full.items() if a >= min_full)
        dropped = sorted(f for f, a in full.items() if a < min_full)
        by = defaultdict(lambda: defaultdict(list))  # policy -> config -> [(acc, dnll, bytes, needles)]
        for r in rows:
            if r["family"] not in kept:
                continue
            by[r["policy"]][r["config"]].append((float(r["accuracy"]), float(r["delta_nll"]), float(r["kv_bytes"]),
                                                 float(r["needles_kept"])))
        print(f"### {length} tokens\n")
        print(f"Families kept (full-cache accuracy >= {min_full}): " + ", ".join(f"{f} ({full[f]:.2f})" for f in kept))
        print("; left out: " + (", ".join(f"{f} ({full[f]:.2f})" for f in dropped) or "none") + ".\n")
        if not kept:
            continue
        comps = sorted({c.split(" c")[1] for p in by for c in by[p] if " c" in c}, key=float)
        full_mean = sum(a for a, *_ in next(iter(by["full"].values()))) / len(kept) if kept else float("nan")
        print("Mean accuracy over the kept families (full cache: %.3f):\n" % full_mean)
        print("| policy | " + " | ".join(f"c={c}" for c in comps) + " |")
        print("|---|" + "---:|" * len(comps))
        points = {}
        xs_dnll, xs_need, ys = [], [], []
        for p in sorted(by):
            if p == "full":
                continue
            cells, pts = [], []
            for c in comps:
                v = by[p].get(f"{p} c{c}")
                if not v:
                    cells.append("—")
                    continue
                acc = sum(x[0] for x in v) / len(v)
                dnll = sum(x[1] for x in v) / len(v)
                kvb = sum(x[2] for x in v) / len(v)
                need = sum(x[3] for x in v) / len(v)
                cells.append(f"{acc:.3f}")
                pts.append((kvb, acc))
                for x in v:
                    xs_dnll.append(x[1])
                    xs_need.append(x[3])
                    ys.append(x[0])
            print(f"| {p} | " + " | ".join(cells) + " |")
            points[p] = sorted(pts)
        print()
        print("Across every (configuration, family) cell: Spearman of accuracy with answer-token ΔNLL %.2f, "
              "with needle tokens kept %.2f (n = %d).\n" % (spearman(ys, xs_dnll), spearman(ys, xs_need), len(ys)))
        full_bytes = next(iter(by["full"].values()))[0][2] if by["full"] else None
        panels.append((length, points, full_mean, full_bytes))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_tasks: matplotlib missing; no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (length, points, full_mean, full_bytes) in zip(axes[0], panels):
        for p, pts in points.items():
            ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        if full_bytes:
            ax.scatter([full_bytes / 1e6], [full_mean], marker="*", s=160, color="black", label="full cache", zorder=5)
        ax.set_xlabel("KV bytes per sequence (MB)")
        ax.set_ylabel("accuracy (mean over kept families)")
        ax.set_title(f"SmolLM2-135M, RULER-style tasks at {length} tokens")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

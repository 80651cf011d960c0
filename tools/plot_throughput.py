#!/usr/bin/env python3
"""Predicted against measured decode tokens/s, from `kvplan capacity --measured bench.json --json`
outputs (one per weight type): one point per cell, the diagonal and the ±15% band.

    build/kvplan capacity --measured bench-f16.json --hardware cpu-2core --json > f16.json
    /usr/bin/python3 tools/plot_throughput.py OUT.png f16.json [q8_0.json ...]

Uses matplotlib (Debian's python3-matplotlib, installed by tools/setup.sh).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(6.5, 6))
    markers = {1.0: "o", 0.5: "s", 0.25: "^"}
    top = 0.0
    for path in sys.argv[2:]:
        report = json.load(open(path))
        color = None
        for keep in sorted({c["keep"] for c in report["cells"]}, reverse=True):
            cells = [c for c in report["cells"] if c["keep"] == keep]
            xs = [c["measured_tokens_per_s"] for c in cells]
            ys = [c["predicted_tokens_per_s"] for c in cells]
            top = max(top, *xs, *ys)
            label = f"{report['weight_type']}, " + ("full cache" if keep >= 1 else f"VATP keep {keep:g}")
            points = ax.scatter(xs, ys, marker=markers.get(keep, "x"), color=color, label=label)
            color = points.get_facecolor()[0]
            for c, x, y in zip(cells, xs, ys):
                ax.annotate(f"{c['batch']}×{c['context'] // 1024}K", (x, y), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    line = [0, top * 1.1]
    ax.plot(line, line, color="black", linewidth=0.8)
    ax.fill_between(line, [v * 0.85 for v in line], [v * 1.15 for v in line], color="grey", alpha=0.15,
                    label="±15%")
    ax.set_xlabel("measured decode tokens/s (kvplan bench)")
    ax.set_ylabel("predicted decode tokens/s (kvplan capacity)")
    ax.set_title(f"Decode tokens/s on {report['hardware']}, one point per batch × context")
    ax.legend(fontsize=7)
    ax.set_xlim(0, top * 1.1)
    ax.set_ylim(0, top * 1.1)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=130)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The main job's picture: measured ΔNLL against KV bytes per sequence for every policy and budget
the main job ran closed loop, and the VATP plan it chose (predicted interval and measured value on
the held-out sequences).

    /usr/bin/python3 tools/plot_main.py WORK_DIR OUT.png

WORK_DIR is the main job's work directory (tools/main.sh prints it; $KVPLAN_WORK_DIR sets it): it
reads calibration-runs/grid.csv, plan.yaml and measured.yaml. Uses matplotlib and PyYAML (Debian's
python3-matplotlib and python3-yaml, installed by tools/setup.sh).
"""
import csv
import os
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    work, out = sys.argv[1], sys.argv[2]
    grid_csv = os.path.join(work, "calibration-runs", "grid.csv")
    try:
        rows = list(csv.DictReader(open(grid_csv)))
        plan = yaml.safe_load(open(os.path.join(work, "plan.yaml")))
        measured = yaml.safe_load(open(os.path.join(work, "measured.yaml")))
    except OSError as e:
        print(f"plot_main: {e.filename}: {e.strerror} (run tools/main.sh first)", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    floor = lambda v: max(v, 1e-5)  # noqa: E731 (a log axis: ΔNLL at or below 0 drawn at 1e-5)
    for policy in sorted({r["policy"] for r in rows}):
        pts = sorted((int(r["kv_bytes_per_sequence"]) / 1024, float(r["delta_nll"])) for r in rows
                     if r["policy"] == policy)
        ax.plot([p[0] for p in pts], [floor(p[1]) for p in pts], "-o", ms=4, label=policy)
    pred = plan["predictions"]
    kib = pred["kv_bytes_per_sequence"] / 1024
    mid = floor(pred["delta_nll"])
    lo = floor(pred.get("delta_nll_low", pred["delta_nll"]))
    hi = pred.get("delta_nll_high", pred["delta_nll"])
    ax.errorbar([kib], [mid], yerr=[[mid - lo], [hi - mid]], fmt="none", ecolor="black", capsize=5,
                label="the plan: predicted (90% interval)")
    ax.plot([kib], [floor(measured["metrics"]["delta_nll"])], "*", ms=14, color="black",
            label="the plan: measured on held-out")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_yscale("log")
    ax.set_xlabel("KV cache per sequence (KiB)")
    ax.set_ylabel("ΔNLL against the full cache (nats/token)")
    ax.set_title("stories260K, 512 tokens: quality against KV memory (tools/main.sh)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

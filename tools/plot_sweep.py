#!/usr/bin/env python3
"""Plots of a kvplan sweep (sweep.csv): memory against predicted error with the Pareto front,
and the per-layer budgets of the greedy plans.

    /usr/bin/python3 tools/plot_sweep.py SWEEP_DIR/sweep.csv OUT_DIR

Uses matplotlib (Debian's python3-matplotlib, installed by tools/setup.sh).
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(sys.argv[1])))
    out = sys.argv[2]
    for r in rows:
        r["kv_bytes_per_sequence"] = int(r["kv_bytes_per_sequence"])
        r["resid_energy"] = float(r["resid_energy"])

    fig, ax = plt.subplots(figsize=(8, 5))
    for policy in sorted({r["policy"] for r in rows}):
        for alloc, style in (("uniform", "-o"), ("greedy", "--s")):
            pts = sorted((r["kv_bytes_per_sequence"], r["resid_energy"]) for r in rows
                         if r["policy"] == policy and r["allocation"] == alloc)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=f"{policy} ({alloc})")
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r["kv_bytes_per_sequence"], r["resid_energy"])):
        if r["resid_energy"] < best:
            best = r["resid_energy"]
            front.append((r["kv_bytes_per_sequence"], r["resid_energy"]))
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KV bytes per sequence")
    ax.set_ylabel("predicted residual-stream error (replay)")
    ax.set_title("Memory against predicted error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pareto.png"), dpi=110)

    greedy = [r for r in rows if r["allocation"] == "greedy"]
    if greedy:
        policies = sorted({r["policy"] for r in greedy})
        fig, axes = plt.subplots(1, len(policies), figsize=(3 * len(policies), 3.5), sharey=True, squeeze=False)
        for ax, policy in zip(axes[0], policies):
            for r in sorted((r for r in greedy if r["policy"] == policy), key=lambda r: int(r["budget"])):
                budgets = [int(b) for b in r["layer_budgets"].split()]
                ax.plot(range(len(budgets)), budgets, "-o", ms=3, label=f"avg {r['budget']}")
            ax.set_title(policy)
            ax.set_xlabel("layer")
            ax.set_yscale("log")
        axes[0][0].set_ylabel("slots per KV head")
        axes[0][-1].legend(fontsize=6)
        fig.suptitle("Per-layer budgets of greedy plans")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "layer_budgets.png"), dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())

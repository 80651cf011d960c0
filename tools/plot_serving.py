#!/usr/bin/env python3
"""Plots tools/serve-bench.sh's results: decode tokens/s (measured, and kvplan capacity's prediction)
and time to first token against the number of clients, full cache against VATP at 25%.

  tools/plot_serving.py [DIR]   (default docs/results/serving; writes DIR/serving.png)
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "results", "serving")
    full = json.load(open(os.path.join(d, "full.json")))["levels"]
    vatp = json.load(open(os.path.join(d, "vatp25.json")))["levels"]
    pred = json.load(open(os.path.join(d, "predicted.json")))
    clients = [l["concurrency"] for l in full]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for side, levels, color in (("full cache", full, "tab:blue"), ("VATP 25%", vatp, "tab:orange")):
        a.plot(clients, [l["tokens_per_s"] for l in levels], "o-", color=color, label=f"{side}, measured")
        key = "full" if side == "full cache" else "vatp25"
        a.plot(clients, [p[key]["tokens_per_s"] for p in pred["levels"]], "x--", color=color,
               label=f"{side}, predicted (batch {pred['pool_sequences'][key]} at most)")
        b.plot(clients, [1e3 * l["ttft_p50_s"] for l in levels], "o-", color=color, label=f"{side}, p50")
        b.plot(clients, [1e3 * l["ttft_p99_s"] for l in levels], "s:", color=color, label=f"{side}, p99")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients)
        ax.set_xticklabels([str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("generated tokens/s")
    a.set_title(f"kvplan serve, KV pool {pred['kv_memory'] / 2**20:.2f} MiB")
    b.set_yscale("log")
    b.set_ylabel("time to first token (ms)")
    b.set_title("time to first token")
    fig.tight_layout()
    out = os.path.join(d, "serving.png")
    fig.savefig(out + ".tmp.png", dpi=110)
    os.replace(out + ".tmp.png", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Prints docs/GUIDE.md's capacity table: every shipped model shape on every shipped GPU at a
# context, full cache against a keep ratio (roofline decode at the largest batch that fits).
#   tools/capacity-table.sh [CONTEXT] [KEEP]     (default 8192 and 0.4)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k=${KVPLAN_BUILD_DIR:-$root/build}/kvplan
[[ -x "$k" ]] || { echo "capacity-table: $k: not built (run tools/build.sh)" >&2; exit 1; }
context=${1:-8192}
keep=${2:-0.4}
echo "| model | hardware | full KV/seq | full batch | full tok/s | keep $keep KV/seq | batch | tok/s |"
echo "|---|---|---|---|---|---|---|---|"
for m in llama-2-7b llama-3-8b mistral-7b qwen2.5-7b; do
  for h in h100-80gb h200 a100-80gb a100-40gb l4; do
    "$k" capacity --model-config "$m" --hardware "$h" --context "$context" --keep "$keep" --json |
      /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
f, p = d["full"], d["plan"]
row = [sys.argv[1], sys.argv[2], "%.0f MiB" % (f["kv_bytes_per_sequence"] / 2**20), f["max_batch"],
       "%.0f" % f["tokens_per_s"], "%.0f MiB" % (p["kv_bytes_per_sequence"] / 2**20), p["max_batch"],
       "%.0f" % p["tokens_per_s"]]
print("| " + " | ".join(str(c) for c in row) + " |")
' "$m" "$h"
  done
done

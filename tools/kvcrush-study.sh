#!/usr/bin/env bash
# KVCrush on VATP against VATP alone at equal memory on the default model (docs/RESULTS.md):
#   1. workload and held-out samples, a full-cache trace of the workload;
#   2. calibration runs on the workload — 5 policies × 5 budgets, KVCrush on VATP × 4 budgets, and
#      5 one-layer probes — and `kvplan calibrate`;
#   3. at 25%, 40% and 60% of the full cache's bytes (uniform budgets, calibrated predictions):
#      VATP and KVCrush each with its own defaults (recent 50% and 25% of the budget), and both with
#      the other's recent window, so that the representatives are compared with the window held;
#   4. every plan run on the held-out sequences, predicted against measured, and a table
#      (results.md in the work directory).
# About 5 minutes on 2 cores. Work files go to $KVPLAN_WORK_DIR (default: a new temporary directory);
# files already there (corpora, trace, calibration runs) are reused.
#
#   tools/kvcrush-study.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup kvcrush crush-plans "$@"

study_samples

step "2. calibration runs on the workload; calibrate"
grid cal-kvcrush kvcrush 32,64,128,256
study_calibrate crush-calib.yaml cal-kvcrush

step "3. plans at 25%, 40% and 60% of the full cache"
full=$("$k" plan --policy full --budget 512 --out "$work/full.yaml" | sed -n 's/.*, \([0-9]*\) KV bytes per sequence.*/\1/p')
plans=()
for pct in 25 40 60; do
  memory=$((full * pct / 100))
  for variant in "vatp" "vatp --recent 25%" "kvcrush" "kvcrush --recent 50%"; do
    name="$(echo "$variant" | sed 's/ --recent \([0-9]*\)%/-recent\1/')-$pct"
    # shellcheck disable=SC2086
    "$k" plan --trace "$work/trace" --policy $variant --memory "$memory" --allocation uniform \
      --calibration "$work/crush-calib.yaml" --out "$work/crush-plans/$name.yaml" >/dev/null 2>&1
    plans+=("$work/crush-plans/$name.yaml")
  done
done

step "4. every plan on the held-out sequences"
"$k" eval --plans "${plans[@]}" --corpus "$work/heldout.jsonl" --out "$work/crush-heldout-runs" --json >/dev/null
python3 - "$work" "${plans[@]}" <<'PY' | tee "$work/crush-results.md"
import sys, yaml
work, plans = sys.argv[1], sys.argv[2:]
print("| plan | budget | sinks + recent | KV bytes | replay energy | predicted ΔNLL [interval] | measured ΔNLL | measured top-1 |")
print("|---|---:|---:|---:|---:|---|---:|---:|")
for p in plans:
    name = p.rsplit("/", 1)[1][:-5]
    plan = yaml.safe_load(open(p))
    pred = plan["predictions"]
    pol = plan["policy"]
    m = yaml.safe_load(open(f"{work}/crush-heldout-runs/measured/{name}.yaml"))["metrics"]
    print(f"| {name} | {plan['budgets'][0]} | {pol['sinks']} + {pol['recent']} | {pred['kv_bytes_per_sequence']} | "
          f"{pred['replay_resid_energy']:.4f} | {pred['delta_nll']:.4f} [{pred['delta_nll_low']:.4f}, "
          f"{pred['delta_nll_high']:.4f}] | {m['delta_nll']:.4f} | {m['top1_agreement']:.4f} |")
PY
echo "files in $work"

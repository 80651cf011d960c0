#!/usr/bin/env bash
# ThinK and Mustafar composed with VATP at equal memory on the default model (docs/RESULTS.md):
#   1. workload and held-out samples, a full-cache trace of the workload;
#   2. calibration runs on the workload — 5 policies × 5 budgets dense, VATP and H2O × 4 budgets
#      with ThinK 0.4, Mustafar 0.5 and both, and 5 one-layer probes — and `kvplan calibrate`;
#   3. at 25%, 40% and 60% of the full cache's bytes: VATP alone, + ThinK 0.4, + Mustafar 0.5 and all
#      three (uniform budgets, calibrated predictions), and the plan `--memory` chooses among them;
#   4. every plan run on the held-out sequences, predicted against measured (kvplan check), and a
#      table of the results (results.md in the work directory).
# About 10 minutes on 2 cores. Work files go to $KVPLAN_WORK_DIR (default: a new temporary directory).
#
#   tools/compression-study.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup compression plans "$@"

study_samples

step "2. calibration runs on the workload, dense and compressed; calibrate"
windows=(--think-recent 32 --mustafar-recent 32)
grid cal-think vatp,h2o 32,64,128,256 --think 0.4 "${windows[@]}"
grid cal-mustafar vatp,h2o 32,64,128,256 --mustafar 0.5 "${windows[@]}"
grid cal-both vatp,h2o 32,64,128,256 --think 0.4 --mustafar 0.5 "${windows[@]}"
study_calibrate calib.yaml cal-think cal-mustafar cal-both

step "3. plans at 25%, 40% and 60% of the full cache"
full=$("$k" plan --policy full --budget 512 --out "$work/full.yaml" | sed -n 's/.*, \([0-9]*\) KV bytes per sequence.*/\1/p')
plans=()
for pct in 25 40 60; do
  memory=$((full * pct / 100))
  for combo in "" "--think 0.4" "--mustafar 0.5" "--think 0.4 --mustafar 0.5"; do
    name="vatp$(echo "$combo" | sed 's/--think /+think/; s/ --mustafar /+mustafar/; s/--mustafar /+mustafar/')-$pct"
    # shellcheck disable=SC2086
    "$k" plan --trace "$work/trace" --policy vatp --memory "$memory" --allocation uniform $combo "${windows[@]}" \
      --calibration "$work/calib.yaml" --out "$work/plans/$name.yaml" >/dev/null 2>&1
    plans+=("$work/plans/$name.yaml")
  done
  "$k" plan --trace "$work/trace" --policy vatp --memory "$memory" --allocation uniform --think-ratios 0,0.4 \
    --mustafar-ratios 0,0.5 "${windows[@]}" --calibration "$work/calib.yaml" --out "$work/plans/chosen-$pct.yaml" 2>/dev/null |
    grep '^chose'
done

step "4. every plan on the held-out sequences"
"$k" eval --plans "${plans[@]}" --corpus "$work/heldout.jsonl" --out "$work/heldout-runs" --json >/dev/null
python3 - "$work" "${plans[@]}" <<'EOF' | tee "$work/results.md"
import sys, yaml
work, plans = sys.argv[1], sys.argv[2:]
print("| plan | budget | KV bytes | replay energy | predicted ΔNLL [interval] | measured ΔNLL | measured top-1 | eval tokens/s |")
print("|---|---:|---:|---:|---|---:|---:|---:|")
for p in plans:
    name = p.rsplit("/", 1)[1][:-5]
    plan = yaml.safe_load(open(p))
    pred = plan["predictions"]
    m = yaml.safe_load(open(f"{work}/heldout-runs/measured/{name}.yaml"))["metrics"]
    print(f"| {name} | {plan['budgets'][0]} | {pred['kv_bytes_per_sequence']} | {pred['replay_resid_energy']:.4f} | "
          f"{pred['delta_nll']:.4f} [{pred['delta_nll_low']:.4f}, {pred['delta_nll_high']:.4f}] | "
          f"{m['delta_nll']:.4f} | {m['top1_agreement']:.4f} | {m.get('tokens_per_s', float('nan')):.0f} |")
EOF
echo "files in $work"

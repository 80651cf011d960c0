#!/usr/bin/env bash
# Validates calibrated accuracy prediction on held-out sequences (issue 6):
#   1. samples two corpora from the default model: A (calibration and planning) and B (held out);
#   2. records a trace of A and measures a subset of configurations on A (7 policies and VATP with the
#      mean base × 4 budgets);
#   3. adds layer-sensitivity probes (one layer pruned, the rest whole), calibrates, then replays the whole grid on A's trace — 7 policies × 8 budgets ×
#      uniform, greedy and PyramidKV allocations — and writes each configuration as a plan with its
#      predictions;
#   4. measures every one of those plans on B, which nothing above saw;
#   5. scores predictions against measurements (tools/validate_calibration.py) into a report.
# Usage: tools/validate_calibration.sh [WORK_DIR] [REPORT.md]   (about 5 minutes on 2 cores)
# $KVPLAN_VALIDATE_HELDOUT_SEED (default 2) draws another held-out corpus B.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kvplan=${KVPLAN_BINARY:-$root/build/kvplan}
work=${1:-$(mktemp -d /tmp/kvplan-validate.XXXXXX)}
report=${2:-$work/CALIBRATION.md}
policies=window,h2o,vatp,tova,snapkv,knorm,random
n_seq=${KVPLAN_VALIDATE_SEQUENCES:-64}
heldout_seed=${KVPLAN_VALIDATE_HELDOUT_SEED:-2}  # corpus B's seed
mkdir -p "$work"
[[ -x $kvplan ]] || { echo "validate_calibration: $kvplan not built: run tools/build.sh" >&2; exit 1; }

step() { printf '\n== %s\n' "$*" >&2; }
step "corpora: A (seed 1) and held-out B (seed $heldout_seed), $n_seq × 512 tokens"
"$kvplan" corpus --sample "$n_seq" --length 512 --seed 1 --out "$work/A.jsonl"
"$kvplan" corpus --sample "$n_seq" --length 512 --seed "$heldout_seed" --out "$work/B.jsonl"
step "trace of A"
"$kvplan" record --corpus "$work/A.jsonl" --out "$work/traceA"
step "calibration subset measured on A: $policies × 16,32,64,128 uniform"
"$kvplan" eval --grid --policies "$policies" --budgets 16,32,64,128 --corpus "$work/A.jsonl" --out "$work/calA" >/dev/null
step "calibration subset measured on A: vatp with the mean base × 16,32,64,128 uniform (its own policy offset)"
"$kvplan" eval --grid --policies vatp --vatp-base mean --budgets 16,32,64,128 --corpus "$work/A.jsonl" \
  --out "$work/calA-mean" >/dev/null
step "layer sensitivity probes measured on A: vatp and h2o with one layer at 16 or 48 slots, the others whole"
rm -rf "$work/probes"
mkdir -p "$work/probes"
for policy in vatp h2o; do
  for budget in 16 48; do
    for layer in 0 1 2 3 4; do
      budgets=$(for l in 0 1 2 3 4; do if [[ $l == "$layer" ]]; then printf '%s' "$budget"; else printf 512; fi
                [[ $l == 4 ]] || printf ,; done)
      "$kvplan" plan --policy "$policy" --layer-budgets "$budgets" \
        --out "$work/probes/$policy-layer$layer-$budget.yaml" >/dev/null
    done
  done
done
"$kvplan" eval --plans "$work"/probes/*.yaml --corpus "$work/A.jsonl" --out "$work/probesA" >/dev/null
step "calibrate"
"$kvplan" calibrate --trace "$work/traceA" --measured "$work"/calA/measured/*.yaml "$work"/calA-mean/measured/*.yaml \
  "$work"/probesA/measured/*.yaml \
  --out "$work/calib.yaml" | tail -2
step "predict the grid from A's trace: $policies × 8 budgets × uniform, greedy, pyramid"
rm -rf "$work/plans"
"$kvplan" sweep --trace "$work/traceA" --policies "$policies" --pyramid --calibration "$work/calib.yaml" \
  --plans-out "$work/plans" --no-plots --out "$work/sweep" >/dev/null
step "the planner's own VATP plans at the same memories (kvplan plan: greedy on fine per-layer error curves)"
for budget in 16 24 32 48 64 96 128 256; do
  "$kvplan" plan --trace "$work/traceA" --policy vatp --budget "$budget" --calibration "$work/calib.yaml" \
    --out "$work/plans/vatp-plan-$budget.yaml" >/dev/null
done
step "VATP with the mean base at the same uniform budgets (the sixth competitive policy)"
for budget in 16 24 32 48 64 96 128 256; do
  "$kvplan" plan --trace "$work/traceA" --policy vatp --vatp-base mean --budget "$budget" --allocation uniform \
    --calibration "$work/calib.yaml" --out "$work/plans/vatp_mean-uniform-$budget.yaml" >/dev/null
done
step "measure every plan on held-out B"
"$kvplan" eval --plans "$work"/plans/*.yaml --corpus "$work/B.jsonl" --out "$work/measB"
step "score"
note="Calibrated on corpus A ($n_seq sampled stories × 512 tokens, seed 1): $policies and VATP with the mean base at \
uniform budgets 16, 32, 64 and 128 (each policy's bias fitted from its own: calib.yaml's policy_offsets), plus 20 layer probes (vatp and h2o with one layer at 16 or 48 slots and the rest whole), measured by \
\`kvplan eval\`. Allocations: uniform, PyramidKV, greedy (sweep: on the uniform replays' per-layer curves) and plan \
(\`kvplan plan --budget B --calibration\`: greedy on calibrated per-layer curves at the plan's own policy settings). Every configuration below was planned and predicted from A's trace alone and \
measured on corpus B ($n_seq × 512, seed $heldout_seed), which the calibration and the plans never saw. Made by \
\`tools/validate_calibration.sh\`."
/usr/bin/env python3 "$root/tools/validate_calibration.py" "$work/measB/plans.csv" --note "$note" --out "$report" >/dev/null
echo "wrote $report (work files in $work)"

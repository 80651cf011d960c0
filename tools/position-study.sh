#!/usr/bin/env bash
# The disagreement study (docs/VALIDATION.md "Why replay and closed loop disagree"); after
# tools/validate_calibration.sh it
#   1. replays every grid configuration on A's trace keeping each decode step's residual energy
#      (sweep --step-energies), VATP's mean base too;
#   2. measures the competitive policies' uniform configurations closed loop with each predicted token's
#      ΔNLL on A (the trace's sequences) and on held-out B (eval --grid --positions), and logs their
#      evictions on A at 32 slots;
#   3. tools/position_study.py: where along the sequence the error falls in each, which tokens each
#      policy drops, candidate predictors fitted on A's calibration and scored on B, and the noise of
#      B's measured best by resampling its sequences.
# Usage: tools/position-study.sh VALIDATE_WORK_DIR [WORK_DIR]   (about 4 minutes on 2 cores)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k=${KVPLAN_BINARY:-$root/build/kvplan}
[[ $# -ge 1 && -f "$1/calib.yaml" && -d "$1/traceA" && -f "$1/measB/plans.csv" ]] || {
  echo "position-study.sh: give the work directory of tools/validate_calibration.sh (calib.yaml, traceA, measB/plans.csv)" >&2
  exit 2
}
val=$1
work=${2:-$(mktemp -d /tmp/kvplan-positions.XXXXXX)}
mkdir -p "$work"
step() { printf '\n== %s\n' "$*" >&2; }
competitive=window,h2o,vatp,tova,snapkv
budgets=16,24,32,48,64,96,128,256
step "replay with per-step energies: the grid of validate_calibration.sh on A's trace"
"$k" sweep --trace "$val/traceA" --policies window,h2o,vatp,tova,snapkv,knorm,random --pyramid \
  --calibration "$val/calib.yaml" --no-plots --out "$work/sweep" --step-energies "$work/energy" >/dev/null
"$k" sweep --trace "$val/traceA" --policies vatp --vatp-base mean --no-greedy --calibration "$val/calib.yaml" \
  --no-plots --out "$work/sweep-mean" --step-energies "$work/energy-mean" >/dev/null
for side in A B; do
  step "closed loop per predicted token on $side: $competitive and VATP's mean base × $budgets"
  "$k" eval --grid --policies "$competitive" --budgets "$budgets" --corpus "$val/$side.jsonl" --out "$work/eval$side" \
    --positions "$work/pos$side" --json >/dev/null
  "$k" eval --grid --policies vatp --vatp-base mean --budgets "$budgets" --corpus "$val/$side.jsonl" \
    --out "$work/eval$side-mean" --positions "$work/pos$side-mean" --json >/dev/null
done
step "eviction logs on A at 32 slots"
mkdir -p "$work/evict"
for p in window h2o vatp tova snapkv; do
  "$k" eval --policy "$p" --budget 32 --corpus "$val/A.jsonl" --out "$work/evict/$p-32.yaml" \
    --eviction-log "$work/evict/$p-32.csv" --json >/dev/null
done
"$k" eval --policy vatp --vatp-base mean --budget 32 --corpus "$val/A.jsonl" --out "$work/evict/vatp_mean-32.yaml" \
  --eviction-log "$work/evict/vatp_mean-32.csv" --json >/dev/null
step "analysis"
/usr/bin/python3 "$root/tools/position_study.py" "$val" "$work" | tee "$work/position-study.md"
echo "files in $work" >&2

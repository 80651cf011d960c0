#!/usr/bin/env bash
# DELTA on the default model (docs/RESULTS.md): layer roles scaled to its 5 layers against the full
# cache, and against VATP at equal bytes read per decode step:
#   1. workload and held-out samples, a full-cache trace of the workload;
#   2. calibration runs on the workload — 5 policies × 5 budgets, DELTA over the full cache at 1, 2
#      and 4 pages, and 5 one-layer probes — and `kvplan calibrate`;
#   3. plans from the trace (calibrated predictions): DELTA over the full cache (roles fsppp at 2, 4
#      and 8 pages of 16, the last 2 pages; ffspp at 4), VATP with a uniform budget attending as many
#      keys per step as each (the replay's mean attended keys per layer, head and step), and DELTA
#      over VATP at half the cache;
#   4. every plan run on the held-out sequences, predicted against measured, and a table
#      (delta-results.md in the work directory).
# About 5 minutes on 2 cores. Work files go to $KVPLAN_WORK_DIR (default: a new temporary directory);
# files already there (corpora, trace, calibration runs) are reused.
#
#   tools/delta-study.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup delta delta-plans "$@"

study_samples

step "2. calibration runs on the workload; calibrate"
for pages in 1 2 4; do
  grid "cal-delta-$pages" full 512 --delta-layers fsppp --delta-pages "$pages" --delta-last 2
done
study_calibrate delta-calib.yaml cal-delta-1 cal-delta-2 cal-delta-4

step "3. plans: DELTA over the full cache, VATP at the keys DELTA attends, DELTA over VATP"
# plan NAME ARGS...: a calibrated plan from the trace into delta-plans/NAME.yaml.
plan() {
  local name=$1
  shift
  "$k" plan --trace "$work/trace" --allocation uniform --calibration "$work/delta-calib.yaml" "$@" \
    --out "$work/delta-plans/$name.yaml" >/dev/null 2>&1
  plans+=("$work/delta-plans/$name.yaml")
}
attended() { python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['predictions']['replay_attended_per_head_step'])" "$1"; }
# The uniform budget whose cache attends, on average over the decode steps of a 512-token sequence
# after a 64-token prompt, the same keys per step (min(t, B) + 1 at step t).
budget_for() {
  python3 -c "
import sys
a = float(sys.argv[1])
mean = lambda b: sum(min(t, b) + 1 for t in range(64, 512)) / (512 - 64)
print(min(range(16, 513), key=lambda b: abs(mean(b) - a)))" "$1"
}
plans=()
plan full --policy full --budget 512
for roles_pages in fsppp:2 fsppp:4 fsppp:8 ffspp:4; do
  roles=${roles_pages%:*} pages=${roles_pages#*:}
  name="delta-$roles-k$pages"
  plan "$name" --policy full --budget 512 --delta-layers "$roles" --delta-pages "$pages" --delta-last 2
  budget=$(budget_for "$(attended "$work/delta-plans/$name.yaml")")
  plan "vatp-as-$name-b$budget" --policy vatp --budget "$budget"
done
plan vatp-b256 --policy vatp --budget 256
plan delta-fsppp-k4-over-vatp-b256 --policy vatp --budget 256 --delta-layers fsppp --delta-pages 4 --delta-last 2

step "4. every plan on the held-out sequences"
"$k" eval --plans "${plans[@]}" --corpus "$work/heldout.jsonl" --out "$work/delta-heldout-runs" --json >/dev/null
python3 - "$work" "${plans[@]}" <<'PY' | tee "$work/delta-results.md"
import sys, yaml
work, plans = sys.argv[1], sys.argv[2:]
print("| plan | KV bytes | keys attended per head and step, replay / measured | replay energy | "
      "predicted ΔNLL [interval] | measured ΔNLL | measured top-1 |")
print("|---|---:|---:|---:|---|---:|---:|")
for p in plans:
    name = p.rsplit("/", 1)[1][:-5]
    pred = yaml.safe_load(open(p))["predictions"]
    m = yaml.safe_load(open(f"{work}/delta-heldout-runs/measured/{name}.yaml"))["metrics"]
    interval = (f"{pred['delta_nll']:.4f} [{pred['delta_nll_low']:.4f}, {pred['delta_nll_high']:.4f}]"
                if "delta_nll" in pred else "—")
    print(f"| {name} | {pred['kv_bytes_per_sequence']} | {pred['replay_attended_per_head_step']:.1f} / "
          f"{m['attended_per_head_step']:.1f} | {pred['replay_resid_energy']:.4f} | {interval} | "
          f"{m['delta_nll']:.4f} | {m['top1_agreement']:.4f} |")
PY
echo "files in $work"

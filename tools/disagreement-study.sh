#!/usr/bin/env bash
# Where open-loop replay and closed loop disagree (docs/VALIDATION.md): one-layer probes
# of the close competitors (window, tova, h2o, vatp, vatp with the mean base; each layer in turn at
# 16 and 48 slots, the others whole) measured closed loop on validate_calibration.sh's corpus A, and
# each probe's log(measured / predicted) under that run's layer map, per policy and layer, next to
# the policy's whole-model offset. A one-layer probe's replay is exact (teacher-forced, every layer
# before it whole: its q, k and v are the recorded ones), so what disagreement it shows lies in the
# error measure, not in the open-loop approximation.
# Usage: tools/disagreement-study.sh VALIDATE_WORK_DIR [WORK_DIR]   (after tools/validate_calibration.sh;
# about 1 minute on 2 cores)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k=${KVPLAN_BINARY:-$root/build/kvplan}
[[ $# -ge 1 && -f "$1/calib.yaml" && -d "$1/traceA" ]] || {
  echo "disagreement-study.sh: give the work directory of tools/validate_calibration.sh (its calib.yaml, traceA, A.jsonl)" >&2
  exit 2
}
val=$1
work=${2:-$(mktemp -d /tmp/kvplan-disagreement.XXXXXX)}
mkdir -p "$work/probes"
for spec in window tova h2o vatp vatp:mean; do
  policy=${spec%%:*} base=${spec#*:}
  name=$policy flags=()
  if [[ $base == mean ]]; then name=vatp_mean flags=(--vatp-base mean); fi
  for budget in 16 48; do
    for layer in 0 1 2 3 4; do
      budgets=$(for l in 0 1 2 3 4; do if [[ $l == "$layer" ]]; then printf '%s' "$budget"; else printf 512; fi
                [[ $l == 4 ]] || printf ,; done)
      "$k" plan --policy "$policy" "${flags[@]}" --layer-budgets "$budgets" --out "$work/probes/$name-$layer-$budget.yaml" >/dev/null
    done
  done
done
[[ -d "$work/runs" ]] || "$k" eval --plans "$work"/probes/*.yaml --corpus "$val/A.jsonl" --out "$work/runs" --json >/dev/null
# calibrate replays each measured probe on the trace (its own fit is not used).
"$k" calibrate --trace "$val/traceA" --measured "$work"/runs/measured/*.yaml --out "$work/probes-replayed.yaml" >/dev/null
python3 - "$val/calib.yaml" "$work/probes-replayed.yaml" <<'PY' | tee "$work/disagreement.md"
import collections, math, sys, yaml
calib, replayed = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
w, beta = calib["map"]["layer_weights"], calib["map"]["nll_power"]
offsets = calib["map"].get("policy_offsets", {})
def layer_map(e):
    return max(sum(a * b for a, b in zip(w, e)), 1e-30) ** beta
res = collections.defaultdict(lambda: collections.defaultdict(list))
for p in replayed["points"]:
    erring = [l for l, e in enumerate(p["resid_energy"]) if e > 0]
    if len(erring) != 1 or p["delta_nll"] <= 1e-4:
        continue
    res[p["policy"]][erring[0]].append(math.log(p["delta_nll"] / layer_map(p["resid_energy"])))
L = len(w)
print("| policy | whole-model offset | " + " | ".join(f"probes at layer {l}" for l in range(L)) + " | all probes |")
print("|---|---:|" + "---:|" * (L + 1))
for policy in sorted(res):
    per = [sum(v) / len(v) if (v := res[policy][l]) else float("nan") for l in range(L)]
    every = [x for l in range(L) for x in res[policy][l]]
    print(f"| {policy} | {offsets.get(policy, float('nan')):+.3f} | " + " | ".join(f"{x:+.3f}" for x in per) +
          f" | {sum(every) / len(every):+.3f} |")
PY
echo "files in $work"

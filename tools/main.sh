#!/usr/bin/env bash
# The main job on the default model (stories260K): the whole kvplan loop (its time on this VM is in
# docs/PERFORMANCE.md, "The main job and calibration").
#   1. sample a workload corpus (and a held-out one) from the model;
#   2. record a full-cache trace of the workload;
#   3. measure a few configurations closed loop and calibrate replay error against them;
#   4. plan VATP at half the full-cache memory (per-layer budgets from replay, with predictions);
#   5. run the plan on the held-out sequences and print predicted against measured;
#   6. plot measured ΔNLL against KV bytes for every configuration, and the plan (main-job.png);
#   7. for a model of 2K positions or more (tools/main.sh --model smollm2-135m): long-context tasks
#      at 2048 tokens, answered with the full cache and with VATP keeping half of each context.
# Work files go to $KVPLAN_WORK_DIR (default: a new temporary directory, printed at the end).
#
#   tools/main.sh [--model M]   M: any model kvplan run takes (a .gguf, a Hugging Face folder, a name)
# With --model, the samples are 8 sequences each (32 for the default model): a larger model's loop
# takes minutes per step on a 2-core machine (docs/PERFORMANCE.md).
set -euo pipefail
model=()
if [[ "${1:-}" == "--model" ]]; then
  [[ -n "${2:-}" ]] || { echo "main.sh: --model needs a value" >&2; exit 2; }
  model=(--model "$2")
  shift 2
fi
[[ $# -eq 0 ]] || { echo "main.sh: unknown argument '$1' (usage: tools/main.sh [--model M])" >&2; exit 2; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}
work=${KVPLAN_WORK_DIR:-$(mktemp -d /tmp/kvplan-main.XXXXXX)}
mkdir -p "$work"
k="$build_dir/kvplan"
start=$(date +%s%N)
step() { printf '\n== %s\n' "$*"; }

"$root/tools/build.sh" >/dev/null
"$k" inspect "${model[@]}" | head -3

n_seq=$(( ${#model[@]} ? 8 : 32 ))
# Commands that run the model: every core for a model given by name or path.
run_opts=("${model[@]}")
((${#model[@]})) && run_opts+=(--threads "$(nproc)")
step "1. workload sample and held-out sequences ($n_seq × 512 tokens each)"
"$k" corpus "${run_opts[@]}" --sample "$n_seq" --length 512 --seed 1 --out "$work/workload.jsonl"
"$k" corpus "${run_opts[@]}" --sample "$n_seq" --length 512 --seed 2 --out "$work/heldout.jsonl"

step "2. record the workload with the full cache"
"$k" record "${run_opts[@]}" --corpus "$work/workload.jsonl" --out "$work/trace"

step "3. measure 5 policies × 5 budgets and one one-layer probe per layer closed loop; calibrate replay error against them"
"$k" eval "${run_opts[@]}" --grid --policies window,h2o,vatp,tova,snapkv --budgets 16,32,64,128,256 --corpus "$work/workload.jsonl" \
  --out "$work/calibration-runs" --json >/dev/null
# Probes: VATP with one layer at 32 slots and the others whole tell the layers' weights apart.
n_layers=$("$k" inspect "${model[@]}" --json | sed -n 's/.*"n_layers": *\([0-9]*\).*/\1/p')
probes=()
for ((layer = 0; layer < n_layers; ++layer)); do
  budgets=""
  for ((l = 0; l < n_layers; ++l)); do
    if ((l == layer)); then budgets+=32; else budgets+=512; fi
    if ((l + 1 < n_layers)); then budgets+=,; fi
  done
  "$k" plan "${model[@]}" --policy vatp --layer-budgets "$budgets" --out "$work/probe-$layer.yaml" >/dev/null
  probes+=("$work/probe-$layer.yaml")
done
"$k" eval "${run_opts[@]}" --plans "${probes[@]}" --corpus "$work/workload.jsonl" --out "$work/probe-runs" --json >/dev/null
"$k" calibrate --trace "$work/trace" --measured "$work"/calibration-runs/measured/*.yaml "$work"/probe-runs/measured/*.yaml \
  --out "$work/calib.yaml" | tail -2

step "4. plan VATP at half the full-cache memory"
"$k" plan --trace "$work/trace" --policy vatp --keep 0.5 --calibration "$work/calib.yaml" --out "$work/plan.yaml"

step "5. run the plan on the held-out sequences: predicted against measured"
"$k" eval "${run_opts[@]}" --plan "$work/plan.yaml" --corpus "$work/heldout.jsonl" --out "$work/measured.yaml" --json >/dev/null
"$k" check --plan "$work/plan.yaml" --measured "$work/measured.yaml"
echo
"$k" run "${run_opts[@]}" --plan "$work/plan.yaml" --prompt "Once upon a time" --steps 200

if /usr/bin/python3 -c 'import matplotlib, yaml' 2>/dev/null; then
  /usr/bin/python3 "$root/tools/plot_main.py" "$work" "$work/main-job.png"  # ΔNLL against KV bytes, and the plan
fi

seq_len=$("$k" inspect "${model[@]}" --json | sed -n 's/.*"seq_len": *\([0-9]*\).*/\1/p')
if ((seq_len >= 2048 + 64)); then
  step "7. long-context tasks at 2048 tokens: full cache against VATP keeping half of each context"
  "$k" tasks "${model[@]}" --length 2048 --n 2 --families niah_single,niah_multikey,niah_multivalue --out "$work/tasks.jsonl"
  "$k" eval "${run_opts[@]}" --tasks "$work/tasks.jsonl" --grid --policies vatp --compression 0.5 \
    --out "$work/tasks-eval" | grep '^|'
fi

elapsed_ms=$((($(date +%s%N) - start) / 1000000))
printf '\nthe loop took %d.%d s; files in %s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100)) "$work"

#!/usr/bin/env bash
# Task accuracy of SmolLM2-135M-Instruct under KV-cache compression, and its prediction from task
# traces (docs/REAL-MODEL.md). At each length of $KVPLAN_TASK_LENGTHS (default "2048 4096 8128"):
# RULER-style instances (seed 1, filler haystack; $KVPLAN_TASK_N_<length> per family, defaults 6 at
# 2048 over all eight families, 5 at 4096 and 3 at 8128 over the five the full cache answers at
# 2K), the full cache and every token policy at kvpress's compression ratios, cut before the
# question, with the task trace recorded from the same prefills (eval --trace-out). Then the
# predictor is calibrated on the first two lengths and checked on the last
# (calibrate --task-trace ... --holdout-trace ...). Writes docs/results/tasks-smollm2/<length>/
# {summary.md,summary.csv,outcomes.csv} and docs/results/tasks-smollm2/predictor.{md,yaml}; the
# traces (about 1 GB) stay in $KVPLAN_WORK_DIR. About 100 minutes on a 2-core machine (2K 21 min,
# 4K 26 min, 8K 50 min, the calibration seconds).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup task tasks "$@"
"$root/tools/fetch-model.sh" smollm2-135m
lengths=${KVPLAN_TASK_LENGTHS:-2048 4096 8128}
policies=${KVPLAN_TASK_POLICIES:-window,h2o,vatp,tova,snapkv,knorm}
kept=niah_single,niah_single_uuid,niah_multikey,niah_multivalue,fwe
threads=$(nproc)
traces=()
outcomes=()
for length in $lengths; do
  out="$root/docs/results/tasks-smollm2/$length"
  default_n=3 families=$kept
  [[ $length -le 2048 ]] && default_n=6 families=all
  [[ $length -gt 2048 && $length -le 4096 ]] && default_n=5
  n_var="KVPLAN_TASK_N_$length"
  n=${!n_var:-$default_n}
  step "tasks at $length tokens, $n per family ($families)"
  family_flag=()
  [[ $families != all ]] && family_flag=(--families "$families")
  "$k" tasks --model smollm2-135m --length "$length" --n "$n" --seed 1 "${family_flag[@]}" --out "$work/tasks/$length.jsonl"
  step "eval --tasks --grid at $length: full and $policies × compression 0.25 0.5 0.75 0.875, task trace"
  start=$(date +%s)
  /usr/bin/time -v "$k" eval --model smollm2-135m --threads "$threads" --tasks "$work/tasks/$length.jsonl" --grid \
    --policies "$policies" --compression 0.25,0.5,0.75,0.875 --trace-out "$work/tasks/$length.kvtt" --out "$out" \
    2> "$work/time-$length.txt" | tail -3
  echo "eval --tasks at $length: $(( $(date +%s) - start )) s, peak RSS $(awk '/Maximum resident/ {print $6}' "$work/time-$length.txt") KB"
  traces+=("$work/tasks/$length.kvtt")
  outcomes+=("$out/outcomes.csv")
done
if (( ${#traces[@]} >= 2 )); then
  last=$(( ${#traces[@]} - 1 ))
  step "calibrate the task-accuracy predictor on all but the last length, check it on the last"
  "$k" calibrate --task-trace "${traces[@]:0:$last}" --outcomes "${outcomes[@]:0:$last}" \
    --holdout-trace "${traces[$last]}" --holdout-outcomes "${outcomes[$last]}" \
    --out "$root/docs/results/tasks-smollm2/predictor.yaml" --report "$root/docs/results/tasks-smollm2/predictor.md" | tail -1
fi

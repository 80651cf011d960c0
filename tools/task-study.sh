#!/usr/bin/env bash
# Task accuracy of SmolLM2-135M-Instruct under KV-cache compression (docs/RESULTS.md, "Task accuracy
# on a real model"): RULER-style instances at each length of $KVPLAN_TASK_LENGTHS (default 2048),
# $KVPLAN_TASK_N instances per family (default 6), the full cache and every token policy at
# kvpress's compression ratios, cut before the question (query-agnostic). Writes
# docs/results/tasks-smollm2/<length>/{summary.md,summary.csv,outcomes.csv} and prints each step's
# time. About 20 minutes per 2K length on a 2-core machine; set KVPLAN_WORK_DIR to keep the task
# files.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup task tasks "$@"
"$root/tools/fetch-model.sh" smollm2-135m
lengths=${KVPLAN_TASK_LENGTHS:-2048}
n=${KVPLAN_TASK_N:-6}
policies=${KVPLAN_TASK_POLICIES:-window,h2o,vatp,tova,snapkv,knorm}
threads=$(nproc)
for length in $lengths; do
  out="$root/docs/results/tasks-smollm2/$length"
  step "tasks at $length tokens, $n per family"
  "$k" tasks --model smollm2-135m --length "$length" --n "$n" --seed 1 --out "$work/tasks/$length.jsonl"
  step "eval --tasks --grid at $length: full and $policies × compression 0.25 0.5 0.75 0.875"
  start=$(date +%s)
  /usr/bin/time -v "$k" eval --model smollm2-135m --threads "$threads" --tasks "$work/tasks/$length.jsonl" --grid \
    --policies "$policies" --compression 0.25,0.5,0.75,0.875 --out "$out" 2> "$work/time-$length.txt" | tail -3
  echo "eval --tasks at $length: $(( $(date +%s) - start )) s, peak RSS $(awk '/Maximum resident/ {print $6}' "$work/time-$length.txt") KB"
done

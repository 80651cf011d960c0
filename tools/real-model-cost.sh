#!/usr/bin/env bash
# What the real-model loop costs on this machine (docs/REAL-MODEL.md, "Cost"): for SmolLM2-135M at
# each length of $KVPLAN_COST_LENGTHS (default "4096 8192"), one sequence of natural text
# (tests/data/smollm2/long.txt) recorded with the full cache (bf16 trace), replayed by sweep under
# vatp and h2o at 4 budgets, and one instance of two task families evaluated closed loop (the full
# cache and vatp, h2o at two compressions). Prints each step's seconds, tokens/s and peak RSS. About
# 15 minutes for 4K and 8K on a 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/study_lib.sh
source "$root/tools/study_lib.sh"
study_setup cost cost "$@"
"$root/tools/fetch-model.sh" smollm2-135m >/dev/null 2>&1
threads=$(nproc)
# timed NAME TOKENS CMD...: runs CMD, prints seconds, tokens/s and peak RSS.
timed() {
  local name=$1 tokens=$2
  shift 2
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null
  end=$(date +%s.%N)
  awk -v n="$name" -v t="$tokens" -v s="$start" -v e="$end" -v r="$(cat "$work/rss")" \
    'BEGIN { printf "| %s | %d | %.1f | %.0f | %.0f |\n", n, t, e - s, t / (e - s), r / 1024 }'
}
echo "| step | tokens | seconds | tokens/s | peak RSS (MB) |"
echo "|---|---:|---:|---:|---:|"
for length in ${KVPLAN_COST_LENGTHS:-4096 8192}; do
  # The first `length` tokens of the text, as a one-sequence corpus file.
  "$k" tokenize --model smollm2-135m --no-bos --file "$root/tests/data/smollm2/long.txt" --json |
    /usr/bin/python3 -c 'import json, sys
n = int(sys.argv[1]); ids = json.load(sys.stdin)["ids"][:n]
print(json.dumps({"format": "kvplan-corpus", "version": 1, "model_fingerprint": sys.argv[2], "n_sequences": 1,
                  "length": n, "seed": 0, "temperature": 1.0, "top_p": 1.0}))
print(json.dumps({"tokens": ids}))' "$length" "$("$k" inspect smollm2-135m --json | sed -n 's/.*"fingerprint": "\([0-9a-f]*\)".*/\1/p')" \
    > "$work/cost/text-$length.jsonl"
  timed "record $length (bf16 trace)" "$length" "$k" record --model smollm2-135m --threads "$threads" \
    --corpus "$work/cost/text-$length.jsonl" --prompt-len 64 --dtype bf16 --out "$work/cost/trace-$length" --force
  timed "replay $length: sweep vatp, h2o × 4 budgets" $((length * 8)) "$k" sweep --trace "$work/cost/trace-$length" \
    --policies vatp,h2o --budgets 256,512,1024,2048 --out "$work/cost/sweep-$length"
  # Task prompts leave room for the answer within the model's 8192 positions.
  task_length=$((length > 8128 ? 8128 : length))
  "$k" tasks --model smollm2-135m --length "$task_length" --n 1 --families niah_single,niah_multikey \
    --out "$work/cost/tasks-$length.jsonl" >/dev/null
  timed "eval --tasks $task_length: 2 instances, full + vatp, h2o × 2" $((task_length * 2)) "$k" eval --model smollm2-135m \
    --threads "$threads" --tasks "$work/cost/tasks-$length.jsonl" --grid --policies vatp,h2o --compression 0.5,0.875 \
    --out "$work/cost/eval-$length"
done

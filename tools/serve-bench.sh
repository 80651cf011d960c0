#!/usr/bin/env bash
# Load benchmark of kvplan serve: the full cache against VATP at 25% in the same KV pool.
#
# Starts `kvplan serve` on loopback with --kv-memory B, drives it with build/kvplan-load (closed-loop
# streaming clients) at each concurrency, first with full-cache requests, then with requests that
# ask {"kvplan": {"keep": 0.25}}, and puts the measured tokens/s next to `kvplan capacity`'s
# prediction for the same pool (how many requests run at once, and the decode rate at that batch).
#
#   tools/serve-bench.sh [--model M] [--kv-memory B] [--max-tokens N] [--requests N]
#                        [--concurrency 1,8,32,128] [--threads T] [--prompt TEXT] [--out DIR]
#
# Writes DIR/full.json, DIR/vatp25.json (kvplan-load), DIR/predicted.json and DIR/summary.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}
model=stories260K kv_memory=1600000 prompt="Once upon a time" max_tokens=128 requests=128 concurrency=1,8,32,128 threads=1
out=$root/docs/results/serving
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --kv-memory) kv_memory=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "serve-bench.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
"$root/tools/build.sh" >/dev/null
mkdir -p "$out"
k="$build_dir/kvplan"
# One server per side, so that each side's peak of running requests is its own.
run_side() {  # label, the requests' kvplan field (or "")
  local label=$1 field=$2 port_file server port
  port_file=$(mktemp)
  "$k" serve --model "$model" --threads "$threads" --port 0 --port-file "$port_file" --kv-memory "$kv_memory" \
    --max-queue 4096 2>/dev/null &
  server=$!
  for _ in $(seq 600); do [[ -s $port_file ]] && break; sleep 0.1; done
  port=$(cat "$port_file")
  rm -f "$port_file"
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
  "$build_dir/kvplan-load" --port "$port" --concurrency "$concurrency" --requests "$requests" --max-tokens "$max_tokens" \
    --prompt "$prompt" ${field:+--kvplan "$field"} --label "$label" --json "$out/$label.json"
  curl -s "http://127.0.0.1:$port/metrics" >"$out/metrics-$label.txt"
  kill -TERM $server
  wait $server
}
echo "serve-bench: $model, KV pool $kv_memory bytes, $requests requests of $max_tokens tokens per level" >&2
run_side full ""
run_side vatp25 '{"keep": 0.25}'

# The capacity model for the same requests (one prompt, so every request has the same bytes).
prompt_len=$("$k" tokenize --model "$model" --text "$prompt" --ids | wc -w)
context=$((prompt_len + max_tokens - 1))
python3 - "$k" "$model" "$context" "$prompt_len" "$kv_memory" "$concurrency" "$out" <<'PY'
import json, subprocess, sys
k, model, context, prompt_len, pool, levels, out = sys.argv[1:]
def capacity(keep, batch):
    args = [k, "capacity", "--model", model, "--hardware", "cpu-2core", "--kv-dtype", "f32", "--context", context,
            "--prompt-len", prompt_len, "--keep", str(keep), "--policy", "vatp", "--kv-memory", pool, "--json"]
    if batch:
        args += ["--batch", str(batch)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
base = capacity(0.25, 0)
in_pool = {"full": base["full"]["pool_sequences"], "vatp25": base["plan"]["pool_sequences"]}
pred = {"context": int(context), "prompt_len": int(prompt_len), "kv_memory": int(pool), "pool_sequences": in_pool,
        "levels": []}
for c in map(int, levels.split(",")):
    row = {"concurrency": c}
    for side, key in (("full", "full"), ("vatp25", "plan")):
        batch = min(c, in_pool[side])
        row[side] = {"batch": batch, "tokens_per_s": capacity(0.25, batch)[key]["tokens_per_s"]}
    pred["levels"].append(row)
json.dump(pred, open(out + "/predicted.json", "w"), indent=2)
full = json.load(open(out + "/full.json"))["levels"]
vatp = json.load(open(out + "/vatp25.json"))["levels"]
def peak(label):
    lines = open(f"{out}/metrics-{label}.txt").read().splitlines()
    return int([l for l in lines if l.startswith("kvplan_requests_running_peak ")][0].split()[1])
pred["measured_peak_running"] = {"full": peak("full"), "vatp25": peak("vatp25")}
json.dump(pred, open(out + "/predicted.json", "w"), indent=2)
lines = [f"requests running at once, measured peak: {peak('full')} full, {peak('vatp25')} at keep 0.25", f"KV pool {pool} bytes: {in_pool['full']} full-cache requests at once, {in_pool['vatp25']} at keep 0.25 "
         f"(capacity; {context} positions, prompt {prompt_len})", "",
         "| clients | full tok/s | VATP 25% tok/s | gain measured | gain predicted | TTFT p50 full / VATP ms | "
         "TTFT p99 full / VATP ms | ITL p50 full / VATP ms | ITL p99 full / VATP ms | req/s full / VATP |",
         "|---|---|---|---|---|---|---|---|---|---|"]
ms = lambda v: "-" if v < 0 else f"{1e3 * v:.2f}"
for f, v, p in zip(full, vatp, pred["levels"]):
    gp = p["vatp25"]["tokens_per_s"] / p["full"]["tokens_per_s"]
    lines.append(f"| {f['concurrency']} | {f['tokens_per_s']:.0f} | {v['tokens_per_s']:.0f} | "
                 f"{v['tokens_per_s'] / f['tokens_per_s']:.2f}x | {gp:.2f}x (batch {p['full']['batch']} vs "
                 f"{p['vatp25']['batch']}) | {ms(f['ttft_p50_s'])} / {ms(v['ttft_p50_s'])} | "
                 f"{ms(f['ttft_p99_s'])} / {ms(v['ttft_p99_s'])} | {ms(f['itl_p50_s'])} / {ms(v['itl_p50_s'])} | "
                 f"{ms(f['itl_p99_s'])} / {ms(v['itl_p99_s'])} | {f['requests_per_s']:.3g} / {v['requests_per_s']:.3g} |")
open(out + "/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

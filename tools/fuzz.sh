#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs each for a time.
#   tools/fuzz.sh [SECONDS_PER_TARGET]   (default 600)
# The seeds are tests/fuzz/seeds/TARGET (small text inputs, committed) and what tests/fuzz/make_seeds
# writes into build-fuzz/seeds (model files are made, never committed); new inputs found go to
# build-fuzz/corpus/TARGET; crashes are written to
# build-fuzz/crash-* and fail the run. Prints executions/s per target.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_FUZZ_BUILD_DIR:-$root/build-fuzz}
"$root/tools/setup.sh"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVP_FUZZ=ON \
    -DKVP_BUILD_TESTS=OFF -DKVP_ENABLE_CUDA=OFF >/dev/null
fi
cmake --build "$build_dir" -j"$(nproc)" --target gguf_fuzz safetensors_fuzz tokenizer_json_fuzz trace_manifest_fuzz flag_list_fuzz plan_files_fuzz serve_request_fuzz tasks_file_fuzz task_trace_fuzz make_seeds >/dev/null
rm -rf "$build_dir/seeds"
"$build_dir/tests/fuzz/make_seeds" "$build_dir/seeds" >/dev/null
seconds=${1:-600}
for target in gguf safetensors tokenizer_json trace_manifest flag_list plan_files serve_request tasks_file task_trace; do
  mkdir -p "$build_dir/corpus/$target"
  log="$build_dir/$target.log"
  echo "fuzz: $target for ${seconds}s" >&2
  (cd "$build_dir" && "./tests/fuzz/${target}_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 \
    -print_final_stats=1 "corpus/$target" $(for d in "seeds/$target" "$root/tests/fuzz/seeds/$target"; do [[ -d $d ]] && echo "$d"; done) >"$log" 2>&1) || {
    echo "fuzz: $target FAILED; see $log" >&2
    tail -30 "$log" >&2
    exit 1
  }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  echo "fuzz: $target: $runs executions, $rate exec/s, no crash"
done

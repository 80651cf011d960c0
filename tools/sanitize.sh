#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer and UndefinedBehaviorSanitizer (gcc, no CUDA) into
# build-asan/ and runs it. Tests that run the kernel emulation are left out (and its suites, the
# GPU suites and the benchmarks are not built): its Boost.Context fibers switch stacks without the
# sanitizer's fiber annotations, which ASan reports as false errors. Extra arguments go to ctest.
#
# -O1 -g1: ASan's own recommendation (its reports keep every frame with file and line) and half the
# compile time of -O2 -g (docs/DEVELOPING.md, "CI time").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_ASAN_BUILD_DIR:-$root/build-asan}
# shellcheck source=tools/phase.sh
source "$root/tools/phase.sh"
kvp_phase asan-setup "$root/tools/setup.sh"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  kvp_phase asan-configure cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -DKVP_SANITIZE=ON -DKVP_ENABLE_CUDA=OFF \
    >"$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
  rm -f "$build_dir.configure.log"
fi
kvp_phase asan-build cmake --build "$build_dir" -j"$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
kvp_phase asan-test ctest --test-dir "$build_dir" -j"$(nproc)" --output-on-failure -LE "gpu|bench|kernels" \
  -E "GpuBackendEmulated|gpu-emulated|GpuEmulated|Emulat" "$@"

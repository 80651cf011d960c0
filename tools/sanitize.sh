#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer and UndefinedBehaviorSanitizer (gcc, no CUDA) into
# build-asan/ and runs it. Tests that run the kernel emulation are left out: its Boost.Context
# fibers switch stacks without the sanitizer's fiber annotations, which ASan reports as false
# errors. Extra arguments go to ctest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_ASAN_BUILD_DIR:-$root/build-asan}
"$root/tools/setup.sh"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVP_SANITIZE=ON -DKVP_ENABLE_CUDA=OFF \
    >"$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
  rm -f "$build_dir.configure.log"
fi
cmake --build "$build_dir" -j"$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build_dir" -j"$(nproc)" --output-on-failure -LE "gpu|bench|kernels" \
  -E "GpuBackendEmulated|gpu-emulated|GpuEmulated|Emulat" "$@"

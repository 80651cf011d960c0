#!/usr/bin/env bash
# Installs dependencies (tools/setup.sh), configures and builds kvplan into build/ (or
# $KVPLAN_BUILD_DIR). CUDA code is compiled when nvcc is found; pass -DKVP_ENABLE_CUDA=OFF in
# $KVPLAN_CMAKE_ARGS to skip it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}

# shellcheck source=tools/phase.sh
source "$root/tools/phase.sh"
kvp_phase setup "$root/tools/setup.sh"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  # shellcheck disable=SC2086
  kvp_phase configure cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    ${KVPLAN_CMAKE_ARGS:-} \
    >"$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
  rm -f "$build_dir.configure.log"
fi
kvp_phase build cmake --build "$build_dir" -j"$(nproc)"

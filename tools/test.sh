#!/usr/bin/env bash
# Builds kvplan and runs every test (ctest; GPU tests skip with a reason where no GPU is present).
# Extra arguments go to ctest, e.g. tools/test.sh -L executor.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}

# shellcheck source=tools/phase.sh
source "$root/tools/phase.sh"
"$root/tools/build.sh"
kvp_phase test ctest --test-dir "$build_dir" -j"$(nproc)" --output-on-failure "$@"

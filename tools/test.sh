#!/usr/bin/env bash
# Builds kvplan and runs every test (ctest; GPU tests skip with a reason where no GPU is present).
# Extra arguments go to ctest, e.g. tools/test.sh -L executor.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}

"$root/tools/build.sh"
ctest --test-dir "$build_dir" -j"$(nproc)" --output-on-failure "$@"

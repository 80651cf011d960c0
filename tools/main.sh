#!/usr/bin/env bash
# The main job on the default model (stories260K): builds kvplan if needed, then tells a story
# greedily from "Once upon a time" with the full KV cache.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}

"$root/tools/build.sh" >/dev/null
"$build_dir/kvplan" inspect
echo
"$build_dir/kvplan" run --prompt "Once upon a time" --steps 256 "$@"

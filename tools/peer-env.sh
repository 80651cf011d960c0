#!/usr/bin/env bash
# Sets up the peers kvplan is checked against, in a virtual environment outside the build:
#   tools/peer-env.sh [llama-cpp]     llama-cpp-python (builds a current llama.cpp from source,
#                                     about 10 minutes on 2 cores) and numpy
# Prints the environment's python on stdout. The environment is $KVPLAN_PEER_VENV, else
# CACHE/peer-venv (CACHE as tools/fetch-model.sh: $KVPLAN_CACHE_DIR, $XDG_CACHE_HOME/kvplan or
# ~/.cache/kvplan). Exact versions from PyPI; an environment that already has them is reused.
# Never run by tools/setup.sh or CI: the committed expectations (tests/data/) are what CI checks.
set -euo pipefail
what=${1:-llama-cpp}
llama_cpp_version=0.3.36
numpy_version=2.4.6

# shellcheck source=tools/cache_dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/cache_dir.sh"
cache=$(kvp_cache_dir)
venv=${KVPLAN_PEER_VENV:-$cache/peer-venv}

case "$what" in
  llama-cpp) packages=("llama-cpp-python==$llama_cpp_version" "numpy==$numpy_version") ;;
  *) echo "peer-env: unknown peer '$what' (known: llama-cpp)" >&2; exit 2 ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
  echo "peer-env: creating $venv" >&2
  python3 -m venv "$venv" >&2
fi
missing=()
for p in "${packages[@]}"; do
  shown=$("$venv/bin/python" -m pip show "${p%%==*}" 2>/dev/null || true)
  grep -qx "Version: ${p##*==}" <<<"$shown" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "peer-env: installing ${missing[*]} (llama-cpp-python compiles llama.cpp: minutes)" >&2
  # The CPU build only; GGML_NATIVE tunes it to this machine, as a user's own build would be.
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/python" -m pip install --quiet "${missing[@]}" >&2
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Installs kvplan's build and test dependencies from Debian packages. Idempotent: packages already
# present are left alone, and apt-get runs only when something is missing. The CUDA toolkit is not a
# Debian package here; it is used when /usr/local/cuda/bin/nvcc (or nvcc on PATH) exists.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libeigen3-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libfmt-dev libssl-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libboost-dev libboost-context-dev
  libpcre2-dev clang
  python3 python3-matplotlib python3-numpy python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq || echo "setup: apt-get update failed; trying the install with the current lists" >&2
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

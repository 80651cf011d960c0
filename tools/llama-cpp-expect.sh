#!/usr/bin/env bash
# Regenerates the llama.cpp expectations kvplan's real-model tests check (tests/data/smollm2/):
#   tools/llama-cpp-expect.sh
# Sets up the peer (tools/peer-env.sh: llama-cpp-python from PyPI, which builds llama.cpp) and the
# model (tools/fetch-model.sh smollm2-135m), then runs tools/llama_cpp_expect.py: the tokens of
# held-out texts, teacher-forced logits at 1K, 4K and 8K positions of tests/data/smollm2/long.txt,
# and greedy chat continuations. Takes about two minutes on 2 cores after the peer is built.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$("$root/tools/peer-env.sh" llama-cpp)
"$root/tools/fetch-model.sh" smollm2-135m
model=$("$root/build/kvplan" inspect smollm2-135m --json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["model"])')
"$python" "$root/tools/llama_cpp_expect.py" --model "$model" --long-text "$root/tests/data/smollm2/long.txt" \
  --out "$root/tests/data/smollm2" --positions 8192 "$@"

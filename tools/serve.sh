#!/usr/bin/env bash
# Serves the default model (stories260K) with the main job's plan, on 127.0.0.1 only.
#
#   tools/serve.sh [--port N] [--plan plan.yaml] [more kvplan serve flags ...]
#
# Without --plan it uses the plan tools/main.sh wrote in $KVPLAN_WORK_DIR (default
# /tmp/kvplan-serve), running the main job there first when that plan is not there yet. Requests
# get the plan unless they ask otherwise ({"kvplan": {"keep": 0.25}} or the full cache of another
# server); stop with Ctrl-C (in-flight requests finish first).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVPLAN_BUILD_DIR:-$root/build}
work=${KVPLAN_WORK_DIR:-/tmp/kvplan-serve}
port=8080 plan="" extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
"$root/tools/build.sh" >/dev/null
if [[ -z $plan ]]; then
  plan=$work/plan.yaml
  if [[ ! -f $plan ]]; then
    echo "serve.sh: no plan in $work yet: running the main job there first (tools/main.sh)" >&2
    KVPLAN_WORK_DIR=$work "$root/tools/main.sh" >"$work.main.log" 2>&1 || { tail -20 "$work.main.log" >&2; exit 1; }
  fi
fi
cat >&2 <<MSG
serve.sh: try
  curl -s http://127.0.0.1:$port/v1/completions -H 'Content-Type: application/json' \\
    -d '{"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}'
MSG
exec "$build_dir/kvplan" serve --plan "main=$plan" --host 127.0.0.1 --port "$port" "${extra[@]}"

# Sourced by the build and test scripts: `kvp_phase NAME COMMAND...` runs COMMAND and, when
# $KVPLAN_PHASES names a file (CI sets it), appends "NAME SECONDS EXIT" to it, so that
# tools/ci-report.sh can print where the time went. The command's exit status is returned.
kvp_phase() {
  local name=$1
  shift
  local start end rc=0
  start=$(date +%s.%N)
  "$@" || rc=$?
  end=$(date +%s.%N)
  if [[ -n "${KVPLAN_PHASES:-}" ]]; then
    awk -v n="$name" -v a="$start" -v b="$end" -v rc="$rc" 'BEGIN { printf "%s %.1f %d\n", n, b - a, rc }' \
      >>"$KVPLAN_PHASES"
  fi
  return "$rc"
}

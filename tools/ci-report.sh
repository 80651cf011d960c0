#!/usr/bin/env bash
# Prints where a CI run spent its time: each phase against its share of the 30-minute budget (a
# warning for every phase over its share, and for the total), then the slowest compile units and
# tests of each build directory given.
#   tools/ci-report.sh PHASES_FILE [BUILD_DIR ...]
# PHASES_FILE holds "NAME SECONDS EXIT" lines (tools/phase.sh writes them when $KVPLAN_PHASES is set).
# The shares add up to the budget: each phase's time on the 2-core Xeon of docs/DEVELOPING.md times
# about 1.7, room for the slowest machine class (a 2-core EPYC Zen 3 took 1.4x the Xeon's time).
set -uo pipefail
phases=${1:?usage: tools/ci-report.sh PHASES_FILE [BUILD_DIR ...]}
shift
budget=1800

echo
echo "== CI phases (budget ${budget} s)"
if [[ ! -s "$phases" ]]; then
  echo "ci-report: $phases: no phases recorded" >&2
  exit 0
fi
awk -v budget="$budget" '
  BEGIN {
    share["setup"] = 120; share["fetch-model"] = 60; share["configure"] = 30; share["build"] = 420; share["test"] = 240
    share["asan-setup"] = 30; share["asan-configure"] = 30; share["asan-build"] = 630; share["asan-test"] = 240
  }
  { name[NR] = $1; secs[NR] = $2; rc[NR] = $3; total += $2 }
  END {
    printf "%-16s %9s %9s  %s\n", "phase", "seconds", "share", "exit"
    for (i = 1; i <= NR; ++i) {
      s = (name[i] in share) ? share[name[i]] : "-"
      printf "%-16s %9.1f %9s  %s\n", name[i], secs[i], s, rc[i]
    }
    printf "%-16s %9.1f %9d\n", "total", total, budget
    for (i = 1; i <= NR; ++i) {
      if ((name[i] in share) && secs[i] > share[name[i]]) {
        printf "ci: warning: phase %s took %.0f s, over its share of %d s (docs/DEVELOPING.md, \"CI time\")\n",
          name[i], secs[i], share[name[i]]
      }
    }
    if (total > budget) printf "ci: warning: CI took %.0f s, over the %d s budget\n", total, budget
  }' "$phases"

for dir in "$@"; do
  [[ -f "$dir/.ninja_log" ]] || continue
  echo
  echo "== slowest compile units in $(basename "$dir") (seconds)"
  # .ninja_log: start_ms end_ms mtime output hash; a rebuilt output keeps its last line.
  awk 'NR > 1 && $4 ~ /\.o$/ { t[$4] = ($2 - $1) / 1000 } END { for (o in t) printf "%8.1f  %s\n", t[o], o }' \
    "$dir/.ninja_log" | sort -rn | head -8
  cost="$dir/Testing/Temporary/CTestCostData.txt"
  [[ -f "$cost" ]] || continue
  echo "== slowest tests in $(basename "$dir") (seconds)"
  awk '/^---/ { exit } NF == 3 { printf "%8.1f  %s\n", $3, $1 }' "$cost" | sort -rn | head -8
done

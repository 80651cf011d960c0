# Shared by the study scripts (compression-study.sh, kvcrush-study.sh, delta-study.sh): sourced
# after they set $root, then study_setup sets $k (the kvplan binary) and $work (the work directory).
# Files already in $work are reused.

# study_setup NAME SUBDIR ARGS...: refuses arguments, sets $k and $work ($KVPLAN_WORK_DIR or a new
# /tmp/kvplan-NAME.XXXXXX), makes $work/SUBDIR and builds kvplan.
study_setup() {
  local name=$1 subdir=$2
  shift 2
  [[ $# -eq 0 ]] || { echo "$name-study.sh: takes no arguments (set KVPLAN_WORK_DIR for the work files)" >&2; exit 2; }
  k="${KVPLAN_BUILD_DIR:-$root/build}/kvplan"
  work=${KVPLAN_WORK_DIR:-$(mktemp -d "/tmp/kvplan-$name.XXXXXX")}
  mkdir -p "$work/$subdir"
  "$root/tools/build.sh" >/dev/null
}

step() { printf '\n== %s\n' "$*"; }

# Workload and held-out samples (32 × 512 tokens each) and the workload's full-cache trace.
study_samples() {
  step "1. workload and held-out samples (32 × 512 tokens), the workload's trace"
  [[ -f "$work/workload.jsonl" ]] || "$k" corpus --sample 32 --length 512 --seed 1 --out "$work/workload.jsonl"
  [[ -f "$work/heldout.jsonl" ]] || "$k" corpus --sample 32 --length 512 --seed 2 --out "$work/heldout.jsonl"
  [[ -d "$work/trace" ]] || "$k" record --corpus "$work/workload.jsonl" --out "$work/trace"
}

# grid NAME POLICIES BUDGETS [flags]: the workload measured closed loop into $work/NAME.
grid() {
  local name=$1 policies=$2 budgets=$3
  shift 3
  [[ -d "$work/$name/measured" ]] || "$k" eval --grid --policies "$policies" --budgets "$budgets" "$@" \
    --corpus "$work/workload.jsonl" --out "$work/$name" --json >/dev/null
}

# study_calibrate OUT GRID...: the dense grid (5 policies × 5 budgets), the one-layer probes and the
# study's own grids (directories of $work, measured before), calibrated on the workload's trace into
# $work/OUT. Only the grids named: a work directory shared by several studies holds the others' too.
study_calibrate() {
  local out=$1 name
  shift
  grid cal-dense window,h2o,vatp,tova,snapkv 16,32,64,128,256
  probes
  local measured=()
  for name in cal-dense "$@" probe-runs; do measured+=("$work/$name"/measured/*.yaml); done
  "$k" calibrate --trace "$work/trace" --measured "${measured[@]}" --out "$work/$out" | tail -2
}

# VATP with one layer at 32 slots and the others whole, each layer in turn, measured into
# $work/probe-runs: they tell the layers' weights apart for calibrate.
probes() {
  local files=() layer l budgets
  for layer in 0 1 2 3 4; do
    budgets=""
    for l in 0 1 2 3 4; do
      if ((l == layer)); then budgets+=32; else budgets+=512; fi
      if ((l < 4)); then budgets+=,; fi
    done
    "$k" plan --policy vatp --layer-budgets "$budgets" --out "$work/probe-$layer.yaml" >/dev/null
    files+=("$work/probe-$layer.yaml")
  done
  [[ -d "$work/probe-runs" ]] || "$k" eval --plans "${files[@]}" --corpus "$work/workload.jsonl" --out "$work/probe-runs" --json >/dev/null
}

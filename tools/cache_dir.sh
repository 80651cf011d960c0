# kvplan's cache directory, as cache_dir() in common/ finds it: $KVPLAN_CACHE_DIR, else
# $XDG_CACHE_HOME/kvplan, else ~/.cache/kvplan. Sourced by the tools that fill it.
kvp_cache_dir() {
  if [[ -n "${KVPLAN_CACHE_DIR:-}" ]]; then
    echo "$KVPLAN_CACHE_DIR"
  elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then
    echo "$XDG_CACHE_HOME/kvplan"
  else
    echo "${HOME:?set KVPLAN_CACHE_DIR or HOME}/.cache/kvplan"
  fi
}

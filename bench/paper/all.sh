#!/usr/bin/env bash
# Every experiment of the paper reproduced here, in sequence: section4.sh, fig3.sh, fig4.sh,
# fig5.sh, fig6.sh (see README.md). Builds weir once, then runs each script with RUNS; a script
# that fails does not stop the others, and the exit status says whether all passed.
# Usage: bench/paper/all.sh [RUNS]   (default 1; about 6 minutes, 16.5 with RUNS=3)
# Environment: passed through to every script (NO_RECORD=1, DB=..., WEIR_BIN=...).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-1}
if [[ -z "${WEIR_BIN:-}" ]]; then
  if [[ "${NO_BUILD:-0}" != 1 ]]; then cargo build --release -q -p weir || exit 1; fi
  # One binary for every script, even if other work rebuilds target/release meanwhile.
  PIN=$(mktemp -d /tmp/weir-paper-all-XXXXXX)
  trap 'rm -rf "$PIN"' EXIT
  cp "$ROOT/target/release/weir" "$PIN/weir"
  touch -r "$ROOT/target/release/weir" "$PIN/weir"
  {
    echo "binary target/release/weir, modified $(date -u -r "$PIN/weir" '+%Y-%m-%d %H:%M UTC')"
    echo "HEAD $(git rev-parse --short HEAD)"
    git status --porcelain -- crates Cargo.toml Cargo.lock | sed 's/^/dirty /'
  } > "$PIN/weir.build"
  export WEIR_BIN=$PIN/weir
fi
export NO_BUILD=1
failed=()
for script in section4 fig3 fig4 fig5 fig6; do
  printf '\n=== bench/paper/%s.sh %s\n' "$script" "$RUNS" >&2
  start=$SECONDS
  "$ROOT/bench/paper/$script.sh" "$RUNS" || failed+=("$script")
  printf '=== %s: %d s\n' "$script" $((SECONDS - start)) >&2
done
if ((${#failed[@]})); then
  printf 'all.sh: failed: %s\n' "${failed[*]}" >&2
  exit 1
fi

#!/usr/bin/env bash
# Runs every test of weir, from a clean clone, and prints one summary at the end:
#   1. scripts/install-deps.sh   (nginx, MariaDB, wrk, uWSGI/Gunicorn/Granian, pytest; idempotent)
#   2. cargo build -p weir       (debug: the binary the end-to-end tests start)
#   2a. cargo fmt --all --check  (style; early, so a style failure is seen fast)
#   2b. cargo clippy --workspace --all-targets -- -D warnings
#       (the workspace's [workspace.lints] add undocumented_unsafe_blocks = deny)
#   3. cargo nextest run --workspace
#   4. python3 -m pytest tests/  (tests/e2e: real weir, real nginx, real sockets; tests/db ...)
#   5. a short fuzz run of the codec targets (scripts/fuzz.sh; WEIR_FUZZ_SECONDS, default 15 each)
# Exits non-zero if any step fails. The last line reads "test.sh: N passed, N failed, N skipped"
# (tests counted over nextest and pytest; a step that fails without counting tests counts
# as one failure).
#
# Environment:
#   WEIR_TEST_SKIP_DEPS=1   skip step 1 (a machine that already has everything)
#   WEIR_TEST_PYTEST_ARGS   extra arguments for pytest (e.g. "-k conformance -x")
#   WEIR_E2E_REFERENCE=1    also run the conformance tests against nginx->uWSGI and Gunicorn
#   CARGO_TARGET_DIR        honoured: the tests run the weir binary built there
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/python-link.sh  # libpython linked statically when available
OUT="$ROOT/target/test-sh"
# Where cargo puts the binary: CARGO_TARGET_DIR (relative to the repository, where cargo
# runs) when set, else target/.
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
mkdir -p "$OUT"

declare -a SUMMARY=()
FAILED_STEPS=0
N_PASSED=0
N_FAILED=0
N_SKIPPED=0

banner() { printf '\n===== test.sh: %s =====\n' "$*"; }
record() {  # record NAME STATUS DETAIL
  SUMMARY+=("$1 $2${3:+ ($3)}")
  if [[ "$2" == FAILED ]]; then FAILED_STEPS=$((FAILED_STEPS + 1)); fi
}

# -- 1. dependencies ---------------------------------------------------------------------
if [[ "${WEIR_TEST_SKIP_DEPS:-0}" == 1 ]]; then
  record install-deps skipped "WEIR_TEST_SKIP_DEPS=1"
else
  banner "install-deps"
  if scripts/install-deps.sh; then record install-deps ok; else record install-deps FAILED; N_FAILED=$((N_FAILED + 1)); fi
fi

# -- 2. build ----------------------------------------------------------------------------
banner "cargo build -p weir"
BUILD_OK=0
if cargo build -p weir; then
  BUILD_OK=1; record build ok
else
  record build FAILED; N_FAILED=$((N_FAILED + 1))
fi

# -- 2a. style ---------------------------------------------------------------------------
banner "cargo fmt --all --check"
if cargo fmt --all --check; then
  record fmt ok
else
  record fmt FAILED "run cargo fmt --all"; N_FAILED=$((N_FAILED + 1))
fi

# -- 2b. lints ---------------------------------------------------------------------------
# -D warnings makes every clippy warning an error; undocumented_unsafe_blocks (every
# `unsafe` needs a `// SAFETY:` comment) is denied by [workspace.lints.clippy] in Cargo.toml.
banner "cargo clippy --workspace --all-targets -- -D warnings"
if cargo clippy --workspace --all-targets -- -D warnings; then
  record clippy ok
else
  record clippy FAILED; N_FAILED=$((N_FAILED + 1))
fi

# -- 2b. a private MariaDB for the database tests (weir db, examples/shop on MySQL) --------
banner "MariaDB (scripts/mariadb.sh)"
# One that already runs (someone's benchmark, a second test run) is used and left running.
MARIADB_WAS_RUNNING=0
scripts/mariadb.sh status >/dev/null 2>&1 && MARIADB_WAS_RUNNING=1
if scripts/mariadb.sh start; then
  export WEIR_TEST_MYSQL_URL; WEIR_TEST_MYSQL_URL=$(scripts/mariadb.sh url)
  record mariadb ok "$WEIR_TEST_MYSQL_URL"
  if [[ $MARIADB_WAS_RUNNING == 0 ]]; then
    trap 'scripts/mariadb.sh stop >/dev/null 2>&1 || true' EXIT
  fi
else
  record mariadb FAILED "database tests will fail or skip"; N_FAILED=$((N_FAILED + 1))
fi

# -- 3. Rust tests -----------------------------------------------------------------------
banner "cargo nextest run --workspace"
cargo nextest run --workspace --no-tests=warn 2>&1 | tee "$OUT/nextest.log"
rc=${PIPESTATUS[0]}
counts=$(grep -E '[0-9]+ tests? run:' "$OUT/nextest.log" | tail -1)
np=$(grep -oE '[0-9]+ passed' <<<"$counts" | grep -oE '[0-9]+' || true)
nf=$(grep -oE '[0-9]+ failed' <<<"$counts" | grep -oE '[0-9]+' || true)
ns=$(grep -oE '[0-9]+ skipped' <<<"$counts" | grep -oE '[0-9]+' || true)
N_PASSED=$((N_PASSED + ${np:-0})); N_SKIPPED=$((N_SKIPPED + ${ns:-0}))
if ((rc == 0)); then
  record nextest ok "${np:-0} passed"
  N_FAILED=$((N_FAILED + ${nf:-0}))
else
  record nextest FAILED "exit $rc, ${nf:-0} failed"
  nf=${nf:-0}
  ((nf == 0)) && nf=1  # a build or harness failure counts as one
  N_FAILED=$((N_FAILED + nf))
fi

# -- 4. Python tests ---------------------------------------------------------------------
banner "python3 -m pytest tests/"
if ((BUILD_OK == 0)); then
  # never test a stale binary
  record pytest FAILED "not run: the build failed"
  N_FAILED=$((N_FAILED + 1))
else
  JUNIT="$OUT/pytest-junit.xml"
  rm -f "$JUNIT"
  # shellcheck disable=SC2086
  WEIR_BIN="$TARGET_DIR/debug/weir" python3 -m pytest tests/ -q --junitxml="$JUNIT" ${WEIR_TEST_PYTEST_ARGS:-}
  rc=$?
  read -r pp pf ps < <(python3 - "$JUNIT" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0); sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0)) + int(su.get("errors", 0))
    s += int(su.get("skipped", 0))
print(t - f - s, f, s)
PY
)
  N_PASSED=$((N_PASSED + pp)); N_SKIPPED=$((N_SKIPPED + ps))
  if ((rc == 0)); then
    record pytest ok "$pp passed, $ps skipped"
    N_FAILED=$((N_FAILED + pf))
  elif ((rc == 5)); then
    record pytest ok "no tests collected"  # pytest's exit 5: nothing to run is not a failure
  else
    record pytest FAILED "exit $rc, $pf failed"
    N_FAILED=$((N_FAILED + (pf > 0 ? pf : 1)))
  fi
fi

# -- 5. fuzzing --------------------------------------------------------------------------
if [[ -d fuzz ]]; then
  banner "fuzz"
  if scripts/fuzz.sh "${WEIR_FUZZ_SECONDS:-15}" 2>&1 | tee "$OUT/fuzz.log"; then
    record fuzz ok "$(grep -c '^Done' "$OUT/fuzz.log") targets"
  else
    record fuzz FAILED "see $OUT/fuzz.log"; N_FAILED=$((N_FAILED + 1))
  fi
else
  record fuzz skipped "no fuzz/ directory"
fi

# -- summary -----------------------------------------------------------------------------
banner "summary"
for s in "${SUMMARY[@]}"; do printf '  %s\n' "$s"; done
if ((FAILED_STEPS > 0)); then
  printf 'test.sh: FAILED (%d step(s) failed)\n' "$FAILED_STEPS"
else
  printf 'test.sh: all steps ok\n'
fi
printf 'test.sh: %d passed, %d failed, %d skipped\n' "$N_PASSED" "$N_FAILED" "$N_SKIPPED"
((FAILED_STEPS == 0))

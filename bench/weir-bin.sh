# Sourced by the side-by-side benchmarks (bench/cache, bench/static, bench/compression):
# the weir binary they run, and the shop app on SQLite in the run's temp dir.
#   weir_bin_private: WEIR_BIN (default $CARGO_TARGET_DIR/release/weir, or target/; built
#   here unless WEIR_BIN is set or NO_BUILD=1), recorded in $OUT/weir-build (binary, HEAD,
#   uncommitted changes; those of the checkout WEIR_BIN was built in, when it is another)
#   and copied into $RUN_DIR, so other work may rebuild it meanwhile;
#   WEIR_BIN then names the copy.
#   shop_on_sqlite: Flask installed if missing; the shop's database a SQLite file in
#   $RUN_DIR (created and seeded by the first request), not examples/shop/shop.db.
# Needs ROOT, OUT, RUN_DIR, PY, SHOP_DIR and a log function.

weir_bin_private() {
  local given=${WEIR_BIN:-}
  if [[ -z "${WEIR_BIN:-}" ]]; then
    WEIR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/weir"
    if [[ "${NO_BUILD:-0}" != 1 ]]; then
      log "cargo build --release -p weir"
      cargo build --release -p weir >&2
    fi
  fi
  [[ -x "$WEIR_BIN" ]] || { log "no weir binary at $WEIR_BIN"; exit 2; }
  {
    echo "binary $WEIR_BIN, modified $(date -u -r "$WEIR_BIN" '+%Y-%m-%d %H:%M UTC')"
    echo "HEAD $(git rev-parse --short HEAD)"
    git status --porcelain -- crates Cargo.toml Cargo.lock | sed 's/^/dirty /'
  } > "$OUT/weir-build"
  weir_bin_origin "$given"
  cp "$WEIR_BIN" "$RUN_DIR/weir"
  WEIR_BIN=$RUN_DIR/weir
}

# A WEIR_BIN from another checkout (another worktree's release build): record that
# checkout's commit and uncommitted changes instead of this one's.
weir_bin_origin() {
  local orig=$1 top
  [[ -n "$orig" ]] || return 0
  if ! top=$(git -C "$(dirname "$orig")" rev-parse --show-toplevel 2>/dev/null); then
    sed -i 's/^HEAD .*/HEAD ? (a binary from outside any checkout)/' "$OUT/weir-build"
    return 0
  fi
  [[ "$top" == "$ROOT" ]] && return 0
  {
    echo "binary $orig, modified $(date -u -r "$orig" '+%Y-%m-%d %H:%M UTC')"
    echo "HEAD $(git -C "$top" rev-parse --short HEAD) of $top"
    git -C "$top" status --porcelain -- crates Cargo.toml Cargo.lock | sed 's/^/dirty /'
  } > "$OUT/weir-build"
}

shop_on_sqlite() {
  "$PY" -c 'import flask' 2>/dev/null || "$PY" -m pip install -q -r "$SHOP_DIR/requirements.txt"
  unset DATABASE_URL
  export SHOP_SQLITE_PATH=$RUN_DIR/shop.db
}

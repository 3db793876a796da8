# Sourced by the side-by-side benchmarks (bench/cache, bench/static, bench/compression):
# the weir binary they run, and the shop app on SQLite in the run's temp dir.
#   weir_bin_private: WEIR_BIN (default $CARGO_TARGET_DIR/release/weir, or target/; built
#   here unless WEIR_BIN is set or NO_BUILD=1), recorded in $OUT/weir-build (binary, HEAD,
#   uncommitted changes) and copied into $RUN_DIR, so other work may rebuild it meanwhile;
#   WEIR_BIN then names the copy.
#   shop_on_sqlite: Flask installed if missing; the shop's database a SQLite file in
#   $RUN_DIR (created and seeded by the first request), not examples/shop/shop.db.
# Needs ROOT, OUT, RUN_DIR, PY, SHOP_DIR and a log function.

weir_bin_private() {
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
  cp "$WEIR_BIN" "$RUN_DIR/weir"
  WEIR_BIN=$RUN_DIR/weir
}

shop_on_sqlite() {
  "$PY" -c 'import flask' 2>/dev/null || "$PY" -m pip install -q -r "$SHOP_DIR/requirements.txt"
  unset DATABASE_URL
  export SHOP_SQLITE_PATH=$RUN_DIR/shop.db
}

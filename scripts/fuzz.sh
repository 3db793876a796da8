#!/usr/bin/env bash
# Runs the codec fuzz targets briefly (SECONDS per target, default 20).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable
# toolchain this machine has (the only one that can be installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install -q --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for t in uwsgi_packet body_frames http1_framing cache_record static_path nginx_conf; do
  echo "fuzz: $t for ${SECS}s" >&2
  cargo fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1 | tail -n 3
done
echo "fuzz: ok" >&2

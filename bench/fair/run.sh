#!/usr/bin/env bash
# Fair queueing (issue 14): one client at 10x capacity beside a polite one, weir with and
# without `[queue] fair_key`, interleaved, the same load tool on both.
#
#   app       examples/shop (SQLite), /slow?s=0.2 (a 200 ms request), 4 workers: 20 req/s
#   flood     weir load --rate 200 (10x capacity) on /slow?s=0.2&client=flood, DURATION s
#   polite    weir load --rate 2 on /slow?s=0.2&client=polite, from 2 s into the flood to
#             2 s before its end; first alone, unloaded, for its baseline
#   servers   weir (the defaults: one FIFO queue with CoDel) and weir-fair
#             ([queue] fair_key = "$arg_client", per_key_max = 32)
# Prints, per server and run, the polite client's statuses, p50, p99 and max, the flood's
# statuses, and the ratio of the polite p99 to its unloaded p99. Raw JSON in
# bench/out/fair-<time>/.
#
# Usage: bench/fair/run.sh [RUNS]   (default 3)
# Environment: DURATION (s, default 12), WEIR_BIN (default target/release/weir, built
#   unless NO_BUILD=1). Bounded: each load run stops by itself; servers are stopped at exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-3}
DURATION=${DURATION:-12}
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
if [[ -z "${WEIR_BIN:-}" && "${NO_BUILD:-0}" != 1 ]]; then cargo build --release -p weir >&2; fi
OUT="$ROOT/bench/out/fair-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-fair-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN_DIR"; }
trap cleanup EXIT
log() { printf 'fair: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {  # start NAME PORT
  local name=$1 port=$2 cfg="$RUN_DIR/$1.toml"
  printf '[server]\nlisten = ["127.0.0.1:%s"]\naccess_log = "off"\n[app]\nmodule = "app:app"\nchdir = "%s"\nworkers = 4\n' \
    "$port" "$ROOT/examples/shop" > "$cfg"
  if [[ $name == weir-fair ]]; then
    printf '[queue]\nfair_key = "$arg_client"\nper_key_max = 32\n' >> "$cfg"
  fi
  "$WEIR" serve --config "$cfg" > "$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  local deadline=$((SECONDS + 60))
  until curl -sf -o /dev/null "http://127.0.0.1:$port/hello"; do
    ((SECONDS < deadline)) || { log "$name did not come up (log: $OUT/$name.log)"; return 1; }
    sleep 0.1
  done
}

summary() {  # summary JSON -> "statuses p50 p99 max"
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
st = ",".join("%s:%d" % kv for kv in sorted(d["status"].items()))
l = d["latency_ms"]
print(st or "-", "%.0f" % l.get("p50", float("nan")), "%.0f" % l.get("p99", float("nan")),
      "%.0f" % l.get("max", float("nan")))
PY
}

printf 'run\tserver\tpolite_unloaded_p99_ms\tpolite_statuses\tpolite_p50_ms\tpolite_p99_ms\tpolite_max_ms\tflood_statuses\n' > "$OUT/results.tsv"
for run in $(seq 1 "$RUNS"); do
  for name in weir weir-fair; do
    port=$(free_port)
    start "$name" "$port"
    base="http://127.0.0.1:$port/slow?s=0.2"
    "$WEIR" load --rate 2 -d 5s --timeout 10s --quiet --no-progress --json "$OUT/$name-$run-unloaded.json" \
      "$base&client=polite" >/dev/null
    "$WEIR" load --rate 200 -d "${DURATION}s" --timeout 10s --quiet --no-progress \
      --json "$OUT/$name-$run-flood.json" "$base&client=flood" >/dev/null &
    flood=$!
    sleep 2  # the flood's queue fills (a fixed offset inside a bounded run, not a readiness wait)
    "$WEIR" load --rate 2 -d "$((DURATION - 4))s" --timeout 10s --quiet --no-progress \
      --json "$OUT/$name-$run-polite.json" "$base&client=polite" >/dev/null
    wait "$flood"
    read -r _ _ up99 _ < <(summary "$OUT/$name-$run-unloaded.json")
    read -r pst p50 p99 pmax < <(summary "$OUT/$name-$run-polite.json")
    read -r fst _ _ _ < <(summary "$OUT/$name-$run-flood.json")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$up99" "$pst" "$p50" "$p99" "$pmax" "$fst" >> "$OUT/results.tsv"
    log "run $run $name: polite unloaded p99 ${up99} ms; under the flood $pst p50 $p50 p99 $p99 max $pmax ms; flood $fst"
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    unset 'PIDS[-1]'
  done
done
column -t "$OUT/results.tsv"
echo "(raw: $OUT)"

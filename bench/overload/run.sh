#!/usr/bin/env bash
# Overload answered in milliseconds (issue 20): weir against nginx -> uWSGI on a CPU-bound
# endpoint (bench/overload/app.py: /work?ms=MS holds the worker's CPU for MS ms), WORKERS
# workers each (default 4). For each server, in the same run:
#   1. capacity: `weir load --connections 2*WORKERS -d DURATION` (closed loop) -> C req/s
#   2. unloaded: `weir load --rate C/4 -d DURATION` -> the endpoint's unloaded p50
#   3. overload: `weir load --rate 2C -d DURATION --max-connections 4000` (open loop)
#   4. step: 0.5C for STEP s, then 1.5C for STEP s (a second `weir load` at C starts
#      beside the first after STEP s): admitted p99 over the first second after the step
#      against the last seconds before the end
# Status counts and the overall client-side percentiles come from weir load's JSON;
# latency by status (503 vs 200) and by second comes from each server's access log (weir's
# JSON total_ms, nginx's $request_time at 1 ms resolution): time from arrival at the front
# to the answer, as the server saw it (weir load has no percentiles by status).
# Then the paper's Section IV mix (bench/paper/section4.sh, unchanged; skip with
# SECTION4=0) for "fast requests' p99 as before, zero 5xx".
# Goals (issue 20): only 200/503 at 2C; goodput >= 95% of C; 503 p99 < 50 ms; admitted p99
# < 5x the unloaded p50; step: admitted p99 in the first second within 2x of steady.
#
# Usage: bench/overload/run.sh [RUNS]   (default 1)
# Environment: WORKERS (4), MS (20), DURATION (10), STEP (5), SERVERS ("weir nginx-uwsgi"),
#   WEIR_BIN (default: a release build of this checkout, built unless NO_BUILD=1),
#   NO_RECORD=1 (do not append to bench/RESULTS.md), SECTION4=0,
#   WEIR_QUEUE (extra [queue] lines for weir, e.g. 'target_factor = 1\nmin_target = "20ms"').
# Needs a quiet machine: the numbers are CPU-bound.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
PY=${PY:-python3}
RUNS=${1:-1}
WORKERS=${WORKERS:-4}
MS=${MS:-20}
DURATION=${DURATION:-10}
STEP=${STEP:-5}
SERVERS=${SERVERS:-weir nginx-uwsgi}
READY_TIMEOUT=60
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT=$ROOT/bench/out/overload-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-overload-XXXXXX)
chmod 755 "$RUN_DIR"
RUN=0
log() { printf 'overload: %s\n' "$*" >&2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
ulimit -n "$(ulimit -Hn)"

source "$ROOT/bench/weir-bin.sh"
weir_bin_private
source "$ROOT/bench/hello/lib.sh"
APP_DIR=$ROOT/bench/overload

# start_overload NAME: weir (defaults, JSON access log) or nginx-uwsgi (stock settings,
# uWSGI --listen 1024, nginx logging "$msec $status $request_time"); sets URL and ACCESS_LOG.
start_overload() {
  local name=$1 port d sock
  port=$(free_port)
  d="$RUN_DIR/$name-$RUN-$2"
  mkdir -p "$d"
  ACCESS_LOG="$d/access.log"
  case "$name" in
    weir)
      printf '[server]\naccess_log = "%s"\n' "$ACCESS_LOG" > "$d/weir.toml"
      [[ -n "${WEIR_QUEUE:-}" ]] && printf '[queue]\n%b\n' "$WEIR_QUEUE" >> "$d/weir.toml"
      cp "$d/weir.toml" "$OUT/$name.$RUN.weir.toml"
      start "$name-$2" env RUST_LOG="${RUST_LOG:-warn}" "$WEIR_BIN" serve --app app:application \
        --chdir "$APP_DIR" --workers "$WORKERS" --listen "127.0.0.1:$port" --config "$d/weir.toml" ;;
    nginx-uwsgi)
      sock="$d/uwsgi.sock"
      start "uwsgi-$2" uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$APP_DIR" --module app:application --need-app --die-on-term --disable-logging \
        --listen 1024
      wait_socket "$sock" || return 1
      nginx_conf "$d/nginx" "$port" "            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;
            access_log $ACCESS_LOG lat buffer=256k flush=1s;" "    log_format lat '\$msec \$status \$request_time';"
      sed -i 's/worker_connections 4096;/worker_connections 16384;/' "$d/nginx/nginx.conf"
      cp "$d/nginx/nginx.conf" "$OUT/$name.$RUN.nginx.conf"
      start "nginx-$2" "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="http://127.0.0.1:$port/work?ms=$MS"
  wait_ready "http://127.0.0.1:$port/hello"
}

load() {  # load LABEL ARGS...: one bounded weir load run, JSON to $OUT/LABEL.json
  local label=$1; shift
  timeout $((DURATION + STEP * 2 + 90)) "$WEIR_BIN" load "$URL" "$@" --timeout 30s -q \
    --json "$OUT/$label.json" > "$OUT/$label.txt" 2>&1 || true
  [[ -s "$OUT/$label.json" ]] || { log "weir load failed: $(tail -2 "$OUT/$label.txt")"; exit 1; }
}

rate_of() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["achieved_rate"])' "$1"; }

settle_log() {  # settle_log: the access log is complete (nginx flushes each second)
  sleep 1.5
}

for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    # 1-3: capacity, unloaded, overload, on one server instance
    start_overload "$name" steady
    timeout 30 "$WEIR_BIN" load "$URL" --connections "$WORKERS" --duration 1s -q >/dev/null 2>&1 || true
    load "$name.$RUN.capacity" --connections $((2 * WORKERS)) --duration "${DURATION}s"
    cap=$(rate_of "$OUT/$name.$RUN.capacity.json")
    log "$name: capacity $cap req/s (closed loop, $((2 * WORKERS)) connections)"
    load "$name.$RUN.unloaded" --rate "$("$PY" -c "print(max(1, round($cap / 4)))")" --duration "${DURATION}s"
    : > "$ACCESS_LOG"
    load "$name.$RUN.overload" --rate "$("$PY" -c "print(round($cap * 2))")" --duration "${DURATION}s" \
      --max-connections 4000
    settle_log
    cp "$ACCESS_LOG" "$OUT/$name.$RUN.overload.access.log"
    stop_all
    # 4: the step, on a fresh instance (estimates start from the 0.5x load)
    start_overload "$name" step
    timeout 30 "$WEIR_BIN" load "$URL" --connections "$WORKERS" --duration 1s -q >/dev/null 2>&1 || true
    : > "$ACCESS_LOG"
    half=$("$PY" -c "print(max(1, round($cap / 2)))")
    one=$("$PY" -c "print(max(1, round($cap)))")
    load "$name.$RUN.step-base" --rate "$half" --duration "$((2 * STEP))s" &
    base_pid=$!
    sleep "$STEP"  # the scenario: the step comes STEP seconds into the base load
    date +%s.%N > "$OUT/$name.$RUN.step-at"
    load "$name.$RUN.step-extra" --rate "$one" --duration "${STEP}s" --max-connections 4000
    wait "$base_pid" || true
    settle_log
    cp "$ACCESS_LOG" "$OUT/$name.$RUN.step.access.log"
    stop_all
  done
done

"$PY" "$APP_DIR/summary.py" "$OUT" "$MS" "$WORKERS" > "$OUT/summary.md"
cat "$OUT/summary.md"
if [[ "${NO_RECORD:-0}" != 1 ]]; then
  {
    echo
    echo "## Overload (bench/overload/run.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`WORKERS=$WORKERS MS=$MS DURATION=$DURATION STEP=$STEP bench/overload/run.sh $RUNS\`; weir: $(head -2 "$OUT/weir-build" | tr '\n' ' ')"
    echo
    cat "$OUT/summary.md"
  } >> "$ROOT/bench/RESULTS.md"
fi
if [[ "${SECTION4:-1}" != 0 ]]; then
  log "the paper's Section IV mix (bench/paper/section4.sh)"
  WEIR_BIN=$WEIR_BIN NO_BUILD=1 bench/paper/section4.sh 1
fi

#!/usr/bin/env bash
# Connections and overload (issue 19), weir against nginx -> uWSGI: examples/shop on SQLite,
# WORKERS workers each, started as bench/hello starts them (bench/hello/lib.sh), every server
# on 127.0.0.1.
#
# Part 1, idle connections. For each server, in one run:
#   1. /hello unloaded: `wrk -t2 -c50 -dDURATION --latency` (after a 1 s warmup)
#   2. the front's memory: weir's master alone (its workers and zygote are not counted),
#      nginx's master plus its workers (uWSGI is not counted): RSS and PSS from
#      /proc/PID/smaps_rollup (bench/workers/pss.py)
#   3. bench/conns/holder.py opens KEEPALIVE (10,000) connections that each make one
#      `GET /hello` and then stay idle (keep-alive), and SLOWLORIS (1,000) that send a partial
#      request head and nothing more; one Python process, 256 connects at a time
#   4. SETTLE s later the front's memory again, then /hello with wrk as in 1 beside them, then
#      the memory a third time; the holder then says how many connections are still open
#      (none may be dropped by the server before: that is checked)
#   Both servers get a 60 s header timeout, so the slowloris connections stay for the whole
#   measurement: weir `[server] client_header_timeout = "60s"` (default 10s) and
#   `keepalive_timeout = "300s"` (default 75s), nginx `client_header_timeout 60s` (default
#   60s) and `keepalive_timeout 300s` (default 75s). nginx gets `worker_connections 16384`
#   and `worker_rlimit_nofile 19000` (lib.sh's config has 4096 connections per worker).
# Part 2, overload (a fresh server, its access log on: weir `access_log` to a file, one
# write per request; nginx `access_log ... buffer=256k flush=1s` with `$status
# $request_time`):
#   on OVER_PATH (default /items, the shop's 17 KB JSON page from SQLite: on 2 shared cores
#   twice /hello's capacity is about 30k req/s, more than weir load can send beside the
#   server, and such runs come out INVALID; /items' is a few thousand)
#   1. capacity: `weir load --connections 50 -dDURATION` (closed loop) -> C req/s
#   2. unloaded: `weir load --rate C/4 -dDURATION` (open loop, a quarter of capacity)
#   3. overload: `weir load --rate 2C --connections 2000 --max-connections 2000
#      --reuse oldest -dOVER_DURATION --timeout 10s` (open loop, twice capacity, 2,000
#      clients: each connection sends in turn, as separate clients would, instead of the
#      few most recently freed carrying the load; a request due while all 2,000 are busy
#      waits in weir load, a missed slot, and still counts from its scheduled time). REUSE
#      (oldest) sets --reuse; the runs before 2026-12-06 had `newest`, the only way then
#   Status counts and the client-side p99 (all answers together) come from weir load's JSON;
#   the p99 of the admitted (200) answers and of the refused ones (503, or nginx's 502)
#   apart come from the server's access log (weir `total_ms`, nginx `$request_time`, whose
#   resolution is 1 ms): weir load has no percentiles by status.
#
# Prints a markdown section ($OUT/section.md) with the command, the date, the load average
# and the weir binary's commit. Raw outputs go to bench/out/conns-<time>/.
#
# Usage: bench/conns/run.sh [RUNS]          (default 1)
# Environment: SERVERS (default "weir nginx-uwsgi"), KEEPALIVE (10000), SLOWLORIS (1000),
#   WORKERS (4), DURATION (s per /hello measurement, 5), SETTLE (2), IDLE (1; 0 skips part 1),
#   OVERLOAD (1; 0 skips part 2), WEIR_QUEUE (extra [queue] lines for weir, e.g.
#   'min_target = "2ms"'), OVER_PATH (/items), OVER_CLIENTS (2000), OVER_DURATION (10), SPIN (weir load's --spin
#   for the unloaded and overload runs, default 250us: 0s leaves the load tool's spare CPU
#   to the server on these 2 cores), READY_TIMEOUT (60), WEIR_BIN (default
#   $CARGO_TARGET_DIR/release/weir, built here unless set or NO_BUILD=1).
# Needs RLIMIT_NOFILE's hard limit above KEEPALIVE + SLOWLORIS + OVER_CLIENTS + slack: the
# script raises the soft limit to it for itself, the holder and the servers.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
RUNS=${1:-${RUNS:-1}}
SERVERS=${SERVERS:-weir nginx-uwsgi}
KEEPALIVE=${KEEPALIVE:-10000}
SLOWLORIS=${SLOWLORIS:-1000}
WORKERS=${WORKERS:-4}
DURATION=${DURATION:-5}
DURATION=${DURATION%s}
SETTLE=${SETTLE:-2}
OVERLOAD=${OVERLOAD:-1}
REUSE=${REUSE:-oldest}
SPIN=${SPIN:-250us}
IDLE=${IDLE:-1}
OVER_CLIENTS=${OVER_CLIENTS:-2000}
OVER_PATH=${OVER_PATH:-/items}
OVER_DURATION=${OVER_DURATION:-10}
OVER_DURATION=${OVER_DURATION%s}
READY_TIMEOUT=${READY_TIMEOUT:-60}
HEADER_TIMEOUT=60
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/conns-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-conns-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'conns: %s\n' "$*" >&2; }

CMD="bench/conns/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN SERVERS KEEPALIVE SLOWLORIS WORKERS DURATION SETTLE IDLE OVERLOAD OVER_PATH OVER_CLIENTS OVER_DURATION REUSE SPIN WEIR_QUEUE; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in KEEPALIVE=10000 | SLOWLORIS=1000 | WORKERS=4 | DURATION=5 | SETTLE=2 | IDLE=1 | OVERLOAD=1 \
    | OVER_PATH=/items | OVER_CLIENTS=2000 | OVER_DURATION=10 | REUSE=oldest | SPIN=250us | "SERVERS=weir nginx-uwsgi") continue ;; esac
  CMD="$v=\"${!v}\" $CMD"
done

command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
ulimit -n "$(ulimit -Hn)"
need=$((KEEPALIVE + SLOWLORIS + OVER_CLIENTS + 512))
(($(ulimit -n) >= need)) || { log "open-file limit $(ulimit -n) (hard) is below the $need needed"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite

source "$ROOT/bench/hello/lib.sh"
HOLDER_PID=
stop_holder() {
  if [[ -n "$HOLDER_PID" ]]; then
    kill -TERM "$HOLDER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$HOLDER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" 2>/dev/null || true
    HOLDER_PID=
  fi
}
trap 'stop_holder; cleanup' EXIT

# start_conns NAME MODE: weir or nginx-uwsgi, MODE quiet (no access log) or logged (access
# log to $ACCESS_LOG); sets URL (its /hello) and FRONT_PID (weir's master, nginx's master).
start_conns() {
  local name=$1 mode=$2 port d sock
  port=$(free_port)
  d="$RUN_DIR/$name-$mode"
  mkdir -p "$d"
  ACCESS_LOG="$d/access.log"
  case "$name" in
    weir)
      printf '[server]\nclient_header_timeout = "%ss"\nkeepalive_timeout = "300s"\naccess_log = "%s"\n' "$HEADER_TIMEOUT" \
        "$([[ $mode == logged ]] && echo "$ACCESS_LOG" || echo off)" > "$d/weir.toml"
      [[ -n "${WEIR_QUEUE:-}" ]] && printf '[queue]\n%b\n' "$WEIR_QUEUE" >> "$d/weir.toml"
      cp "$d/weir.toml" "$OUT/$name-$mode.$RUN.weir.toml"
      start "$name-$mode" env RUST_LOG="${RUST_LOG:-warn}" "$WEIR_BIN" serve --app "$SHOP_APP" \
        --chdir "$SHOP_DIR" --workers "$WORKERS" --listen "127.0.0.1:$port" --config "$d/weir.toml"
      FRONT_PID=${SERVER_PIDS[-1]} ;;
    nginx-uwsgi)
      sock="$d/uwsgi.sock"
      start "uwsgi-$mode" uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging \
        --listen 1024
      wait_socket "$sock" || return 1
      local loc="            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;"
      [[ $mode == logged ]] && loc="$loc
            access_log $ACCESS_LOG lat buffer=256k flush=1s;"
      nginx_conf "$d/nginx" "$port" "$loc" "    client_header_timeout ${HEADER_TIMEOUT}s;
    keepalive_timeout 300s;
    log_format lat '\$status \$request_time';"
      sed -i -e 's/worker_connections 4096;/worker_connections 16384;/' \
        -e 's/^daemon off;$/daemon off;\nworker_rlimit_nofile 19000;/' "$d/nginx/nginx.conf"
      cp "$d/nginx/nginx.conf" "$OUT/$name-$mode.$RUN.nginx.conf"
      start "nginx-$mode" "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log"
      FRONT_PID=${SERVER_PIDS[-1]} ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="http://127.0.0.1:$port/hello"
  wait_ready "$URL"
}

front_mem() {  # front_mem NAME FILE: the front's memory as JSON into FILE
  local how=only
  [[ $1 == nginx-uwsgi ]] && how=tree
  "$PY" "$ROOT/bench/workers/pss.py" "$how" "$FRONT_PID" > "$2"
}

wrk_hello() {  # wrk_hello FILE
  timeout $((DURATION + 60)) wrk -t2 -c50 -d"${DURATION}s" --latency "$URL" >"$1" 2>&1 || true
}

log_lines() { sleep 2; wc -l < "$ACCESS_LOG" 2>/dev/null || echo 0; }  # after nginx's 1 s flush

cat /proc/loadavg > "$OUT/loadavg-start"
log "servers: $SERVERS; $WORKERS workers; $KEEPALIVE keep-alive + $SLOWLORIS slowloris connections; $RUNS run(s); output in $OUT"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    # -- part 1: idle connections ---------------------------------------------------------
    if [[ $IDLE == 1 ]]; then
      log "run $RUN/$RUNS: $name: idle connections"
      if ! start_conns "$name" quiet; then
        log "$name did not start (see $OUT/*.$RUN.log)"; stop_all; failed=1; continue
      fi
      timeout 30 wrk -t2 -c50 -d1s "$URL" >/dev/null 2>&1 || true
      wrk_hello "$OUT/$name.$RUN.wrk-unloaded.txt"
      sleep 1
      front_mem "$name" "$OUT/$name.$RUN.mem-before.json"
      status="$OUT/$name.$RUN.holder.txt"
      : > "$status"
      port=${URL#http://127.0.0.1:}
      port=${port%%/*}
      "$PY" "$ROOT/bench/conns/holder.py" 127.0.0.1 "$port" "$KEEPALIVE" "$SLOWLORIS" "$status" 240 \
        2>"$OUT/$name.$RUN.holder.err" &
      HOLDER_PID=$!
      deadline=$((SECONDS + 150))
      until grep -q '^READY' "$status"; do
        if ((SECONDS > deadline)) || ! kill -0 "$HOLDER_PID" 2>/dev/null; then
          log "the holder did not get ready (see $OUT/$name.$RUN.holder.err)"; break
        fi
        sleep 0.2
      done
      log "  holder: $(grep '^READY' "$status" || echo 'not ready')"
      sleep "$SETTLE"
      front_mem "$name" "$OUT/$name.$RUN.mem-held.json"
      wrk_hello "$OUT/$name.$RUN.wrk-beside.txt"
      front_mem "$name" "$OUT/$name.$RUN.mem-after.json"
      stop_holder
      log "  holder: $(grep '^END' "$status" || echo 'no END line')"
      stop_all
    fi
    # -- part 2: overload -----------------------------------------------------------------
    [[ $OVERLOAD == 1 ]] || continue
    log "run $RUN/$RUNS: $name: overload"
    if ! start_conns "$name" logged; then
      log "$name did not start (see $OUT/*.$RUN.log)"; stop_all; failed=1; continue
    fi
    OVER_URL=${URL%/hello}$OVER_PATH
    timeout 30 wrk -t2 -c50 -d1s "$OVER_URL" >/dev/null 2>&1 || true
    m0=$(log_lines)
    timeout $((DURATION + 60)) "$WEIR_BIN" load --connections 50 --duration "${DURATION}s" -q \
      --json "$OUT/$name.$RUN.capacity.json" "$OVER_URL" >&2 || true
    cap=$("$PY" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["achieved_rate"]))' \
      "$OUT/$name.$RUN.capacity.json" 2>/dev/null || echo 0)
    if ((cap < 10)); then log "capacity not measured"; stop_all; failed=1; continue; fi
    m1=$(log_lines)
    timeout $((DURATION + 60)) "$WEIR_BIN" load --rate $((cap / 4)) --duration "${DURATION}s" --spin "$SPIN" -q \
      --json "$OUT/$name.$RUN.unloaded.json" "$OVER_URL" >&2 || true
    m2=$(log_lines)
    timeout $((OVER_DURATION + 90)) "$WEIR_BIN" load --rate $((cap * 2)) --connections "$OVER_CLIENTS" \
      --max-connections "$OVER_CLIENTS" --reuse "$REUSE" --spin "$SPIN" --duration "${OVER_DURATION}s" --timeout 10s -q \
      --json "$OUT/$name.$RUN.overload.json" "$OVER_URL" >&2 || true
    m3=$(log_lines)
    stop_all
    # the access log's lines of each phase: capacity, unloaded, overload
    sed -n "$((m0 + 1)),${m1}p" "$ACCESS_LOG" > "$OUT/$name.$RUN.access-capacity.log"
    sed -n "$((m1 + 1)),${m2}p" "$ACCESS_LOG" > "$OUT/$name.$RUN.access-unloaded.log"
    sed -n "$((m2 + 1)),${m3}p" "$ACCESS_LOG" > "$OUT/$name.$RUN.access-overload.log"
    log "  capacity $cap req/s; access log lines: $((m1 - m0)) $((m2 - m1)) $((m3 - m2))"
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

# wrk's numbers, one TSV line per file, for the summary
for f in "$OUT"/*.wrk-*.txt; do
  [[ -e $f ]] || continue
  printf '%s\t%s\n' "$(basename "$f")" "$(parse_wrk "$f" | tr ' ' '\t')"
done > "$OUT/wrk.tsv"

REUSE="$REUSE" SPIN="$SPIN" "$PY" "$ROOT/bench/conns/summary.py" "$OUT" "$CMD" "$RUNS" "$SERVERS" "$WORKERS" "$KEEPALIVE" \
  "$SLOWLORIS" "$DURATION" "$SETTLE" "$OVER_PATH" "$OVER_CLIENTS" "$OVER_DURATION" "$ROOT"
exit "$failed"

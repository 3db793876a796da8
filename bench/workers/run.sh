#!/usr/bin/env bash
# Memory as workers grow, and weir's start and reload times (issue 19): examples/shop on
# SQLite at 4, 16 and 32 workers, weir against uWSGI, every server on 127.0.0.1.
#
#   weir   `weir serve --app app:app --chdir SHOP --workers N --listen ... --access-log off`
#          (preload "auto", the default: a zygote imports the app once and forks the
#          workers). Run by bench/workers/weir_cycle.py: the time from the exec to weir's
#          sd_notify `READY=1` (every worker up), the memory, then SIGHUP under
#          `weir load --rate 500` on /hello: the time from the signal to the next `READY=1`
#          (the new generation took over) and every failed request across the reload, and
#          the memory again once the old generation has left.
#   uwsgi  `uwsgi --socket S --master --processes N --chdir SHOP --module app:app
#          --need-app --die-on-term --disable-logging --listen 1024` (the flags of
#          bench/hello; the app imported once in the master and the workers forked,
#          uWSGI's default without --lazy-apps), nginx in front only to send the requests
#          (not counted).
# Each is measured twice: "fresh" (one GET /hello, SETTLE s idle) and "after requests" (then
# `wrk -t2 -c2N -d1s` on /hello and on /items: not every worker is sure to have served,
# SETTLE s idle): the total PSS of the server's first process and all its descendants
# (master [+ zygote] + workers) from /proc/PID/smaps_rollup (bench/workers/pss.py). PSS shares each shared page among the processes mapping it, so
# the sum is the tree's real footprint. The per-worker slope is (PSS at 32 - PSS at 4) / 28.
#
# Prints a markdown section ($OUT/section.md) with the command, the date, the load average
# and the weir binary's commit. Raw outputs go to bench/out/workers-<time>/.
#
# Usage: bench/workers/run.sh [RUNS]          (default 1)
# Environment: COUNTS (default "4 16 32"), SERVERS ("weir uwsgi"), SETTLE (2), RELOAD_RATE
#   (500), LOAD_S (12), RELOAD_AT (3), READY_TIMEOUT (60), WEIR_BIN (default
#   $CARGO_TARGET_DIR/release/weir, built here unless set or NO_BUILD=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
RUNS=${1:-${RUNS:-1}}
COUNTS=${COUNTS:-4 16 32}
SERVERS=${SERVERS:-weir uwsgi}
export SETTLE=${SETTLE:-2} RELOAD_RATE=${RELOAD_RATE:-500} LOAD_S=${LOAD_S:-12} RELOAD_AT=${RELOAD_AT:-3}
export READY_TIMEOUT=${READY_TIMEOUT:-60}
export SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/workers-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-workers-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'workers: %s\n' "$*" >&2; }

CMD="bench/workers/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN COUNTS SERVERS SETTLE RELOAD_RATE LOAD_S RELOAD_AT; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in "COUNTS=4 16 32" | "SERVERS=weir uwsgi" | SETTLE=2 | RELOAD_RATE=500 | LOAD_S=12 \
    | RELOAD_AT=3) continue ;; esac
  CMD="$v=\"${!v}\" $CMD"
done

command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite

source "$ROOT/bench/hello/lib.sh"
CYCLE_PID=
trap '[[ -n "$CYCLE_PID" ]] && kill -TERM "$CYCLE_PID" 2>/dev/null; cleanup' EXIT

cat /proc/loadavg > "$OUT/loadavg-start"
log "servers: $SERVERS; workers: $COUNTS; $RUNS run(s); output in $OUT"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for n in $COUNTS; do
    for name in $SERVERS; do
      log "run $RUN/$RUNS: $name, $n workers"
      res="$OUT/$name.$n.$RUN.json"
      case "$name" in
        weir)
          # its own process control (the notify socket, SIGHUP); bounded inside, and here
          timeout $((READY_TIMEOUT * 2 + LOAD_S + 120)) "$PY" "$ROOT/bench/workers/weir_cycle.py" \
            "$WEIR_BIN" "$n" "$(free_port)" "$RUN_DIR" "$res" &
          CYCLE_PID=$!
          wait "$CYCLE_PID" || { log "weir_cycle failed (see $OUT/$name.$n.$RUN.log)"; failed=1; }
          CYCLE_PID= ;;
        uwsgi)
          d="$RUN_DIR/uwsgi-$n"
          mkdir -p "$d"
          sock="$d/uwsgi.sock"
          WORKERS=$n
          start "uwsgi-$n" uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$n" \
            --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging \
            --listen 1024
          app_pid=${SERVER_PIDS[-1]}
          if ! wait_socket "$sock"; then stop_all; failed=1; continue; fi
          port=$(free_port)
          nginx_conf "$d/nginx" "$port" "            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;"
          start "nginx-$n" "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log"
          if ! wait_ready "http://127.0.0.1:$port/hello"; then stop_all; failed=1; continue; fi
          sleep "$SETTLE"
          "$PY" "$ROOT/bench/workers/pss.py" tree "$app_pid" > "$res.fresh.pss"
          for path in /hello /items; do
            timeout 30 wrk -t2 -c$((2 * n)) -d1s "http://127.0.0.1:$port$path" >/dev/null 2>&1 || true
          done
          sleep "$SETTLE"
          "$PY" "$ROOT/bench/workers/pss.py" tree "$app_pid" > "$res.pss"
          "$PY" - "$res.fresh.pss" "$res.pss" "$n" > "$res" <<'PY'
import json, sys
def state(path):
    m = json.load(open(path))
    roles = [p["role"] for p in m["procs"]]
    return {"pss_kib": m["pss_kib"], "rss_kib": m["rss_kib"], "uss_kib": m["uss_kib"], "processes": m["count"],
            "workers": roles.count("worker"), "zygotes": 0,
            "by_role_pss_kib": {r: sum(p["pss_kib"] for p in m["procs"] if p["role"] == r) for r in ("master", "worker")}}
print(json.dumps({"workers": int(sys.argv[3]), "errors": [], "fresh": state(sys.argv[1]), "idle": state(sys.argv[2])}))
PY
          stop_all ;;
        *) log "unknown server $name"; failed=1 ;;
      esac
    done
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

"$PY" "$ROOT/bench/workers/summary.py" "$OUT" "$CMD" "$RUNS" "$SERVERS" "$COUNTS" "$ROOT"
exit "$failed"

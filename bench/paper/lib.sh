# shellcheck shell=bash
# bench/paper/lib.sh: what the paper's experiments share. Sourced by section4.sh and figN.sh,
# never run. Each experiment brings up, on this machine, the paper's stack
#   nginx -> Unix socket -> uWSGI 2.0.31 -> examples/shop -> MariaDB (the private one)
# and weir serving the same app on the same database, then drives both with `weir load`.
#
#   paper_init NAME            strict mode, ROOT/WEIR/NGINX/UWSGI/SHOP, a private temp dir RUN
#                              (nginx config, sockets, cache; removed on exit),
#                              OUT=bench/out/NAME-DATE (logs, JSON, plots; kept), the release
#                              build (unless NO_BUILD=1 or WEIR_BIN is set) copied into RUN (a
#                              rebuild by other work mid-experiment cannot change it; its
#                              provenance goes to $OUT/weir-build), Flask present, and a trap
#                              that stops everything started here
#   paper_db mariadb|sqlite    the shop's database; DB=... in the environment overrides the
#                              script's choice. mariadb: scripts/mariadb.sh start and
#                              DATABASE_URL exported, so uWSGI's and weir's workers both use it;
#                              a server this script started is stopped at exit (one left on
#                              its port would clash with the test suite's own)
#   case_begin LABEL           names the logs of the servers started next ($OUT/LABEL.*.log)
#   start_weir PORT WORKERS [TOML LINE...]
#                              weir serve from a generated weir.toml ([server] listen, access
#                              log off; [app] the shop with WORKERS workers); the extra lines
#                              are appended as they are (weir's defaults otherwise)
#   start_uwsgi WORKERS        uWSGI on $RUN/uwsgi.sock: --master --processes WORKERS,
#                              logging off, otherwise uWSGI's defaults (listen 100); returns
#                              once the socket exists
#   start_nginx PORT [LOCATION_DIRECTIVES] [HTTP_DIRECTIVES]
#                              nginx (1 worker process, access log off) whose `location /`
#                              is `uwsgi_pass unix:$RUN/uwsgi.sock` plus the given directives
#   wait_http URL              until it answers 200 (60 s at most)
#   warm URL N                 N requests at once (opens the workers' database connections)
#   paper_load LABEL URL ARGS...
#                              weir load URL ARGS --json $OUT/LABEL.json > $OUT/LABEL.txt
#   stop_all                   TERM every server started, and wait for it
#   paper_summary ARGS...      bench/paper/summarize.py: the markdown table, the plot (weir
#                              load plot) and, unless NO_RECORD=1, the section appended to
#                              bench/RESULTS.md and the plot copied to bench/paper/figures/
#
# Environment: WEIR_BIN (default target/release/weir), NGINX, UWSGI, NO_BUILD=1, NO_RECORD=1,
#   DB (mariadb|sqlite).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
UWSGI=${UWSGI:-$(command -v uwsgi || true)}
SHOP=$ROOT/examples/shop
PAPER_NAME=
RUN=
OUT=
CASE=
PIDS=()
STOP_MARIADB=0

log() { printf '%s: %s\n' "${PAPER_NAME:-paper}" "$*" >&2; }

paper_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [[ $STOP_MARIADB == 1 ]]; then "$ROOT/scripts/mariadb.sh" stop >&2 || true; fi
  [[ -n "$RUN" ]] && rm -rf "$RUN"
}

weir_provenance() {
  echo "binary $1, modified $(date -u -r "$1" '+%Y-%m-%d %H:%M UTC')"
  echo "HEAD $(git -C "$ROOT" rev-parse --short HEAD)"
  git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock | sed 's/^/dirty /'
}

paper_init() {
  PAPER_NAME=$1
  [[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
  [[ -n "$UWSGI" ]] || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
  RUN=$(mktemp -d "/tmp/weir-$PAPER_NAME-XXXXXX")
  chmod 755 "$RUN"
  OUT=$ROOT/bench/out/$PAPER_NAME-$(date +%Y%m%d-%H%M%S)
  mkdir -p "$OUT"
  trap paper_cleanup EXIT
  if [[ "${NO_BUILD:-0}" != 1 && -z "${WEIR_BIN:-}" ]]; then
    log "cargo build --release -p weir"
    cargo build --release -q -p weir
  fi
  [[ -x "$WEIR" ]] || { log "no weir binary at $WEIR"; exit 2; }
  # A private copy: other work on this machine may rebuild target/release/weir mid-experiment.
  # all.sh notes the source next to its copy when it builds; otherwise the tree as it is now.
  if [[ -f "$WEIR.build" ]]; then
    cp "$WEIR.build" "$OUT/weir-build"
  else
    weir_provenance "$WEIR" > "$OUT/weir-build"
  fi
  cp "$WEIR" "$RUN/weir"
  WEIR=$RUN/weir
  python3 -c 'import flask, pymysql' 2>/dev/null || python3 -m pip install -q -r "$SHOP/requirements.txt"
  cat /proc/loadavg > "$OUT/loadavg-start"
  log "output in $OUT"
}

paper_db() {
  local want=${DB:-$1}
  case $want in
    mariadb)
      "$ROOT/scripts/mariadb.sh" status >/dev/null 2>&1 || STOP_MARIADB=1
      "$ROOT/scripts/mariadb.sh" start >&2
      DATABASE_URL=$("$ROOT/scripts/mariadb.sh" url)
      export DATABASE_URL ;;
    sqlite) unset DATABASE_URL ;;
    *) log "DB must be mariadb or sqlite, not $want"; exit 2 ;;
  esac
  PAPER_DB=$want
  echo "$want" > "$OUT/db"
}

case_begin() { CASE=$1; log "$CASE"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {
  local _
  for _ in $(seq 1 600); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  log "no answer from $1 (logs in $OUT)"; return 1
}

warm() {
  local url=$1 n=$2 i pids=()
  for ((i = 0; i < n; i++)); do curl -s -o /dev/null --max-time 10 "$url" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || true; done
}

start_weir() {
  local port=$1 workers=$2 line
  shift 2
  {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\naccess_log = "off"\n' "$port"
    printf '[app]\nmodule = "app:app"\nchdir = "%s"\nworkers = %s\n' "$SHOP" "$workers"
    for line in "$@"; do printf '%s\n' "$line"; done
  } > "$RUN/weir.toml"
  cp "$RUN/weir.toml" "$OUT/$CASE.weir.toml"
  "$WEIR" serve --config "$RUN/weir.toml" > "$OUT/$CASE.weir.log" 2>&1 &
  PIDS+=($!)
}

start_uwsgi() {
  local workers=$1
  rm -f "$RUN/uwsgi.sock"
  "$UWSGI" --socket "$RUN/uwsgi.sock" --chmod-socket=666 --chdir "$SHOP" --module app:app \
    --processes "$workers" --master --disable-logging --die-on-term > "$OUT/$CASE.uwsgi.log" 2>&1 &
  PIDS+=($!)
  local _
  for _ in $(seq 1 300); do [[ -S "$RUN/uwsgi.sock" ]] && return 0; sleep 0.1; done
  log "uWSGI did not create its socket (log: $OUT/$CASE.uwsgi.log)"; return 1
}

start_nginx() {
  local port=$1 location=${2:-} http=${3:-}
  mkdir -p "$RUN/nginx"
  cat > "$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/nginx/nginx.pid;
error_log $OUT/$CASE.nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN/nginx/cb; proxy_temp_path $RUN/nginx/px; fastcgi_temp_path $RUN/nginx/fc;
  uwsgi_temp_path $RUN/nginx/uw; scgi_temp_path $RUN/nginx/sc;
  $http
  server {
    listen 127.0.0.1:$port;
    location / {
      include /etc/nginx/uwsgi_params;
      uwsgi_pass unix:$RUN/uwsgi.sock;
      $location
    }
  }
}
CONF
  cp "$RUN/nginx/nginx.conf" "$OUT/$CASE.nginx.conf"
  "$NGINX" -t -q -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" || { log "nginx rejects $OUT/$CASE.nginx.conf"; exit 2; }
  "$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" > "$OUT/$CASE.nginx.log" 2>&1 &
  PIDS+=($!)
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# paper_load LABEL URL ARGS...: one `weir load` run; its report goes to $OUT/LABEL.txt and its
# first lines to stderr. Bad input (exit 2) stops the experiment.
paper_load() {
  local label=$1 url=$2 rc=0
  shift 2
  "$WEIR" load "$url" --json "$OUT/$label.json" --no-progress "$@" > "$OUT/$label.txt" 2>&1 || rc=$?
  if ((rc == 2)); then cat "$OUT/$label.txt" >&2; log "weir load refused its input"; exit 2; fi
  grep -E '^  (requests|latency|status|x-weir|errors|run) ' "$OUT/$label.txt" | sed 's/^/    /' >&2 || true
}

paper_summary() {
  cat /proc/loadavg > "$OUT/loadavg-end"
  python3 "$ROOT/bench/paper/summarize.py" --out "$OUT" --weir "$WEIR" --db "${PAPER_DB:-sqlite}" \
    --results "$ROOT/bench/RESULTS.md" --figures "$ROOT/bench/paper/figures" \
    $([[ "${NO_RECORD:-0}" == 1 ]] && echo --no-record) "$@"
}

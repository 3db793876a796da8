#!/usr/bin/env bash
# A private MariaDB for weir's tests, examples and benchmarks. Never the system service:
# its own datadir, its own port, its own socket, started and stopped by this script only.
#
# Usage: scripts/mariadb.sh start|stop|restart|status|url|client [client args...]
#   start    install the datadir on first use, start mariadbd, wait until it answers,
#            make sure database `weir_shop` and user `weir`/`weir` exist. A no-op (apart
#            from that last check) when it already runs.
#   stop     clean shutdown (mariadb-admin shutdown), waits until the server has exited.
#   status   exit 0 and say so when running, exit 1 otherwise.
#   url      print the DSN the app and the tests use: mysql://weir:weir@127.0.0.1:PORT/weir_shop
#   client   open the mariadb client as root on the private socket (extra args passed on).
#
# Environment:
#   WEIR_RUN_DIR         where runtime state lives (default <repo>/.run, gitignored);
#                        the datadir is $WEIR_RUN_DIR/mariadb, the socket sits inside it.
#   WEIR_MARIADB_PORT    TCP port on 127.0.0.1 (default 3307).
#   WEIR_MARIADB_TIMEOUT seconds to wait for start/stop (default 60).
#
# The user `weir` has ALL PRIVILEGES on *.* (create/drop databases for tests, PROCESS and
# CONNECTION ADMIN for `weir db guard`). That is fine for a loopback-only test instance and
# wrong anywhere else.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${WEIR_RUN_DIR:-$REPO/.run}
DATADIR=$RUN_DIR/mariadb
SOCKET=$DATADIR/mariadb.sock
PIDFILE=$DATADIR/mariadbd.pid
ERRLOG=$DATADIR/mariadbd.err
PORT=${WEIR_MARIADB_PORT:-3307}
TIMEOUT=${WEIR_MARIADB_TIMEOUT:-60}
DB_NAME=weir_shop
DB_USER=weir
DB_PASS=weir
OS_USER=$(id -un)

log() { printf 'mariadb.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found; run scripts/install-deps.sh first"
}

# The pid of our server when it runs, empty otherwise.
server_pid() {
  local pid
  [[ -s "$PIDFILE" ]] || return 0
  pid=$(<"$PIDFILE")
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && grep -q mariadbd "/proc/$pid/comm" 2>/dev/null; then
    echo "$pid"
  fi
}

ping_server() {
  mariadb-admin --no-defaults --socket="$SOCKET" --user=root --connect-timeout=1 ping \
    >/dev/null 2>&1
}

root_sql() {
  mariadb --no-defaults --socket="$SOCKET" --user=root --batch --skip-column-names "$@"
}

ensure_schema() {
  root_sql <<SQL
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%' WITH GRANT OPTION;
SQL
}

install_datadir() {
  log "first use: installing a datadir in $DATADIR"
  mkdir -p "$DATADIR"
  mariadb-install-db --no-defaults --datadir="$DATADIR" --user="$OS_USER" \
    --auth-root-authentication-method=socket --skip-test-db >"$DATADIR/install.log" 2>&1 \
    || { cat "$DATADIR/install.log" >&2; die "mariadb-install-db failed (log above)"; }
}

# Polls until cond succeeds, the server process is gone, or TIMEOUT passes.
wait_for() {
  local what=$1 cond=$2 deadline=$((SECONDS + TIMEOUT))
  while ! $cond; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${TIMEOUT}s waiting for $what; see $ERRLOG"
    fi
    sleep 0.1
  done
}

# During start the pid file may not exist yet: watch the process we launched instead.
STARTED_PID=
server_answers() {
  if ! kill -0 "$STARTED_PID" 2>/dev/null; then
    tail -n 20 "$ERRLOG" >&2 || true
    die "mariadbd exited during start (log above, full log in $ERRLOG)"
  fi
  ping_server
}

server_gone() { [[ -z "$(server_pid)" ]]; }

start() {
  need mariadbd
  need mariadb-install-db
  need mariadb-admin
  if [[ -n "$(server_pid)" ]] && ping_server; then
    ensure_schema
    log "already running (pid $(server_pid), port $PORT)"
    return 0
  fi
  [[ -d "$DATADIR/mysql" ]] || install_datadir
  # A pid file left by a crash would make mariadbd refuse to start; nothing owns it now.
  rm -f "$PIDFILE"
  log "starting mariadbd on 127.0.0.1:$PORT (datadir $DATADIR)"
  # setsid: the server outlives this shell and does not get the terminal's SIGINT.
  # innodb_flush_log_at_trx_commit=2 and skip sync: a test instance trades durability of
  # the last second for a fast seed; say so if you copy these flags.
  setsid mariadbd --no-defaults \
    --datadir="$DATADIR" --socket="$SOCKET" --pid-file="$PIDFILE" --log-error="$ERRLOG" \
    --port="$PORT" --bind-address=127.0.0.1 --user="$OS_USER" --skip-name-resolve \
    --max-connections=1000 --innodb-buffer-pool-size=256M --innodb-log-file-size=256M \
    --innodb-flush-log-at-trx-commit=2 --performance-schema=OFF \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    </dev/null >>"$ERRLOG" 2>&1 9>&- &
  # Without job control the background job is no group leader, so setsid execs in place
  # and $! is mariadbd itself.
  STARTED_PID=$!
  wait_for "mariadbd to answer on $SOCKET" server_answers
  ensure_schema
  log "ready (pid $(server_pid)); $(url)"
}

stop() {
  local pid
  pid=$(server_pid)
  if [[ -z "$pid" ]]; then
    log "not running"
    return 0
  fi
  log "stopping mariadbd (pid $pid)"
  if ! mariadb-admin --no-defaults --socket="$SOCKET" --user=root shutdown >/dev/null 2>&1; then
    log "mariadb-admin shutdown failed; sending SIGTERM to $pid"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  wait_for "mariadbd (pid $pid) to exit" server_gone
  log "stopped"
}

url() { echo "mysql://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME"; }

with_lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/mariadb.lock"
  flock 9
  "$@"
}

case "${1:-}" in
  start) with_lock start ;;
  stop) with_lock stop ;;
  restart) with_lock stop && with_lock start ;;
  status)
    if [[ -n "$(server_pid)" ]] && ping_server; then
      echo "running (pid $(server_pid), port $PORT, datadir $DATADIR)"
    else
      echo "not running"; exit 1
    fi ;;
  url) url ;;
  client) shift; exec mariadb --no-defaults --socket="$SOCKET" --user=root "$@" ;;
  *) echo "usage: $0 start|stop|restart|status|url|client" >&2; exit 2 ;;
esac

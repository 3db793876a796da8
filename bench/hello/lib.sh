# Shared by bench/hello/run.sh and bench/hello/rss.sh (sourced): free ports, servers
# started in their own sessions and stopped whole, bounded readiness waits, an nginx
# config. The caller sets PY, OUT, RUN (the run number, for log names), RUN_DIR,
# READY_TIMEOUT and defines log().

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# -- process control ---------------------------------------------------------------------
SERVER_PIDS=()
start() {  # start NAME CMD...: runs CMD in its own session, logs to $OUT
  local name=$1; shift
  setsid "$@" >"$OUT/$name.$RUN.log" 2>&1 </dev/null &
  SERVER_PIDS+=($!)
}
stop_all() {
  local p
  for p in "${SERVER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true  # the whole session: workers included
    wait "$p" 2>/dev/null || true
  done
  SERVER_PIDS=()
}
cleanup() { stop_all; rm -rf "$RUN_DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() {  # wait_ready URL: polls until GET answers 200, bounded
  local url=$1 deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)" == 200 ]]; then return 0; fi
    for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { log "a server process exited"; return 1; }; done
    sleep 0.1
  done
  log "$url not ready after ${READY_TIMEOUT}s"
  return 1
}

nginx_conf() {  # nginx_conf DIR PORT LOCATION_BODY
  local dir=$1 port=$2 loc=$3
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
$([[ $(id -u) == 0 ]] && echo "user root;")
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body_temp;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
$loc
        }
    }
}
EOF
}

wait_socket() {  # wait_socket PATH
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do [[ -S "$1" ]] && return 0; sleep 0.1; done
  log "socket $1 did not appear"; return 1
}

# Shared by bench/hello/run.sh, rss.sh, cpu.sh and bench/cache/run.sh (sourced): free
# ports, servers started in their own sessions and stopped whole, bounded readiness waits,
# an nginx config, wrk's report parsed. The caller sets PY, OUT, RUN (the run number, for
# log names), RUN_DIR, READY_TIMEOUT and defines log().

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

nginx_conf() {  # nginx_conf DIR PORT LOCATION_BODY [HTTP_DIRECTIVES]
  local dir=$1 port=$2 loc=$3 http=${4:-}
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
$http
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

# -- wrk's report -----------------------------------------------------------------------
parse_wrk() {  # parse_wrk FILE -> "rps p50_ms p99_ms errors"
  "$PY" - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n if u == "ms" else n * 1000 if u == "s" else n * 60000
rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
err = 0
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
if m: err += int(m.group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: err += sum(int(x) for x in m.groups())
print(rps.group(1) if rps else "nan", "%.3f" % ms(p50.group(1)) if p50 else "nan",
      "%.3f" % ms(p99.group(1)) if p99 else "nan", err)
PY
}

# -- the servers of bench/hello/run.sh and cpu.sh --------------------------------------
# start_server NAME: sets the server up, waits until ready, sets URL to its /hello.
# NAME: weir (defaults), weir-preload (--preload on), weir-lazy (--preload off),
# weir-noprefetch (--prefetch off: requests go only to idle workers), weir-threads1 and weir-threads2
# ([server] threads = 1 or 2: event-loop threads in the master), weir-base (the defaults, run
# by WEIR_BASE_BIN: another build, for a before/after in one interleaved run), weir-limit
# (one [limit_req] zone keyed by $remote_addr on every request, memory store, a rate no
# request reaches: the cost of the check), weir-limit-redis (the same zone in a local
# redis-server: one Redis round trip per request, batched), weir-limit-redis-unix (the same
# over a Unix socket to the local redis-server), weir-cache (a [cache] in memory and
# [route.cache] on CACHE_PATH, entries valid CACHE_VALID for 200, key $request_uri, lock off;
# sets ADMIN_URL to its admin listener, for /metrics), weir-log (the access log to a file
# in the run's directory, each line written at once), weir-logbuf (the same with
# access_log_buffer = "64KiB": lines written together), nginx-uwsgi, nginx-uwsgi-cache (the
# same with uwsgi_cache on CACHE_PATH, valid CACHE_VALID, key $request_uri, and a buffered
# access log of "$uri $upstream_cache_status" in CACHE_LOG), nginx-gunicorn, granian. Also
# needs WEIR_BIN, SHOP_APP, SHOP_DIR, WORKERS and NGINX from the caller (and CACHE_PATH,
# CACHE_VALID, CACHE_LOG for the cache cases). The floor (bench/floor, FLOOR_BIN, built by
# `cargo build --release --example floor -p weir`): floor (weir's processes and system
# calls, a fixed answer from WORKERS Rust workers, no Python), floor-17k (the same with a
# 17,000-byte body, /items's size), floor-direct (its master answering itself), nginx-return (NGINX answering `return 200` itself).
start_server() {
  local name=$1 port d sock
  port=$(free_port)
  d="$RUN_DIR/$name"
  mkdir -p "$d"
  case "$name" in
    weir | weir-preload | weir-lazy | weir-noprefetch | weir-threads1 | weir-threads2 | weir-base \
      | weir-limit | weir-limit-redis | weir-limit-redis-unix | weir-cache | weir-noadmission \
      | weir-log | weir-logbuf)
      local bin=$WEIR_BIN
      [[ $name == weir-base ]] && bin=${WEIR_BASE_BIN:-}
      [[ -x "$bin" ]] || { log "weir binary '$bin' missing (weir-base needs WEIR_BASE_BIN)"; return 1; }
      local preload=()
      [[ $name == weir-preload ]] && preload=(--preload on)
      [[ $name == weir-lazy ]] && preload=(--preload off)
      [[ $name == weir-noprefetch ]] && preload=(--prefetch off)
      if [[ $name == weir-threads[12] ]]; then
        printf '[server]\nthreads = %s\n' "${name#weir-threads}" > "$d/weir.toml"
        preload=(--config "$d/weir.toml")
      fi
      local alog=off
      if [[ $name == weir-log* ]]; then
        alog="$d/access.log"
        rm -f "$alog"
        if [[ $name == weir-logbuf ]]; then
          printf '[server]\naccess_log_buffer = "64KiB"\n' > "$d/weir.toml"
          preload=(--config "$d/weir.toml")
        fi
      fi
      if [[ $name == weir-noadmission ]]; then
        # Every request queued, as uWSGI's listen queue does: no 503 at arrival.
        printf '[queue]\nadmission = false\n' > "$d/weir.toml"
        preload=(--config "$d/weir.toml")
      fi
      if [[ $name == weir-limit* ]]; then
        printf '[limit_req.bench]\nkey = "$remote_addr"\nrate = "1000000r/s"\nburst = 1000000\nnodelay = true\n\n[[route]]\npath = "/"\nlimit_req = ["bench"]\n' > "$d/weir.toml"
        if [[ $name == weir-limit-redis* ]]; then
          command -v redis-server >/dev/null || { log "redis-server not found: run scripts/install-deps.sh"; return 1; }
          local rport rcli
          rport=$(free_port)
          if [[ $name == weir-limit-redis-unix ]]; then
            start redis redis-server --port 0 --unixsocket "$d/redis.sock" --unixsocketperm 700 --save "" \
              --appendonly no --dir "$d"
            printf '\n[limits]\nstore = "redis+unix://%s/redis.sock"\n' "$d" >> "$d/weir.toml"
            rcli=(-s "$d/redis.sock")
          else
            start redis redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$d"
            printf '\n[limits]\nstore = "redis://127.0.0.1:%s/0"\n' "$rport" >> "$d/weir.toml"
            rcli=(-p "$rport")
          fi
          local deadline=$((SECONDS + 10))
          until redis-cli "${rcli[@]}" ping >/dev/null 2>&1; do
            ((SECONDS < deadline)) || { log "redis-server did not answer"; return 1; }
            sleep 0.1
          done
        fi
        preload=(--config "$d/weir.toml")
      fi
      if [[ $name == weir-cache ]]; then
        local aport
        aport=$(free_port)
        ADMIN_URL="http://127.0.0.1:$aport"
        printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[cache]\nmemory = "256MiB"\n\n[[route]]\npath = "%s"\n[route.cache]\nvalid = { "200" = "%s" }\nkey = "$request_uri"\nlock = false\n' \
          "$aport" "$CACHE_PATH" "$CACHE_VALID" > "$d/weir.toml"
        cp "$d/weir.toml" "$OUT/$name.$RUN.weir.toml"
        preload=(--config "$d/weir.toml")
      fi
      start "$name" env RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --app "$SHOP_APP" --chdir "$SHOP_DIR" \
        --workers "$WORKERS" --listen "127.0.0.1:$port" --access-log "$alog" "${preload[@]}" ;;
    nginx-uwsgi | nginx-uwsgi-cache)
      sock="$d/uwsgi.sock"
      start uwsgi uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging \
        --listen 1024
      wait_socket "$sock" || return 1
      local cache_loc="" cache_http=""
      if [[ $name == nginx-uwsgi-cache ]]; then
        rm -rf "$d/nginx/cache"  # no entry left by an earlier run (nginx would load it)
        cache_loc="            uwsgi_cache shop; uwsgi_cache_key \$request_uri; uwsgi_cache_valid 200 $CACHE_VALID;
            access_log $CACHE_LOG cachestatus buffer=256k flush=1s;"
        cache_http="    uwsgi_cache_path $d/nginx/cache levels=1:2 keys_zone=shop:10m max_size=100m inactive=$CACHE_VALID use_temp_path=off;
    log_format cachestatus '\$uri \$upstream_cache_status';"
      fi
      nginx_conf "$d/nginx" "$port" "            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;
$cache_loc" "$cache_http"
      if [[ $name == nginx-uwsgi-cache ]]; then cp "$d/nginx/nginx.conf" "$OUT/$name.$RUN.nginx.conf"; fi
      start nginx-for-uwsgi "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    nginx-gunicorn)
      sock="$d/gunicorn.sock"
      start gunicorn gunicorn -w "$WORKERS" -k sync -b "unix:$sock" --chdir "$SHOP_DIR" --backlog 1024 \
        "$SHOP_APP"
      wait_socket "$sock" || return 1
      nginx_conf "$d/nginx" "$port" "            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_pass http://unix:$sock;"
      start nginx-for-gunicorn "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    floor | floor-direct | floor-17k)
      local fbin=${FLOOR_BIN:-$ROOT/target/release/examples/floor} fargs=()
      [[ -x "$fbin" ]] || { log "floor binary '$fbin' missing: cargo build --release --example floor -p weir"; return 1; }
      [[ $name == floor-17k ]] && fargs=(--answer-bytes 17000)
      start "$name" "$fbin" "$([[ $name == floor-direct ]] && echo direct || echo relay)" \
        --listen "127.0.0.1:$port" --workers "$WORKERS" "${fargs[@]}" ;;
    nginx-return)
      nginx_conf "$d/nginx" "$port" "            default_type text/html;
            return 200 'Hello, World!';"
      start nginx-return "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    granian)
      start granian granian --interface wsgi --workers "$WORKERS" --host 127.0.0.1 --port "$port" \
        --working-dir "$SHOP_DIR" --no-access-log --no-ws "$SHOP_APP" ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="http://127.0.0.1:$port/hello"
  wait_ready "$URL"
}

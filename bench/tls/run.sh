#!/usr/bin/env bash
# TLS and HTTP/2 at the front door (issue 18, docs/tls.md): weir's own TLS listener against
# NGINX terminating TLS in front of uWSGI, the same certificate (EC P-256, made here by
# openssl) and the same app (examples/shop's /hello) behind both, runs interleaved
# (weir-tls, nginx-tls-uwsgi, weir-tls, ...):
#   weir-tls         weir serve, WORKERS workers, `[server] tls_listen` with `[tls]`
#   nginx-tls-uwsgi  nginx (worker_processes auto) `listen ... ssl; http2 on` ->
#                    uWSGI 2.0.31 (WORKERS processes) over a Unix socket (bench/hello's setup)
# Three measurements per server and run, with h2load (Debian's nghttp2-client):
#   h2         HTTP/2, 100 streams over 10 connections: h2load -c 10 -m 10 -D DURATION
#   handshake  a new TLS connection per request (full handshakes: h2load does not resume
#              sessions): h2load --h1 -c HANDSHAKE_CONNECTIONS -n HANDSHAKE_REQUESTS
#              -H 'Connection: close', which reconnects after every answer
#   idle       IDLE_CONNECTIONS idle TLS connections (handshake done, no request; bench/tls/
#              idle.py) and the server's resident memory before and after: weir's master
#              (the workers are other processes and see no connection), nginx's master and
#              workers. Goal for weir: 10,000 idle connections cost its master at most 200 MiB.
# req/s is h2load's; p50 and p99 are computed from its per-request log (--log-file). Both
# servers keep idle connections for 600 s (client_header_timeout / keepalive_timeout) so the
# idle measurement is not cut by a timeout.
# Prints a table per run and the median ratios weir / nginx (req/s, and p99), and writes a
# section for bench/RESULTS.md to $OUT/section.md (nothing is appended automatically: paste
# it after a run on a quiet machine). Raw outputs go to bench/out/tls-<time>/.
#
# Usage: bench/tls/run.sh [RUNS]          (default 3)
# Environment: DURATION (s of the h2 measurement, default 10), WORKERS (4),
#   HANDSHAKE_CONNECTIONS (20), HANDSHAKE_REQUESTS (10000), IDLE_CONNECTIONS (10000),
#   IDLE_ALPN (http/1.1; h2: the idle connections are HTTP/2 ones, the preface and SETTINGS
#   exchanged, as a browser keeps them),
#   READY_TIMEOUT (60),
#   WEIR_BIN (default $CARGO_TARGET_DIR/release/weir; built here unless set or NO_BUILD=1).
# Bounded: every start waits at most READY_TIMEOUT s; every h2load run has a timeout (DURATION + 120 s);
# timeout; the idle client gives up after 120 s; every server is stopped (TERM, then KILL)
# before the next and at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-${RUNS:-3}}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
WORKERS=${WORKERS:-4}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-20}
HANDSHAKE_REQUESTS=${HANDSHAKE_REQUESTS:-10000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_ALPN=${IDLE_ALPN:-http/1.1}
[[ $IDLE_ALPN == http/1.1 || $IDLE_ALPN == h2 ]] || { echo "tls: IDLE_ALPN must be http/1.1 or h2, not '$IDLE_ALPN'" >&2; exit 2; }
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS="weir-tls nginx-tls-uwsgi"
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/tls-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-tls-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'tls: %s\n' "$*" >&2; }

CMD="bench/tls/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN DURATION WORKERS HANDSHAKE_CONNECTIONS HANDSHAKE_REQUESTS IDLE_CONNECTIONS IDLE_ALPN; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in DURATION=10 | WORKERS=4 | HANDSHAKE_CONNECTIONS=20 | HANDSHAKE_REQUESTS=10000 | IDLE_CONNECTIONS=10000 | IDLE_ALPN=http/1.1) continue ;; esac
  CMD="$v=${!v} $CMD"
done

# -- tools -------------------------------------------------------------------------------
command -v h2load >/dev/null || { log "h2load not found: run scripts/install-deps.sh (nghttp2-client)"; exit 2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
command -v openssl >/dev/null || { log "openssl not found"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite
source "$ROOT/bench/hello/lib.sh"

# 10,000 connections need as many descriptors, in the servers and in the idle client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit $(ulimit -n)"
CERT=$RUN_DIR/cert.pem KEY=$RUN_DIR/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout "$KEY" \
  -out "$CERT" -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
chmod 644 "$KEY"  # nginx's workers may run as another user

cat /proc/loadavg > "$OUT/loadavg-start"
log "examples/shop /hello, $WORKERS workers; $RUNS run(s) of h2 (-c 10 -m 10, ${DURATION}s), handshake (-c $HANDSHAKE_CONNECTIONS -n $HANDSHAKE_REQUESTS, Connection: close), $IDLE_CONNECTIONS idle connections; output in $OUT"

# start_tls NAME: starts the server, waits until /hello answers over TLS; sets URL, PORT and
# MEM_PID (the process whose memory is measured; nginx's workers are its children).
start_tls() {
  local name=$1 d sock
  PORT=$(free_port)
  d="$RUN_DIR/$name"
  mkdir -p "$d"
  case "$name" in
    weir-tls)
      printf '[server]\ntls_listen = ["127.0.0.1:%s"]\nclient_header_timeout = "600s"\naccess_log = "off"\n\n[tls]\ncertificate = "%s"\nkey = "%s"\n' \
        "$PORT" "$CERT" "$KEY" > "$d/weir.toml"
      cp "$d/weir.toml" "$OUT/$name.$RUN.weir.toml"
      start "$name" env RUST_LOG="${RUST_LOG:-warn}" "$WEIR_BIN" serve --app "$SHOP_APP" --chdir "$SHOP_DIR" \
        --workers "$WORKERS" --config "$d/weir.toml"
      MEM_PID=${SERVER_PIDS[-1]} ;;
    nginx-tls-uwsgi)
      sock="$d/uwsgi.sock"
      start uwsgi uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging --listen 1024
      wait_socket "$sock" || return 1
      mkdir -p "$d/nginx"
      cat >"$d/nginx/nginx.conf" <<EOF
$([[ $(id -u) == 0 ]] && echo "user root;")
worker_processes auto;
worker_rlimit_nofile 65536;
daemon off;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $d/nginx/client_body_temp;
    proxy_temp_path $d/nginx/proxy_temp;
    fastcgi_temp_path $d/nginx/fastcgi_temp;
    uwsgi_temp_path $d/nginx/uwsgi_temp;
    scgi_temp_path $d/nginx/scgi_temp;
    keepalive_requests 100000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    server {
        listen 127.0.0.1:$PORT ssl http2 backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        location / {
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;
        }
    }
}
EOF
      cp "$d/nginx/nginx.conf" "$OUT/$name.$RUN.nginx.conf"
      start nginx-tls "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log"
      MEM_PID=${SERVER_PIDS[-1]} ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="https://127.0.0.1:$PORT/hello"
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CERT" "$URL" || true)" == 200 ]] && return 0
    for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { log "a server process exited"; return 1; }; done
    sleep 0.1
  done
  log "$URL not ready after ${READY_TIMEOUT}s"
  return 1
}

# rss_kib PID: resident KiB of PID and its children (nginx's workers; weir's workers are
# children too but are left out: only the master holds connections).
rss_kib() {
  local pid=$1 total=0 p
  local pids=("$pid")
  [[ $2 == with-children ]] && mapfile -t -O 1 pids < <(pgrep -P "$pid" || true)
  for p in "${pids[@]}"; do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# h2load_run NAME SCENARIO ARGS...: runs h2load with a per-request log; prints "rps p50 p99 failed"
h2load_run() {
  local name=$1 scenario=$2; shift 2
  local f="$OUT/h2load-$name-$scenario.$RUN"
  timeout $((DURATION + 120)) h2load "$@" --log-file "$f.log" "$URL" \
    >"$f.txt" 2>&1 || true
  "$PY" - "$f.txt" "$f.log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", t)
req = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
lat = []
try:
    for line in open(sys.argv[2]):
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            lat.append(int(parts[2]) / 1000.0)
except FileNotFoundError:
    pass
lat.sort()
q = lambda p: "%.3f" % lat[min(len(lat) - 1, int(p * len(lat)))] if lat else "nan"
failed = sum(int(x) for x in req.groups()[2:]) if req else "nan"
print(rps.group(1) if rps else "nan", q(0.50), q(0.99), failed)
PY
}

# -- runs --------------------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
printf 'run\tserver\tscenario\treq_per_s\tp50_ms\tp99_ms\tfailed\tidle_open\trss_growth_kib\n' >"$RESULTS"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    if ! start_tls "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      failed=1
      continue
    fi
    children=with-children
    [[ $name == weir-tls ]] && children=alone
    for scenario in h2 handshake; do
      if [[ $scenario == h2 ]]; then
        args=(-c 10 -m 10 -D "$DURATION" --warm-up-time 1)
      else
        # A request count: h2load's timing mode (-D) stalls when it has to reconnect.
        args=(--h1 -c "$HANDSHAKE_CONNECTIONS" -n "$HANDSHAKE_REQUESTS" -H "Connection: close")
      fi
      read -r rps p50 p99 fails < <(h2load_run "$name" "$scenario" "${args[@]}")
      log "  $scenario: $rps req/s, p50 $p50 ms, p99 $p99 ms, failed $fails"
      [[ $fails == 0 ]] || failed=1
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\n' "$RUN" "$name" "$scenario" "$rps" "$p50" "$p99" "$fails" >>"$RESULTS"
    done
    before=$(rss_kib "$MEM_PID" "$children")
    coproc IDLE { ALPN=$IDLE_ALPN exec "$PY" "$ROOT/bench/tls/idle.py" 127.0.0.1 "$PORT" "$CERT" "$IDLE_CONNECTIONS" 180; }
    ready=""
    read -r -t 150 ready <&"${IDLE[0]}" || true
    after=$(rss_kib "$MEM_PID" "$children")
    exec {IDLE[1]}>&-  # the client closes its connections and exits
    wait "$IDLE_PID" 2>/dev/null || true
    opened=$(awk '{print $2}' <<<"${ready:-ready 0}")
    growth=$((after - before))
    log "  idle: $ready; resident memory $before KiB -> $after KiB (+$((growth / 1024)) MiB)"
    printf '%s\t%s\tidle\t-\t-\t-\t-\t%s\t%s\n' "$RUN" "$name" "$opened" "$growth" >>"$RESULTS"
    stop_all
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

# -- summary -----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$OUT" "$CMD" "$WORKERS" "$DURATION" "$HANDSHAKE_CONNECTIONS" "$IDLE_CONNECTIONS" "$ROOT" "$HANDSHAKE_REQUESTS" "$IDLE_ALPN" <<'PY'
import csv, datetime, math, os, statistics, sys
res, out, cmd, workers, dur, hs_conns, idle_n, root, hs_reqs, idle_alpn = sys.argv[1:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
def f(x):
    try:
        v = float(x)
        return None if math.isnan(v) else v
    except (TypeError, ValueError):
        return None
def get(run, server, scenario):
    return next((r for r in rows if r["run"] == run and r["server"] == server and r["scenario"] == scenario), None)
runs = sorted({r["run"] for r in rows}, key=int)
lines = ["| run | scenario | weir req/s | nginx req/s | weir / nginx | weir p50 / p99 ms | nginx p50 / p99 ms |",
         "|---:|---|---:|---:|---:|---:|---:|"]
ratios = {"h2": [], "handshake": []}
p99s = {"h2": [], "handshake": []}
for run in runs:
    for sc in ("h2", "handshake"):
        w, n = get(run, "weir-tls", sc), get(run, "nginx-tls-uwsgi", sc)
        wr, nr = f(w and w["req_per_s"]), f(n and n["req_per_s"])
        ratio = wr / nr if wr and nr else None
        if ratio:
            ratios[sc].append(ratio)
        wp, np_ = f(w and w["p99_ms"]), f(n and n["p99_ms"])
        if wp and np_:
            p99s[sc].append(wp / np_)
        lines.append("| %s | %s | %s | %s | %s | %s / %s | %s / %s |" % (
            run, sc, "%.0f" % wr if wr else "-", "%.0f" % nr if nr else "-", "%.2fx" % ratio if ratio else "-",
            w and w["p50_ms"], w and w["p99_ms"], n and n["p50_ms"], n and n["p99_ms"]))
mem = ["| run | weir master: idle connections, growth | nginx (master + workers): idle connections, growth |",
       "|---:|---:|---:|"]
for run in runs:
    w, n = get(run, "weir-tls", "idle"), get(run, "nginx-tls-uwsgi", "idle")
    fmt = lambda r: "%s, %.1f MiB (%.1f KiB each)" % (r["idle_open"], int(r["rss_growth_kib"]) / 1024,
                                                     int(r["rss_growth_kib"]) / max(1, int(r["idle_open"] or 0))) if r else "-"
    mem.append("| %s | %s | %s |" % (run, fmt(w), fmt(n)))
med = lambda xs: "%.2fx" % statistics.median(xs) if xs else "-"
summary = "Median weir / nginx req/s: h2 **%s**, handshake **%s**; p99 weir / nginx: h2 %s, handshake %s." % (
    med(ratios["h2"]), med(ratios["handshake"]), med(p99s["h2"]), med(p99s["handshake"]))
print()
print("\n".join(lines))
print()
print("\n".join(mem))
print()
print(summary)
print("(raw results: %s)" % res)
sys.path.insert(0, os.path.join(root, "bench"))
from benchlib import first_line, read_words, weir_build  # noqa: E402
head, dirty = weir_build(out)
weir = "weir at %s%s" % (head, " + uncommitted changes in crates/" if dirty else "")
now = datetime.datetime.now(datetime.timezone.utc)
section = """## TLS and HTTP/2: weir vs NGINX -> uWSGI — %s

Command: `%s`. %d CPUs; load average %s at the start, %s at the end; %s (release); nginx %s;
uWSGI %s; %s.

examples/shop's `/hello`, %s workers on each side, the same EC P-256 certificate, runs
interleaved. weir: `tls_listen` with `[tls]`. nginx (worker_processes auto, `listen ... ssl`,
`http2 on`, `ssl_session_cache`) -> uWSGI over a Unix socket. h2: `h2load -c 10 -m 10 -D %s`
(100 streams over 10 connections). handshake: `h2load --h1 -c %s -n %s -H 'Connection: close'`
(a full TLS handshake per request). p50/p99 from h2load's per-request log.

%s

%s

Idle TLS connections (%s opened by bench/tls/idle.py, handshake done, ALPN %s%s, no request),
resident memory growth:

%s

The machine has 2 cores shared by h2load, the server and its workers. Raw results: `%s/`
(not committed).
""" % (now.strftime("%Y-%m-%d %H:%M UTC"), cmd, os.cpu_count(), " ".join(read_words(out, "loadavg-start")),
       " ".join(read_words(out, "loadavg-end")), weir, first_line(["nginx", "-v"]).split("/")[-1],
       first_line(["uwsgi", "--version"]), first_line(["h2load", "--version"]), workers, dur, hs_conns, hs_reqs,
       "\n".join(lines), summary, idle_n, idle_alpn,
       ": the HTTP/2 preface and SETTINGS exchanged" if idle_alpn == "h2" else "",
       "\n".join(mem), os.path.relpath(out, root))
open(os.path.join(out, "section.md"), "w").write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(out, "section.md"))
PY
exit "$failed"

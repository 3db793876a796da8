#!/usr/bin/env bash
# The issue-2 benchmark: examples/shop's /hello (or another path, REQ_PATH: /items is about
# 17 KB of JSON read from the database), 4 workers each, one load tool (wrk -t2 -c50), side by
# side, runs interleaved:
#   weir            weir serve --listen 127.0.0.1:PORT              (target/release/weir)
#                   (preload "auto", the default: the workers are forked from one import
#                   when the app's import leaves no socket or thread open, as the shop's)
#   weir-lazy       the same with --preload off (every worker exec'd, importing the app)
#   weir-noprefetch the same with --prefetch off (requests go only to idle workers: no
#                   request is written behind a busy worker's current one)
#   weir-base       the defaults, run by WEIR_BASE_BIN (another build: a before/after of a
#                   change in one interleaved run)
#   weir-noadmission the defaults with `[queue] admission = false`: a request that finds
#                   every worker busy is queued whatever the wait (as uWSGI's listen queue),
#                   never refused at arrival (CoDel and the queue's timeout still bound it)
#   weir-limit      the defaults plus one limit_req zone on every request (memory store;
#                   a rate no request reaches): the cost of the limit stage
#   weir-limit-redis the same zone shared through a local redis-server (one round trip each,
#                   batched), over TCP; weir-limit-redis-unix: over a Unix socket
#   weir-log        the defaults with the access log to a file (one write a request);
#                   weir-logbuf: the same with access_log_buffer = "64KiB"
#   weir-preload    the same with --preload on (forked whatever the check says; not in the
#                   default set: for the shop it runs as weir does)
#   nginx-uwsgi     nginx -> uWSGI 2.0.31 over a Unix socket (uwsgi_pass)
#   nginx-gunicorn  nginx -> Gunicorn (sync) over a Unix socket (proxy_pass)
#   granian         Granian (WSGI interface)
# Every server's workers get the same database (DB below). Before each measurement the
# script checks, per server, that REQ_PATH answers 200 (with a body of BODY_BYTES for /items)
# and (DB=mariadb) that the shop's /dbping says "mariadb"; it stops with a message if not.
# Prints, under a title with the path, the database and the command, the medians over the
# runs of requests/s, p50 and p99 per server, the ratios vs nginx-uwsgi, each server's idle
# worker RSS, the 2xx/3xx requests/s (wrk's req/s and latencies count every answer, weir's
# fast overload 503s included: see the errors column) and the body size checked; the same
# goes to $OUT/summary.md. Raw outputs go to
# bench/out/hello-<time>/. Nothing is written to bench/RESULTS.md (paste by hand).
#
# Usage: bench/hello/run.sh [RUNS]          (default 3)
#   e.g. REQ_PATH=/items DB=mariadb WORKERS=10 SERVERS="weir nginx-uwsgi" bench/hello/run.sh 3
# Environment: DURATION (s per measurement, default 10), WARMUP (s, default 3),
#   SERVERS (default "weir weir-lazy nginx-uwsgi nginx-gunicorn granian"), WORKERS (default 4),
#   REQ_PATH (the path wrk requests, default /hello; query allowed, e.g. /items?after=1000),
#   DB (sqlite, the default: DATABASE_URL unset, the shop's SQLite file in SHOP_DIR; or
#   mariadb: scripts/mariadb.sh start, DATABASE_URL=$(scripts/mariadb.sh url) exported to
#   every server's workers, the shop creating and seeding its tables on first use as in
#   bench/paper; a MariaDB this script started is stopped at exit, one already running is
#   left running),
#   BODY_BYTES (MIN-MAX bytes REQ_PATH's body must have; default 12000-24000 for /items
#   without limit=, otherwise any size),
#   SHOP_DIR (default examples/shop), SHOP_APP (MODULE:CALLABLE, default: detected),
#   WEIR_BIN (default target/release/weir, built here unless set), NO_BUILD=1,
#   NO_RECORD=1 (accepted for symmetry with bench/paper; nothing is recorded anyway).
# Bounded: every start waits at most READY_TIMEOUT (default 60) s; every wrk run is
# DURATION s plus a timeout; every server is stopped (TERM, then KILL) before the next.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
# The command as given (the variables this script reads that were set), for the summary.
CMD=
for v in REQ_PATH DB BODY_BYTES WORKERS SERVERS DURATION WARMUP READY_TIMEOUT RUNS SHOP_DIR SHOP_APP \
  WEIR_BIN WEIR_BASE_BIN NO_BUILD NO_RECORD; do
  if [[ -n "${!v+x}" ]]; then
    if [[ "${!v}" =~ ^[A-Za-z0-9_./:,+@%=-]+$ ]]; then CMD+="$v=${!v} "; else CMD+="$v=\"${!v}\" "; fi
  fi
done
CMD+="bench/hello/run.sh${*:+ $*}"
RUNS=${1:-${RUNS:-3}}
REQ_PATH=${REQ_PATH:-/hello}
DB=${DB:-sqlite}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
WORKERS=${WORKERS:-4}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS=${SERVERS:-"weir weir-lazy nginx-uwsgi nginx-gunicorn granian"}
SHOP_DIR=$(cd "${SHOP_DIR:-examples/shop}" && pwd)
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
log() { printf 'bench: %s\n' "$*" >&2; }
[[ $REQ_PATH == /* ]] || { log "REQ_PATH must start with /, not '$REQ_PATH'"; exit 2; }
[[ $DB == sqlite || $DB == mariadb ]] || { log "DB must be sqlite or mariadb, not '$DB'"; exit 2; }
if [[ -z "${BODY_BYTES:-}" && ${REQ_PATH%%\?*} == /items && $REQ_PATH != *limit=* ]]; then
  BODY_BYTES=12000-24000  # 80 rows, about 17 KB of JSON
fi
[[ -z "${BODY_BYTES:-}" || $BODY_BYTES =~ ^[0-9]+-[0-9]+$ ]] || { log "BODY_BYTES must be MIN-MAX, not '$BODY_BYTES'"; exit 2; }
OUT="$ROOT/bench/out/hello-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-bench-XXXXXX)
chmod 755 "$RUN_DIR"

# -- the app -----------------------------------------------------------------------------
if [[ -z "${SHOP_APP:-}" ]]; then
  for cand in wsgi:app wsgi:application app:app shop:app main:app; do
    mod=${cand%%:*}
    if [[ -f "$SHOP_DIR/$mod.py" || -f "$SHOP_DIR/$mod/__init__.py" ]]; then SHOP_APP=$cand; break; fi
  done
fi
[[ -n "${SHOP_APP:-}" ]] || { log "cannot find the shop app in $SHOP_DIR: set SHOP_APP=MODULE:CALLABLE"; exit 2; }
log "app $SHOP_APP in $SHOP_DIR; GET $REQ_PATH; DB $DB; $RUNS run(s) of ${DURATION}s; servers: $SERVERS; output in $OUT"

# -- tools -------------------------------------------------------------------------------
command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
if [[ -z "${WEIR_BIN:-}" ]]; then
  WEIR_BIN="$ROOT/target/release/weir"
  if [[ "${NO_BUILD:-0}" != 1 && " $SERVERS " == *" weir"[" -"]* ]]; then
    log "cargo build --release -p weir"
    cargo build --release -p weir >&2
  fi
fi

source "$ROOT/bench/hello/lib.sh"

# -- the database ------------------------------------------------------------------------
# As bench/paper/lib.sh's paper_db: the shop reads DATABASE_URL (examples/shop/shopdb.py,
# from_env), and every server below inherits this environment, so all their workers use it.
STOP_MARIADB=0
hello_cleanup() {
  cleanup  # lib.sh's: the servers, then the temp dir
  if [[ $STOP_MARIADB == 1 ]]; then "$ROOT/scripts/mariadb.sh" stop >&2 || true; fi
}
trap hello_cleanup EXIT
case $DB in
  mariadb)
    "$PY" -c 'import pymysql' 2>/dev/null || "$PY" -m pip install -q -r "$SHOP_DIR/requirements.txt" >&2
    # One left running by someone else (the tests, bench/paper) stays running at exit.
    "$ROOT/scripts/mariadb.sh" status >/dev/null 2>&1 || STOP_MARIADB=1
    "$ROOT/scripts/mariadb.sh" start >&2
    DATABASE_URL=$("$ROOT/scripts/mariadb.sh" url)
    export DATABASE_URL
    log "DATABASE_URL=$DATABASE_URL" ;;
  sqlite) unset DATABASE_URL ;;
esac
echo "$DB" > "$OUT/db"

# check_answer NAME BASE_URL: REQ_PATH answers 200 (its body within BODY_BYTES when set) and,
# with DB=mariadb, the shop's /dbping names that database. Sets BODY (REQ_PATH's body size);
# says what is wrong and returns 1 otherwise.
check_answer() {
  local name=$1 base=$2 code= bytes= backend body="$OUT/$name.$RUN.body"
  read -r code bytes < <(curl -s -o "$body" -w '%{http_code} %{size_download}\n' --max-time 30 "$base$REQ_PATH" || true)
  BODY=${bytes:-0}
  if [[ $code != 200 ]]; then
    log "$name: GET $REQ_PATH answered ${code:-nothing} (not 200), ${BODY} bytes: $(head -c 300 "$body" 2>/dev/null | tr '\n' ' ')"
    return 1
  fi
  if [[ -n "${BODY_BYTES:-}" ]] && ((BODY < ${BODY_BYTES%-*} || BODY > ${BODY_BYTES#*-})); then
    log "$name: GET $REQ_PATH answered 200 with $BODY bytes, outside BODY_BYTES=$BODY_BYTES (saved in $body)"
    return 1
  fi
  # SQLite: DATABASE_URL is unset above; not asked (the shop would create its shop.db)
  [[ $DB == mariadb ]] || { log "  GET $REQ_PATH: 200, $BODY bytes"; return 0; }
  backend=$(curl -s --max-time 30 "$base/dbping" | "$PY" -c 'import json, sys
try: print(json.load(sys.stdin).get("backend", "?"))
except ValueError: print("no JSON")' || true)
  if [[ $backend != "$DB" ]]; then
    log "$name: the shop's /dbping says its database is '$backend', not $DB (DATABASE_URL not passed to its workers?)"
    return 1
  fi
  log "  GET $REQ_PATH: 200, $BODY bytes; the shop's database: $backend"
}

# idle RSS (KiB) of the app's worker processes: the python processes under the started
# ones (for nginx setups: the app server's, not nginx's; for weir: not its zygote)
worker_rss() {
  "$PY" - "${SERVER_PIDS[@]}" <<'PY'
import os, sys
roots = [int(p) for p in sys.argv[1:]]
procs = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            stat = open("/proc/%s/stat" % d).read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            comm = open("/proc/%s/comm" % d).read().strip()
            zyg = b"--zygote" in open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
            rss = 0
            for line in open("/proc/%s/status" % d):
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            procs[int(d)] = (ppid, comm, rss, zyg)
        except (OSError, ValueError, IndexError):
            pass
def desc(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c, (pp, comm, rss, zyg) in procs.items():
            if pp == p:
                out.append(c); todo.append(c)
    return out
workers = []
for r in roots:
    if r in procs and "nginx" in procs[r][1]:
        continue
    # the direct child of setsid is the server's main process; its descendants are workers
    for c in desc(r):
        # weir's zygote runs `weir worker --zygote` and so do the workers it forks: the
        # zygote is the one whose parent is not a zygote
        parent = procs.get(procs[c][0])
        if procs[c][3] and not (parent and parent[3]):
            continue
        if "nginx" not in procs[c][1]:
            workers.append(procs[c][2])
# a setsid'd server: the root itself is the master; descendants that are masters of their
# own (none here) would be counted as workers, which is what the comparison wants
workers.sort()
print(workers[len(workers) // 2] if workers else 0, len(workers))
PY
}

# -- runs --------------------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
printf 'run\tserver\treq_per_s\tp50_ms\tp99_ms\terrors\tworker_rss_kib\tworkers_seen\tbody_bytes\tok_req_per_s\n' >"$RESULTS"

for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    URL=
    if ! start_server "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      printf '%s\t%s\tnan\tnan\tnan\tnan\t0\t0\tnan\tnan\n' "$RUN" "$name" >>"$RESULTS"
      continue
    fi
    # start_server's URL is the server's /hello (its readiness probe); wrk requests REQ_PATH
    [[ $URL == */hello ]] || { log "unexpected URL $URL from start_server"; exit 1; }
    TARGET="${URL%/hello}$REQ_PATH"
    if ! check_answer "$name" "${URL%/hello}"; then
      log "stopping: $name does not serve GET $REQ_PATH as expected (DB=$DB); logs in $OUT/*.$RUN.log"
      exit 1
    fi
    timeout $((WARMUP + 30)) wrk -t2 -c50 -d"${WARMUP}s" "$TARGET" >/dev/null 2>&1 || true
    timeout $((DURATION + 60)) wrk -t2 -c50 -d"${DURATION}s" --latency "$TARGET" >"$OUT/wrk-$name.$RUN.txt" 2>&1 || true
    sleep 1  # idle: let the workers settle before sampling their RSS
    read -r rss nworkers < <(worker_rss)
    read -r rps p50 p99 errs < <(parse_wrk "$OUT/wrk-$name.$RUN.txt")
    # wrk's req/s counts every answer; ok: the 2xx/3xx ones only (weir sheds overload with
    # fast 503s, which a heavier REQ_PATH such as /items reaches at -c50)
    ok=$(awk '/ requests in /{n=$1} /Non-2xx or 3xx responses:/{e=$NF} /^Requests\/sec:/{r=$2}
      END{if (n > 0 && r != "") printf "%.2f", r * (n - e) / n; else print "nan"}' "$OUT/wrk-$name.$RUN.txt")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$name" "$rps" "$p50" "$p99" "$errs" "$rss" "$nworkers" "$BODY" "$ok" >>"$RESULTS"
    log "  $rps req/s ($ok 2xx/3xx), p50 ${p50} ms, p99 ${p99} ms, errors $errs, worker RSS ${rss} KiB ($nworkers procs)"
    stop_all
  done
done

# -- summary -----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$SERVERS" "$REQ_PATH" "$DB" "$CMD" "$WORKERS" "$DURATION" "$WARMUP" "$OUT/summary.md" <<'PY'
import csv, datetime, math, statistics, sys
res, servers, path, db, cmd, workers, duration, warmup, md = sys.argv[1:10]
rows = list(csv.DictReader(open(res), delimiter="\t"))
order = servers.split()
def med(name, key):
    v = [float(r[key]) for r in rows if r["server"] == name and r[key] not in ("nan", "")]
    v = [x for x in v if not math.isnan(x)]
    return statistics.median(v) if v else float("nan")
base = "nginx-uwsgi"
b_rps, b_p99 = med(base, "req_per_s"), med(base, "p99_ms")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = ["## bench/hello: GET %s, %s database — %s" % (path, "MariaDB" if db == "mariadb" else "SQLite", now),
       "",
       "Command: `%s`." % cmd,
       "`wrk -t2 -c50 -d%ss` (after a %ss warm-up) on examples/shop's `%s`, %s workers each, "
       "DB %s, %d run(s), servers interleaved; medians over the runs." % (
           duration, warmup, path, workers, db, len({r["run"] for r in rows})),
       "",
       "```",
       "%-16s %12s %9s %9s %7s %13s %10s %10s %10s %10s" % ("server", "req/s", "p50 ms", "p99 ms", "errors", "worker RSS", "rps vs uw", "p99 vs uw", "2xx req/s", "body B")]
for n in order:
    rps, p50, p99 = med(n, "req_per_s"), med(n, "p50_ms"), med(n, "p99_ms")
    errs = sum(int(float(r["errors"])) for r in rows if r["server"] == n and r["errors"] not in ("nan", ""))
    rss = med(n, "worker_rss_kib")
    body, ok = med(n, "body_bytes"), med(n, "ok_req_per_s")
    r1 = rps / b_rps if b_rps == b_rps and b_rps else float("nan")
    r2 = p99 / b_p99 if b_p99 == b_p99 and b_p99 else float("nan")
    out.append("%-16s %12.0f %9.2f %9.2f %7d %10.1f MiB %9.2fx %9.2fx %10.0f %10.0f" % (n, rps, p50, p99, errs, rss / 1024, r1, r2, ok, body))
out.append("```")
if any(r["errors"] not in ("0", "nan", "") for r in rows):
    out += ["", "errors: non-2xx/3xx answers plus socket errors (wrk); req/s, p50 and p99 include those "
            "answers (weir's overload 503s are fast), 2xx req/s counts only the others. Statuses: "
            "the servers' logs, or weir's x-weir-error header."]
text = "\n".join(out) + "\n"
open(md, "w").write(text)
print()
print(text)
print("(raw results: %s; this summary: %s)" % (res, md))
PY

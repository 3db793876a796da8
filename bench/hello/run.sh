#!/usr/bin/env bash
# The issue-2 benchmark: examples/shop's /hello, 4 workers each, one load tool (wrk -t2 -c50),
# side by side, runs interleaved:
#   weir            weir serve --listen 127.0.0.1:PORT              (target/release/weir)
#                   (preload "auto", the default: the workers are forked from one import
#                   when the app's import leaves no socket or thread open, as the shop's)
#   weir-lazy       the same with --preload off (every worker exec'd, importing the app)
#   weir-noprefetch the same with --prefetch off (requests go only to idle workers: no
#                   request is written behind a busy worker's current one)
#   weir-base       the defaults, run by WEIR_BASE_BIN (another build: a before/after of a
#                   change in one interleaved run)
#   weir-limit      the defaults plus one limit_req zone on every request (memory store;
#                   a rate no request reaches): the cost of the limit stage
#   weir-limit-redis the same zone shared through a local redis-server (one round trip each,
#                   batched), over TCP; weir-limit-redis-unix: over a Unix socket
#   weir-preload    the same with --preload on (forked whatever the check says; not in the
#                   default set: for the shop it runs as weir does)
#   nginx-uwsgi     nginx -> uWSGI 2.0.31 over a Unix socket (uwsgi_pass)
#   nginx-gunicorn  nginx -> Gunicorn (sync) over a Unix socket (proxy_pass)
#   granian         Granian (WSGI interface)
# Prints, per server, the medians over the runs of requests/s, p50 and p99, the ratios vs
# nginx-uwsgi, and each server's idle worker RSS. Raw outputs go to bench/out/hello-<time>/.
#
# Usage: bench/hello/run.sh [RUNS]          (default 3)
# Environment: DURATION (s per measurement, default 10), WARMUP (s, default 3),
#   SERVERS (default "weir weir-lazy nginx-uwsgi nginx-gunicorn granian"), WORKERS (default 4),
#   SHOP_DIR (default examples/shop), SHOP_APP (MODULE:CALLABLE, default: detected),
#   WEIR_BIN (default target/release/weir, built here unless set), NO_BUILD=1.
# Bounded: every start waits at most READY_TIMEOUT (default 60) s; every wrk run is
# DURATION s plus a timeout; every server is stopped (TERM, then KILL) before the next.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-${RUNS:-3}}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
WORKERS=${WORKERS:-4}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS=${SERVERS:-"weir weir-lazy nginx-uwsgi nginx-gunicorn granian"}
SHOP_DIR=$(cd "${SHOP_DIR:-examples/shop}" && pwd)
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/hello-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'bench: %s\n' "$*" >&2; }

# -- the app -----------------------------------------------------------------------------
if [[ -z "${SHOP_APP:-}" ]]; then
  for cand in wsgi:app wsgi:application app:app shop:app main:app; do
    mod=${cand%%:*}
    if [[ -f "$SHOP_DIR/$mod.py" || -f "$SHOP_DIR/$mod/__init__.py" ]]; then SHOP_APP=$cand; break; fi
  done
fi
[[ -n "${SHOP_APP:-}" ]] || { log "cannot find the shop app in $SHOP_DIR: set SHOP_APP=MODULE:CALLABLE"; exit 2; }
log "app $SHOP_APP in $SHOP_DIR; $RUNS run(s) of ${DURATION}s; servers: $SERVERS; output in $OUT"

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
printf 'run\tserver\treq_per_s\tp50_ms\tp99_ms\terrors\tworker_rss_kib\tworkers_seen\n' >"$RESULTS"

for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    URL=
    if ! start_server "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      printf '%s\t%s\tnan\tnan\tnan\tnan\t0\t0\n' "$RUN" "$name" >>"$RESULTS"
      continue
    fi
    timeout $((WARMUP + 30)) wrk -t2 -c50 -d"${WARMUP}s" "$URL" >/dev/null 2>&1 || true
    timeout $((DURATION + 60)) wrk -t2 -c50 -d"${DURATION}s" --latency "$URL" >"$OUT/wrk-$name.$RUN.txt" 2>&1 || true
    sleep 1  # idle: let the workers settle before sampling their RSS
    read -r rss nworkers < <(worker_rss)
    read -r rps p50 p99 errs < <(parse_wrk "$OUT/wrk-$name.$RUN.txt")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$name" "$rps" "$p50" "$p99" "$errs" "$rss" "$nworkers" >>"$RESULTS"
    log "  $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs, worker RSS ${rss} KiB ($nworkers procs)"
    stop_all
  done
done

# -- summary -----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$SERVERS" <<'PY'
import csv, math, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order = sys.argv[2].split()
def med(name, key):
    v = [float(r[key]) for r in rows if r["server"] == name and r[key] not in ("nan", "")]
    v = [x for x in v if not math.isnan(x)]
    return statistics.median(v) if v else float("nan")
base = "nginx-uwsgi"
b_rps, b_p99 = med(base, "req_per_s"), med(base, "p99_ms")
print()
print("%-16s %12s %9s %9s %7s %13s %10s %10s" % ("server", "req/s", "p50 ms", "p99 ms", "errors", "worker RSS", "rps vs uw", "p99 vs uw"))
for n in order:
    rps, p50, p99 = med(n, "req_per_s"), med(n, "p50_ms"), med(n, "p99_ms")
    errs = sum(int(float(r["errors"])) for r in rows if r["server"] == n and r["errors"] not in ("nan", ""))
    rss = med(n, "worker_rss_kib")
    r1 = rps / b_rps if b_rps == b_rps and b_rps else float("nan")
    r2 = p99 / b_p99 if b_p99 == b_p99 and b_p99 else float("nan")
    print("%-16s %12.0f %9.2f %9.2f %7d %10.1f MiB %9.2fx %9.2fx" % (n, rps, p50, p99, errs, rss / 1024, r1, r2))
print("\n(medians of %d run(s); raw results: %s)" % (len({r['run'] for r in rows}), sys.argv[1]))
PY

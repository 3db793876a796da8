#!/usr/bin/env bash
# Response cache: hit throughput. examples/shop's /items (about 17 KB of JSON) behind each
# front door's response cache, every measured request a hit, one load tool (wrk -t2 -c50),
# runs interleaved (weir-cache, nginx-uwsgi-cache, weir-cache, ...):
#   weir-cache         weir serve, WORKERS workers, `[cache] memory = "256MiB"` and a
#                      `[[route]] path = CACHE_PATH` with `[route.cache] valid = { "200" =
#                      CACHE_VALID }`, key "$request_uri", lock off: a hit is answered from
#                      memory by weir's front door, no worker involved
#   nginx-uwsgi-cache  nginx (worker_processes auto) -> uWSGI 2.0.31 (WORKERS processes) over
#                      a Unix socket, `uwsgi_cache` on the same path with the same validity and
#                      key (no uwsgi_cache_lock): a hit is read from the cache's file by nginx
# Both are bench/hello/lib.sh's start_server (the same setups as bench/hello/run.sh's weir and
# nginx-uwsgi, plus the cache). Lock off on both: NGINX's uwsgi_cache_lock is off by default;
# with one warm-up request filling the entry it changes nothing here anyway.
# Before each measurement one request fills the entry and a second one checks it is served
# (weir: `Cache-Status: weir; hit`); the validity (default 10m) outlasts the run, so only hits
# are measured. Checked per run, and printed:
#   weir   weir_backend_requests_total (its admin listener's /metrics) does not move during
#          the run (a hit costs no worker), and weir_cache_requests_total{outcome="hit"} grows
#          by about wrk's request count
#   nginx  $upstream_cache_status from a buffered access log (as bench/paper/fig4.sh): HIT for
#          every request but the warm-up's MISS
# Prints per run req/s, p50 and p99 of each and the ratio weir / nginx, then the median ratio;
# writes a section for bench/RESULTS.md (heading "Response cache: hit throughput", the exact
# command, the table) to $OUT/section.md. As with bench/hello/run.sh, nothing is appended to
# bench/RESULTS.md automatically: paste the section after a run on a quiet machine.
# Raw outputs go to bench/out/cache-<time>/.
#
# Usage: bench/cache/run.sh [RUNS]          (default 5)
# Environment: DURATION (s per measurement, default 10; "10s" accepted), CONNECTIONS (50),
#   WORKERS (4), CACHE_VALID (10m), CACHE_PATH (/items), READY_TIMEOUT (60),
#   WEIR_BIN (default target/release/weir, or $CARGO_TARGET_DIR/release/weir; built here
#   unless set or NO_BUILD=1).
#   The shop runs on SQLite in the temp dir (only the warm-up requests reach it).
# Bounded: every start waits at most READY_TIMEOUT s; every wrk run is DURATION s plus a
# timeout; every server is stopped (TERM, then KILL) before the next and at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-${RUNS:-5}}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-4}
CACHE_VALID=${CACHE_VALID:-10m}
CACHE_PATH=${CACHE_PATH:-/items}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS="weir-cache nginx-uwsgi-cache"
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/cache-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-cache-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'cache: %s\n' "$*" >&2; }

# The exact command, for the record: the settings that differ from the defaults, then RUNS.
CMD="bench/cache/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN DURATION CONNECTIONS WORKERS CACHE_VALID CACHE_PATH; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in DURATION=10 | CONNECTIONS=50 | WORKERS=4 | CACHE_VALID=10m | CACHE_PATH=/items) continue ;; esac
  CMD="$v=${!v} $CMD"
done

# -- tools -------------------------------------------------------------------------------
command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite

source "$ROOT/bench/hello/lib.sh"

cat /proc/loadavg > "$OUT/loadavg-start"
log "$CACHE_PATH of $SHOP_DIR, $WORKERS workers, cache valid $CACHE_VALID; $RUNS run(s) of wrk -t2 -c$CONNECTIONS -d${DURATION}s; output in $OUT"

# metrics_snapshot FILE: weir's /metrics now.
metrics_snapshot() { curl -fsS --max-time 5 "$ADMIN_URL/metrics" > "$1"; }
# metrics_delta BEFORE AFTER -> "BACKEND_DELTA HIT_DELTA OTHER" (OTHER: the other cache
# outcomes that moved, "miss:1,expired:2", or "-")
metrics_delta() {
  "$PY" - "$1" "$2" "$CACHE_PATH" <<'PY'
import re, sys
def read(path):
    d = {}
    for line in open(path):
        m = re.match(r'(weir_backend_requests_total|weir_cache_requests_total\{route="([^"]*)",outcome="([^"]*)"\})\s+(\S+)', line)
        if not m:
            continue
        if m.group(2) is None:
            d["backend"] = float(m.group(4))
        elif m.group(2) == sys.argv[3]:
            d[m.group(3)] = float(m.group(4))
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
delta = {k: int(b.get(k, 0) - a.get(k, 0)) for k in set(a) | set(b)}
other = ",".join("%s:%d" % (k, v) for k, v in sorted(delta.items()) if k not in ("backend", "hit") and v)
print(delta.get("backend", "nan"), delta.get("hit", 0), other or "-")
PY
}
# nginx_counts LOG -> "HIT_COUNT OTHER" for the measured path (OTHER: "MISS:1", or "-")
nginx_counts() {
  awk -v p="$CACHE_PATH" '$1 == p { n[$2]++ } END {
    o = ""; for (k in n) if (k != "HIT") o = o (o == "" ? "" : ",") k ":" n[k]
    print (n["HIT"] + 0), (o == "" ? "-" : o) }' "$1"
}
wrk_requests() { sed -nE 's/^ *([0-9]+) requests in .*/\1/p' "$1" | head -1; }

# -- runs --------------------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
printf 'run\tserver\treq_per_s\tp50_ms\tp99_ms\terrors\trequests\tbackend_delta\thits\tother_outcomes\tcheck\n' >"$RESULTS"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    URL= ADMIN_URL=
    CACHE_LOG="$OUT/nginx-cache-status.$RUN.log"
    if ! start_server "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      printf '%s\t%s\tnan\tnan\tnan\tnan\tnan\tnan\tnan\t-\tnot started\n' "$RUN" "$name" >>"$RESULTS"
      failed=1
      continue
    fi
    items="${URL%/hello}$CACHE_PATH"
    # The warm-up request fills the entry; the second must be a hit.
    warm=$(curl -s -o /dev/null --max-time 60 -w '%{http_code} %{size_download}' "$items" || true)
    curl -s -o /dev/null --max-time 10 -D "$OUT/$name.$RUN.headers" "$items" || true
    cstatus=$(tr -d '\r' < "$OUT/$name.$RUN.headers" | sed -n 's/^[Cc]ache-[Ss]tatus: //p')
    log "  warm-up: status and bytes $warm; second request Cache-Status: ${cstatus:-(none)}"
    if [[ ${warm%% *} != 200 ]]; then
      log "  the warm-up request failed ($warm): skipped in this run"
      stop_all
      printf '%s\t%s\tnan\tnan\tnan\tnan\tnan\tnan\tnan\t-\twarm-up failed\n' "$RUN" "$name" >>"$RESULTS"
      failed=1
      continue
    fi
    if [[ $name == weir-cache ]]; then metrics_snapshot "$OUT/$name.$RUN.metrics-before"; fi
    timeout $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$items" \
      >"$OUT/wrk-$name.$RUN.txt" 2>&1 || true
    read -r rps p50 p99 errs < <(parse_wrk "$OUT/wrk-$name.$RUN.txt")
    nreq=$(wrk_requests "$OUT/wrk-$name.$RUN.txt")
    nreq=${nreq:-0}
    if [[ $name == weir-cache ]]; then
      metrics_snapshot "$OUT/$name.$RUN.metrics-after"
      stop_all
      read -r backend hits other < <(metrics_delta "$OUT/$name.$RUN.metrics-before" "$OUT/$name.$RUN.metrics-after")
      # every response wrk counted is a hit; a few more may have been answered as it stopped
      problems=()
      [[ $backend == 0 ]] || problems+=("backend requests +$backend")
      ((hits >= nreq && hits <= nreq + CONNECTIONS)) || problems+=("hits $hits vs wrk $nreq")
      [[ $other == - ]] || problems+=("other outcomes $other")
      log "  $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs; weir_backend_requests_total +$backend, hits +$hits (wrk: $nreq requests), other outcomes: $other"
    else
      stop_all  # nginx writes out its buffered access log as it exits
      backend=-
      read -r hits other < <(nginx_counts "$CACHE_LOG")
      # wrk's requests plus the second check request are HITs; the warm-up is the one MISS
      problems=()
      ((hits >= nreq + 1 && hits <= nreq + 1 + CONNECTIONS)) || problems+=("HIT $hits vs wrk $nreq")
      [[ $other == MISS:1 ]] || problems+=("not HIT: $other")
      log "  $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs; \$upstream_cache_status on $CACHE_PATH: HIT $hits, other: $other (the warm-up's MISS) (wrk: $nreq requests)"
    fi
    [[ $errs == 0 ]] || problems+=("$errs wrk errors")
    if ((${#problems[@]})); then
      check=$(printf '%s; ' "${problems[@]}")
      check=${check%; }
      failed=1
      log "  CHECK FAILED: $check"
    else
      check=ok
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$name" "$rps" "$p50" "$p99" "$errs" \
      "$nreq" "$backend" "$hits" "$other" "$check" >>"$RESULTS"
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

# -- summary -----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$OUT" "$CMD" "$CACHE_PATH" "$CACHE_VALID" "$WORKERS" "$CONNECTIONS" "$DURATION" "$ROOT" <<'PY'
import csv, datetime, math, os, statistics, subprocess, sys
res, out, cmd, path, valid, workers, conns, dur, root = sys.argv[1:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
runs = sorted({int(r["run"]) for r in rows})
def get(run, name):
    for r in rows:
        if int(r["run"]) == run and r["server"] == name:
            return r
    return None
def f(x):
    try:
        v = float(x)
        return v if not math.isnan(v) else None
    except (TypeError, ValueError):
        return None
lines = ["| run | weir req/s | nginx req/s | weir / nginx | weir p50 / p99 ms | nginx p50 / p99 ms "
         "| weir: backend requests during the run, hits | nginx: $upstream_cache_status | checks |",
         "|---:|---:|---:|---:|---:|---:|---|---|---|"]
ratios = []
for run in runs:
    w, n = get(run, "weir-cache"), get(run, "nginx-uwsgi-cache")
    wr, nr = f(w and w["req_per_s"]), f(n and n["req_per_s"])
    ratio = wr / nr if wr and nr else None
    if ratio:
        ratios.append(ratio)
    checks = "; ".join("%s: %s" % (s, r["check"]) for s, r in (("weir", w), ("nginx", n)) if r) or "-"
    lines.append("| %d | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s |" % (
        run, "%.0f" % wr if wr else "-", "%.0f" % nr if nr else "-", "%.2fx" % ratio if ratio else "-",
        w and w["p50_ms"], w and w["p99_ms"], n and n["p50_ms"], n and n["p99_ms"],
        ("+%s, hits +%s" % (w["backend_delta"], w["hits"]) + ("" if w["other_outcomes"] == "-" else ", " + w["other_outcomes"])) if w else "-",
        ("HIT %s, %s" % (n["hits"], n["other_outcomes"])) if n else "-", checks))
table = "\n".join(lines)
med = statistics.median(ratios) if ratios else float("nan")
print()
print(table)
print()
print("median weir / nginx: %.2fx over %d run(s) (per run: %s)" % (med, len(ratios), " ".join("%.2f" % r for r in ratios)))
print("(raw results: %s)" % res)

sys.path.insert(0, os.path.join(root, "bench"))
from benchlib import first_line, read_words, weir_build  # noqa: E402


def read(name):
    return read_words(out, name)


head, dirty = weir_build(out)
weir = "weir at %s%s" % (head, " + uncommitted changes in crates/" if dirty else "")
now = datetime.datetime.now(datetime.timezone.utc)
section = """## Response cache: hit throughput — %s

Command: `%s`. %s; %d CPUs; load average %s at the start, %s at the end; %s (release);
nginx %s; uWSGI %s; wrk.

`wrk -t2 -c%s -d%ss` on examples/shop's `%s` (about 17 KB of JSON; SQLite, reached only by
the warm-up request), %s workers on each side, runs interleaved. weir: `[cache] memory =
"256MiB"`, `[[route]] path = "%s"` with `[route.cache] valid = { "200" = "%s" }`, key
`$request_uri`, lock off, hits answered from memory by the front door. nginx
(worker_processes auto) -> uWSGI over a Unix socket with `uwsgi_cache` (valid %s, key
`$request_uri`, no lock), hits read from the cache's file. One warm-up request fills the
entry before each measurement; the validity outlasts the run, so every measured request is
a hit (checked: weir's `weir_backend_requests_total` does not move during the run; nginx's
`$upstream_cache_status` is HIT for all but the warm-up's MISS).

%s

Median weir / nginx: **%.2fx** (per run: %s). The machine has 2 cores shared by wrk, the
server and (idle) workers. Raw results: `%s/` (not committed).
""" % (now.strftime("%Y-%m-%d %H:%M UTC"), cmd, now.strftime("%Y-%m-%d %H:%M UTC"), os.cpu_count(),
       " ".join(read("loadavg-start")), " ".join(read("loadavg-end")), weir,
       first_line(["nginx", "-v"]).split("/")[-1], first_line(["uwsgi", "--version"]),
       conns, dur, path, workers, path, valid, valid, table, med,
       " ".join("%.2f" % r for r in ratios), os.path.relpath(out, root))
open(os.path.join(out, "section.md"), "w").write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(out, "section.md"))
PY
exit "$failed"

#!/usr/bin/env bash
# Response compression: throughput with gzip. examples/shop's /items (about 17 KB of JSON)
# with `Accept-Encoding: gzip` on every request, one load tool (wrk -t2 -c50), runs
# interleaved (in the order of SERVERS):
#   weir-gzip          weir serve, WORKERS workers, `[compression]` with gzip_level = 1 and
#                      the types below, min_length 1024 (br and zstd are offered too, but the
#                      client asks for gzip only)
#   nginx-uwsgi-gzip   nginx (worker_processes auto) `gzip on; gzip_comp_level 1;` with the
#                      same types and min length, `gzip_vary on`, -> uWSGI 2.0.31 (WORKERS
#                      processes) over a Unix socket
#   weir-plain         weir serve without [compression] (the same request): the cost of
#                      compressing, weir against itself
# With CACHE=1 each of the three also caches /items (weir: `[cache]` + `[route.cache]`, valid
# 10m; nginx: `uwsgi_cache`, valid 10m), so every measured request is a hit and the
# compression's cost is not hidden behind Python's: weir compresses its identity copy once
# per coding and keeps the compressed copy in the entry; nginx gzips its cached identity
# copy on every hit.
# Types (both): text/html text/plain text/css application/json application/javascript
# image/svg+xml.
# Before each measurement one request checks the answer is gzip (Content-Encoding: gzip, or
# none for weir-plain) and decodes to the identity body's length (curl --compressed).
# Prints per run req/s, p50, p99 and response bytes, the ratio weir-gzip / nginx-uwsgi-gzip
# and weir-gzip / weir-plain, then the median ratios. Nothing is written to bench/RESULTS.md:
# $OUT/section.md has a section to paste after a run on a quiet machine.
# Raw outputs go to bench/out/compression-<time>/.
#
# Usage: bench/compression/run.sh [RUNS]          (default 5)
# Environment: DURATION (s per measurement, default 10), CONNECTIONS (50), WORKERS (4),
#   CACHE (0 or 1), SERVERS (default "weir-gzip nginx-uwsgi-gzip weir-plain"), READY_TIMEOUT
#   (60), WEIR_BIN (default $CARGO_TARGET_DIR/release/weir, built here unless set or
#   NO_BUILD=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
RUNS=${1:-${RUNS:-5}}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-4}
CACHE=${CACHE:-0}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS=${SERVERS:-weir-gzip nginx-uwsgi-gzip weir-plain}
ITEMS_PATH=/items
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
TYPES="text/html text/plain text/css application/json application/javascript image/svg+xml"
OUT="$ROOT/bench/out/compression-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-compression-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'compression: %s\n' "$*" >&2; }

CMD="bench/compression/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN DURATION CONNECTIONS WORKERS CACHE SERVERS; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in DURATION=10 | CONNECTIONS=50 | WORKERS=4 | CACHE=0) continue ;; esac
  CMD="$v=\"${!v}\" $CMD"
done

command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
command -v uwsgi >/dev/null || { log "uwsgi not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite

source "$ROOT/bench/hello/lib.sh"

# start_compression NAME: weir-gzip, weir-plain or nginx-uwsgi-gzip (CACHE=1: with the
# cache); sets URL to its /items.
start_compression() {
  local name=$1 port d sock
  port=$(free_port)
  d="$RUN_DIR/$name"
  mkdir -p "$d"
  case "$name" in
    weir-gzip | weir-plain)
      : > "$d/weir.toml"
      if [[ $name == weir-gzip ]]; then
        local types
        types=$(printf '"%s", ' $TYPES)
        printf '[compression]\ntypes = [%s]\nmin_length = 1024\ngzip_level = 1\n\n' "${types%, }" >> "$d/weir.toml"
      fi
      if [[ $CACHE == 1 ]]; then
        printf '[cache]\nmemory = "256MiB"\n\n[[route]]\npath = "%s"\n[route.cache]\nvalid = { "200" = "10m" }\nkey = "$request_uri"\nlock = false\n' \
          "$ITEMS_PATH" >> "$d/weir.toml"
      fi
      cp "$d/weir.toml" "$OUT/$name.$RUN.weir.toml"
      start "$name" env RUST_LOG="${RUST_LOG:-warn}" "$WEIR_BIN" serve --app "$SHOP_APP" --chdir "$SHOP_DIR" \
        --workers "$WORKERS" --listen "127.0.0.1:$port" --access-log off --config "$d/weir.toml" ;;
    nginx-uwsgi-gzip)
      sock="$d/uwsgi.sock"
      start uwsgi uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging \
        --listen 1024
      wait_socket "$sock" || return 1
      local loc http
      http="    gzip on; gzip_comp_level 1; gzip_min_length 1024; gzip_vary on; gzip_proxied any;
    gzip_types ${TYPES#text/html };"
      loc="            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;"
      if [[ $CACHE == 1 ]]; then
        rm -rf "$d/nginx/cache"
        http="$http
    uwsgi_cache_path $d/nginx/cache levels=1:2 keys_zone=shop:10m max_size=100m inactive=10m use_temp_path=off;"
        loc="$loc
            uwsgi_cache shop; uwsgi_cache_key \$request_uri; uwsgi_cache_valid 200 10m;"
      fi
      nginx_conf "$d/nginx" "$port" "$loc" "$http"
      cp "$d/nginx/nginx.conf" "$OUT/$name.$RUN.nginx.conf"
      start nginx-for-uwsgi "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="http://127.0.0.1:$port$ITEMS_PATH"
  wait_ready "$URL"
}

cat /proc/loadavg > "$OUT/loadavg-start"
log "$ITEMS_PATH of $SHOP_DIR, $WORKERS workers, CACHE=$CACHE; $RUNS run(s) of wrk -t2 -c$CONNECTIONS -d${DURATION}s -H 'Accept-Encoding: gzip'; output in $OUT"

RESULTS="$OUT/results.tsv"
printf 'run\tserver\treq_per_s\tp50_ms\tp99_ms\terrors\tbytes_per_response\tidentity_bytes\tcheck\n' >"$RESULTS"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    URL=
    if ! start_compression "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      printf '%s\t%s\tnan\tnan\tnan\tnan\tnan\tnan\tnot started\n' "$RUN" "$name" >>"$RESULTS"
      failed=1
      continue
    fi
    # The check: the coding, the wire size and the decoded size of one answer (this also
    # fills the cache's entry when CACHE=1).
    curl -s -o /dev/null --max-time 60 "$URL" -H 'Accept-Encoding: gzip' || true
    wire=$(curl -s -o /dev/null --max-time 60 -D "$OUT/$name.$RUN.headers" -H 'Accept-Encoding: gzip' \
      -w '%{size_download}' "$URL" || echo 0)
    ident=$(curl -s --compressed --max-time 60 "$URL" | wc -c)
    coding=$(tr -d '\r' < "$OUT/$name.$RUN.headers" | sed -n 's/^[Cc]ontent-[Ee]ncoding: //p')
    problems=()
    want=gzip
    [[ $name == weir-plain ]] && want=""
    [[ $coding == "$want" ]] || problems+=("Content-Encoding '${coding}', wanted '$want'")
    ((ident > 10000)) || problems+=("decoded body $ident bytes")
    log "  one answer: Content-Encoding '${coding:-identity}', $wire bytes on the wire, $ident decoded"
    timeout $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -H 'Accept-Encoding: gzip' "$URL" >"$OUT/wrk-$name.$RUN.txt" 2>&1 || true
    stop_all
    read -r rps p50 p99 errs < <(parse_wrk "$OUT/wrk-$name.$RUN.txt")
    [[ $errs == 0 ]] || problems+=("$errs wrk errors")
    if ((${#problems[@]})); then
      check=$(printf '%s; ' "${problems[@]}")
      check=${check%; }
      failed=1
      log "  CHECK FAILED: $check"
    else
      check=ok
    fi
    log "  $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$name" "$rps" "$p50" "$p99" "$errs" "$wire" "$ident" \
      "$check" >>"$RESULTS"
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

"$PY" - "$RESULTS" "$OUT" "$CMD" "$WORKERS" "$CONNECTIONS" "$DURATION" "$CACHE" "$ROOT" <<'PY'
import csv, datetime, math, os, statistics, subprocess, sys
res, out, cmd, workers, conns, dur, cache, root = sys.argv[1:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
runs = sorted({int(r["run"]) for r in rows})
names = []
for r in rows:
    if r["server"] not in names:
        names.append(r["server"])
def get(run, name):
    return next((r for r in rows if int(r["run"]) == run and r["server"] == name), None)
def f(x):
    try:
        v = float(x)
        return None if math.isnan(v) else v
    except (TypeError, ValueError):
        return None
pairs = [("weir-gzip", "nginx-uwsgi-gzip"), ("weir-gzip", "weir-plain")]
pairs = [p for p in pairs if p[0] in names and p[1] in names]
head = "| run | " + " | ".join("%s req/s (p50 / p99 ms, bytes)" % n for n in names) + " | " + \
    " | ".join("%s / %s" % p for p in pairs) + " | checks |"
lines = [head, "|" + "---:|" * (1 + len(names) + len(pairs)) + "---|"]
ratios = {p: [] for p in pairs}
for run in runs:
    cells = []
    for n in names:
        r = get(run, n)
        v = f(r and r["req_per_s"])
        cells.append("%.0f (%s / %s, %s)" % (v, r["p50_ms"], r["p99_ms"], r["bytes_per_response"]) if v else "-")
    for p in pairs:
        a, b = f((get(run, p[0]) or {}).get("req_per_s")), f((get(run, p[1]) or {}).get("req_per_s"))
        if a and b:
            ratios[p].append(a / b)
            cells.append("%.2fx" % (a / b))
        else:
            cells.append("-")
    checks = "; ".join("%s: %s" % (n, get(run, n)["check"]) for n in names if get(run, n) and get(run, n)["check"] != "ok") or "ok"
    lines.append("| %d | %s | %s |" % (run, " | ".join(cells), checks))
table = "\n".join(lines)
summary = "; ".join("median %s / %s: %.2fx (per run: %s)" % (p[0], p[1], statistics.median(v), " ".join("%.2f" % x for x in v))
                    for p, v in ratios.items() if v)
print()
print(table)
print()
print(summary)
print("(raw results: %s)" % res)
sys.path.insert(0, os.path.join(root, "bench"))
from benchlib import first_line, read_words, weir_build  # noqa: E402


def read(name):
    return read_words(out, name)


head_rev, dirty = weir_build(out)
now = datetime.datetime.now(datetime.timezone.utc)
section = """## Response compression: gzip throughput%s — %s

Command: `%s`. %d CPUs; load average %s at the start, %s at the end; weir at %s%s (release);
nginx %s; uWSGI %s; wrk.

`wrk -t2 -c%s -d%ss --latency -H 'Accept-Encoding: gzip'` on examples/shop's `/items` (about
17 KB of JSON), %s workers on each side, runs interleaved. weir-gzip: `[compression]`
gzip_level 1, min_length 1024, the types nginx has; nginx-uwsgi-gzip: `gzip on;
gzip_comp_level 1; gzip_min_length 1024; gzip_vary on;` with the same `gzip_types`, in front
of uWSGI over a Unix socket; weir-plain: no `[compression]`.%s

%s

%s. Raw results: `%s/` (not committed).
""" % (" (cache hits)" if cache == "1" else "", now.strftime("%Y-%m-%d %H:%M UTC"), cmd, os.cpu_count(),
       " ".join(read("loadavg-start")), " ".join(read("loadavg-end")), head_rev,
       " + uncommitted changes" if dirty else "", first_line(["nginx", "-v"]).split("/")[-1],
       first_line(["uwsgi", "--version"]), conns, dur, workers,
       " Every measured request is a cache hit (weir `[route.cache]`, nginx `uwsgi_cache`, valid 10m): weir compresses its identity copy once per coding and keeps it in the entry, nginx gzips its copy on every hit." if cache == "1" else "",
       table, summary, os.path.relpath(out, root))
open(os.path.join(out, "section.md"), "w").write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(out, "section.md"))
PY
exit "$failed"

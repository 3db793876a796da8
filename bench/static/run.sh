#!/usr/bin/env bash
# Static files: weir's front door against NGINX serving the same files, one load tool
# (wrk -t2 -c50), runs interleaved (weir-static, nginx-static, weir-static, ...):
#   weir-static   weir serve with `[[static]] prefix = "/static"`, root the files' directory,
#                 expires "7d"; the app (examples/shop, WORKERS workers) is never reached:
#                 checked per run, weir_backend_requests_total on its admin listener does
#                 not move
#   nginx-static  nginx (worker_processes auto, `sendfile on; tcp_nopush on;` as a user
#                 would have, access_log off, `expires 7d`), `root` the same directory
# Two files, made here: 4 KiB and 1 MiB of random bytes (application/octet-stream on both).
# Each server is started once per run and measured on the 4 KiB file, then on the 1 MiB one.
# Before each measurement a curl checks the status and length.
# Prints per run and size req/s, p50 and p99 of each and the ratio weir / nginx, then the
# median ratio per size; writes a section for bench/RESULTS.md (heading "Static files", the
# exact command, the table) to $OUT/section.md. Nothing is appended to bench/RESULTS.md:
# paste the section after a run on a quiet machine. Raw outputs go to bench/out/static-<time>/.
#
# Usage: bench/static/run.sh [RUNS]          (default 5)
# Environment: DURATION (s per measurement, default 10; "10s" accepted), CONNECTIONS (50),
#   WORKERS (1: the app is idle), READY_TIMEOUT (60), WEIR_BIN (default target/release/weir,
#   or $CARGO_TARGET_DIR/release/weir; built here unless set or NO_BUILD=1).
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
WORKERS=${WORKERS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS="weir-static nginx-static"
SIZES="4k 1m"
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/static-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-static-bench-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'static: %s\n' "$*" >&2; }

CMD="bench/static/run.sh $RUNS"
for v in NO_BUILD WEIR_BIN DURATION CONNECTIONS WORKERS; do
  [[ -n "${!v+x}" ]] || continue
  case "$v=${!v}" in DURATION=10 | CONNECTIONS=50 | WORKERS=1) continue ;; esac
  CMD="$v=${!v} $CMD"
done

# -- tools -------------------------------------------------------------------------------
command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
[[ -x "$NGINX" ]] || { log "nginx not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/weir-bin.sh"
weir_bin_private
shop_on_sqlite

source "$ROOT/bench/hello/lib.sh"

# The files: $RUN_DIR/www/static/{4k,1m}.bin
WWW=$RUN_DIR/www
mkdir -p "$WWW/static"
head -c 4096 /dev/urandom > "$WWW/static/4k.bin"
head -c 1048576 /dev/urandom > "$WWW/static/1m.bin"
chmod -R a+rX "$WWW"
size_bytes() { case $1 in 4k) echo 4096 ;; 1m) echo 1048576 ;; esac; }

cat /proc/loadavg > "$OUT/loadavg-start"
log "4 KiB and 1 MiB files; $RUNS run(s) of wrk -t2 -c$CONNECTIONS -d${DURATION}s per size; output in $OUT"

start_static() {  # start_static NAME: sets BASE (the /static URL) and, for weir, ADMIN_URL
  local name=$1 port d
  port=$(free_port)
  d="$RUN_DIR/$name"
  mkdir -p "$d"
  case "$name" in
    weir-static)
      local aport
      aport=$(free_port)
      ADMIN_URL="http://127.0.0.1:$aport"
      printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[[static]]\nprefix = "/static"\nroot = "%s"\nexpires = "7d"\n' \
        "$aport" "$WWW/static" > "$d/weir.toml"
      cp "$d/weir.toml" "$OUT/$name.$RUN.weir.toml"
      start "$name" env RUST_LOG="${RUST_LOG:-warn}" "$WEIR_BIN" serve --app "$SHOP_APP" --chdir "$SHOP_DIR" \
        --workers "$WORKERS" --listen "127.0.0.1:$port" --access-log off --config "$d/weir.toml" ;;
    nginx-static)
      nginx_conf "$d/nginx" "$port" "            root $WWW;
            expires 7d;" "    sendfile on;
    tcp_nopush on;"
      cp "$d/nginx/nginx.conf" "$OUT/$name.$RUN.nginx.conf"
      start "$name" "$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  BASE="http://127.0.0.1:$port/static"
  wait_ready "$BASE/4k.bin"
}
backend_requests() {
  curl -fsS --max-time 5 "$ADMIN_URL/metrics" | sed -nE 's/^weir_backend_requests_total ([0-9.e+]+)$/\1/p'
}

# -- runs --------------------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
printf 'run\tserver\tsize\treq_per_s\tp50_ms\tp99_ms\terrors\tcheck\n' >"$RESULTS"
failed=0
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    BASE= ADMIN_URL=
    if ! start_static "$name"; then
      log "$name did not start (see $OUT/*.$RUN.log); skipped in this run"
      stop_all
      for s in $SIZES; do printf '%s\t%s\t%s\tnan\tnan\tnan\tnan\tnot started\n' "$RUN" "$name" "$s" >>"$RESULTS"; done
      failed=1
      continue
    fi
    before=
    [[ $name == weir-static ]] && before=$(backend_requests)
    for s in $SIZES; do
      url="$BASE/$s.bin"
      got=$(curl -s -o /dev/null --max-time 10 -w '%{http_code} %{size_download}' "$url" || true)
      problems=()
      [[ $got == "200 $(size_bytes "$s")" ]] || problems+=("check request: $got")
      timeout $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" \
        >"$OUT/wrk-$name-$s.$RUN.txt" 2>&1 || true
      read -r rps p50 p99 errs < <(parse_wrk "$OUT/wrk-$name-$s.$RUN.txt")
      [[ $errs == 0 ]] || problems+=("$errs wrk errors")
      log "  $s: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs"
      if ((${#problems[@]})); then
        check=$(printf '%s; ' "${problems[@]}"); check=${check%; }; failed=1
        log "  CHECK FAILED: $check"
      else
        check=ok
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$name" "$s" "$rps" "$p50" "$p99" "$errs" "$check" >>"$RESULTS"
    done
    if [[ $name == weir-static ]]; then
      after=$(backend_requests)
      if [[ "$before" != "$after" ]]; then
        log "  CHECK FAILED: weir_backend_requests_total moved ($before -> $after): a static request reached a worker"
        failed=1
      fi
    fi
    stop_all
  done
done
cat /proc/loadavg > "$OUT/loadavg-end"

# -- summary -----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$OUT" "$CMD" "$CONNECTIONS" "$DURATION" "$ROOT" <<'PY'
import csv, datetime, math, os, statistics, subprocess, sys
res, out, cmd, conns, dur, root = sys.argv[1:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
runs = sorted({int(r["run"]) for r in rows})
def get(run, name, size):
    for r in rows:
        if int(r["run"]) == run and r["server"] == name and r["size"] == size:
            return r
    return None
def f(x):
    try:
        v = float(x)
        return v if not math.isnan(v) else None
    except (TypeError, ValueError):
        return None
lines = ["| file | run | weir req/s | nginx req/s | weir / nginx | weir p50 / p99 ms | nginx p50 / p99 ms | checks |",
         "|---|---:|---:|---:|---:|---:|---:|---|"]
medians = {}
for size in ("4k", "1m"):
    ratios = []
    for run in runs:
        w, n = get(run, "weir-static", size), get(run, "nginx-static", size)
        wr, nr = f(w and w["req_per_s"]), f(n and n["req_per_s"])
        ratio = wr / nr if wr and nr else None
        if ratio:
            ratios.append(ratio)
        checks = "; ".join("%s: %s" % (s, r["check"]) for s, r in (("weir", w), ("nginx", n)) if r) or "-"
        lines.append("| %s | %d | %s | %s | %s | %s / %s | %s / %s | %s |" % (
            "4 KiB" if size == "4k" else "1 MiB", run, "%.0f" % wr if wr else "-", "%.0f" % nr if nr else "-",
            "%.2fx" % ratio if ratio else "-", w and w["p50_ms"], w and w["p99_ms"], n and n["p50_ms"],
            n and n["p99_ms"], checks))
    medians[size] = (statistics.median(ratios) if ratios else float("nan"), ratios)
table = "\n".join(lines)
print()
print(table)
print()
for size, (med, ratios) in medians.items():
    print("median weir / nginx, %s: %.2fx over %d run(s) (per run: %s)" % (
        size, med, len(ratios), " ".join("%.2f" % r for r in ratios)))
print("(raw results: %s)" % res)

sys.path.insert(0, os.path.join(root, "bench"))
from benchlib import first_line, read_words, weir_build  # noqa: E402


def read(name):
    return read_words(out, name)


head, dirty = weir_build(out)
weir = "weir at %s%s" % (head, " + uncommitted changes in crates/" if dirty else "")
now = datetime.datetime.now(datetime.timezone.utc)
section = """## Static files — %s

Command: `%s`. %s; %d CPUs; load average %s at the start, %s at the end; %s (release);
nginx %s; wrk.

`wrk -t2 -c%s -d%ss` on a 4 KiB and a 1 MiB file of random bytes, runs interleaved, each
server started once per run. weir: `[[static]] prefix = "/static"`, `expires = "7d"`,
`--access-log off`; files up to 1 MiB are kept whole in its contents cache and answered
from memory (hyper writes bodies from memory; there is no sendfile), and no request
reaches a worker (checked: `weir_backend_requests_total` does not move). nginx
(worker_processes auto): `root` the same directory, `sendfile on; tcp_nopush on;`,
`expires 7d`, access_log off.

%s

Median weir / nginx: **%.2fx** on 4 KiB (per run: %s), **%.2fx** on 1 MiB (per run: %s).
The machine has 2 cores shared by wrk and the server. Raw results: `%s/` (not committed).
""" % (now.strftime("%Y-%m-%d %H:%M UTC"), cmd, now.strftime("%Y-%m-%d %H:%M UTC"), os.cpu_count(),
       " ".join(read("loadavg-start")), " ".join(read("loadavg-end")), weir,
       first_line(["nginx", "-v"]).split("/")[-1], conns, dur, table,
       medians["4k"][0], " ".join("%.2f" % r for r in medians["4k"][1]),
       medians["1m"][0], " ".join("%.2f" % r for r in medians["1m"][1]), os.path.relpath(out, root))
open(os.path.join(out, "section.md"), "w").write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(out, "section.md"))
PY
exit "$failed"

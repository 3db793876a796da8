#!/usr/bin/env bash
# Idle worker memory, weir vs uWSGI, side by side: examples/shop on 4 workers each, started as
# bench/hello/run.sh starts them, a few requests (so every worker has served), then idle.
# Per worker, from /proc/PID/smaps_rollup: RSS, PSS, USS (Private_Clean + Private_Dirty) and
# Anonymous; from /proc/PID/smaps, RSS by mapping (the server's binary, libpython, other
# shared objects, heap + anonymous, stacks). Prints medians over the workers of each run,
# then medians over the runs; totals for the whole server (master + workers) by PSS.
#
#   weir         weir serve --app app:app --chdir SHOP --workers 4 --listen ... --access-log off
#                (preload "auto", the default: for the shop a zygote imports the app once and
#                the workers are forked from it; the zygote is reported apart, as uWSGI's
#                master is)
#   weir-lazy    the same with --preload off (every worker exec'd, importing the app itself)
#   weir-preload the same with --preload on (not in the default set: for the shop, as weir)
#   uwsgi        uwsgi --socket S --master --processes 4 --chdir SHOP --module app:app ...
#                (run.sh's flags; nginx in front only to send the requests)
#   uwsgi-lazy   the same with --lazy-apps (each worker imports the app after the fork;
#                not in the default set)
#   weir-base    weir as above from WEIR_BASE_BIN (another build, for before/after in one run;
#                with that build's default preload mode)
#
# Usage: bench/hello/rss.sh [RUNS]          (default 3)
# Environment: SERVERS (default "weir weir-lazy uwsgi"), WORKERS (default 4), WEIR_BIN (default
#   target/release/weir, not built here), WEIR_BASE_BIN (for weir-base), SETTLE (s idle
#   before sampling, default 2),
#   SHOP_DIR (default examples/shop), SHOP_APP (default app:app).
# Raw per-process numbers go to bench/out/rss-<time>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
RUNS=${1:-${RUNS:-3}}
WORKERS=${WORKERS:-4}
SETTLE=${SETTLE:-2}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SERVERS=${SERVERS:-"weir weir-lazy uwsgi"}
SHOP_DIR=$(cd "${SHOP_DIR:-examples/shop}" && pwd)
SHOP_APP=${SHOP_APP:-app:app}
WEIR_BIN=${WEIR_BIN:-$ROOT/target/release/weir}
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT="$ROOT/bench/out/rss-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RUN_DIR=$(mktemp -d /tmp/weir-rss-XXXXXX)
chmod 755 "$RUN_DIR"
log() { printf 'rss: %s\n' "$*" >&2; }
command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
[[ " $SERVERS " != *" weir "* && " $SERVERS " != *" weir-preload "* && " $SERVERS " != *" weir-lazy "* || -x "$WEIR_BIN" ]] || { log "$WEIR_BIN missing: cargo build --release -p weir"; exit 2; }
log "servers: $SERVERS; $WORKERS workers; $RUNS run(s); weir binary $WEIR_BIN; output in $OUT"

source "$ROOT/bench/hello/lib.sh"
APP_PID=

nginx_for() {  # nginx_for DIR PORT SOCK: nginx passing to a uwsgi socket
  nginx_conf "$1" "$2" "            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$3;"
  start "nginx" "$NGINX" -p "$1" -c "$1/nginx.conf" -e "$1/error.log"
}

start_rss_server() {  # sets URL and APP_PID (the app server's master); not lib.sh's start_server: other names (uwsgi, uwsgi-lazy, weir-base), and the app server's pid
  local name=$1 port d sock
  port=$(free_port)
  d="$RUN_DIR/$name"
  mkdir -p "$d"
  case "$name" in
    weir | weir-base | weir-preload | weir-lazy)
      local bin=$WEIR_BIN preload=()
      [[ $name == weir-base ]] && bin=${WEIR_BASE_BIN:?set WEIR_BASE_BIN for weir-base}
      [[ $name == weir-preload ]] && preload=(--preload on)
      [[ $name == weir-lazy ]] && preload=(--preload off)
      start "$name" env RUST_LOG=warn "$bin" serve --app "$SHOP_APP" --chdir "$SHOP_DIR" \
        --workers "$WORKERS" --listen "127.0.0.1:$port" --access-log off "${preload[@]}"
      APP_PID=${SERVER_PIDS[-1]} ;;
    uwsgi | uwsgi-lazy)
      sock="$d/uwsgi.sock"
      local lazy=()
      [[ $name == uwsgi-lazy ]] && lazy=(--lazy-apps)
      start "$name" uwsgi --socket "$sock" --chmod-socket=666 --master --processes "$WORKERS" \
        --chdir "$SHOP_DIR" --module "$SHOP_APP" --need-app --die-on-term --disable-logging \
        --listen 1024 "${lazy[@]}"
      APP_PID=${SERVER_PIDS[-1]}
      wait_socket "$sock" || return 1
      nginx_for "$d/nginx" "$port" "$sock" ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  URL="http://127.0.0.1:$port"
  wait_ready "$URL/hello"
}

# measure NAME MASTER_PID: one TSV row per process (role master|zygote|worker); weir's
# zygote (a child of the master run as `weir worker --zygote`) is not a worker, its
# children are
measure() {
  "$PY" - "$1" "$2" "$RUN" <<'PY'
import os, sys
name, master, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open("/proc/%s/stat" % d).read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError):
                pass
    return out
def rollup(pid):
    r = {}
    for line in open("/proc/%d/smaps_rollup" % pid):
        p = line.split()
        if len(p) >= 3 and p[0].endswith(":"):
            r[p[0][:-1]] = int(p[1])
    return r
def by_mapping(pid, exe):
    cats = dict.fromkeys(("exe", "libpython", "other_so", "anon", "stack"), 0)
    cur = None
    for line in open("/proc/%d/smaps" % pid):
        p = line.split()
        if "-" in p[0] and not p[0].endswith(":"):
            path = p[5] if len(p) > 5 else ""
            if path == exe: cur = "exe"
            elif "libpython" in path: cur = "libpython"
            elif path in ("", "[heap]"): cur = "anon"
            elif path.startswith("[stack"): cur = "stack"
            elif path.startswith("["): cur = None
            else: cur = "other_so"
        elif p[0] == "Rss:" and cur:
            cats[cur] += int(p[1])
    return cats
def is_zygote(pid):
    try:
        return b"--zygote" in open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
    except OSError:
        return False
rows = [("master", master)]
for c in children(master):
    if is_zygote(c):
        rows += [("zygote", c)] + [("worker", w) for w in children(c)]
    else:
        rows.append(("worker", c))
for role, pid in rows:
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        r, m = rollup(pid), by_mapping(pid, exe)
    except OSError:
        continue
    threads = len(os.listdir("/proc/%d/task" % pid))
    uss = r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
    print("\t".join(str(x) for x in (run, name, role, pid, threads, r["Rss"], r["Pss"], uss,
          r.get("Anonymous", 0), m["exe"], m["libpython"], m["other_so"], m["anon"], m["stack"])))
PY
}

RESULTS="$OUT/results.tsv"
printf 'run\tserver\trole\tpid\tthreads\trss_kib\tpss_kib\tuss_kib\tanon_kib\texe_kib\tlibpython_kib\tother_so_kib\theap_anon_kib\tstack_kib\n' >"$RESULTS"
for RUN in $(seq 1 "$RUNS"); do
  for name in $SERVERS; do
    log "run $RUN/$RUNS: $name"
    if ! start_rss_server "$name"; then log "$name did not start (see $OUT)"; stop_all; continue; fi
    # a few requests, concurrent enough that every worker serves some
    timeout 30 wrk -t1 -c8 -d1s "$URL/hello" >/dev/null 2>&1 || true
    timeout 30 wrk -t1 -c8 -d1s "$URL/items" >/dev/null 2>&1 || true
    sleep "$SETTLE"
    measure "$name" "$APP_PID" | tee -a "$RESULTS" | awk -F'\t' -v n="$name" \
      '$3=="worker"{printf "rss:   %s worker %s: RSS %d KiB, PSS %d KiB\n", n, $4, $6, $7}' >&2
    stop_all
  done
done

"$PY" - "$RESULTS" "$SERVERS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order = sys.argv[2].split()
keys = ["rss_kib", "pss_kib", "uss_kib", "anon_kib", "exe_kib", "libpython_kib", "other_so_kib", "heap_anon_kib", "stack_kib"]
med = statistics.median
def per_run(name, role, key):
    out = []
    for run in sorted({r["run"] for r in rows}):
        v = [int(r[key]) for r in rows if r["server"] == name and r["role"] == role and r["run"] == run]
        if v: out.append(med(v))
    return out
def total_pss(name):
    out = []
    for run in sorted({r["run"] for r in rows}):
        v = [int(r["pss_kib"]) for r in rows if r["server"] == name and r["run"] == run]
        if v: out.append(sum(v))
    return out
print("\nIdle worker, KiB (median over a run's workers, then over %d run(s)):" % len({r["run"] for r in rows}))
print("%-11s %7s %7s %7s %7s | RSS by mapping: %6s %9s %8s %10s %5s" % ("server", "RSS", "PSS", "USS", "anon", "binary", "libpython", "other.so", "heap+anon", "stack"))
for n in order:
    vals = [per_run(n, "worker", k) for k in keys]
    if not vals[0]: continue
    print("%-11s %7d %7d %7d %7d | %22d %9d %8d %10d %5d" % ((n,) + tuple(med(v) for v in vals)))
def parts(n):
    z = per_run(n, "zygote", "pss_kib")
    return "master %d%s" % (med(per_run(n, "master", "pss_kib")), ", zygote %d" % med(z) if z else "")
print("\nWhole server (master [+ zygote] + workers), PSS KiB: " + ", ".join(
    "%s %d (%s)" % (n, med(total_pss(n)), parts(n)) for n in order if total_pss(n)))
print("runs (worker RSS medians): " + "; ".join("%s %s" % (n, per_run(n, "worker", "rss_kib")) for n in order))
print("runs (worker PSS medians): " + "; ".join("%s %s" % (n, per_run(n, "worker", "pss_kib")) for n in order))
print("(raw: %s)" % sys.argv[1])
PY

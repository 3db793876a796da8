#!/usr/bin/env bash
# CPU time per request of each process group of a server under /hello load (issue 2).
# Usage: bench/hello/cpu.sh NAME [SECONDS]
#   NAME: a server of bench/hello/run.sh (weir, weir-lazy, weir-preload, nginx-uwsgi,
#   nginx-gunicorn, granian), started the same way (lib.sh's start_server): examples/shop,
#   WORKERS (4) workers, 127.0.0.1.
# Warms up 3 s with `wrk -t2 -c50`, then reads utime+stime of every process of the
# server's sessions from /proc/PID/stat (and voluntary/involuntary context switches from
# /proc/PID/task/*/status, all threads) around SECONDS (10) of the same load, and prints per
# kind of process: CPU us per request (and its user part), switches per request; then
# wrk's own CPU per request and the machine's idle time (idle + iowait of /proc/stat, all
# cores) per request: at equal server cost, a server that serves less leaves more idle time
# or costs wrk more. Interleave servers in a loop and compare within a round: the
# machine's speed drifts between rounds.
# Environment: WEIR_BIN (target/release/weir, not built here), WORKERS, HOOK (shell run
# after readiness). Needs wrk and the peers (scripts/install-deps.sh). Bounded: readiness
# READY_TIMEOUT (60) s, every load run by time; the servers are stopped whole at the end.
set -uo pipefail
NAME=${1:?usage: bench/hello/cpu.sh NAME [SECONDS]}
DUR=${2:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
WEIR_BIN=${WEIR_BIN:-$ROOT/target/release/weir}
WORKERS=${WORKERS:-4}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SHOP_DIR=$ROOT/examples/shop
SHOP_APP=app:app
PY=${PYTHON:-python3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
HOOK=${HOOK:-}
RUN=1
RUN_DIR=$(mktemp -d /tmp/weir-cpu-XXXXXX)
chmod 755 "$RUN_DIR"
OUT=$RUN_DIR
log() { printf 'cpu: %s\n' "$*" >&2; }
command -v wrk >/dev/null || { log "wrk not found: run scripts/install-deps.sh"; exit 2; }
source "$ROOT/bench/hello/lib.sh"

start_server "$NAME" || { log "$NAME did not start (logs: $OUT/*.log)"; cat "$OUT"/*.log >&2; exit 1; }
[[ -n $HOOK ]] && eval "$HOOK"
timeout 60 wrk -t2 -c50 -d3s "$URL" >/dev/null

# one line per process of the servers' sessions: pid kind cpu_ticks user_ticks vcs ics
snap() {
  local s p
  for s in "${SERVER_PIDS[@]}"; do ps -s "$s" -o pid=; done | while read -r p; do
    read -r cpu ut < <(awk '{print $14+$15, $14}' "/proc/$p/stat" 2>/dev/null) || continue
    read -r v n < <(cat /proc/"$p"/task/*/status 2>/dev/null |
      awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}')
    echo "$p $(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print $1 ($2=="worker"?"-worker":"")}') $cpu $ut $v $n"
  done
}
snap >"$RUN_DIR/s0"
head -1 /proc/stat >"$RUN_DIR/stat0"
TIMEFORMAT='%U %S'
{ time timeout $((DUR + 60)) wrk -t2 -c50 -d"${DUR}s" "$URL" >"$RUN_DIR/wrk"; } 2>"$RUN_DIR/wrk-time"
head -1 /proc/stat >"$RUN_DIR/stat1"
snap >"$RUN_DIR/s1"
"$PY" - "$RUN_DIR" "$NAME" "$(getconf CLK_TCK)" <<'PY'
import collections, re, sys
d, name, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
wrk = open(d + "/wrk").read()
req = int(re.search(r"^\s*(\d+) requests in", wrk, re.M).group(1))
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", wrk).group(1))
def load(f):
    return {p: (kind, [int(x) for x in rest]) for p, kind, *rest in (l.split() for l in open(f))}
a, b = load(d + "/s0"), load(d + "/s1")
agg = collections.defaultdict(lambda: [0, 0, 0, 0, 0])  # cpu, user, vcs, ics, processes
for p, (kind, after) in b.items():
    if p not in a:
        continue
    g = agg[kind.split("/")[-1]]
    g[4] += 1
    for i, (x, y) in enumerate(zip(after, a[p][1])):
        g[i] += x - y
us = 1e6 / hz / req  # microseconds per tick, per request
out, total = ["%-12s rps %6.0f" % (name, rps)], 0.0
for kind, (cpu, user, vcs, ics, n) in sorted(agg.items()):
    if cpu == 0 and vcs == 0:
        continue
    total += cpu * us
    out.append("%s(x%d) %.1fus (user %.1f) vcs %.2f ics %.2f" % (kind, n, cpu * us, user * us, vcs / req, ics / req))
out.append("total %.1fus" % total)
# the load tool's own cost, and the machine's idle time (idle + iowait), per request
wu, ws = (float(x) for x in open(d + "/wrk-time").read().split()[-2:])
out.append("wrk %.1fus" % ((wu + ws) * 1e6 / req))
s0, s1 = ([int(x) for x in open(d + f).read().split()[1:]] for f in ("/stat0", "/stat1"))
idle = (s1[3] + s1[4]) - (s0[3] + s0[4])
out.append("idle %.1fus" % (idle * us))
print(" | ".join(out))
PY

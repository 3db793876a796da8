#!/usr/bin/env bash
# The floor under weir's CPU per /hello request (issue 19): what weir's process model costs
# on this machine with none of weir's own work, beside weir itself, in one interleaved run.
#
#   weir          `weir serve` on examples/shop, WORKERS (4) workers (bench/hello's "weir")
#   floor         the same processes and socket calls with nothing else: a tokio master
#                 (2 threads, a task per connection and per worker) relays each request
#                 over a Unix socketpair to one of WORKERS Rust worker processes, which
#                 answer a fixed /hello-sized answer (crates/weir/examples/floor.rs)
#   floor-17k     the same with a 17,000-byte body (the size of examples/shop's /items)
#   floor-direct  that master answering itself: no worker, no hop
#   nginx-return  NGINX answering `return 200` itself (worker_processes auto)
#
# Each round runs bench/hello/cpu.sh for every server in turn (wrk -t2 -c50, 3 s warm-up,
# DURATION of load; CPU per request of each process group from /proc). Then the app's own
# CPU per /hello call, in-process (the shop's Flask app called with a wsgiref environ,
# `time.process_time`, 3 x 5,000 calls, the median), and the cost of one system call's
# entry and exit (`floor syscall`: getpid in a loop), the most io_uring could save a call,
# and the CPU of a one-byte round trip between two blocking processes (`floor pingpong`),
# as the scheduler places them and both on one core (`taskset -c 0`).
# Prints the medians per server: master (front) and workers, total, req/s; and weir's own
# CPU per request (its total minus the app's). Raw outputs in bench/out/floor-<time>/.
#
# Usage: bench/floor/run.sh [ROUNDS]      (default 3)
# Environment: SERVERS (default "weir floor floor-17k floor-direct
#   nginx-return"), DURATION (8 s),
#   WORKERS (4), WEIR_BIN (target/release/weir), FLOOR_BIN
#   (target/release/examples/floor); both built here unless NO_BUILD=1. SUMMARY_ONLY=DIR
#   prints the summary of an earlier run's raw outputs again, measuring nothing.
# Bounded: every cpu.sh run is bounded (readiness and load by time); servers are stopped
# whole after each.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source scripts/python-link.sh
ROUNDS=${1:-3}
SERVERS=${SERVERS:-weir floor floor-17k floor-direct nginx-return}
DUR=${DURATION:-8}
export WORKERS=${WORKERS:-4}
export WEIR_BIN=${WEIR_BIN:-$ROOT/target/release/weir}
export FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/floor}
if [[ -n ${SUMMARY_ONLY:-} ]]; then
  OUT=$SUMMARY_ONLY
elif [[ ${NO_BUILD:-} != 1 ]]; then
  cargo build --release -p weir --bin weir --example floor >&2
fi
measure() {
  OUT=$ROOT/bench/out/floor-$(date -u +%Y%m%d-%H%M%S)
  mkdir -p "$OUT"
  for r in $(seq 1 "$ROUNDS"); do
    for s in $SERVERS; do
      line=$(bench/hello/cpu.sh "$s" "$DUR" 2>>"$OUT/stderr.log" | tail -1) || line=""
      printf '%s %s\n' "$r" "$line" | tee -a "$OUT/cpu.txt" >&2
    done
  done
  ( cd examples/shop && python3 - <<'PY'
import statistics, time
from wsgiref.util import setup_testing_defaults
from app import app
def call():
    env = {"PATH_INFO": "/hello", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(env)
    body = app(env, lambda status, headers, exc_info=None: None)
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()
for _ in range(500):
    call()
runs = []
for _ in range(3):
    t = time.process_time()
    for _ in range(5000):
        call()
    runs.append((time.process_time() - t) / 5000 * 1e6)
print("app %.1f" % statistics.median(runs))
PY
  ) >"$OUT/app.txt"
  "$FLOOR_BIN" syscall >"$OUT/syscall.txt"
  "$FLOOR_BIN" pingpong >"$OUT/pingpong.txt"
  taskset -c 0 "$FLOOR_BIN" pingpong >"$OUT/pingpong-one-core.txt"
}
[[ -n ${SUMMARY_ONLY:-} ]] || measure
python3 - "$OUT" "$SERVERS" <<'PY'
import collections, re, statistics, sys
out, servers = sys.argv[1], sys.argv[2].split()
app = float(open(out + "/app.txt").read().split()[1])
sysc = open(out + "/syscall.txt").read().strip()
pp = open(out + "/pingpong.txt").read().strip()
pp1 = open(out + "/pingpong-one-core.txt").read().strip()
rows = collections.defaultdict(list)
for line in open(out + "/cpu.txt"):
    parts = line.split(None, 2)
    if len(parts) < 3 or "rps" not in parts[2]:
        continue
    name, rest = parts[1], parts[2]
    rps = float(re.search(r"rps\s+(\d+)", rest).group(1))
    groups = re.findall(r"\| ([^\s(|]+)\(x(\d+)\) ([\d.]+)us \(user ([\d.]+)\)", rest)
    total = float(re.search(r"total ([\d.]+)us", rest).group(1))
    # The front: weir's or the floor's master, or all of NGINX's processes (its workers
    # are its front).
    is_front = lambda kind: kind.startswith("nginx") or not kind.endswith("worker")
    front = sum(float(g[2]) for g in groups if is_front(g[0]))
    front_user = sum(float(g[3]) for g in groups if is_front(g[0]))
    workers = total - front
    workers_user = sum(float(g[3]) for g in groups) - front_user
    rows[name].append((rps, front, front_user, workers, total, workers_user))
med = lambda xs: statistics.median(xs)
lines = ["| server | rounds | req/s | front us (user) | workers us (user) | total us | weir's own (total - app) |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for s in servers:
    r = rows.get(s)
    if not r:
        lines.append("| %s | 0 | | | | | |" % s)
        continue
    own = "%.1f" % (med([x[4] for x in r]) - app) if s.startswith("weir") else ""
    lines.append("| %s | %d | %.0f | %.1f (%.1f) | %.1f (%.1f) | %.1f | %s |" % (
        s, len(r), med([x[0] for x in r]), med([x[1] for x in r]), med([x[2] for x in r]),
        med([x[3] for x in r]), med([x[5] for x in r]), med([x[4] for x in r]), own))
lines.append("")
lines.append("The app alone, in-process: %.1f us a /hello call. %s. Two processes, across" % (app, sysc))
lines.append("the cores: %s. Both on one core (taskset -c 0): %s." % (pp, pp1))
text = "\n".join(lines)
open(out + "/summary.md", "w").write(text + "\n")
print(text)
PY
echo "raw: $OUT" >&2

#!/usr/bin/env bash
# Accuracy and capacity of `weir load` itself (issue 4), against a private nginx serving
# a small static file on 127.0.0.1:
#   1. capacity: the most requests/s `weir load` sustains on one core, closed loop, beside
#      wrk on the same target, the same core and the same connections; several interleaved
#      rounds, medians and the ratio;
#   2. the highest open-loop rate it keeps VALID on that core (a short sweep);
#   3. the send-time error at 20k req/s: the generator's send lateness (p50/p99/p99.9).
# nginx runs on core 0, the load tool on core 1 (taskset). Results go to stdout and, with
# the exact commands, into bench/RESULTS.md under "## weir load accuracy (issue 4)"
# (that section is replaced; other sections are left alone). Raw JSON in bench/out/load/.
#
# The machine may be shared: before each measurement the script waits (up to QUIET_WAIT
# seconds in all, default 600) until the CPUs are less than QUIET_MAX% busy (default 25)
# over one second, and it records how busy they were, so noisy rounds can be told apart.
#
# Usage: bench/load/run.sh            (ROUNDS=5 DUR=5 CONNS=50 LATE_RUNS=5 LATE_DUR=10 to tune;
#                                      NO_BUILD=1 to skip the release build; NO_RESULTS=1 to
#                                      leave bench/RESULTS.md alone)
# Needs: nginx (nginx-light), wrk, taskset, python3 (scripts/install-deps.sh installs them).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/scripts/python-link.sh"
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-5}
CONNS=${CONNS:-50}
LATE_RUNS=${LATE_RUNS:-7}
LATE_DUR=${LATE_DUR:-5}
LATE_RATE=${LATE_RATE:-20000}
SWEEP=${SWEEP:-20k,40k,60k,80k}
OUT="$ROOT/bench/out/load"
WEIR="$ROOT/target/release/weir"
TOOL_CORE=1
SERVER_CORE=0
# nginx and both load tools run at the same raised priority (as root), so that other work
# on a shared machine preempts them less; PRIO= (empty) runs them at normal priority.
if [[ $(id -u) == 0 ]]; then PRIO=${PRIO-nice -n -20}; else PRIO=${PRIO-}; fi

log() { printf 'bench/load: %s\n' "$*" >&2; }
for t in nginx wrk taskset python3; do
  command -v "$t" >/dev/null || { log "missing $t (run scripts/install-deps.sh)"; exit 2; }
done
if [[ $(nproc) -lt 2 ]]; then log "needs 2 cores (one for nginx, one for the tool)"; exit 2; fi

if [[ -z "${NO_BUILD:-}" ]]; then
  log "cargo build --release -p weir"
  (cd "$ROOT" && cargo build --release -p weir >&2)
fi
mkdir -p "$OUT"

# --- a private nginx --------------------------------------------------------------------
DIR=$(mktemp -d /tmp/weir-load-bench.XXXXXX)
NGINX_PID=
cleanup() {
  if [[ -n "$NGINX_PID" ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$DIR/html" "$DIR/logs" "$DIR/tmp"
# 612 bytes, the size of nginx's stock index.html.
head -c 612 /dev/zero | tr '\0' 'w' > "$DIR/html/index.html"
cat > "$DIR/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/tmp/body;
  proxy_temp_path $DIR/tmp/proxy;
  fastcgi_temp_path $DIR/tmp/fastcgi;
  uwsgi_temp_path $DIR/tmp/uwsgi;
  scgi_temp_path $DIR/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    root $DIR/html;
  }
}
EOF
$PRIO taskset -c $SERVER_CORE nginx -p "$DIR" -c "$DIR/nginx.conf" -g 'daemon off;' 2>"$DIR/logs/stderr" &
NGINX_PID=$!
URL="http://127.0.0.1:$PORT/index.html"
for _ in $(seq 50); do
  if python3 - "$PORT" <<'PY' 2>/dev/null; then break; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2)
s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
assert s.recv(100).startswith(b"HTTP/1.1 200")
PY
  sleep 0.1
done
log "nginx $(nginx -v 2>&1 | sed 's/.*: //') on core $SERVER_CORE, $URL"

# Percent of CPU time busy over the next second, all CPUs (from /proc/stat).
busy() {
  python3 - <<'PY'
import time
def snap():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f), idle
t0, i0 = snap(); time.sleep(1); t1, i1 = snap()
print(round(100 * (1 - (i1 - i0) / max(1, t1 - t0))))
PY
}
QUIET_MAX=${QUIET_MAX:-25}
QUIET_DEADLINE=$(( $(date +%s) + ${QUIET_WAIT:-600} ))
# Waits for a quiet machine (bounded by QUIET_DEADLINE); prints the busy % it settled for.
quiet() {
  local b
  while :; do
    b=$(busy)
    if (( b <= QUIET_MAX )) || (( $(date +%s) >= QUIET_DEADLINE )); then echo "$b"; return; fi
    sleep 2
  done
}

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
WRK_CMD="$PRIO taskset -c $TOOL_CORE wrk -t1 -c$CONNS -d${DUR}s $URL"
WEIR_CMD="$PRIO taskset -c $TOOL_CORE $WEIR load --connections $CONNS --duration ${DUR}s --threads 1 --no-progress -q $URL"

# --- 1. capacity, interleaved -------------------------------------------------------------
log "capacity: $ROUNDS rounds of wrk and weir load, ${DUR}s each, $CONNS connections, core $TOOL_CORE"
# Warm both sides once (page cache, nginx's first connections).
$PRIO taskset -c $TOOL_CORE wrk -t1 -c"$CONNS" -d1s "$URL" >/dev/null
wrk_rates=(); weir_rates=()
run_wrk() { $WRK_CMD | awk '/^Requests\/sec/ {print $2}'; }
run_weir() { $WEIR_CMD --json "$OUT/capacity-$1.json" >/dev/null; json "$OUT/capacity-$1.json" "d['achieved_rate']"; }
busy_caps=()
for i in $(seq "$ROUNDS"); do
  q=$(quiet)
  if (( i % 2 )); then a=$(run_wrk); b=$(run_weir "$i"); else b=$(run_weir "$i"); a=$(run_wrk); fi
  wrk_rates+=("$a"); weir_rates+=("$b"); busy_caps+=("$q%")
  log "  round $i (machine ${q}% busy before): wrk $a req/s, weir load $b req/s"
done
best() { python3 -c "import sys; print(max(float(x) for x in sys.argv[1:]))" "$@"; }
least() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
WRK_MED=$(median "${wrk_rates[@]}")
WEIR_MED=$(median "${weir_rates[@]}")
WRK_BEST=$(best "${wrk_rates[@]}")
WEIR_BEST=$(best "${weir_rates[@]}")
RATIO=$(python3 -c "print(f'{$WEIR_MED/$WRK_MED:.2f}')")
RATIO_BEST=$(python3 -c "print(f'{$WEIR_BEST/$WRK_BEST:.2f}')")

# --- 2. the highest open-loop rate kept VALID on one core -------------------------------
SWEEP_CMD="$PRIO taskset -c $TOOL_CORE $WEIR load --rates $SWEEP --duration 3s --connections $CONNS --threads 1 --no-progress -q $URL"
SWEEP_BUSY=$(quiet)
log "open-loop sweep: $SWEEP (machine ${SWEEP_BUSY}% busy before)"
$SWEEP_CMD --json "$OUT/sweep.json" >/dev/null
SWEEP_ROWS=$(python3 - "$OUT/sweep.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["sweep"]:
    g = r["generator"]
    print(f"| {r['manifest']['rate']:.0f} | {r['achieved_rate']:.0f} | {r['latency_ms']['p99']:.3f} | "
          f"{g['lateness_ms']['p99']:.3f} | {g['missed_slots']} | {'valid' if g['valid'] else 'INVALID'} |")
PY
)

# --- 3. send-time error at 20k req/s ------------------------------------------------------
LATE_CMD="$PRIO taskset -c $TOOL_CORE $WEIR load --rate $LATE_RATE --duration ${LATE_DUR}s --connections $CONNS --threads 1 --no-progress -q $URL"
log "send lateness at $LATE_RATE req/s: $LATE_RUNS runs of ${LATE_DUR}s"
late_rows=""; p99s=()
for i in $(seq "$LATE_RUNS"); do
  q=$(quiet)
  $LATE_CMD --json "$OUT/lateness-$i.json" >/dev/null
  row=$(json "$OUT/lateness-$i.json" "'| %d | %s%% | %.0f | %.3f | %.3f | %.3f | %.3f | %d | %d | %s |' % ($i, '$q', d['achieved_rate'], d['generator']['lateness_ms']['p50'], d['generator']['lateness_ms']['p99'], d['generator']['lateness_ms']['p999'], d['latency_ms']['p99'], d['generator']['missed_slots'], d['generator']['preemptions'], 'valid' if d['generator']['valid'] else 'INVALID')")
  p99s+=("$(json "$OUT/lateness-$i.json" "d['generator']['lateness_ms']['p99']")")
  late_rows+="$row"$'\n'
  log "  $row"
done
LATE_MED=$(median "${p99s[@]}")
LATE_BEST=$(least "${p99s[@]}")
LATE_VALID=$(python3 - "$OUT" "$LATE_RUNS" <<'PY'
import json, sys
runs = [json.load(open(f"{sys.argv[1]}/lateness-{i}.json")) for i in range(1, int(sys.argv[2]) + 1)]
ok = [r["generator"]["lateness_ms"]["p99"] for r in runs if r["generator"]["valid"]]
if ok:
    print(f"{len(ok)} of {len(runs)} runs VALID; in those, lateness p99 {min(ok):.3f}-{max(ok):.3f} ms.")
else:
    print(f"0 of {len(runs)} runs VALID.")
PY
)

# --- 4. runtime: one thread or two, on the same core -----------------------------------------
THR_ROUNDS=${THR_ROUNDS:-3}
log "runtime threads on core $TOOL_CORE: $THR_ROUNDS rounds of --threads 1 and --threads 2"
t1_cap=(); t2_cap=(); t1_late=(); t2_late=()
for i in $(seq "$THR_ROUNDS"); do
  quiet >/dev/null
  for t in 1 2; do
    $PRIO taskset -c $TOOL_CORE "$WEIR" load --connections "$CONNS" --duration "${DUR}s" --threads $t --no-progress -q "$URL" --json "$OUT/threads$t-cap.json" >/dev/null
    $PRIO taskset -c $TOOL_CORE "$WEIR" load --rate "$LATE_RATE" --duration "${DUR}s" --connections "$CONNS" --threads $t --no-progress -q "$URL" --json "$OUT/threads$t-late.json" >/dev/null
    c=$(json "$OUT/threads$t-cap.json" "d['achieved_rate']"); l=$(json "$OUT/threads$t-late.json" "d['generator']['lateness_ms']['p99']")
    if [[ $t == 1 ]]; then t1_cap+=("$c"); t1_late+=("$l"); else t2_cap+=("$c"); t2_late+=("$l"); fi
    log "  round $i --threads $t: closed loop $c req/s, lateness p99 at $LATE_RATE req/s $l ms"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

T1C=$(median "${t1_cap[@]}"); T2C=$(median "${t2_cap[@]}"); T1L=$(median "${t1_late[@]}"); T2L=$(median "${t2_late[@]}")

# --- report -------------------------------------------------------------------------------
show() { printf '%s' "${1//$ROOT\//}"; }
WRK_CMD=$(show "$WRK_CMD"); WEIR_CMD=$(show "$WEIR_CMD"); SWEEP_CMD=$(show "$SWEEP_CMD"); LATE_CMD=$(show "$LATE_CMD")
SECTION=$(cat <<EOF
## weir load accuracy (issue 4)

Run by \`bench/load/run.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r), nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); weir $($WEIR --version | awk '{print $2}'), release build).
nginx (1 worker) on core $SERVER_CORE serves a 612-byte static file; the load tool runs on core $TOOL_CORE
(\`taskset\`); nginx and both tools run under \`${PRIO:-normal priority}\`.
Load average before/after: $LOAD_BEFORE / $LOAD_AFTER (the machine is shared: other work
on these two cores shows as spread between rounds).

### Capacity on one core (closed loop, $CONNS connections, ${DUR}s, $ROUNDS interleaved rounds)

| tool | median req/s | best req/s | rounds |
| --- | ---: | ---: | --- |
| wrk | $(printf '%.0f' "$WRK_MED") | $(printf '%.0f' "$WRK_BEST") | $(printf '%.0f ' "${wrk_rates[@]}") |
| weir load | $(printf '%.0f' "$WEIR_MED") | $(printf '%.0f' "$WEIR_BEST") | $(printf '%.0f ' "${weir_rates[@]}") |

CPUs busy before each round (other work on the machine): ${busy_caps[*]}.

weir load / wrk: **$RATIO** on the medians, $RATIO_BEST on the best rounds (goal: at least 1.0).

\`\`\`
$WRK_CMD
$WEIR_CMD --json bench/out/load/capacity-N.json
\`\`\`

### Open loop on one core: offered vs achieved ($SWEEP, 3 s each; CPUs ${SWEEP_BUSY}% busy before)

| offered req/s | achieved req/s | latency p99 ms | send lateness p99 ms | missed slots | run |
| ---: | ---: | ---: | ---: | ---: | --- |
$SWEEP_ROWS

\`\`\`
$SWEEP_CMD --json bench/out/load/sweep.json
\`\`\`

### Send-time error at $LATE_RATE req/s (${LATE_DUR}s, $LATE_RUNS runs)

Send lateness is how late each request's task started after its scheduled time (the
generator's own error; the latency is measured from the scheduled time either way).

| run | CPUs busy before | achieved req/s | lateness p50 ms | lateness p99 ms | lateness p99.9 ms | latency p99 ms | missed | preempted | run |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
${late_rows}
Lateness p99: median **$(printf '%.3f' "$LATE_MED") ms**, best $(printf '%.3f' "$LATE_BEST") ms (goal: under 1 ms).
$LATE_VALID
*preempted* counts the generator's involuntary context switches during the run: the
kernel gave its core to something else (other work, softirq threads) that many times.

\`\`\`
$LATE_CMD --json bench/out/load/lateness-N.json
\`\`\`

### Runtime: \`--threads 1\` (current-thread) against \`--threads 2\` (multi-thread), both on core $TOOL_CORE

Medians of $THR_ROUNDS interleaved rounds of ${DUR}s: closed-loop capacity ($CONNS connections) and
send lateness p99 at $LATE_RATE req/s.

| runtime | capacity req/s | lateness p99 ms |
| --- | ---: | ---: |
| \`--threads 1\` | $(printf '%.0f' "$T1C") | $(printf '%.3f' "$T1L") |
| \`--threads 2\` | $(printf '%.0f' "$T2C") | $(printf '%.3f' "$T2L") |
EOF
)
printf '%s\n' "$SECTION"

if [[ -z "${NO_RESULTS:-}" ]]; then
  printf '%s\n' "$SECTION" > "$OUT/section.md"
  python3 - "$ROOT/bench/RESULTS.md" "$OUT/section.md" <<'PY'
import sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n") + "\n"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmark results\n"
head = "## weir load accuracy (issue 4)"
start = text.find(head)
if start >= 0:
    nxt = text.find("\n## ", start + len(head))
    rest = "" if nxt < 0 else text[nxt + 1:]
    text = text[:start] + section + ("\n" + rest if rest else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
  log "wrote the section to bench/RESULTS.md"
fi

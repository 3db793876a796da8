#!/bin/bash
# CPU time per request of each process group of a server under /hello load (issue 2).
# Usage: bench/hello/cpu.sh NAME [SECONDS]   NAME: weir | uwsgi (nginx -> uWSGI) | granian
# Starts NAME with examples/shop and 4 workers on 127.0.0.1, warms up 3 s with
# `wrk -t2 -c50`, then reads utime+stime of every process of its session from /proc/PID/stat
# (and voluntary/involuntary context switches from /proc/PID/status) around SECONDS (10) of
# the same load, and prints per process kind: CPU us per request (user part), switches per
# request. Interleave servers in a loop and compare within a round: the machine's speed
# drifts between rounds. Environment: WEIR_BIN (target/release/weir), WEIR_ARGS (extra
# `weir serve` flags, e.g. "--preload off"), HOOK (shell run after readiness).
# Needs wrk, nginx, uwsgi, granian (scripts/test.sh installs them). Bounded: readiness 20 s,
# every load run by time; the servers are stopped whole at the end.
set -u
NAME=$1; DUR=${2:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${WEIR_BIN:-$ROOT/target/release/weir}; WEIR_ARGS=${WEIR_ARGS:-}; HOOK=${HOOK:-}
cd "$ROOT"; SHOP=examples/shop; D=$(mktemp -d /tmp/weir-cpu-XXXXXX); trap 'rm -rf "$D"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIDS=()
case $NAME in
 weir*) setsid $BIN serve --app app:app --chdir $SHOP --workers 4 --listen 127.0.0.1:$PORT --access-log off $WEIR_ARGS >$D/log 2>&1 </dev/null & PIDS+=($!);;
 uwsgi) setsid uwsgi --socket $D/u.sock --chmod-socket=666 --master --processes 4 --chdir $SHOP --module app:app --need-app --die-on-term --disable-logging --listen 1024 >$D/log 2>&1 </dev/null & PIDS+=($!)
   for i in $(seq 200); do [ -S $D/u.sock ] && break; sleep 0.1; done
   mkdir -p $D/n; cat > $D/n/nginx.conf <<EOC
user root; worker_processes auto; daemon off; pid $D/n/nginx.pid; error_log $D/n/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $D/n/cb; proxy_temp_path $D/n/pt; fastcgi_temp_path $D/n/ft; uwsgi_temp_path $D/n/ut; scgi_temp_path $D/n/st; keepalive_requests 100000;
 server { listen 127.0.0.1:$PORT backlog=4096; location / { include /etc/nginx/uwsgi_params; uwsgi_pass unix:$D/u.sock; } } }
EOC
   setsid nginx -p $D/n -c $D/n/nginx.conf -e $D/n/error.log >$D/nlog 2>&1 </dev/null & PIDS+=($!);;
 granian) setsid granian --interface wsgi --workers 4 --host 127.0.0.1 --port $PORT --working-dir $SHOP --no-access-log --no-ws app:app >$D/log 2>&1 </dev/null & PIDS+=($!);;
esac
for i in $(seq 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/hello)" = 200 ] && break; sleep 0.1; done
[ -n "$HOOK" ] && eval "$HOOK"
wrk -t2 -c50 -d3s http://127.0.0.1:$PORT/hello >/dev/null
snap() { for s in ${PIDS[@]}; do ps -s $s -o pid= ; done | while read p; do
  c=$(awk '{print $14+$15, $10, $14}' /proc/$p/stat 2>/dev/null); [ -z "$c" ] && continue
  v=$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' /proc/$p/status)
  comm=$(tr '\0' ' ' < /proc/$p/cmdline | awk '{print $1 ($2=="worker"?"-worker":"")}'); echo "$p $comm $c $v"; done; }
snap > $D/s0
wrk -t2 -c50 -d${DUR}s http://127.0.0.1:$PORT/hello > $D/wrk
snap > $D/s1
REQ=$(grep -oP '^\s*\K[0-9]+(?= requests)' $D/wrk); RPS=$(grep -oP 'Requests/sec:\s*\K[0-9.]+' $D/wrk)
python3 - $D $REQ $RPS $NAME <<'EOP'
import sys, collections
d, req, rps, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def load(f):
    r = {}
    for l in open(f):
        p, comm, cpu, flt, ut, v, n = l.split(); r[p] = (comm, int(cpu), int(flt), int(v), int(n), int(ut))
    return r
a, b = load(d+'/s0'), load(d+'/s1')
agg = collections.defaultdict(lambda: [0,0,0,0,0,0])
for p, (comm, *x) in b.items():
    if p not in a: continue
    g = agg[comm.split('/')[-1]]; g[5] += 1
    for i in range(5): g[i] += x[i] - a[p][1+i]
tot = 0
out = ['%-8s rps %6.0f' % (name, rps)]
for k, (cpu, flt, v, n, ut, np_) in sorted(agg.items()):
    if cpu == 0 and v == 0: continue
    us = cpu * 1e4 / req; tot += us
    out.append('%s(x%d) %.1fus (user %.1f) vcs %.2f ics %.2f' % (k, np_, us, ut*1e4/req, v/req, n/req))
out.append('total %.1fus' % tot)
print(' | '.join(out))
EOP
for s in ${PIDS[@]}; do kill -TERM $s 2>/dev/null; done
for s in ${PIDS[@]}; do for i in $(seq 50); do kill -0 $s 2>/dev/null || break; sleep 0.1; done; kill -KILL -- -$s 2>/dev/null; done
wait 2>/dev/null

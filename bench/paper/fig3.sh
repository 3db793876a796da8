#!/usr/bin/env bash
# The paper's Figure 3: a ~5 s slow query with 10 and 20 workers, 10 req/s, 100 requests.
# Every request is examples/shop's /slow?s=5 (a real `SELECT SLEEP(5)` on MariaDB), so the
# workers are the bottleneck: 10 workers serve 2 req/s, 20 serve 4, against 10 offered.
#   nginx-uwsgi  nginx -> uWSGI (N processes) over a Unix socket, stock settings (uWSGI's
#                listen queue 100, nginx's uwsgi_read_timeout 60s)
#   weir         weir serve, N workers, weir's defaults (queue: 64 per worker, 10 s timeout,
#                then 503 queue-timeout with Retry-After)
# Usage: bench/paper/fig3.sh [RUNS]   (default 1; servers alternate run by run)
# Environment: WORKERS_LIST ("10 20"), RATE (10), REQUESTS (100), SLOW (5 seconds),
#   TIMEOUT (120s: above the slowest nginx->uWSGI answer, ~45 s with 10 workers), DB, NO_BUILD,
#   NO_RECORD, WEIR_BIN.
# Bounded: about 3 minutes per run (nginx->uWSGI with 10 workers needs ~50 s to drain).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNS=${1:-1}
WORKERS_LIST=${WORKERS_LIST:-"10 20"}
RATE=${RATE:-10}
REQUESTS=${REQUESTS:-100}
SLOW=${SLOW:-5}
TIMEOUT=${TIMEOUT:-120s}
paper_init fig3
paper_db mariadb

for run in $(seq 1 "$RUNS"); do
  for w in $WORKERS_LIST; do
    servers="nginx-uwsgi weir"
    ((run % 2 == 0)) && servers="weir nginx-uwsgi"
    for server in $servers; do
      port=$(free_port)
      case_begin "$server-${w}w-$run"
      if [[ $server == weir ]]; then
        start_weir "$port" "$w"
      else
        start_uwsgi "$w"
        start_nginx "$port"
      fi
      wait_http "http://127.0.0.1:$port/hello"
      warm "http://127.0.0.1:$port/dbping" "$w"
      paper_load "$CASE" "http://127.0.0.1:$port/slow?s=$SLOW" --rate "$RATE" --requests "$REQUESTS" \
        --timeout "$TIMEOUT" --seed "$run"
      stop_all
    done
  done
done

rows=()
for w in $WORKERS_LIST; do
  rows+=(--row "nginx-uwsgi-${w}w|nginx -> uWSGI, $w workers|stock nginx and uWSGI")
  rows+=(--row "weir-${w}w|weir, $w workers|weir defaults: queue timeout 10 s")
done
paper_summary --name fig3 --runs "$RUNS" \
  --title "Figure 3: slow query (${SLOW} s), $RATE req/s, $REQUESTS requests, ${WORKERS_LIST// /, } workers" \
  --command "bench/paper/fig3.sh $RUNS" \
  --intro "Every request is \`/slow?s=$SLOW\` (\`SELECT SLEEP($SLOW)\` on MariaDB): N workers can finish N/$SLOW req/s, so a queue builds in front of them. nginx -> uWSGI (Unix socket, stock settings) queues every request in uWSGI's listen queue and answers all of them, late; weir queues them in its own dispatch queue and answers 503 \`queue-timeout\` (with Retry-After) to those that waited 10 s, its default. \`weir load --rate $RATE --requests $REQUESTS --timeout $TIMEOUT\`." \
  "${rows[@]}"

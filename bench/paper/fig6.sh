#!/usr/bin/env bash
# The paper's Figure 6: 40 KB responses read from uWSGI at a limited rate, 10 req/s, 100
# requests: nginx `uwsgi_limit_rate` 10k, 20k and 40k (bytes per second per request), plus
# nginx without a limit, weir plain, and weir's own `limit_rate` 10k, 20k and 40k (NGINX's
# `limit_rate`: the answer is paced to the client, and the worker is freed as soon as it has
# produced it, where `uwsgi_limit_rate` paces the read from uWSGI, holding the worker for
# an answer larger than the socket buffer).
# The response is examples/shop's /big?kb=40 (40960 bytes of text).
# Usage: bench/paper/fig6.sh [RUNS]   (default 1)
# Environment: WORKERS (10), RATE (10), REQUESTS (100), KB (40), LIMITS ("10k 20k 40k"),
#   TIMEOUT (30s), DB, NO_BUILD, NO_RECORD, WEIR_BIN.
# Bounded: 10 s of load per case plus the slowest response (~4 s at 10k): about 1.5 min a run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNS=${1:-1}
WORKERS=${WORKERS:-10}
RATE=${RATE:-10}
REQUESTS=${REQUESTS:-100}
KB=${KB:-40}
LIMITS=${LIMITS:-"10k 20k 40k"}
TIMEOUT=${TIMEOUT:-30s}
paper_init fig6
paper_db mariadb

cases=()
for l in $LIMITS; do cases+=("nginx-uwsgi-limit-$l"); done
cases+=(nginx-uwsgi weir)
for l in $LIMITS; do cases+=("weir-limit-$l"); done
for run in $(seq 1 "$RUNS"); do
  for server in "${cases[@]}"; do
    port=$(free_port)
    case_begin "$server-$run"
    case $server in
      weir) start_weir "$port" "$WORKERS" ;;
      weir-limit-*) start_weir "$port" "$WORKERS" '[[route]]' 'path = "/"' "limit_rate = \"${server#weir-limit-}\"" ;;
      nginx-uwsgi) start_uwsgi "$WORKERS"; start_nginx "$port" ;;
      nginx-uwsgi-limit-*) start_uwsgi "$WORKERS"; start_nginx "$port" "uwsgi_limit_rate ${server#nginx-uwsgi-limit-};" ;;
    esac
    wait_http "http://127.0.0.1:$port/hello"
    warm "http://127.0.0.1:$port/hello" "$WORKERS"
    paper_load "$CASE" "http://127.0.0.1:$port/big?kb=$KB" --rate "$RATE" --requests "$REQUESTS" \
      --timeout "$TIMEOUT" --seed "$run"
    stop_all
  done
done

rows=()
for l in $LIMITS; do rows+=(--row "nginx-uwsgi-limit-$l|nginx -> uWSGI, uwsgi_limit_rate $l|"); done
rows+=(--row "nginx-uwsgi|nginx -> uWSGI, no limit|reference")
rows+=(--row "weir|weir, defaults|no limit")
for l in $LIMITS; do rows+=(--row "weir-limit-$l|weir, limit_rate $l|paced to the client; the worker is freed at once"); done
paper_summary --name fig6 --runs "$RUNS" \
  --title "Figure 6: ${KB} KB responses, uwsgi_limit_rate ${LIMITS// /, }, $RATE req/s, $REQUESTS requests" \
  --command "bench/paper/fig6.sh $RUNS" \
  --intro "\`weir load --rate $RATE --requests $REQUESTS\` on \`/big?kb=$KB\` ($((KB * 1024)) bytes), $WORKERS workers on each side. nginx's \`uwsgi_limit_rate\` is per request, in bytes per second (10k = 10240 B/s): a $KB KB answer read at 10k needs about $((KB * 1024 / 10240)) s. weir's \`limit_rate\` is NGINX's \`limit_rate\` (per request, to the client, with NGINX's one second of credit): the worker hands its answer over at once and the front door paces it. \`uwsgi_limit_rate\` paces nginx's read from uWSGI: an answer larger than the socket buffer holds a uWSGI worker for its transfer, while weir's worker is freed however large the answer." \
  "${rows[@]}"

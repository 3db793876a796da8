#!/usr/bin/env bash
# The paper's Figure 5: NGINX with tiny uwsgi buffers, 10 req/s, 100 requests.
#   nginx-uwsgi-tiny  nginx -> uWSGI with `uwsgi_buffers 8 128; uwsgi_buffer_size 128;
#                     uwsgi_busy_buffers_size 256` (the paper's settings; buffering on)
#   nginx-uwsgi       the same stack with nginx's default buffers (8 x 4k/8k), for reference
#   weir              weir serve with its defaults (weir has no uwsgi_buffers knob: it never
#                     answers 502 because a buffer was small)
# The response is examples/shop's /items (about 17 KB of JSON from MariaDB), the payload of the
# paper's Figure 4; set PATH_RESP=/big?kb=40 (or any) for another size.
# Usage: bench/paper/fig5.sh [RUNS]   (default 1)
# Environment: WORKERS (10), RATE (10), REQUESTS (100), PATH_RESP (/items), TIMEOUT (30s), DB,
#   NO_BUILD, NO_RECORD, WEIR_BIN.
# Bounded: about 12 s per case (10 s of load), under a minute a run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNS=${1:-1}
WORKERS=${WORKERS:-10}
RATE=${RATE:-10}
REQUESTS=${REQUESTS:-100}
PATH_RESP=${PATH_RESP:-/items}
TIMEOUT=${TIMEOUT:-30s}
TINY="uwsgi_buffering on; uwsgi_buffers 8 128; uwsgi_buffer_size 128; uwsgi_busy_buffers_size 256;"
paper_init fig5
paper_db mariadb

for run in $(seq 1 "$RUNS"); do
  for server in nginx-uwsgi-tiny nginx-uwsgi weir; do
    port=$(free_port)
    case_begin "$server-$run"
    case $server in
      weir) start_weir "$port" "$WORKERS" ;;
      nginx-uwsgi) start_uwsgi "$WORKERS"; start_nginx "$port" ;;
      nginx-uwsgi-tiny) start_uwsgi "$WORKERS"; start_nginx "$port" "$TINY" ;;
    esac
    wait_http "http://127.0.0.1:$port/hello"
    warm "http://127.0.0.1:$port/dbping" "$WORKERS"
    paper_load "$CASE" "http://127.0.0.1:$port$PATH_RESP" --rate "$RATE" --requests "$REQUESTS" \
      --timeout "$TIMEOUT" --seed "$run"
    stop_all
    if [[ -s "$OUT/$CASE.nginx-error.log" ]]; then
      log "nginx error log: $(grep -c . "$OUT/$CASE.nginx-error.log") lines, e.g. $(grep -m1 -o '\] .*' "$OUT/$CASE.nginx-error.log" | cut -c1-160)"
    fi
  done
done

tiny_note="the paper's tiny buffers"
if [[ -s "$OUT/nginx-uwsgi-tiny-1.nginx-error.log" ]]; then
  tiny_note+="; nginx error log (run 1): $(grep -c . "$OUT/nginx-uwsgi-tiny-1.nginx-error.log") lines, first: \`$(grep -m1 -oE '\[(warn|error|crit)\] [0-9#]+: (\*[0-9]+ )?[^,]*' "$OUT/nginx-uwsgi-tiny-1.nginx-error.log" | sed -E 's/^\[([a-z]+)\] [0-9#]+: (\*[0-9]+ )?/[\1] /' | cut -c1-120)\`"
fi
paper_summary --name fig5 --runs "$RUNS" \
  --title "Figure 5: tiny nginx uwsgi buffers, $PATH_RESP, $RATE req/s, $REQUESTS requests" \
  --command "bench/paper/fig5.sh $RUNS" \
  --intro "nginx with \`$TINY\` against the same stack with nginx's default buffers and against weir with its defaults; \`weir load --rate $RATE --requests $REQUESTS\` on \`$PATH_RESP\`, $WORKERS workers on each side." \
  --row "nginx-uwsgi-tiny|nginx -> uWSGI, uwsgi_buffers 8 128, buffer_size 128, busy 256|$tiny_note" \
  --row "nginx-uwsgi|nginx -> uWSGI, default buffers|reference" \
  --row "weir|weir, defaults|response_buffer 256 KiB (a small answer comes whole; no spool)"

#!/usr/bin/env bash
# The paper's Figure 4: GET /items (about 17 KB of JSON read from MariaDB), 100 connections,
# 1000 req/s offered, with and without NGINX's cache.
#   nginx-uwsgi        nginx -> uWSGI (WORKERS processes) over a Unix socket, no cache
#   nginx-uwsgi-cache  the same with `uwsgi_cache` (a zone in the private temp dir, entries
#                      valid CACHE_VALID, key $request_uri); cache hits are counted from a
#                      buffered access log of $upstream_cache_status (that config only)
#   weir               weir serve, WORKERS workers, defaults: no response cache
#   weir-cache         the same with weir's response cache: `[cache] memory = "256MiB"` and a
#                      `[[route]]` on PATH_ITEMS's path with `[route.cache] valid = { "200" =
#                      CACHE_VALID }`, key "$request_uri" (as NGINX's uwsgi_cache_valid and
#                      uwsgi_cache_key above); hits are counted from weir_cache_requests_total
#                      (hit, miss, expired, ...) on its admin listener's /metrics, read after
#                      the load. Lock off on both sides, for parity: the NGINX case has no
#                      uwsgi_cache_lock (off by default), so weir's `lock` stays at its default,
#                      false; when an entry expires every request that finds it expired goes
#                      to the app until one of them has refreshed it, in both.
# The load is `weir load --rate 1000 --connections 100 --max-connections 100`: an open loop
# that may use 100 connections and no more, as the paper's "100 concurrent connections at
# 1000 QPS". When all 100 are busy the next request waits for one (a missed slot in the
# report; its latency still counts from its scheduled time).
# Usage: bench/paper/fig4.sh [RUNS]   (default 1)
# Environment: WORKERS (10), RATE (1000), CONNECTIONS (100), DURATION (10s), TIMEOUT (30s),
#   CACHE_VALID (2s), PATH_ITEMS (/items), DB, NO_BUILD, NO_RECORD, WEIR_BIN.
# Bounded: each case lasts DURATION plus the time to drain (TIMEOUT at most): under 3 min a run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNS=${1:-1}
WORKERS=${WORKERS:-10}
RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-100}
DURATION=${DURATION:-10s}
TIMEOUT=${TIMEOUT:-30s}
CACHE_VALID=${CACHE_VALID:-2s}
PATH_ITEMS=${PATH_ITEMS:-/items}
# cache_counts LOG: " HIT n MISS m ..." for the measured path only (not the readiness probes).
cache_counts() { awk -v p="${PATH_ITEMS%%\?*}" '$1 == p { n[$2]++ } END { for (k in n) printf " %s %d", k, n[k] }' "$1"; }
# weir_cache_counts METRICS: " hit n miss m ..." (the outcomes that are not 0) of the cached
# route, from weir's /metrics (the readiness probes are on other paths, outside the route).
weir_cache_counts() {
  awk -v r="${PATH_ITEMS%%\?*}" -F'[{}" ]+' '$1 == "weir_cache_requests_total" && $3 == r && $NF > 0 { printf " %s %d", $5, $NF }' "$1"
}
paper_init fig4
paper_db mariadb

for run in $(seq 1 "$RUNS"); do
  for server in nginx-uwsgi nginx-uwsgi-cache weir weir-cache; do
    port=$(free_port)
    case_begin "$server-$run"
    admin=
    case $server in
      weir) start_weir "$port" "$WORKERS" ;;
      weir-cache)
        admin=$(free_port)
        start_weir "$port" "$WORKERS" '[admin]' "listen = \"127.0.0.1:$admin\"" '[cache]' 'memory = "256MiB"' \
          '[[route]]' "path = \"${PATH_ITEMS%%\?*}\"" '[route.cache]' "valid = { \"200\" = \"$CACHE_VALID\" }" \
          'key = "$request_uri"' 'lock = false' ;;
      nginx-uwsgi) start_uwsgi "$WORKERS"; start_nginx "$port" ;;
      nginx-uwsgi-cache)
        start_uwsgi "$WORKERS"
        start_nginx "$port" \
          "uwsgi_cache shop; uwsgi_cache_key \$request_uri; uwsgi_cache_valid 200 $CACHE_VALID; access_log $OUT/$CASE.cache-status.log cachestatus buffer=256k flush=1s;" \
          "uwsgi_cache_path $RUN/nginx/cache levels=1:2 keys_zone=shop:10m max_size=100m inactive=1m use_temp_path=off; log_format cachestatus '\$uri \$upstream_cache_status';" ;;
    esac
    wait_http "http://127.0.0.1:$port/hello"
    warm "http://127.0.0.1:$port/dbping" "$WORKERS"
    paper_load "$CASE" "http://127.0.0.1:$port$PATH_ITEMS" --rate "$RATE" --duration "$DURATION" \
      --connections "$CONNECTIONS" --max-connections "$CONNECTIONS" --timeout "$TIMEOUT" --seed "$run"
    if [[ -n "$admin" ]]; then
      curl -fsS --max-time 5 "http://127.0.0.1:$admin/metrics" > "$OUT/$CASE.metrics" || log "no /metrics from weir's admin listener"
    fi
    stop_all
    if [[ -f "$OUT/$CASE.cache-status.log" ]]; then
      log "cache ($PATH_ITEMS):$(cache_counts "$OUT/$CASE.cache-status.log")"
    fi
    if [[ -s "$OUT/$CASE.metrics" ]]; then
      log "cache ($PATH_ITEMS):$(weir_cache_counts "$OUT/$CASE.metrics"); weir_backend_requests_total $(awk '$1 == "weir_backend_requests_total" { print $2 }' "$OUT/$CASE.metrics") (the readiness and warm-up requests included)"
    fi
  done
done

cache_note="uwsgi_cache, valid $CACHE_VALID"
if [[ -f "$OUT/nginx-uwsgi-cache-1.cache-status.log" ]]; then
  cache_note+=" (run 1:$(cache_counts "$OUT/nginx-uwsgi-cache-1.cache-status.log"))"
fi
weir_cache_note="weir [cache] in memory, valid $CACHE_VALID, lock off"
if [[ -s "$OUT/weir-cache-1.metrics" ]]; then
  weir_cache_note+=" (run 1:$(weir_cache_counts "$OUT/weir-cache-1.metrics"))"
fi
paper_summary --name fig4 --runs "$RUNS" \
  --title "Figure 4: $PATH_ITEMS (~17 KB from MariaDB), $CONNECTIONS connections, $RATE req/s offered, with and without cache" \
  --command "bench/paper/fig4.sh $RUNS" \
  --intro "\`weir load --rate $RATE --duration $DURATION --connections $CONNECTIONS --max-connections $CONNECTIONS --timeout $TIMEOUT\` against \`$PATH_ITEMS\` (about 17 KB of JSON, 80 rows read from MariaDB per request), $WORKERS workers on each side. The offered rate is above what $WORKERS Python workers on this machine can serve without a cache, so the achieved rate is the server's capacity and the latencies grow with the backlog (a missed slot is a request that found all $CONNECTIONS connections busy; it still counts from its scheduled time). The cached cases keep 200 answers for $CACHE_VALID, keyed by \`\$request_uri\`, without a fill lock on either side (NGINX's \`uwsgi_cache_lock\` is off by default; weir's \`lock\` is left off to match): weir's hits are answered from memory by its front door, NGINX's from the cache's files; the hit counts are NGINX's \`\$upstream_cache_status\` (access log) and weir's \`weir_cache_requests_total\` (admin /metrics)." \
  --row "nginx-uwsgi|nginx -> uWSGI, $WORKERS workers, no cache|" \
  --row "nginx-uwsgi-cache|nginx -> uWSGI, $WORKERS workers, uwsgi_cache|$cache_note" \
  --row "weir|weir, $WORKERS workers, no cache|weir defaults" \
  --row "weir-cache|weir, $WORKERS workers, [cache]|$weir_cache_note"

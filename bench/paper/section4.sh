#!/usr/bin/env bash
# The paper's Section IV example, side by side on this machine: 10 workers each, an open-loop
# load of RATE req/s (default 150) for DURATION (10s) where 2% of requests hit a 5-second
# endpoint (examples/shop /slow?s=5) and 98% a fast one (/hello).
#   weir         weir serve, 10 workers, [[route]] /slow max_concurrency = 3, queue timeout 1s
#   nginx-uwsgi  nginx -> uWSGI 2.0.31 (10 processes) over a Unix socket, stock settings
# One load tool for both (weir load, --mix, JSON results); per-endpoint p50/p99/max and 5xx
# counts are printed and appended to bench/RESULTS.md with this command.
# Usage: bench/paper/section4.sh [RUNS]   (default 1; servers alternate run by run)
# Environment: RATE, DURATION, WEIR_BIN (default target/release/weir, built unless NO_BUILD=1),
#   NO_RECORD=1 (do not append to bench/RESULTS.md), DB (mariadb, the default, as in the
#   paper: the private MariaDB, /slow a real SELECT SLEEP; sqlite: /slow is a time.sleep).
# The common parts (temp dir, nginx config, uWSGI, weir.toml, cleanup) are in lib.sh.
# Bounded: each load run lasts DURATION plus the per-request timeout (30s) at most.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNS=${1:-1}
RATE=${RATE:-150}
DURATION=${DURATION:-10s}
paper_init section4
paper_db mariadb

cat > "$RUN/mix.toml" <<MIX
[[request]]
weight = 98
path = "/hello"

[[request]]
weight = 2
path = "/slow?s=5"
MIX

for run in $(seq 1 "$RUNS"); do
  for server in weir nginx-uwsgi; do
    port=$(free_port)
    case_begin "$server-$run"
    if [[ $server == weir ]]; then
      start_weir "$port" 10 '[queue]' 'timeout = "1s"' '[[route]]' 'path = "/slow"' 'max_concurrency = 3'
    else
      start_uwsgi 10
      start_nginx "$port"
    fi
    wait_http "http://127.0.0.1:$port/hello"
    "$WEIR" load "http://127.0.0.1:$port/" --rate "$RATE" --duration "$DURATION" --mix "$RUN/mix.toml" \
      --timeout 30s --seed "$run" --json "$OUT/$server-$run.json" > "$OUT/$server-$run.txt" 2>&1 || true
    # (a non-zero exit may only mean 5xx were seen; no JSON means the load never ran)
    [[ -s "$OUT/$server-$run.json" ]] || { log "weir load failed: $(tail -1 "$OUT/$server-$run.txt")"; exit 1; }
    stop_all
  done
done

python3 - "$OUT" "$RATE" "$DURATION" "$RUNS" "${NO_RECORD:-0}" "$ROOT/bench/RESULTS.md" <<'PY'
import glob, json, os, statistics, sys, datetime
out, rate, duration, runs, no_record, results = sys.argv[1:]
rows = []
for server in ("weir", "nginx-uwsgi"):
    files = sorted(glob.glob(os.path.join(out, server + "-*.json")))
    per = {}
    for f in files:
        d = json.load(open(f))
        for e in d["entries"]:
            s = per.setdefault(e["name"], {"p50": [], "p99": [], "max": [], "n": 0, "5xx": 0, "errors": 0, "classes": {}})
            s["p50"].append(e["latency_ms"]["p50"]); s["p99"].append(e["latency_ms"]["p99"]); s["max"].append(e["latency_ms"]["max"])
            s["n"] += e["requests"]
            s["5xx"] += sum(v for k, v in e["status"].items() if k.startswith("5"))
            s["errors"] += e["errors"]
        for k, v in d.get("weir_errors", {}).items():
            per.setdefault("_classes", {}).setdefault(k, 0)
            per["_classes"][k] += v
    classes = per.pop("_classes", {})
    for name, s in per.items():
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        rows.append((server, name, s["n"], med(s["p50"]), med(s["p99"]), max(s["max"]) if s["max"] else float("nan"), s["5xx"], s["errors"]))
    rows.append((server, "x-weir-error classes", ", ".join("%s: %d" % kv for kv in sorted(classes.items())) or "none", None, None, None, None, None))
lines = ["| server | endpoint | requests | p50 ms | p99 ms | max ms | 5xx | errors (timeouts, resets) |", "|---|---|---|---|---|---|---|---|"]
for r in rows:
    if r[3] is None:
        lines.append("| %s | %s | %s | | | | | |" % (r[0], r[1], r[2]))
    else:
        lines.append("| %s | %s | %d | %.1f | %.1f | %.1f | %d | %d |" % r)
table = "\n".join(lines)
print(table)
if no_record != "1":
    with open(results, "a") as f:
        f.write("\n## Section IV: 2%% slow requests, 10 workers each (issue 3) — %s\n\n" % datetime.date.today())
        f.write("Command: `bench/paper/section4.sh %s` (RATE=%s, DURATION=%s; medians of %s run(s) per server; raw JSON in bench/out/)\n\n" % (runs, rate, duration, runs))
        f.write(table + "\n")
PY

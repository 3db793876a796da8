"""bench/workers/run.sh's summary: reads a run's output directory, prints the tables and
writes OUT/section.md (a section for bench/RESULTS.md).

    python3 summary.py OUT CMD RUNS SERVERS COUNTS ROOT
"""

import datetime
import json
import os
import statistics
import sys

OUT, CMD, RUNS, SERVERS, COUNTS, ROOT = sys.argv[1:]
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import first_line, read_words, weir_build  # noqa: E402

RUNS = int(RUNS)
SERVERS = SERVERS.split()
COUNTS = [int(x) for x in COUNTS.split()]


def load(server, n, run):
    try:
        with open(os.path.join(OUT, "%s.%d.%d.json" % (server, n, run))) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def f(x, fmt="%.1f"):
    return "-" if x is None else fmt % x


def runs_of(server, n, get):
    out = []
    for run in range(1, RUNS + 1):
        r = load(server, n, run)
        try:
            out.append(get(r) if r else None)
        except (KeyError, TypeError):
            out.append(None)
    return out


def mib(kib):
    return None if kib is None else kib / 1024


# -- memory -----------------------------------------------------------------------------
STATES = (("fresh", "fresh"), ("idle", "after requests"))
head = "| server | state | " + " | ".join("%d workers" % n for n in COUNTS) + " | per added worker (%d -> %d) |" % (
    COUNTS[0], COUNTS[-1])
rows = [head, "|---|---|" + "---:|" * (len(COUNTS) + 1)]
detail = ["| server | state | workers | processes | total PSS MiB | master | zygote | workers (each) | total RSS MiB | total USS MiB |",
          "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
for key, label in STATES:
    for s in SERVERS:
        totals = {n: med(runs_of(s, n, lambda r: r[key]["pss_kib"])) for n in COUNTS}
        cells = []
        for n in COUNTS:
            per = runs_of(s, n, lambda r: r[key]["pss_kib"])
            extra = " (runs: %s)" % " ".join(f(mib(x)) for x in per) if RUNS > 1 else ""
            cells.append(f(mib(totals[n])) + extra)
        a, b = totals[COUNTS[0]], totals[COUNTS[-1]]
        slope = (b - a) / (COUNTS[-1] - COUNTS[0]) if a is not None and b is not None and COUNTS[-1] != COUNTS[0] else None
        rows.append("| %s | %s | %s | %s |" % (s, label, " | ".join(cells), f(mib(slope), "%.2f")))
for s in SERVERS:
    for key, label in STATES:
        for n in COUNTS:
            r = load(s, n, 1)
            if not r or key not in r:
                continue
            i = r[key]
            br = i["by_role_pss_kib"]
            w = i["workers"] or 1
            detail.append("| %s | %s | %d | %d | %.1f | %.1f | %s | %.1f (%.2f) | %.1f | %.1f |" % (
                s, label, n, i["processes"], mib(i["pss_kib"]), mib(br.get("master", 0)),
                f(mib(br["zygote"])) if "zygote" in br else "-", mib(br.get("worker", 0)),
                mib(br.get("worker", 0)) / w, mib(i["rss_kib"]), mib(i["uss_kib"])))
table_mem = "\n".join(rows)
table_detail = "\n".join(detail)

# -- weir: start and reload -------------------------------------------------------------
table_reload = ""
if "weir" in SERVERS:
    rr = ["| workers | start -> READY s | SIGHUP -> READY s | requests across the reload | 200 | failed (other status + errors) | p99 / max ms | load run | total PSS MiB before -> after the reload |",
          "|---:|---|---|---:|---:|---:|---|---|---|"]
    for n in COUNTS:
        for run in range(1, RUNS + 1):
            r = load("weir", n, run)
            if not r:
                rr.append("| %d | not measured | | | | | | | |" % n)
                continue
            ld = r.get("reload_load") or {}
            st = ld.get("status", {})
            ok = int(st.get("200", 0))
            bad = sum(int(v) for k, v in st.items() if k != "200") + int(ld.get("errors", 0))
            rr.append("| %d%s | %s | %s | %s | %d | %d | %s / %s | %s | %s -> %s |" % (
                n, " (run %d)" % run if RUNS > 1 else "", f(r.get("start_to_ready_s"), "%.2f"),
                f(r.get("sighup_to_ready_s"), "%.2f"), ld.get("requests", "-"), ok, bad,
                f(ld.get("p99_ms"), "%.1f"), f(ld.get("max_ms"), "%.1f"),
                ("VALID" if ld.get("valid") else "INVALID") + ("; " + "; ".join(r["errors"]) if r.get("errors") else ""),
                f(mib((r.get("idle") or {}).get("pss_kib"))), f(mib((r.get("after_reload") or {}).get("pss_kib")))))
    table_reload = "\n".join(rr)

print()
print(table_mem)
print()
print(table_detail)
if table_reload:
    print()
    print(table_reload)

head_rev, dirty = weir_build(OUT)
try:
    with open(os.path.join(OUT, "weir-build")) as fh:
        built = fh.readline().split("modified ", 1)[-1].strip()
except OSError:
    built = "?"
# the run's start (its load average file), not the summary's
now = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(OUT, "loadavg-start")),
                                      datetime.timezone.utc)
section = """## Memory as workers grow, start and reload (issue 19) — %s

Command: `%s`. %d CPUs; load average %s at the start, %s at the end; weir at %s%s (release
binary built %s); uWSGI %s; nginx %s (in front of uWSGI only to send requests; not counted).

examples/shop on SQLite. weir: `weir serve --app app:app --workers N --access-log off`
(preload "auto", the default: a zygote imports the app once and forks the workers); uWSGI:
`--master --processes N --need-app --die-on-term --disable-logging --listen 1024` (the app
imported in the master and the workers forked: uWSGI's default, no `--lazy-apps`). Each
server is started anew for each N and measured twice: *fresh* (one GET /hello, then %s s
idle) and *after requests* (then `wrk -t2 -c2N -d1s` on /hello and on /items, the same
idle): the sum of `Pss` in `/proc/PID/smaps_rollup` over its first process and every
descendant (bench/workers/pss.py). The slope is (PSS at the most workers - PSS at the
fewest) / the workers added. Memory barely depends on the machine's load. Total PSS, MiB:

%s

By process (PSS MiB, run 1; RSS and USS totals for comparison; weir's zygote is the process
the workers are forked from, uWSGI's master plays that part):

%s
""" % (now.strftime("%Y-%m-%d %H:%M UTC"), CMD, os.cpu_count(),
       " ".join(read_words(OUT, "loadavg-start")), " ".join(read_words(OUT, "loadavg-end")),
       head_rev, " + uncommitted changes" if dirty else "", built, first_line(["uwsgi", "--version"]),
       first_line(["nginx", "-v"]).split("/")[-1], os.environ.get("SETTLE", "2"), table_mem, table_detail)
if table_reload:
    section += """
weir's start and reload (bench/workers/weir_cycle.py): weir runs with `NOTIFY_SOCKET` set to
a socket of the script's, and *start* is the time from the exec to `READY=1` (every worker
of the first generation up); *reload* is the time from SIGHUP to the next `READY=1` (the new
generation, forked from a new zygote, took over). Across the reload `weir load --rate %s
--duration %ss --timeout 5s` on /hello, the signal %s s into it; *failed* counts every
answer other than 200 and every error. weir load on these 2 shared cores is often marked
INVALID (its send lateness p99 over 1 ms): the rate was still offered, a little late.

%s
""" % (os.environ.get("RELOAD_RATE", "500"), os.environ.get("LOAD_S", "12"), os.environ.get("RELOAD_AT", "3"),
       table_reload)
section += "\nRaw results: `%s/` (not committed).\n" % os.path.relpath(OUT, ROOT)
with open(os.path.join(OUT, "section.md"), "w") as fh:
    fh.write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(OUT, "section.md"))

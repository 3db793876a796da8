"""bench/conns/run.sh's summary: reads a run's output directory, prints the tables and
writes OUT/section.md (a section for bench/RESULTS.md).

    python3 summary.py OUT CMD RUNS SERVERS WORKERS KEEPALIVE SLOWLORIS DURATION SETTLE
                       OVER_PATH OVER_CLIENTS OVER_DURATION ROOT
"""

import datetime
import json
import os
import statistics
import sys

(OUT, CMD, RUNS, SERVERS, WORKERS, KEEPALIVE, SLOWLORIS, DURATION, SETTLE, OVER_PATH,
 OVER_CLIENTS, OVER_DURATION, ROOT) = sys.argv[1:]
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import access_lines, first_line, read_words, weir_build  # noqa: E402

RUNS = int(RUNS)
SERVERS = SERVERS.split()


def load(name):
    try:
        with open(os.path.join(OUT, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


WRK = {}
try:
    with open(os.path.join(OUT, "wrk.tsv")) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) == 5:
                WRK[p[0]] = p[1:]
except OSError:
    pass


def wrk(server, run, which):
    """(req/s, p99 ms, errors) of a wrk file, or None."""
    p = WRK.get("%s.%d.wrk-%s.txt" % (server, run, which))
    if not p or p[0] == "nan":
        return None
    return float(p[0]), float(p[2]), int(p[3])


def holder(server, run):
    ready, end = {}, {}
    try:
        with open(os.path.join(OUT, "%s.%d.holder.txt" % (server, run))) as f:
            for line in f:
                w = line.split()
                d = dict(x.split("=", 1) for x in w[1:])
                if w and w[0] == "READY":
                    ready = d
                elif w and w[0] == "END":
                    end = d
    except OSError:
        pass
    return ready, end


def access(server, run, phase):
    """{status: [latency ms, ...]} from the phase's access log lines."""
    out = {}
    for r in access_lines(os.path.join(OUT, "%s.%d.access-%s.log" % (server, run, phase))):
        if isinstance(r, dict):
            st, ms = str(r.get("status")), r.get("total_ms")
        else:
            if len(r) != 2:
                continue
            try:
                st, ms = r[0], float(r[1]) * 1000
            except ValueError:
                continue
        if ms is not None:
            out.setdefault(st, []).append(float(ms))
    return out


def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def f1(x, fmt="%.1f"):
    return "-" if x is None else fmt % x


# -- part 1 ---------------------------------------------------------------------------------
rows1 = ["| server | run | connections held (keep-alive + slowloris; closed by the server) | front RSS before -> held -> after /hello, MiB | RSS growth MiB (KiB / conn) | front PSS before -> held -> after, MiB | PSS growth MiB (KiB / conn) | /hello req/s unloaded -> beside (ratio) | /hello p99 ms unloaded -> beside | wrk errors |",
         "|---|---:|---|---|---:|---|---:|---|---|---:|"]
agg1 = {s: {"rss": [], "pss": [], "ratio": []} for s in SERVERS}
for run in range(1, RUNS + 1):
    for s in SERVERS:
        b, h, a = (load("%s.%d.mem-%s.json" % (s, run, k)) for k in ("before", "held", "after"))
        if not (b and h and a):
            rows1.append("| %s | %d | not measured | | | | | | | |" % (s, run))
            continue
        ready, end = holder(s, run)
        n = int(ready.get("keepalive_ok", 0)) + int(ready.get("slowloris_ok", 0))
        held = "%s + %s%s; %s" % (ready.get("keepalive_ok", "?"), ready.get("slowloris_ok", "?"),
                                   (", %s failed%s" % (ready["failed"], (" (answers " + ready["answers"] + ")") if ready.get("answers") else ""))
                                   if ready.get("failed", "0") != "0" else "",
                                   end.get("closed_by_server", "?"))
        mib = lambda d, k: d[k] / 1024  # noqa: E731
        g_rss = (max(h["rss_kib"], a["rss_kib"]) - b["rss_kib"])
        g_pss = (max(h["pss_kib"], a["pss_kib"]) - b["pss_kib"])
        u, bs = wrk(s, run, "unloaded"), wrk(s, run, "beside")
        ratio = bs[0] / u[0] if u and bs else None
        agg1[s]["rss"].append(g_rss / 1024)
        agg1[s]["pss"].append(g_pss / 1024)
        if ratio:
            agg1[s]["ratio"].append(ratio)
        rows1.append("| %s | %d | %s | %.1f -> %.1f -> %.1f | %.1f (%s) | %.1f -> %.1f -> %.1f | %.1f (%s) | %s -> %s (%s) | %s -> %s | %s |" % (
            s, run, held, mib(b, "rss_kib"), mib(h, "rss_kib"), mib(a, "rss_kib"), g_rss / 1024,
            f1(g_rss / n if n else None), mib(b, "pss_kib"), mib(h, "pss_kib"), mib(a, "pss_kib"),
            g_pss / 1024, f1(g_pss / n if n else None),
            f1(u and u[0], "%.0f"), f1(bs and bs[0], "%.0f"), f1(ratio, "%.2fx"),
            f1(u and u[1], "%.2f"), f1(bs and bs[1], "%.2f"),
            "%s / %s" % (u[2] if u else "-", bs[2] if bs else "-")))

# -- part 2 ---------------------------------------------------------------------------------
rows2 = ["| server | run | capacity req/s (closed loop, 50 conns) | unloaded (C/4) p99 ms: client / server | offered 2C req/s, achieved | answers by status (share refused) | admitted req/s (/ C) | client p99 ms, all answers | server p99 ms: admitted (200) / refused | admitted p99 / unloaded p99 (server) | missed slots | timeouts, errors; run |",
         "|---|---:|---:|---|---|---|---:|---:|---|---:|---:|---|"]
agg2 = {s: [] for s in SERVERS}
for run in range(1, RUNS + 1):
    for s in SERVERS:
        cap, un, ov = (load("%s.%d.%s.json" % (s, run, k)) for k in ("capacity", "unloaded", "overload"))
        if not (cap and un and ov):
            if cap or un or ov:
                rows2.append("| %s | %d | not measured | | | | | | | | | |" % (s, run))
            continue
        st = {str(k): int(v) for k, v in ov.get("status", {}).items()}
        total = sum(st.values())
        ok = st.get("200", 0)
        refused = total - ok
        admitted = ok / float(ov["manifest"]["duration"] or 1)
        a_un, a_ov = access(s, run, "unloaded"), access(s, run, "overload")
        un_srv = pct([x for k, v in a_un.items() if k == "200" for x in v], 0.99)
        adm = pct(a_ov.get("200", []), 0.99)
        ref = pct([x for k, v in a_ov.items() if k != "200" for x in v], 0.99)
        ratio = adm / un_srv if adm is not None and un_srv else None
        if ratio:
            agg2[s].append(ratio)
        g = ov.get("generator", {})
        kinds = ov.get("errors_by_kind", {})
        rows2.append("| %s | %d | %.0f | %s / %s | %.0f, %.0f | %s (%.0f%%) | %.0f (%.2f) | %s | %s / %s | %s | %s | %s timeouts, %s errors%s; %s |" % (
            s, run, cap["achieved_rate"], f1(un["latency_ms"]["p99"], "%.2f"), f1(un_srv, "%.2f"),
            ov["manifest"]["rate"], ov["achieved_rate"],
            ", ".join("%s: %d" % kv for kv in sorted(st.items())) or "none",
            100.0 * refused / total if total else 0, admitted, admitted / cap["achieved_rate"],
            f1(ov["latency_ms"]["p99"], "%.1f"), f1(adm, "%.1f"), f1(ref, "%.2f"), f1(ratio, "%.1fx"), g.get("missed_slots", "?"),
            kinds.get("timeout", 0), ov.get("errors", 0),
            (" (%s)" % ", ".join("%s %s" % kv for kv in kinds.items() if kv[1])) if ov.get("errors") else "",
            "VALID" if g.get("valid") else "INVALID (%s)" % "; ".join(g.get("invalid_reasons", []))))

table1, table2 = "\n".join(rows1), "\n".join(rows2)
med = lambda v: statistics.median(v) if v else None  # noqa: E731
summary1 = "; ".join("%s: RSS +%s MiB, PSS +%s MiB, /hello beside %s" % (
    s, f1(med(agg1[s]["rss"])), f1(med(agg1[s]["pss"])), f1(med(agg1[s]["ratio"]), "%.2fx"))
    for s in SERVERS)
summary2 = "; ".join("%s: admitted p99 / unloaded p99 %s" % (s, f1(med(agg2[s]), "%.1fx"))
                     for s in SERVERS if agg2[s])
print()
print(table1)
print()
print("Medians: " + summary1)
if len(rows2) > 2:
    print()
    print(table2)
    print()
    print("Medians: " + summary2)

head_rev, dirty = weir_build(OUT)
try:
    with open(os.path.join(OUT, "weir-build")) as f:
        built = f.readline().split("modified ", 1)[-1].strip()
except OSError:
    built = "?"
# the run's start (its load average file), not the summary's
now = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(OUT, "loadavg-start")),
                                      datetime.timezone.utc)
# --spin, when not weir load's default (250us).
SPIN_FLAG = "" if os.environ.get("SPIN", "250us") == "250us" else " --spin " + os.environ["SPIN"]
section = """## Connections: idle keep-alive and slowloris clients, and overload (issue 19) — %s

Command: `%s`. %d CPUs; load average %s at the start, %s at the end; weir at %s%s (release
binary built %s); nginx %s; uWSGI %s; wrk; `weir load` from the same weir binary.

examples/shop on SQLite, %s workers on each side, every server on 127.0.0.1; nginx
(worker_processes auto) in front of uWSGI (`--master --processes %s`) over a Unix socket.
Both have a 60 s header timeout so that the slowloris connections stay for the whole
measurement: weir `[server] client_header_timeout = "60s"` (its default is 10s) and
`keepalive_timeout = "300s"`, nginx
`client_header_timeout 60s; keepalive_timeout 300s;` (and `worker_connections 16384;
worker_rlimit_nofile 19000;`). The soft open-file limit is raised to the hard one (20000).

**Idle connections.** bench/conns/holder.py (one Python process) opens %s connections
that each make one `GET /hello` and then stay idle, and %s that send a partial request
head and nothing more. The front's memory is weir's master alone (not its zygote and
workers) and nginx's master + workers (not uWSGI), from `/proc/PID/smaps_rollup`, before
the holder, %s s after all its connections are open ("held"), and after /hello beside them;
the growth is the larger of the last two minus the first, per connection held. /hello:
`wrk -t2 -c50 -d%ss --latency`, unloaded then beside the held connections, in the same
server's life. The memory barely depends on the machine's load; the /hello ratio does
(2 shared cores, wrk and the holder on them too): read it as a check, not a measurement.

%s

%s.

**Overload**, on `%s`. A fresh server with its access log on (weir `access_log` to a file,
one write per request; nginx `access_log` with `buffer=256k flush=1s`): capacity C by `weir
load --connections 50 -d%ss` (closed loop); unloaded by `weir load --rate C/4 -d%ss%s`; then
`weir load --rate 2C --connections %s --max-connections %s --reuse %s%s -d%ss --timeout 10s`
(open loop, twice capacity, %s clients; a request due while all of them are busy waits in weir load, a
missed slot, its latency counted from its scheduled time). The defaults' path is /items
(17 KB of JSON from SQLite), not /hello: twice /hello's capacity on these 2 shared cores is
about 30k req/s, more than weir load can send beside the server. Answers by status and the client-side p99 (all answers) are weir load's; the
p99 of admitted (200) and refused answers apart are the server's own (weir's access log
`total_ms`, nginx's `$request_time`, 1 ms resolution), since weir load has no percentiles by
status. One run: noisy on this machine.

%s

%s.

Raw results: `%s/` (not committed).
""" % (now.strftime("%Y-%m-%d %H:%M UTC"), CMD, os.cpu_count(),
       " ".join(read_words(OUT, "loadavg-start")), " ".join(read_words(OUT, "loadavg-end")),
       head_rev, " + uncommitted changes" if dirty else "", built,
       first_line(["nginx", "-v"]).split("/")[-1], first_line(["uwsgi", "--version"]),
       WORKERS, WORKERS, KEEPALIVE, SLOWLORIS, SETTLE, DURATION, table1, "Medians: " + summary1,
       OVER_PATH, DURATION, DURATION, SPIN_FLAG, OVER_CLIENTS, OVER_CLIENTS, os.environ.get("REUSE", "oldest"),
       SPIN_FLAG, OVER_DURATION, OVER_CLIENTS,
       table2, ("Medians: " + summary2) if summary2 else "No overload result",
       os.path.relpath(OUT, ROOT))
with open(os.path.join(OUT, "section.md"), "w") as f:
    f.write(section)
print("(a section for bench/RESULTS.md: %s)" % os.path.join(OUT, "section.md"))

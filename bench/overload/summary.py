"""bench/overload/run.sh's summary: reads a run's output directory (weir load JSON, access
logs), prints the markdown tables. Usage: summary.py OUT MS WORKERS"""

import datetime
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import access_lines  # noqa: E402

OUT, MS, WORKERS = sys.argv[1], sys.argv[2], sys.argv[3]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def access(path):
    """(end time in epoch seconds, status, ms from arrival) for each /work request."""
    rows = []
    for r in access_lines(path):
        if isinstance(r, dict):
            if r.get("path") != "/work":
                continue
            t = datetime.datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
            rows.append((t, int(r["status"]), float(r["total_ms"])))
        elif len(r) == 3:
            try:
                rows.append((float(r[0]), int(r[1]), float(r[2]) * 1000))
            except ValueError:
                continue
    return rows


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def f1(v, fmt="%.1f"):
    return "-" if v is None else fmt % v


def runs_of(server):
    return sorted({int(m.group(1)) for p in glob.glob(os.path.join(OUT, server + ".*.capacity.json"))
                   for m in [re.search(r"\.(\d+)\.capacity\.json$", p)] if m})


servers = [s for s in ("weir", "nginx-uwsgi") if runs_of(s)]
print("/work?ms=%s, %s workers each. Latency by status is from each server's access log (arrival at"
      " the front to the answer); the rest from weir load (client side, from each request's"
      " scheduled time)." % (MS, WORKERS))
print()
print("| server | run | capacity req/s | unloaded p50 ms | at 2x: 200 | 503 | other | errors |"
      " goodput % of capacity (200s within the load's window) | 503 p50 / p99 ms | 200 p50 / p99 ms | 200 p99 / unloaded p50 |"
      " client p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
step_rows = []
for s in servers:
    for run in runs_of(s):
        base = os.path.join(OUT, "%s.%d." % (s, run))
        cap, un, ov = load(base + "capacity.json"), load(base + "unloaded.json"), load(base + "overload.json")
        if not (cap and un and ov):
            continue
        c = cap["achieved_rate"]
        st = {int(k): v for k, v in ov["status"].items()}
        other = sum(v for k, v in st.items() if k not in (200, 503))
        secs = ov["manifest"].get("duration")
        rows = access(base + "overload.access.log")
        r503 = [ms for _, code, ms in rows if code == 503]
        r200 = [ms for _, code, ms in rows if code == 200]
        # goodput: 200s answered within the load's window (the first answer's second on),
        # not those that drained from a queue after it
        t0 = min((t for t, _, _ in rows), default=None)
        in_window = sum(1 for t, code, _ in rows if code == 200 and t0 is not None and t < t0 + (secs or 0))
        good = (100.0 * in_window / secs / c) if secs and c else None
        un50 = un["latency_ms"]["p50"]
        p99_200 = pct(r200, 0.99)
        print("| %s | %d | %.0f | %s | %d | %d | %d | %d | %s | %s / %s | %s / %s | %s | %s |" % (
            s, run, c, f1(un50), st.get(200, 0), st.get(503, 0), other, ov["errors"], f1(good, "%.0f"),
            f1(pct(r503, 0.5)), f1(pct(r503, 0.99)), f1(pct(r200, 0.5)), f1(p99_200),
            f1(p99_200 / un50 if p99_200 is not None and un50 else None, "%.1fx"), f1(ov["latency_ms"]["p99"])))
        # the step
        try:
            step_at = float(open(base + "step-at").read().strip())
        except (OSError, ValueError):
            continue
        srows = access(base + "step.access.log")
        extra = load(base + "step-extra.json")
        step_s = (extra and extra["manifest"].get("duration")) or 5.0
        first = [ms for t, code, ms in srows if code == 200 and step_at <= t < step_at + 1]
        steady = [ms for t, code, ms in srows if code == 200 and step_at + step_s - 3 <= t < step_at + step_s]
        before = [ms for t, code, ms in srows if code == 200 and step_at - 3 <= t < step_at]
        codes = {}
        for t, code, _ in srows:
            if t >= step_at:
                codes[code] = codes.get(code, 0) + 1
        p_first, p_steady = pct(first, 0.99), pct(steady, 0.99)
        step_rows.append("| %s | %d | %s | %s | %s | %s | %s |" % (
            s, run, f1(pct(before, 0.99)), f1(p_first), f1(p_steady),
            f1(p_first / p_steady if p_first is not None and p_steady else None, "%.2fx"),
            ", ".join("%d: %d" % kv for kv in sorted(codes.items())) or "-"))
print()
print("Step 0.5x -> 1.5x capacity (admitted = 200; by the second the answer left the server):")
print()
print("| server | run | 200 p99 ms, 3 s before | first second after | last 3 s (steady) | first / steady |"
      " statuses after the step |")
print("|---|---|---|---|---|---|---|")
for r in step_rows:
    print(r)
if not step_rows:
    print("| - | | | | | | |")

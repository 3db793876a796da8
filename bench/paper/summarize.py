#!/usr/bin/env python3
"""Summary of one of the paper's experiments (bench/paper/figN.sh): reads the `weir load
--json` results OUT/LABEL-RUN.json, prints a markdown table (medians over the runs), draws
the latency-by-percentile plot of the median run of every case with `weir load plot`, and unless
--no-record appends a section to bench/RESULTS.md and copies the plot to
bench/paper/figures/NAME.svg.

    summarize.py --out DIR --weir BIN --name fig3 --title T --command C --runs N \
        --row 'LABEL|what it is|note' ... [--intro TEXT] [--db mariadb] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys


def load(path):
    import json

    with open(path) as f:
        return json.load(f)


def fmt_ms(v):
    if v is None:
        return ""
    if v >= 1000:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def counts(d):
    return ", ".join("%s: %d" % (k, v) for k, v in sorted(d.items())) or "none"


def summarize(files):
    """One row's numbers from its runs: medians of rates and percentiles, sums of counts."""
    runs = [load(f) for f in files]
    med = lambda key: statistics.median(r["latency_ms"][key] for r in runs)  # noqa: E731
    status, classes, errors = {}, {}, {}
    for r in runs:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
        for k, v in r.get("weir_errors", {}).items():
            classes[k] = classes.get(k, 0) + v
        for k, v in r.get("errors_by_kind", {}).items():
            errors[k] = errors.get(k, 0) + v
    valid = sum(1 for r in runs if r["generator"]["valid"])
    late = statistics.median(r["generator"]["lateness_ms"]["p99"] for r in runs)
    missed = sum(r["generator"]["missed_slots"] for r in runs)
    gen = "valid" if valid == len(runs) else "%d/%d valid" % (valid, len(runs))
    gen += "; lateness p99 %s ms" % fmt_ms(late)
    if missed:
        gen += "; %d missed slots" % missed
    return {
        "runs": len(runs),
        "requests": sum(r["requests"] for r in runs),
        "offered": runs[0]["manifest"]["rate"],
        "achieved": statistics.median(r["achieved_rate"] for r in runs),
        "p50": med("p50"),
        "p90": med("p90"),
        "p99": med("p99"),
        "max": max(r["latency_ms"]["max"] for r in runs),
        "status": status,
        "5xx": sum(v for k, v in status.items() if k.startswith("5")),
        "classes": classes,
        "errors": errors,
        "timeout_ms": runs[0].get("timeouts_counted_as_ms"),
        "gen": gen,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--weir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--row", action="append", required=True, help="LABEL|description|note")
    ap.add_argument("--intro", default="")
    ap.add_argument("--db", default="mariadb")
    ap.add_argument("--results")
    ap.add_argument("--figures")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()

    rows = []
    for spec in a.row:
        label, desc, note = (spec.split("|", 2) + ["", ""])[:3]
        files = [os.path.join(a.out, "%s-%d.json" % (label, i)) for i in range(1, a.runs + 1)]
        files = [f for f in files if os.path.exists(f)]
        if not files:
            print("summarize: no results for %s in %s" % (label, a.out), file=sys.stderr)
            continue
        rows.append((label, desc, note, files, summarize(files)))
    if not rows:
        sys.exit("summarize: nothing to summarize")

    head = ("| server, setup | runs | requests | offered / achieved req/s | p50 ms | p90 ms "
            "| p99 ms | max ms | status | x-weir-error | client errors | generator | note |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|"]
    for label, desc, note, files, s in rows:
        lines.append("| %s | %d | %d | %g / %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            desc or label, s["runs"], s["requests"], s["offered"], s["achieved"],
            fmt_ms(s["p50"]), fmt_ms(s["p90"]), fmt_ms(s["p99"]), fmt_ms(s["max"]),
            counts(s["status"]), counts(s["classes"]), counts(s["errors"]), s["gen"], note))
    table = "\n".join(lines)
    print(table)

    # The plot: the median run of every case (by p50; the lower one of two), named by its
    # label (the legend is the file name).
    pdir = os.path.join(a.out, "plot")
    os.makedirs(pdir, exist_ok=True)
    plot_inputs = []
    for label, _desc, _note, files, _s in rows:
        by_p50 = sorted(files, key=lambda f: load(f)["latency_ms"]["p50"])
        dst = os.path.join(pdir, label + ".json")
        shutil.copyfile(by_p50[(len(by_p50) - 1) // 2], dst)
        plot_inputs.append(dst)
    svg = os.path.join(a.out, a.name + ".svg")
    subprocess.run([a.weir, "load", "plot", *plot_inputs, "-o", svg, "--title", a.title], check=True)
    print("plot: %s" % svg, file=sys.stderr)

    if a.no_record:
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rel_out = os.path.relpath(a.out, repo)
    fig_rel = None
    if a.figures:
        os.makedirs(a.figures, exist_ok=True)
        dst = os.path.join(a.figures, a.name + ".svg")
        shutil.copyfile(svg, dst)
        fig_rel = os.path.relpath(dst, os.path.dirname(os.path.abspath(a.results)))

    def read(name):
        try:
            with open(os.path.join(a.out, name)) as f:
                return f.read().split()[0:3]
        except OSError:
            return ["?"]

    def version(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"

    build = {"HEAD": "?", "dirty": [], "binary": ""}
    try:
        with open(os.path.join(a.out, "weir-build")) as f:
            for line in f:
                key, _, val = line.rstrip("\n").partition(" ")
                if key == "dirty":
                    build["dirty"].append(val.strip())
                else:
                    build[key] = val
    except OSError:
        pass
    weir_desc = "weir at %s%s" % (build["HEAD"], (" + uncommitted changes in %s" % ", ".join(
        sorted({d.split()[-1].split("/")[1] if "/" in d else d.split()[-1] for d in build["dirty"]})))
        if build["dirty"] else "")
    env = ("%s; %d CPUs; load average %s at the start, %s at the end; %s (release); "
           "nginx %s; uWSGI %s; database %s." % (
               datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               os.cpu_count(), " ".join(read("loadavg-start")), " ".join(read("loadavg-end")),
               weir_desc, version(["nginx", "-v"]).split("/")[-1], version(["uwsgi", "--version"]),
               "MariaDB (private, scripts/mariadb.sh)" if a.db == "mariadb" else "SQLite"))
    with open(a.results, "a") as f:
        f.write("\n## %s (issue 4) — %s\n\n" % (a.title, datetime.date.today()))
        f.write("Command: `%s`. %s\n\n" % (a.command, env))
        if a.intro:
            f.write(a.intro.strip() + "\n\n")
        f.write(table + "\n\n")
        f.write("Latencies are from each request's scheduled time (open loop); with several runs, "
                "rates and percentiles are medians over the runs and counts are sums. ")
        if rows[0][4]["timeout_ms"]:
            f.write("A timed-out request counts as %s ms. " % fmt_ms(rows[0][4]["timeout_ms"]))
        f.write("The machine is shared with other work (2 cores): absolute numbers are noisy. ")
        if fig_rel:
            f.write("Plot (the median run of each case, by p50): [bench/%s](%s). " % (fig_rel, fig_rel))
        f.write("Raw results: `%s/` (not committed).\n" % rel_out)
    print("appended to %s" % a.results, file=sys.stderr)


if __name__ == "__main__":
    main()

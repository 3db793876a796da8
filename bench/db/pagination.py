#!/usr/bin/env python3
"""Keyset vs offset pagination on a table of 1,000,000+ items (issue 5).

For each depth (the number of rows before the page), it measures one page of --limit rows
fetched two ways, --runs times each, and reports medians:
  offset  SELECT ... FROM items ORDER BY id LIMIT <limit> OFFSET <depth>   (/items-offset)
  keyset  SELECT ... FROM items WHERE id > <last id> ORDER BY id LIMIT <limit>   (/items)
at two levels: the statement alone on one connection ("SQL"), and the whole shop request
through Flask's test client in this process ("app": routing, the query, JSON of ~17 KB;
no HTTP server, so no network or worker noise). It also reports the rows InnoDB read for
one page (Handler_read_* deltas), which is what grows with depth for offset pages.

By default it starts the private MariaDB (scripts/mariadb.sh start), creates database
`weir_bench`, tops its items up to --rows with scripts/shop-seed.py (LOAD DATA), warms the
buffer pool with one pass, then measures. With --results it replaces (or appends) the
section "## Keyset vs offset pagination (issue 5)" of bench/RESULTS.md, with the exact
command line, and touches nothing else in that file.

Usage: bench/db/pagination.py [--rows 1000000] [--runs 7] [--limit 80]
                              [--depths 0,10000,100000,500000,900000] [--dsn URL] [--results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "shop"))
import shopdb  # noqa: E402

SECTION = "## Keyset vs offset pagination (issue 5)"
COLS = ", ".join(shopdb.ITEM_COLUMNS)


def log(msg: str) -> None:
    print(f"pagination: {msg}", file=sys.stderr, flush=True)


def handler_reads(cur) -> int:
    cur.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
    return sum(int(v) for _, v in cur.fetchall())


def sql_page(cur, kind: str, depth: int, after: int, limit: int):
    if kind == "offset":
        cur.execute(f"SELECT {COLS} FROM items ORDER BY id LIMIT %s OFFSET %s", (limit, depth))
    else:
        cur.execute(f"SELECT {COLS} FROM items WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
    return cur.fetchall()


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--limit", type=int, default=80, help="rows per page (the shop's default: ~17 KB)")
    ap.add_argument("--depths", default="0,10000,100000,500000,900000")
    ap.add_argument("--dsn", help="a mysql:// URL (default: the private MariaDB, database weir_bench)")
    ap.add_argument("--results", action="store_true", help="write the section of bench/RESULTS.md")
    a = ap.parse_args(argv)
    depths = [int(d) for d in a.depths.split(",")]
    if any(d + a.limit > a.rows for d in depths):
        print(f"pagination: every depth + --limit must be <= --rows ({a.rows})", file=sys.stderr)
        return 2

    import pymysql

    if a.dsn:
        url = a.dsn
    else:
        subprocess.run([os.path.join(ROOT, "scripts", "mariadb.sh"), "start"], check=True)
        base = subprocess.run([os.path.join(ROOT, "scripts", "mariadb.sh"), "url"], check=True,
                              capture_output=True, text=True).stdout.strip()
        url = base.rsplit("/", 1)[0] + "/weir_bench"
        p = shopdb.parse_mysql_url(base)
        c = pymysql.connect(**p.connect_kwargs())
        with c.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS weir_bench")
        c.close()

    t = time.monotonic()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "shop-seed.py"), "--dsn", url,
                    "--items", str(a.rows)], check=True)
    seed_s = time.monotonic() - t

    conn = pymysql.connect(**shopdb.parse_mysql_url(url).connect_kwargs())
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*), MAX(id), VERSION(), @@innodb_buffer_pool_size FROM items")
    count, max_id, version, pool = cur.fetchone()
    if count < a.rows:
        print(f"pagination: items has {count} rows, fewer than --rows {a.rows}", file=sys.stderr)
        return 1
    log(f"{count:,} items (max id {max_id:,}) on {version}; seeding took {seed_s:.1f}s")

    # The id just before each depth, as a client following `next` links would hold it.
    afters = {}
    for d in depths:
        if d == 0:
            afters[d] = 0
        else:
            cur.execute("SELECT id FROM items ORDER BY id LIMIT 1 OFFSET %s", (d - 1,))
            afters[d] = cur.fetchone()[0]

    log("warming the buffer pool (one full scan)")
    cur.execute("SELECT COUNT(*), SUM(LENGTH(description)) FROM items")
    cur.fetchall()

    import app as shop_app

    shop_app.db = shopdb.Database(url)
    client = shop_app.app.test_client()
    # The first request of a process checks the schema: keep it out of the numbers.
    assert client.get("/items?limit=1").status_code == 200

    rows = []
    for d in depths:
        after = afters[d]
        same = sql_page(cur, "offset", d, after, a.limit) == sql_page(cur, "keyset", d, after, a.limit)
        assert same, f"keyset and offset pages differ at depth {d}"
        reads = {}
        for kind in ("offset", "keyset"):
            before = handler_reads(cur)
            sql_page(cur, kind, d, after, a.limit)
            # SHOW STATUS itself reads a few rows: measured once and subtracted.
            reads[kind] = handler_reads(cur) - before
        base = handler_reads(cur)
        overhead = handler_reads(cur) - base
        sql = {k: median_ms(lambda k=k: sql_page(cur, k, d, after, a.limit), a.runs) for k in ("offset", "keyset")}

        def get(path):
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code)

        app_ms = {
            "offset": median_ms(lambda: get(f"/items-offset?offset={d}&limit={a.limit}"), a.runs),
            "keyset": median_ms(lambda: get(f"/items?after={after}&limit={a.limit}"), a.runs),
        }
        row = dict(depth=d, sql_offset=sql["offset"], sql_keyset=sql["keyset"],
                   app_offset=app_ms["offset"], app_keyset=app_ms["keyset"],
                   reads_offset=reads["offset"] - overhead, reads_keyset=reads["keyset"] - overhead)
        rows.append(row)
        log(f"depth {d:>9,}: SQL offset {sql['offset']:8.2f} ms, keyset {sql['keyset']:6.2f} ms; "
            f"app offset {app_ms['offset']:8.2f} ms, keyset {app_ms['keyset']:6.2f} ms; "
            f"rows read {row['reads_offset']:,} vs {row['reads_keyset']:,}")

    cmd = "bench/db/pagination.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    lines = [
        SECTION,
        "",
        f"{dt.date.today().isoformat()}. Command: `{cmd.strip()}`",
        "",
        f"{count:,} rows in `items` ({a.limit} rows per page, ~17 KB of JSON), {version}, "
        f"buffer pool {pool // (1 << 20)} MiB, warmed before measuring; {os.cpu_count()} CPUs "
        f"({platform.machine()}), shared with other work. Medians of {a.runs} runs. \"SQL\" is the "
        "statement alone on one connection; \"app\" is the whole shop request (Flask test "
        "client in-process: routing, query, JSON). \"rows read\" is InnoDB's Handler_read_* "
        "delta for one page.",
        "",
        "| depth (rows before the page) | SQL offset ms | SQL keyset ms | app offset ms | app keyset ms | rows read offset | rows read keyset | offset / keyset (app) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["app_offset"] / r["app_keyset"] if r["app_keyset"] else float("nan")
        lines.append(
            f"| {r['depth']:,} | {r['sql_offset']:.2f} | {r['sql_keyset']:.2f} | {r['app_offset']:.2f} | "
            f"{r['app_keyset']:.2f} | {r['reads_offset']:,} | {r['reads_keyset']:,} | {ratio:.1f}x |")
    lines += [
        "",
        "Keyset cost does not depend on depth (an index range read of one page); offset pages "
        "read and throw away every row before the page, so their cost grows linearly with depth. "
        f"Seeding to {a.rows:,} rows with scripts/shop-seed.py (LOAD DATA LOCAL) took {seed_s:.1f} s "
        "in this run (0 s when the rows were already there).",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if a.results:
        write_section(os.path.join(ROOT, "bench", "RESULTS.md"), section)
        log("bench/RESULTS.md updated (only its issue-5 section)")
    return 0


def write_section(path: str, section: str) -> None:
    """Replaces our section (from its heading to the next `## ` heading) or appends it."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    start = text.find(SECTION)
    if start == -1:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        text = text + sep + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        tail = text[end + 1:] if end != -1 else ""
        text = text[:start] + section + ("\n" + tail if tail else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())

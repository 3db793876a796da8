#!/usr/bin/env python3
"""Bulk-loads the shop's tables in MySQL/MariaDB, fast: a million items in well under a
minute on a laptop-class machine.

Rows are the deterministic ``shopdb.item_row(i)``, so a seeded database gives the same
pages whatever loaded it (the app's first-use seed, this script, any number of runs).
The script tops up: it adds items ``max(id)+1 .. --items`` and leaves existing rows alone
(``--reset`` empties the table first).

Two methods:
  load-data  (default) writes a TSV to a temporary file and sends it with
             ``LOAD DATA LOCAL INFILE`` in chunks; needs ``local_infile`` on the server
             (MariaDB's default). Falls back to ``insert`` when the server refuses.
  insert     multi-row ``INSERT ... VALUES (...), (...)`` statements of --batch rows.
Both run with ``unique_checks=0`` and commit per chunk.

Usage:
  scripts/shop-seed.py [--dsn URL] [--items 1000000] [--orders 0] [--reset]
                       [--method load-data|insert] [--batch 5000]
``--dsn`` defaults to $DATABASE_URL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "shop"))
import shopdb  # noqa: E402

CHUNK = 100_000  # rows per LOAD DATA statement (one commit each)


def _tsv_escape(v) -> str:
    s = str(v)
    if any(c in s for c in "\\\t\n"):
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return s


def load_data(conn, table: str, columns, rows_iter, tmpdir: str) -> None:
    path = os.path.join(tmpdir, f"{table}.tsv")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows_iter:
            f.write("\t".join(_tsv_escape(v) for v in row))
            f.write("\n")
    with conn.cursor() as cur:
        cur.execute(
            f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4 "
            f"FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
            f"({', '.join(columns)})", (path,))
    conn.commit()
    os.unlink(path)


def insert_rows(conn, table: str, columns, rows, batch: int) -> None:
    placeholders = "(" + ",".join(["%s"] * len(columns)) + ")"
    sql = f"INSERT INTO `{table}` ({', '.join(columns)}) VALUES {placeholders}"
    with conn.cursor() as cur:
        for k in range(0, len(rows), batch):
            # executemany turns one INSERT ... VALUES into multi-row statements.
            cur.executemany(sql, rows[k:k + batch])
    conn.commit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--items", type=int, default=1_000_000, help="items wanted in total")
    ap.add_argument("--orders", type=int, default=0, help="orders to add (spread over 85 days)")
    ap.add_argument("--reset", action="store_true", help="empty items (and orders) first")
    ap.add_argument("--method", choices=("load-data", "insert"), default="load-data")
    ap.add_argument("--batch", type=int, default=5000, help="rows per INSERT (insert method)")
    a = ap.parse_args(argv)
    if not a.dsn:
        print("shop-seed: no database: pass --dsn mysql://... or set DATABASE_URL", file=sys.stderr)
        return 2
    if a.items < 0 or a.orders < 0 or a.batch < 1:
        print("shop-seed: --items/--orders must be >= 0 and --batch >= 1", file=sys.stderr)
        return 2
    try:
        params = shopdb.parse_mysql_url(a.dsn)
    except ValueError as e:
        print(f"shop-seed: bad --dsn: {e}", file=sys.stderr)
        return 2

    import pymysql

    # The app's own first-use path creates the tables (and a small seed if empty).
    db = shopdb.Database(a.dsn)
    try:
        db.ensure_schema()
    except shopdb.DatabaseUnavailable as e:
        print(f"shop-seed: {e}; is the server up (scripts/mariadb.sh start)?", file=sys.stderr)
        return 1
    kw = params.connect_kwargs()
    kw.update(autocommit=False, local_infile=True, max_allowed_packet=64 << 20)
    conn = pymysql.connect(**kw)
    with conn.cursor() as cur:
        cur.execute("SET SESSION unique_checks = 0")
        if a.reset:
            cur.execute("TRUNCATE TABLE items")
            cur.execute("TRUNCATE TABLE orders")
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM items")
        have = int(cur.fetchone()[0])
    conn.commit()

    method = a.method
    t0 = time.monotonic()
    first = have + 1
    with tempfile.TemporaryDirectory(prefix="shop-seed-") as tmp:
        lo = first
        while lo <= a.items:
            hi = min(a.items, lo + CHUNK - 1)
            rows = (shopdb.item_row(i) for i in range(lo, hi + 1))
            if method == "load-data":
                try:
                    load_data(conn, "items", shopdb.ITEM_COLUMNS, rows, tmp)
                except pymysql.err.MySQLError as e:
                    conn.rollback()
                    print(f"shop-seed: LOAD DATA LOCAL refused ({e.args[-1]}); "
                          "falling back to multi-row INSERTs", file=sys.stderr)
                    method = "insert"
                    continue
            else:
                insert_rows(conn, "items", shopdb.ITEM_COLUMNS, list(rows), a.batch)
            print(f"shop-seed: items {hi:,}/{a.items:,} ({time.monotonic() - t0:.1f}s)", flush=True)
            lo = hi + 1
        if a.orders:
            now = dt.datetime.now().replace(microsecond=0)
            n_items = max(a.items, have)
            cols = ("item_id", "quantity", "total_cents", "created_at")
            for lo in range(0, a.orders, CHUNK):
                hi = min(a.orders, lo + CHUNK)
                rows = [shopdb.order_row(i, now, n_items, spread_days=85) for i in range(lo, hi)]
                if method == "load-data":
                    load_data(conn, "orders", cols, rows, tmp)
                else:
                    insert_rows(conn, "orders", cols, rows, a.batch)
            print(f"shop-seed: orders +{a.orders:,} ({time.monotonic() - t0:.1f}s)", flush=True)
    with conn.cursor() as cur:
        cur.execute("ANALYZE TABLE items")
        cur.fetchall()
    added = max(0, a.items - have)
    dt_s = time.monotonic() - t0
    print(f"shop-seed: added {added:,} items with {method} in {dt_s:.1f}s"
          + (f" ({added / dt_s:,.0f} rows/s)" if added and dt_s > 0 else "")
          + f"; table has {max(a.items, have):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

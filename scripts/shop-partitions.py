#!/usr/bin/env python3
"""Rolls the shop's month-partitioned ``orders`` table forward (run it daily from cron).

It makes sure a partition exists for every month from the last one present up to
``--ahead`` months after the current one, splitting them off the ``pfuture`` catch-all
(``ALTER TABLE ... REORGANIZE PARTITION pfuture INTO (...)``; ``ADD PARTITION`` when there
is no catch-all), and drops the partitions whose whole month is older than
``--retain-months`` full months before the current one (``ALTER TABLE ... DROP
PARTITION``: instant, unlike a DELETE). Partitions not named ``pYYYYMM`` are never touched.

Usage:
  scripts/shop-partitions.py [--dsn URL] [--table orders] [--ahead 1] [--retain-months 12]
                             [--today YYYY-MM-DD] [--dry-run]

``--dsn`` defaults to $DATABASE_URL. ``--dry-run`` prints the statements and runs none.
Exit status: 0 done (or nothing to do), 1 database error, 2 bad input or a table that is
not partitioned by month.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "shop"))
import shopdb  # noqa: E402  (the shop's naming and DDL helpers)


def plan(existing: list[str], today: dt.date, ahead: int, retain: int | None):
    """Returns (months to add, partition names to drop) for the partitions ``existing``."""
    current = shopdb.month_start(today)
    months = sorted(m for m in (shopdb.parse_partition_name(n) for n in existing) if m)
    target = shopdb.add_months(current, ahead)
    add = []
    m = shopdb.add_months(months[-1], 1) if months else current
    while m <= target:
        add.append(m)
        m = shopdb.add_months(m, 1)
    drop = []
    if retain is not None:
        cutoff = shopdb.add_months(current, -retain)
        # cutoff <= current <= target, so the current month's partition always survives.
        drop = [shopdb.partition_name(m) for m in months if m < cutoff]
    return add, drop


def statements(table: str, existing: list[str], add, drop) -> list[str]:
    out = []
    if add:
        parts = ", ".join(shopdb.partition_clause(m) for m in add)
        if shopdb.FUTURE_PARTITION in existing:
            out.append(
                f"ALTER TABLE `{table}` REORGANIZE PARTITION {shopdb.FUTURE_PARTITION} INTO "
                f"({parts}, PARTITION {shopdb.FUTURE_PARTITION} VALUES LESS THAN (MAXVALUE))")
        else:
            out.append(f"ALTER TABLE `{table}` ADD PARTITION ({parts})")
    if drop:
        out.append(f"ALTER TABLE `{table}` DROP PARTITION {', '.join(drop)}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL"),
                    help="mysql://user:pass@host:port/db (default: $DATABASE_URL)")
    ap.add_argument("--table", default="orders")
    ap.add_argument("--ahead", type=int, default=1,
                    help="months after the current one that must have a partition (default 1)")
    ap.add_argument("--retain-months", type=int, default=12,
                    help="full months kept before the current one; older partitions are dropped "
                         "(default 12; negative: never drop)")
    ap.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today(),
                    help="pretend today is this date (YYYY-MM-DD)")
    ap.add_argument("--dry-run", action="store_true", help="print the statements, run none")
    a = ap.parse_args(argv)

    if not a.dsn:
        print("shop-partitions: no database: pass --dsn mysql://... or set DATABASE_URL", file=sys.stderr)
        return 2
    if a.ahead < 0:
        print("shop-partitions: --ahead must be 0 or more", file=sys.stderr)
        return 2
    try:
        params = shopdb.parse_mysql_url(a.dsn)
    except ValueError as e:
        print(f"shop-partitions: bad --dsn: {e}", file=sys.stderr)
        return 2

    import pymysql

    try:
        conn = pymysql.connect(**params.connect_kwargs())
    except pymysql.err.OperationalError as e:
        print(f"shop-partitions: cannot connect to {params.host}:{params.port}: {e.args[-1]}; "
              "is the server up (scripts/mariadb.sh start)?", file=sys.stderr)
        return 1
    with conn.cursor() as cur:
        cur.execute(
            "SELECT PARTITION_NAME, PARTITION_METHOD FROM information_schema.PARTITIONS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY PARTITION_ORDINAL_POSITION",
            (params.database, a.table))
        rows = cur.fetchall()
        if not rows:
            print(f"shop-partitions: table {params.database}.{a.table} not found", file=sys.stderr)
            return 2
        if rows[0][0] is None or not (rows[0][1] or "").startswith("RANGE"):
            print(f"shop-partitions: {params.database}.{a.table} is not RANGE-partitioned; "
                  "create it with the shop's DDL (shopdb.orders_ddl_mysql)", file=sys.stderr)
            return 2
        existing = [r[0] for r in rows]
        retain = a.retain_months if a.retain_months >= 0 else None
        add, drop = plan(existing, a.today, a.ahead, retain)
        stmts = statements(a.table, existing, add, drop)
        if not stmts:
            print(f"shop-partitions: nothing to do ({len(existing)} partitions: {', '.join(existing)})")
            return 0
        for s in stmts:
            if a.dry_run:
                print(f"-- dry run, not executed:\n{s};")
                continue
            print(f"{s};", flush=True)
            try:
                cur.execute(s)
            except pymysql.err.MySQLError as e:
                print(f"shop-partitions: failed: {e.args[-1]} (error {e.args[0]})", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/shop-partitions.py on a real MariaDB: rolls months forward off the catch-all,
drops past retention, dry run changes nothing, refuses what it cannot handle."""

import datetime as dt
import os
import subprocess
import sys

import pymysql
import shopdb

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

SCRIPT = os.path.join(ROOT, "scripts", "shop-partitions.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60)


def connect(url):
    return pymysql.connect(**shopdb.parse_mysql_url(url).connect_kwargs())


def partitions(conn, table="orders"):
    with conn.cursor() as c:
        c.execute("SELECT PARTITION_NAME FROM information_schema.PARTITIONS "
                  "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
                  "ORDER BY PARTITION_ORDINAL_POSITION", (table,))
        return [r[0] for r in c.fetchall()]


def rows_in(conn, partition):
    with conn.cursor() as c:
        c.execute(f"SELECT COUNT(*) FROM orders PARTITION ({partition})")
        return c.fetchone()[0]


def make_orders(conn, today):
    with conn.cursor() as c:
        c.execute(shopdb.orders_ddl_mysql(today))
        for day in ("2025-10-05", "2025-11-05", "2025-12-05", "2026-01-05", "2026-02-05", "2026-03-05"):
            c.execute("INSERT INTO orders (item_id, quantity, total_cents, created_at) "
                      "VALUES (1, 1, 100, %s)", (day + " 12:00:00",))


def test_rolls_forward_and_drops_past_retention(scratch_url):
    conn = connect(scratch_url)
    make_orders(conn, dt.date(2026, 1, 15))
    before = partitions(conn)
    assert before == ["p202510", "p202511", "p202512", "p202601", "p202602", "pfuture"]
    assert rows_in(conn, "pfuture") == 1  # the March order has no month yet

    flags = ["--dsn", scratch_url, "--today", "2026-03-10", "--ahead", "1", "--retain-months", "3"]
    dry = run(*flags, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "REORGANIZE PARTITION pfuture INTO" in dry.stdout
    assert "p202603" in dry.stdout and "p202604" in dry.stdout
    assert "DROP PARTITION p202510, p202511" in dry.stdout
    assert "dry run" in dry.stdout
    assert partitions(conn) == before, "a dry run changed the table"

    real = run(*flags)
    assert real.returncode == 0, real.stderr
    assert partitions(conn) == ["p202512", "p202601", "p202602", "p202603", "p202604", "pfuture"]
    assert rows_in(conn, "p202603") == 1  # moved out of the catch-all
    assert rows_in(conn, "pfuture") == 0
    with conn.cursor() as c:
        c.execute("SELECT COUNT(*) FROM orders")
        assert c.fetchone()[0] == 4  # October and November are gone with their partitions

    again = run(*flags)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout


def test_adds_partitions_when_there_is_no_catch_all(scratch_url):
    conn = connect(scratch_url)
    with conn.cursor() as c:
        c.execute("CREATE TABLE orders (id BIGINT NOT NULL AUTO_INCREMENT, created_at DATETIME NOT NULL, "
                  "PRIMARY KEY (id, created_at)) PARTITION BY RANGE COLUMNS(created_at) ("
                  "PARTITION p202601 VALUES LESS THAN ('2026-02-01'))")
    r = run("--dsn", scratch_url, "--today", "2026-02-20", "--retain-months", "-1")
    assert r.returncode == 0, r.stderr
    assert "ADD PARTITION" in r.stdout
    assert partitions(conn) == ["p202601", "p202602", "p202603"]


def test_the_apps_table_needs_nothing_today(scratch_url):
    db = shopdb.Database(scratch_url)
    db.ensure_schema()
    conn = connect(scratch_url)
    this_month = shopdb.partition_name(dt.date.today())
    assert this_month in partitions(conn)
    r = run("--dsn", scratch_url)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout


def test_refuses_bad_input(scratch_url):
    conn = connect(scratch_url)
    with conn.cursor() as c:
        c.execute("CREATE TABLE plain (id INT PRIMARY KEY)")
    r = run("--dsn", scratch_url, "--table", "plain")
    assert r.returncode == 2 and "not RANGE-partitioned" in r.stderr
    r = run("--dsn", scratch_url, "--table", "missing")
    assert r.returncode == 2 and "not found" in r.stderr
    r = run("--dsn", "postgres://x@y/z")
    assert r.returncode == 2 and "bad --dsn" in r.stderr

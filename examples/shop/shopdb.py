"""The shop's data layer: one connection per worker process, statements bounded by the
request's remaining budget, the schema (with a month-partitioned ``orders`` table on
MySQL/MariaDB), and seed data created on first use.

Backends
    SQLite by default: ``shop.db`` next to this file (``SHOP_SQLITE_PATH`` or
    ``DATABASE_URL=sqlite:///path`` to move it). MySQL or MariaDB when
    ``DATABASE_URL=mysql://user:pass@host:port/db`` is set (PyMySQL).

Connections
    One per process (and thread): a forked worker never reuses its parent's socket. A lost
    connection is dropped and reopened on the next statement. A read that lost its
    connection is retried once on a fresh one; a statement that must not run twice (the
    ``SLEEP`` behind ``/slow``) is not, and the caller gets ``DatabaseUnavailable``.

Deadlines
    ``weir.deadline`` in the WSGI environ is an absolute ``time.time()``. Every statement
    gets the time left: MariaDB ``SET STATEMENT max_statement_time=<s> FOR ...``, MySQL
    ``SELECT /*+ MAX_EXECUTION_TIME(<ms>) */ ...``, SQLite a progress handler that
    interrupts the statement. No time left means ``DeadlineExceeded`` before any query
    is sent. A server-side timeout (MariaDB 1969, MySQL 3024) also becomes
    ``DeadlineExceeded``.
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

HERE = os.path.dirname(os.path.abspath(__file__))

#: Items created on first use when the table is empty (shop-seed.py loads millions).
SEED_ITEMS = int(os.environ.get("SHOP_SEED_ITEMS", "2000"))
#: Orders created on first use, spread over the last three months.
SEED_ORDERS = int(os.environ.get("SHOP_SEED_ORDERS", "3000"))

# MySQL client error numbers meaning the connection is gone.
LOST_CONNECTION = {2006, 2013, 2014, 2045, 2055, 0}
# Server error numbers for "statement exceeded its time limit".
STATEMENT_TIMEOUT = {1969, 3024}
# The statement was killed (KILL QUERY, e.g. by `weir db guard --kill-query`).
QUERY_INTERRUPTED = {1317}


class DatabaseError(Exception):
    """Base of the errors the app maps to statuses."""


class DeadlineExceeded(DatabaseError):
    """The request's budget ran out before or during a statement (answer 504)."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or the connection was lost (answer 503)."""


class StatementKilled(DatabaseError):
    """The statement was killed on the server, e.g. by a query guard (answer 503)."""


# --------------------------------------------------------------------------- data

_ADJ = ["Walnut", "Oak", "Brass", "Linen", "Copper", "Slate", "Cedar", "Wool", "Marble", "Steel",
        "Maple", "Cotton", "Birch", "Clay", "Glass", "Ash"]
_NOUN = ["desk lamp", "side table", "tea kettle", "wall shelf", "reading chair", "floor rug",
         "coat hook", "pen holder", "bread bin", "planter", "mirror", "clock", "tray",
         "bookend", "stool", "vase"]
_BASE_TIME = _dt.datetime(2024, 1, 1)

ITEM_COLUMNS = ("id", "sku", "name", "description", "price_cents", "stock", "created_at")


def item_row(i: int) -> tuple:
    """The deterministic row for item ``i`` (1-based); the seed script uses it too."""
    adj = _ADJ[i % len(_ADJ)]
    noun = _NOUN[(i // len(_ADJ)) % len(_NOUN)]
    name = f"{adj} {noun} no. {i}"
    desc = f"A {adj.lower()} {noun} from batch {i % 97}, finished by hand, ships in {1 + i % 9} days."
    price = 499 + (i * 7919) % 20000
    stock = (i * 31) % 250
    created = _BASE_TIME + _dt.timedelta(minutes=i)
    return (i, f"SKU-{i:08d}", name, desc, price, stock, created.strftime("%Y-%m-%d %H:%M:%S"))


def order_row(i: int, now: _dt.datetime, n_items: int, spread_days: int = 90) -> tuple:
    """A deterministic order ``i`` placed within the last ``spread_days`` before ``now``."""
    seconds = (i * 104729) % (spread_days * 86400)
    created = now - _dt.timedelta(seconds=seconds)
    item = 1 + (i * 7) % max(n_items, 1)
    qty = 1 + i % 4
    return (item, qty, qty * (499 + (item * 7919) % 20000), created.strftime("%Y-%m-%d %H:%M:%S"))


def row_to_item(row) -> dict:
    created = row[6]
    if isinstance(created, _dt.datetime):
        created = created.isoformat()
    else:
        created = str(created).replace(" ", "T")
    return {"id": row[0], "sku": row[1], "name": row[2], "description": row[3],
            "price_cents": row[4], "stock": row[5], "created_at": created}


# ------------------------------------------------------------- monthly partitions

def month_start(d: _dt.date) -> _dt.date:
    return _dt.date(d.year, d.month, 1)


def add_months(d: _dt.date, n: int) -> _dt.date:
    m = d.year * 12 + (d.month - 1) + n
    return _dt.date(m // 12, m % 12 + 1, 1)


def partition_name(month: _dt.date) -> str:
    """``p202501`` holds the rows of January 2025 (``VALUES LESS THAN ('2025-02-01')``)."""
    return f"p{month.year:04d}{month.month:02d}"


def parse_partition_name(name: str) -> _dt.date | None:
    if len(name) == 7 and name[0] == "p" and name[1:].isdigit():
        y, m = int(name[1:5]), int(name[5:7])
        if 1 <= m <= 12:
            return _dt.date(y, m, 1)
    return None


#: The catch-all partition; new months are split off it with REORGANIZE PARTITION.
FUTURE_PARTITION = "pfuture"


def partition_clause(month: _dt.date) -> str:
    return f"PARTITION {partition_name(month)} VALUES LESS THAN ('{add_months(month, 1).isoformat()}')"


def orders_ddl_mysql(today: _dt.date, months_back: int = 3, months_ahead: int = 1) -> str:
    first = add_months(month_start(today), -months_back)
    parts = [partition_clause(add_months(first, k)) for k in range(months_back + months_ahead + 1)]
    parts.append(f"PARTITION {FUTURE_PARTITION} VALUES LESS THAN (MAXVALUE)")
    return (
        "CREATE TABLE IF NOT EXISTS orders (\n"
        "  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,\n"
        "  item_id INT UNSIGNED NOT NULL,\n"
        "  quantity INT NOT NULL,\n"
        "  total_cents INT NOT NULL,\n"
        "  created_at DATETIME NOT NULL,\n"
        "  -- Partitioning requires every unique key to include the partitioning column.\n"
        "  PRIMARY KEY (id, created_at),\n"
        "  KEY idx_orders_item_created (item_id, created_at)\n"
        ") ENGINE=InnoDB\n"
        "PARTITION BY RANGE COLUMNS(created_at) (\n  " + ",\n  ".join(parts) + "\n)"
    )


ITEMS_DDL_MYSQL = """CREATE TABLE IF NOT EXISTS items (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  sku VARCHAR(32) NOT NULL,
  name VARCHAR(120) NOT NULL,
  description VARCHAR(255) NOT NULL,
  price_cents INT NOT NULL,
  stock INT NOT NULL,
  created_at DATETIME NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_items_sku (sku)
) ENGINE=InnoDB"""

ITEMS_DDL_SQLITE = """CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY,
  sku TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  description TEXT NOT NULL,
  price_cents INTEGER NOT NULL,
  stock INTEGER NOT NULL,
  created_at TEXT NOT NULL
)"""

ORDERS_DDL_SQLITE = """CREATE TABLE IF NOT EXISTS orders (
  id INTEGER PRIMARY KEY,
  item_id INTEGER NOT NULL,
  quantity INTEGER NOT NULL,
  total_cents INTEGER NOT NULL,
  created_at TEXT NOT NULL
)"""


# ------------------------------------------------------------------- connections

@dataclass(frozen=True)
class MysqlParams:
    host: str
    port: int
    user: str
    password: str
    database: str
    unix_socket: str | None = None

    def connect_kwargs(self) -> dict:
        kw = dict(host=self.host, port=self.port, user=self.user, password=self.password,
                  database=self.database, connect_timeout=5, autocommit=True, charset="utf8mb4")
        if self.unix_socket:
            kw["unix_socket"] = self.unix_socket
        return kw


def parse_mysql_url(url: str) -> MysqlParams:
    """``mysql://user:pass@host:port/db[?unix_socket=/path]`` to connection parameters."""
    u = urlparse(url)
    if u.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
        raise ValueError(f"not a mysql:// URL: {url!r}")
    if not u.path.strip("/"):
        raise ValueError(f"the URL names no database (mysql://user:pass@host:port/DB): {url!r}")
    q = parse_qs(u.query)
    return MysqlParams(
        host=u.hostname or "127.0.0.1",
        port=u.port or 3306,
        user=unquote(u.username or "root"),
        password=unquote(u.password or ""),
        database=unquote(u.path.strip("/")),
        unix_socket=q.get("unix_socket", [None])[0],
    )


class Database:
    """The shop's database, whichever backend. Safe to share across threads and forks:
    connections are per (process, thread)."""

    def __init__(self, url: str | None):
        self.url = url
        if url and not url.startswith("sqlite:"):
            self.kind = "mysql"  # "mariadb" or "mysql" once connected (see flavor)
            self.params = parse_mysql_url(url)
            self.sqlite_path = None
        else:
            self.kind = "sqlite"
            self.params = None
            if url:
                # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
                if not url.startswith("sqlite:///"):
                    raise ValueError(f"a SQLite URL is sqlite:///PATH: {url!r}")
                self.sqlite_path = url[len("sqlite:///"):]
            else:
                self.sqlite_path = os.environ.get("SHOP_SQLITE_PATH", os.path.join(HERE, "shop.db"))
        self._local = threading.local()
        self._schema_ready_pid = None
        self.flavor = None  # "mariadb" | "mysql" | "sqlite", set on first connect

    # -- connection lifecycle

    def _conn(self):
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():
            # A forked child must not use the parent's socket; forget it without closing
            # (closing would send COM_QUIT on the parent's connection).
            loc.conn = None
            loc.pid = os.getpid()
        if loc.conn is None:
            loc.conn = self._open()
        return loc.conn

    def _open(self):
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self.flavor = "sqlite"
            return conn
        import pymysql

        try:
            conn = pymysql.connect(**self.params.connect_kwargs())
        except pymysql.err.OperationalError as e:
            raise DatabaseUnavailable(
                f"cannot connect to {self.params.host}:{self.params.port}: {e.args[-1]}") from e
        if self.flavor is None:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                version = cur.fetchone()[0]
            self.flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        return conn

    def drop_connection(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the socket is already broken; nothing to do
                pass

    # -- statements

    def bound(self, sql: str, remaining: float | None) -> str:
        """``sql`` limited to ``remaining`` seconds on the server (no-op without a budget)."""
        if remaining is None or self.kind == "sqlite":
            return sql
        if self.flavor == "mariadb":
            return f"SET STATEMENT max_statement_time={max(remaining, 0.001):.3f} FOR {sql}"
        head = sql.lstrip()
        if head[:6].upper() == "SELECT":
            ms = max(1, int(remaining * 1000))
            return f"SELECT /*+ MAX_EXECUTION_TIME({ms}) */{head[6:]}"
        return sql  # MySQL bounds only SELECT; the shop's requests only read.

    def query(self, sql: str, params=(), deadline: float | None = None, retry: bool = True):
        """Runs one statement (``%s`` placeholders) and returns all rows.

        ``deadline`` is an absolute ``time.time()``; ``retry`` says whether the statement
        may run again on a fresh connection if the first one was lost.
        """
        self.ensure_schema()
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            remaining = None
            if deadline is not None:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded("the request's deadline passed before the statement")
            conn = self._conn()
            if self.kind == "sqlite":
                return self._sqlite_query(conn, sql, params, deadline)
            import pymysql

            try:
                with conn.cursor() as cur:
                    cur.execute(self.bound(sql, remaining), params)
                    return cur.fetchall()
            except pymysql.err.OperationalError as e:
                code = e.args[0] if e.args else 0
                if code in STATEMENT_TIMEOUT:
                    raise DeadlineExceeded(f"statement stopped at the deadline ({code})") from e
                if code in QUERY_INTERRUPTED:
                    raise StatementKilled(f"statement killed on the server ({code})") from e
                if code in LOST_CONNECTION:
                    self.drop_connection()
                    if attempt + 1 < attempts:
                        continue
                    raise DatabaseUnavailable(f"lost the database connection ({code}: {e.args[-1]})") from e
                raise
            except pymysql.err.InterfaceError as e:
                # "(0, '')": the connection object is already closed.
                self.drop_connection()
                if attempt + 1 < attempts:
                    continue
                raise DatabaseUnavailable(f"lost the database connection: {e}") from e
        raise AssertionError("unreachable: the loop returns or raises")

    def _sqlite_query(self, conn, sql, params, deadline):
        # The pyformat placeholders the MySQL path uses: %s is a parameter, %% a percent.
        sql = sql.replace("%s", "?").replace("%%", "%")
        if deadline is not None:
            conn.set_progress_handler(lambda: 1 if time.time() >= deadline else 0, 1000)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise DeadlineExceeded("statement stopped at the deadline") from e
            raise
        finally:
            if deadline is not None:
                conn.set_progress_handler(None, 0)

    # -- schema and seed

    def ensure_schema(self):
        """Creates and seeds the tables once per process (cheap checks after that)."""
        if self._schema_ready_pid == os.getpid():
            return
        conn = self._conn()
        if self.kind == "sqlite":
            self._ensure_sqlite(conn)
        else:
            self._ensure_mysql(conn)
        self._schema_ready_pid = os.getpid()

    def _ensure_sqlite(self, conn):
        conn.execute("BEGIN IMMEDIATE")  # serialises concurrent first-use by several workers
        try:
            conn.execute(ITEMS_DDL_SQLITE)
            conn.execute(ORDERS_DDL_SQLITE)
            conn.execute("CREATE INDEX IF NOT EXISTS idx_orders_item_created ON orders (item_id, created_at)")
            if conn.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None:
                conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?)",
                                 (item_row(i) for i in range(1, SEED_ITEMS + 1)))
            if conn.execute("SELECT 1 FROM orders LIMIT 1").fetchone() is None:
                now = _dt.datetime.now().replace(microsecond=0)
                conn.executemany(
                    "INSERT INTO orders (item_id, quantity, total_cents, created_at) VALUES (?,?,?,?)",
                    (order_row(i, now, SEED_ITEMS) for i in range(SEED_ORDERS)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _ensure_mysql(self, conn):
        with conn.cursor() as cur:
            # Several workers may start at once: one creates and seeds, the others wait.
            cur.execute("SELECT GET_LOCK('weir_shop_schema', 60)")
            try:
                cur.execute(ITEMS_DDL_MYSQL)
                cur.execute(orders_ddl_mysql(_dt.date.today()))
                cur.execute("SELECT 1 FROM items LIMIT 1")
                if cur.fetchone() is None:
                    insert_items_mysql(cur, 1, SEED_ITEMS)
                cur.execute("SELECT 1 FROM orders LIMIT 1")
                if cur.fetchone() is None:
                    now = _dt.datetime.now().replace(microsecond=0)
                    # Seed only into months that have partitions (the last three and this one).
                    rows = [order_row(i, now, SEED_ITEMS, spread_days=85) for i in range(SEED_ORDERS)]
                    for k in range(0, len(rows), 1000):
                        cur.executemany(
                            "INSERT INTO orders (item_id, quantity, total_cents, created_at) VALUES (%s,%s,%s,%s)",
                            rows[k:k + 1000])
            finally:
                cur.execute("SELECT RELEASE_LOCK('weir_shop_schema')")


def insert_items_mysql(cur, first: int, last: int, batch: int = 2000):
    """Inserts items ``first..=last`` with multi-row INSERTs (``executemany`` batches them)."""
    sql = "INSERT INTO items (" + ",".join(ITEM_COLUMNS) + ") VALUES (%s,%s,%s,%s,%s,%s,%s)"
    for lo in range(first, last + 1, batch):
        hi = min(last, lo + batch - 1)
        cur.executemany(sql, [item_row(i) for i in range(lo, hi + 1)])


def from_env() -> Database:
    return Database(os.environ.get("DATABASE_URL") or None)

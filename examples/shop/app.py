"""The reference shop: a small Flask app with the shapes of traffic a real one has.

Serve it with ``weir serve --app app:app --chdir examples/shop`` (or any WSGI server).

Routes
    /hello                  a few bytes of text, no database
    /items                  ~17 KB of JSON rows, keyset pagination: ?after=ID&limit=N
    /items-offset           the same rows with offset pagination: ?offset=N&limit=N
    /slow                   a slow query, 5 s by default (?s=SECONDS): SELECT SLEEP(s)
                            on MySQL/MariaDB, time.sleep on SQLite
    /big?kb=N               an N KB text body (streamed, with Content-Length)
    /boom                   raises (the exception reaches the WSGI server)
    /crash                  the worker process exits at once (os._exit(1))
    /dbping                 SELECT 1, for readiness checks

Database: SQLite (``shop.db`` here, created and seeded on first use) unless
``DATABASE_URL=mysql://user:pass@host:port/db`` is set. See shopdb.py for connections,
deadlines (``weir.deadline`` in environ) and the partitioned ``orders`` table.

Status codes the app itself chooses: 400 bad parameters, 503 database unavailable or
statement killed (with Retry-After), 504 the request's deadline passed (before the query:
nothing is sent to the database).
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, jsonify, request

import shopdb

app = Flask(__name__)
# Unhandled exceptions (/boom) go up to the WSGI server so that it logs and maps them
# (weir's [errors] section, uWSGI's and Gunicorn's own 500): SHOP_PROPAGATE_EXCEPTIONS=0
# lets Flask answer 500 itself instead.
app.config["PROPAGATE_EXCEPTIONS"] = os.environ.get("SHOP_PROPAGATE_EXCEPTIONS", "1") != "0"

db = shopdb.from_env()

#: Rows per /items page by default: about 17 KB of JSON.
DEFAULT_LIMIT = 80
MAX_LIMIT = 1000
MAX_BIG_KB = 100 * 1024
MAX_SLOW_S = 3600.0


class BadRequest(Exception):
    pass


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def _deadline() -> float | None:
    """The request's absolute deadline (time.time() seconds) when the server gives one."""
    raw = request.environ.get("weir.deadline")
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        app.logger.warning("ignoring malformed weir.deadline %r", raw)
        return None


def _check_deadline() -> float | None:
    d = _deadline()
    if d is not None and d <= time.time():
        raise shopdb.DeadlineExceeded("the request's deadline passed before it reached the app")
    return d


@app.errorhandler(BadRequest)
def _bad_request(e):
    return jsonify(error="bad-request", detail=str(e)), 400


@app.errorhandler(shopdb.DeadlineExceeded)
def _deadline_exceeded(e):
    return jsonify(error="deadline", detail=str(e)), 504


@app.errorhandler(shopdb.DatabaseUnavailable)
def _db_unavailable(e):
    app.logger.warning("database unavailable: %s", e)
    return jsonify(error="database-unavailable", detail=str(e)), 503, {"Retry-After": "1"}


@app.errorhandler(shopdb.StatementKilled)
def _killed(e):
    app.logger.warning("statement killed: %s", e)
    return jsonify(error="statement-killed", detail=str(e)), 503, {"Retry-After": "1"}


@app.get("/hello")
def hello():
    return Response("Hello from the shop\n", mimetype="text/plain")


_ITEM_SELECT = "SELECT " + ", ".join(shopdb.ITEM_COLUMNS) + " FROM items"


@app.get("/items")
def items():
    """Keyset pagination: the page after item ``after``; cost independent of depth."""
    after = _int_arg("after", 0, 0, 2**31)
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    deadline = _check_deadline()
    rows = db.query(_ITEM_SELECT + " WHERE id > %s ORDER BY id LIMIT %s", (after, limit),
                    deadline=deadline)
    page = [shopdb.row_to_item(r) for r in rows]
    nxt = f"/items?after={page[-1]['id']}&limit={limit}" if len(page) == limit else None
    return jsonify(items=page, next=nxt)


@app.get("/items-offset")
def items_offset():
    """Offset pagination, kept to compare: the server reads and skips ``offset`` rows."""
    offset = _int_arg("offset", 0, 0, 2**31)
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    deadline = _check_deadline()
    rows = db.query(_ITEM_SELECT + " ORDER BY id LIMIT %s OFFSET %s", (limit, offset),
                    deadline=deadline)
    page = [shopdb.row_to_item(r) for r in rows]
    nxt = f"/items-offset?offset={offset + limit}&limit={limit}" if len(page) == limit else None
    return jsonify(items=page, next=nxt)


@app.get("/slow")
def slow():
    raw = request.args.get("s", "5")
    try:
        s = float(raw)
    except ValueError:
        raise BadRequest(f"s must be a number of seconds, got {raw!r}") from None
    if not 0 <= s <= MAX_SLOW_S:
        raise BadRequest(f"s must be between 0 and {MAX_SLOW_S:g}, got {s:g}")
    deadline = _check_deadline()
    if db.kind == "sqlite":
        if deadline is not None and time.time() + s > deadline:
            time.sleep(max(0.0, deadline - time.time()))
            raise shopdb.DeadlineExceeded(f"a {s:g} s sleep does not fit in the request's budget")
        time.sleep(s)
    else:
        # Never retried: a SLEEP killed with its connection must not start over.
        rows = db.query("SELECT SLEEP(%s)", (s,), deadline=deadline, retry=False)
        if rows and rows[0][0] == 1:
            # SLEEP returns 1 when interrupted (MySQL's MAX_EXECUTION_TIME, KILL QUERY).
            if deadline is not None and time.time() >= deadline:
                raise shopdb.DeadlineExceeded("statement stopped at the deadline")
            raise shopdb.StatementKilled("SLEEP was interrupted on the server")
    return jsonify(slept=s, backend=db.flavor or db.kind)


@app.get("/big")
def big():
    kb = _int_arg("kb", 1024, 0, MAX_BIG_KB)
    chunk = b"x" * 1023 + b"\n"

    def body():
        # 64 KiB writes: the worker never holds the whole body.
        block = chunk * 64
        full, rest = divmod(kb, 64)
        for _ in range(full):
            yield block
        if rest:
            yield chunk * rest

    return Response(body(), mimetype="text/plain", headers={"Content-Length": str(kb * 1024)})


@app.get("/boom")
def boom():
    raise RuntimeError("boom: the shop raised on purpose")


@app.get("/crash")
def crash():
    os._exit(1)


@app.get("/dbping")
def dbping():
    deadline = _check_deadline()
    db.query("SELECT 1", deadline=deadline)
    return jsonify(ok=True, backend=db.flavor or db.kind)

"""The error map's test app (tests/front/test_error_map.py): a Flask app that lets its
exceptions reach the server (PROPAGATE_EXCEPTIONS), as the error map needs.

Routes:
- `/pid`                 the worker's pid (text)
- `/custom?code=N`       raises Busy(N, "...") (a plain Exception subclass; args[0] is N)
- `/custom-sub?code=N`   raises VeryBusy(N), a subclass of Busy
- `/errno?errno=N`       raises Flaky with .errno = N (args[0] is a string)
- `/boom`                raises RuntimeError (no entry matches it)
- `/pymysql?code=N`      raises pymysql.err.OperationalError(N, "...") without a database
- `/lock`                (ERRMAP_DB_URL) UPDATE row 1 of table `locked` in its own
                         transaction with innodb_lock_wait_timeout = 1; 200 "updated"
- `/slow?s=S`            (ERRMAP_DB_URL) SELECT SLEEP(S), bounded by max_statement_time =
                         the time weir.deadline leaves minus one second (headroom for the
                         answer), as an app that honours weir.deadline does
"""

from __future__ import annotations

import os
import time
from urllib.parse import unquote, urlparse

from flask import Flask, Response, request

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = True
application = app


class Busy(Exception):
    """An app's own exception with a code as args[0]."""


class VeryBusy(Busy):
    pass


class Flaky(Exception):
    def __init__(self, errno: int):
        super().__init__("flaky (errno %d)" % errno)
        self.errno = errno


def _text(s: str) -> Response:
    return Response(s + "\n", mimetype="text/plain")


@app.get("/pid")
def pid():
    return _text(str(os.getpid()))


@app.get("/custom")
def custom():
    raise Busy(int(request.args.get("code", "0")), "busy")


@app.get("/custom-sub")
def custom_sub():
    raise VeryBusy(int(request.args.get("code", "0")), "very busy")


@app.get("/errno")
def errno():
    raise Flaky(int(request.args.get("errno", "0")))


@app.get("/boom")
def boom():
    raise RuntimeError("errmap-app boom")


@app.get("/pymysql")
def raise_pymysql():
    import pymysql

    code = int(request.args.get("code", "0"))
    raise pymysql.err.OperationalError(code, "raised by errmap_app")


def _connect():
    import pymysql

    u = urlparse(os.environ["ERRMAP_DB_URL"])
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306,
                           user=unquote(u.username or ""), password=unquote(u.password or ""),
                           database=u.path.lstrip("/"), autocommit=False, connect_timeout=5)


@app.get("/lock")
def lock():
    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
            cur.execute("UPDATE locked SET v = v + 1 WHERE id = 1")
        conn.commit()
    finally:
        conn.close()
    return _text("updated")


@app.get("/slow")
def slow():
    deadline = float(request.environ["weir.deadline"])
    budget = deadline - time.time() - 1.0
    s = float(request.args.get("s", "10"))
    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET STATEMENT max_statement_time=%.3f FOR SELECT SLEEP(%s)" % (max(budget, 0.001), s))
            cur.fetchall()
    finally:
        conn.close()
    return _text("slept")

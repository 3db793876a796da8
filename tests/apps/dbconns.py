"""A WSGI app that opens database connections at import and keeps them, as an app with a
connection pool created at import does (tests/db/test_doctor.py counts them).

DOCTOR_APP_DSN: mysql://USER:PASS@HOST:PORT/DB; DOCTOR_APP_CONNS: how many (default 3).
"""

import os
from urllib.parse import unquote, urlparse

import pymysql

_u = urlparse(os.environ["DOCTOR_APP_DSN"])
POOL = [
    pymysql.connect(
        host=_u.hostname,
        port=_u.port or 3306,
        user=unquote(_u.username or ""),
        password=unquote(_u.password or ""),
        database=_u.path.lstrip("/") or None,
    )
    for _ in range(int(os.environ.get("DOCTOR_APP_CONNS", "3")))
]


def ping():
    """The ready check: the first pooled connection answers."""
    POOL[0].ping(reconnect=True)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d connections\n" % len(POOL)]

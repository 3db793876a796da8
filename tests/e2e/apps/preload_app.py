"""sup_app with what the preload tests need to see: which process imported the app, and
whether the `os.register_at_fork` hook ran in the worker.

/preload[?s=SECONDS] answers JSON (after sleeping s): {"import_pid": the pid that imported this module, "pid": the
worker's pid, "ppid": its parent, "after_fork": the pids the after_in_child hook ran in
(in this process's memory), "version": VERSION, "threads": threading.active_count()}.
With a START_THREAD file in the directory, the import starts a thread
("e2e-import-thread"); with a CONNECT_TO file holding HOST:PORT, the import connects a TCP
socket there and keeps it open (a database connection made at import); with an OPEN_SQLITE
file, the import opens (and writes) the SQLite database import.db and keeps the connection;
with an APPEND_LOG file, it keeps import.log open for appending (a log: fine to share).
Every other path is sup_app's.
"""

import json
import os
import socket
import threading
import time
from urllib.parse import parse_qs

from sup_app import VERSION, application as _sup

IMPORT_PID = os.getpid()
AFTER_FORK = []


def _after_fork_in_child():
    AFTER_FORK.append(os.getpid())


os.register_at_fork(after_in_child=_after_fork_in_child)

if os.path.exists("START_THREAD"):
    # a thread started at import: it lives only in the importing process
    threading.Thread(target=time.sleep, args=(3600,), name="e2e-import-thread", daemon=True).start()

if os.path.exists("CONNECT_TO"):
    # a connection made at import: forking would share it between the workers
    _host, _port = open("CONNECT_TO").read().strip().rsplit(":", 1)
    DB_CONN = socket.create_connection((_host, int(_port)), timeout=10)


if os.path.exists("OPEN_SQLITE"):
    # an SQLite connection made at import: forking would share its file offset and locks
    import sqlite3

    SQLITE = sqlite3.connect("import.db")
    SQLITE.execute("CREATE TABLE IF NOT EXISTS t (x)")

if os.path.exists("APPEND_LOG"):
    # a log opened at import, append-only: forking may share it
    LOG = open("import.log", "a")
    LOG.write("imported\n")
    LOG.flush()


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/preload":
        s = parse_qs(environ.get("QUERY_STRING", "")).get("s")
        if s:
            time.sleep(float(s[-1]))
        body = json.dumps({"import_pid": IMPORT_PID, "pid": os.getpid(), "ppid": os.getppid(),
                           "after_fork": AFTER_FORK, "version": VERSION,
                           "threads": threading.active_count()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return _sup(environ, start_response)

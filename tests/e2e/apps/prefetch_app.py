"""sup_app with what the prefetch tests need: a fast route that leaves a trace, and a crash
that says when it started.

- /touch?marker=PATH: writes this worker's pid to PATH (atomically) and answers it at
  once: "the app saw this request", for a request that must (or must never) run.
- /crash-after?s=SECONDS&marker=PATH: writes the pid to PATH, sleeps, then os._exit(3)
  (sup_app's /crash-after, with a marker so a test can tell it is running).

Every other path is sup_app's (/pid, /version, /sleep?s=&marker=, /crash, ...).
"""

import os
import time
from urllib.parse import parse_qs

from sup_app import application as _sup


def _mark(marker):
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/touch":
        if q.get("marker"):
            _mark(q["marker"])
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/crash-after" and q.get("marker"):
        _mark(q["marker"])
        time.sleep(float(q.get("s", "0.5")))
        os._exit(3)
    return _sup(environ, start_response)


app = application

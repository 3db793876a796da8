"""A tiny WSGI app for the supervision tests (crash, harakiri, recycling, reload, shutdown).

At import time it reads, from the current directory (weir's --chdir):
- `VERSION` (optional): served by /version, so a reload that re-imports shows new code;
- `IMPORT_DELAY` (optional, seconds): sleeps that long while importing, so a supervisor
  that does not wait for a worker to be ready drops requests.

Routes: /pid, /version, /sleep?s=&marker=, /crash, /crash-after?s=, /grow?mb=, /boom.
"""

import os
import time
from urllib.parse import parse_qs


def _read(name, default):
    try:
        with open(name) as f:
            return f.read().strip()
    except OSError:
        return default


VERSION = _read("VERSION", "v0")
IMPORTED_AT = time.time()
_delay = float(_read("IMPORT_DELAY", "0") or 0)
if _delay:
    time.sleep(_delay)

_HOARD = []


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, text, status="200 OK"):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _qs(environ)
    if path in ("/", "/pid"):
        return _text(start_response, str(os.getpid()))
    if path == "/version":
        return _text(start_response, "%s %d" % (VERSION, os.getpid()))
    if path == "/sleep":
        marker = q.get("marker")
        if marker:
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
        time.sleep(float(q.get("s", "1")))
        return _text(start_response, str(os.getpid()))
    if path == "/crash":
        os._exit(3)
    if path == "/crash-after":
        time.sleep(float(q.get("s", "0.5")))
        os._exit(3)
    if path == "/grow":
        mb = int(q.get("mb", "100"))
        _HOARD.append(bytearray(b"\x01") * (mb * 1024 * 1024))  # touched pages: real RSS
        return _text(start_response, str(os.getpid()))
    if path == "/boom":
        raise RuntimeError("sup-app-boom")
    return _text(start_response, "not found", "404 Not Found")


app = application

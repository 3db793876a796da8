"""sup_app with what the prefetch tests need: a fast route that leaves a trace, a crash
that says when it started, and a long stream that says when it was stopped.

- /touch?marker=PATH: writes this worker's pid to PATH (atomically) and answers it at
  once: "the app saw this request", for a request that must (or must never) run. With
  &append=1 it appends a line "PID\n" to PATH instead (one write), so a request that ran
  twice leaves two lines.
- /stream?marker=PATH&closed=PATH2[&s=SECONDS][&every=SECONDS]: writes the pid to PATH
  when called, then streams (no Content-Length) a small chunk every `every` s (0.05) for
  up to `s` s (30); its iterable's close() writes the pid to PATH2: "the server stopped
  (or finished) the body".
- /crash-after?s=SECONDS&marker=PATH: writes the pid to PATH, sleeps, then os._exit(3)
  (sup_app's /crash-after, with a marker so a test can tell it is running).
- /crash-in-close?marker=PATH: answers 200 with the pid at once; the body's close() (where
  Flask runs its teardown functions) writes the pid to PATH, sleeps `s` s (0), then
  os._exit(3): a worker that dies after its answer was sent, before its next request.

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


def _append(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, ("%d\n" % os.getpid()).encode())
    finally:
        os.close(fd)


class _Stream:
    """A body of small chunks, one every `every` s until `seconds` have passed; close()
    leaves a trace."""

    def __init__(self, seconds, every, closed):
        self.deadline = time.monotonic() + seconds
        self.every = every
        self.closed = closed
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.n and time.monotonic() >= self.deadline:
            raise StopIteration
        if self.n:
            time.sleep(self.every)
        self.n += 1
        return b"chunk %d\n" % self.n

    def close(self):
        if self.closed:
            _mark(self.closed)


class _CrashInClose:
    """A one-chunk body whose close() marks, sleeps, and ends the process."""

    def __init__(self, body, marker, seconds):
        self.body = body
        self.marker = marker
        self.seconds = seconds

    def __iter__(self):
        return iter([self.body])

    def close(self):
        if self.marker:
            _mark(self.marker)
        time.sleep(self.seconds)
        os._exit(3)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/hold":
        # /sleep on a route of its own (the tests' weir.toml has [[route]] /hold), so the
        # long sleeps that keep workers busy do not make the default route look slow to
        # the offer policy.
        environ["PATH_INFO"] = path = "/sleep"
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/touch":
        if q.get("marker"):
            if q.get("append") == "1":
                _append(q["marker"])
            else:
                _mark(q["marker"])
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        if q.get("marker"):
            _mark(q["marker"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Stream(float(q.get("s", "30")), float(q.get("every", "0.05")), q.get("closed"))
    if path == "/crash-in-close":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return _CrashInClose(body, q.get("marker"), float(q.get("s", "0")))
    if path == "/crash-after" and q.get("marker"):
        _mark(q["marker"])
        time.sleep(float(q.get("s", "0.5")))
        os._exit(3)
    return _sup(environ, start_response)


app = application

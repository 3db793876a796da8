"""The app of tests/front/test_response_buffering.py (bounded response buffering, issue 16).

- `/hello`            "hello"
- `/big?mib=N`        N MiB (default 32) as one bytes object in a list, with Content-Length:
                      the worker sends it in frames of up to 16 MiB at once
- `.../gen?n=&size=&delay=&tag=`  a generator of n chunks of size bytes, delay seconds
                      apart; it appends the count of chunks yielded so far to
                      $BUF_STATE/<tag>.progress (one line per chunk) and writes
                      $BUF_STATE/<tag>.done at its end
"""

import os
import time
from urllib.parse import parse_qs

STATE = os.environ.get("BUF_STATE", "")
_MIB = b"x" * (1 << 20)


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _mark(tag, name, text=""):
    if STATE and tag:
        with open(os.path.join(STATE, "%s.%s" % (tag, name)), "a") as f:
            f.write(text)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = _qs(environ)
    if path.endswith("/hello"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path.endswith("/big"):
        n = int(q.get("mib", "32"))
        body = _MIB * n
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path.endswith("/gen"):
        n, size, delay, tag = int(q.get("n", "4")), int(q.get("size", "16")), float(q.get("delay", "0")), q.get("tag", "")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            chunk = b"y" * size
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                yield chunk
                _mark(tag, "progress", "%d\n" % (i + 1))
            _mark(tag, "done", "1")
        return gen()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page"]

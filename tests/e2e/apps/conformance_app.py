"""A plain WSGI app (no framework) that exposes what a PEP 3333 server hands it.

The end-to-end suite (tests/e2e/test_wsgi_conformance.py) drives it through weir's
`--listen`, through a real nginx `uwsgi_pass` to weir's `--uwsgi-listen`, and, as a check
of the tests themselves, through reference servers (uWSGI behind nginx, Gunicorn).

Every route answers about what the server did, so the assertions live in the tests:
- `/`                     200 "ok" (readiness probe)
- `/environ[/anything]`   JSON: the environ (str values as they are, other values typed)
- `/input?mode=M`         JSON: what reading wsgi.input with mode M gave (see _input)
- `/write`                uses the write() callable, then returns an iterable
- `/stream?n=&delay=`     a generator that sleeps between chunks
- `/stream-empty`         a generator that yields empty chunks among real ones
- `/file?kind=file|bytesio&kb=`   wsgi.file_wrapper over a real file or a BytesIO
- `/exc_info?case=`       start_response's exc_info rules
- `/close?marker=PATH&kind=list|gen|slow`   an iterable whose close() writes PATH
- `/head[?gen=1]`         a body that a HEAD answer must not carry
- `/boom`                 raises before start_response
- `/boom-after[?cl=1]`    raises after the first chunk was sent
- `/status?code=&reason=` a chosen status, with two Set-Cookie headers
- `/errors?token=`        writes the token to wsgi.errors
- `/big?kb=`              N KiB of a deterministic pattern
- `/sleep?s=&marker=`     sleeps (writes its pid to marker first), answers the pid
- `/pid`                  the worker's pid
"""

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from urllib.parse import parse_qs

SECRET = "secret-boom-detail-7f3a"


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def pattern(n):
    """n deterministic bytes: the same on the client side (tests/e2e/e2e_lib.pattern)."""
    block = bytes((i * 7 + 3) % 251 for i in range(251))
    reps = n // len(block) + 1
    return (block * reps)[:n]


def _json(start_response, obj, status="200 OK", extra=()):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _text(start_response, text, status="200 OK", extra=()):
    body = text.encode("utf-8") if isinstance(text, str) else text
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _describe(value):
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, tuple):
        return list(value)
    return "<%s>" % type(value).__name__


def _environ(environ, start_response):
    out = {k: _describe(v) for k, v in environ.items()}
    types = {k: type(v).__name__ for k, v in environ.items()}
    inp = environ["wsgi.input"]
    err = environ["wsgi.errors"]
    return _json(start_response, {
        "environ": out,
        "types": types,
        "input_methods": [m for m in ("read", "readline", "readlines", "__iter__") if hasattr(inp, m)],
        "errors_methods": [m for m in ("write", "writelines", "flush") if hasattr(err, m)],
        "path_info_latin1_hex": environ.get("PATH_INFO", "").encode("latin-1").hex(),
        "pid": os.getpid(),
    })


def _l1(b):
    return b.decode("latin-1")


def _input(environ, start_response):
    q = _qs(environ)
    mode = q.get("mode", "read")
    inp = environ["wsgi.input"]
    res = {"mode": mode, "content_length": environ.get("CONTENT_LENGTH"),
           "input_terminated": _describe(environ.get("wsgi.input_terminated"))}
    if mode == "read":
        res["data"] = _l1(inp.read())
    elif mode == "read_n":
        n = int(q.get("n", "3"))
        chunks = []
        for _ in range(1_000_000):
            c = inp.read(n)
            if not c:
                break
            chunks.append(_l1(c))
        res["chunks"] = chunks
    elif mode == "readline":
        lines = []
        for _ in range(1_000_000):
            line = inp.readline()
            if not line:
                break
            lines.append(_l1(line))
        res["lines"] = lines
    elif mode == "readline_size":
        n = int(q.get("n", "4"))
        lines = []
        for _ in range(1_000_000):
            line = inp.readline(n)
            if not line:
                break
            lines.append(_l1(line))
        res["lines"] = lines
    elif mode == "readlines":
        res["lines"] = [_l1(x) for x in inp.readlines()]
    elif mode == "iter":
        res["lines"] = [_l1(x) for x in inp]
    elif mode == "past_end":
        res["data"] = _l1(inp.read())
        t0 = time.monotonic()
        res["after"] = [_l1(inp.read()), _l1(inp.read(10)), _l1(inp.readline())]
        res["after_seconds"] = time.monotonic() - t0
    elif mode == "sha":
        h = hashlib.sha256()
        total = 0
        for _ in range(10_000_000):
            c = inp.read(65536)
            if not c:
                break
            h.update(c)
            total += len(c)
        res["sha256"] = h.hexdigest()
        res["length"] = total
    elif mode == "none":
        pass  # the body is never read: the server must still answer and stay in sync
    else:
        return _text(start_response, "unknown mode", "400 Bad Request")
    return _json(start_response, res)


def _write(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one-")
    write(b"two-")
    return [b"three"]


def _stream(environ, start_response):
    q = _qs(environ)
    n = min(int(q.get("n", "3")), 1000)
    delay = float(q.get("delay", "1.0"))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])

    def gen():
        for i in range(n):
            if i:
                time.sleep(delay)
            yield ("chunk%d\n" % i).encode()
    return gen()


def _stream_empty(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"a"
        yield b""
        yield b"b"
        yield b""
    return gen()


_FILE_CACHE = {}


def _file(environ, start_response):
    q = _qs(environ)
    kb = int(q.get("kb", "64"))
    data = pattern(kb * 1024)
    if q.get("kind", "file") == "bytesio":
        f = io.BytesIO(data)
    else:
        path = _FILE_CACHE.get(kb)
        if path is None:
            fd, path = tempfile.mkstemp(prefix="weir-e2e-file-")
            with os.fdopen(fd, "wb") as w:
                w.write(data)
            _FILE_CACHE[kb] = path
        f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is None:
        return iter(lambda: f.read(8192), b"")
    return wrapper(f, 8192)


def _exc_info(environ, start_response):
    case = _qs(environ).get("case", "replace")
    if case == "replace":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Before", "1")])
        try:
            raise ValueError("replaced-by-exc-info")
        except ValueError:
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/plain"), ("X-Replaced", "1")], sys.exc_info())
        return [b"replaced"]
    if case == "second_without":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("201 Created", [("Content-Type", "text/plain")])
        except Exception as e:  # PEP 3333: a second call without exc_info is an error
            return [("raised:%s" % type(e).__name__).encode()]
        return [b"no-raise"]
    if case == "after_body":
        headers = [("Content-Type", "text/plain")]
        if _qs(environ).get("cl"):
            headers.append(("Content-Length", "1000"))
        start_response("200 OK", headers)

        def gen():
            yield b"first-"
            try:
                raise ValueError("late")
            except ValueError:
                # Headers are out: the server must re-raise exc_info (and so cut the connection).
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"must-not-be-sent"
        return gen()
    return _text(start_response, "unknown case", "400 Bad Request")


class _Closing:
    def __init__(self, marker, chunks, delay):
        self.marker = marker
        self.chunks = chunks
        self.delay = delay
        self.sent = 0

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if i and self.delay:
                time.sleep(self.delay)
            self.sent += 1
            yield c

    def close(self):
        tmp = self.marker + ".tmp"
        with open(tmp, "w") as f:
            f.write("closed sent=%d pid=%d" % (self.sent, os.getpid()))
        os.replace(tmp, self.marker)


def _close(environ, start_response):
    q = _qs(environ)
    marker = q["marker"]
    kind = q.get("kind", "list")
    headers = [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")]
    if kind == "slow":
        n = min(int(q.get("n", "600")), 5000)
        delay = float(q.get("delay", "0.05"))
        start_response("200 OK", headers)
        with open(marker + ".started", "w") as f:
            f.write(str(os.getpid()))
        return _Closing(marker, [b"x" * 1024 for _ in range(n)], delay)
    if kind == "gen":
        start_response("200 OK", headers)
        return _Closing(marker, [b"gen-", b"body"], 0)
    start_response("200 OK", headers + [("Content-Length", "9")])
    return _Closing(marker, [b"list-body"], 0)


def _head(environ, start_response):
    body = b"head-body-must-not-be-sent"
    if _qs(environ).get("gen"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (c for c in [body, body])
    return _text(start_response, body)


def _boom(environ, start_response):
    raise RuntimeError(SECRET)


def _boom_after(environ, start_response):
    cl = _qs(environ).get("cl")
    headers = [("Content-Type", "text/plain")]
    if cl:
        headers.append(("Content-Length", "1000"))
    start_response("200 OK", headers)

    def gen():
        yield b"partial-"
        raise RuntimeError(SECRET + "-after")
    return gen()


def _cl_long(environ, start_response):
    """Content-Length 3 but a longer body: as one item, as a list, or from a generator."""
    shape = _qs(environ).get("shape", "one")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    if shape == "list":
        return [b"ab", b"c", b"defg"]
    if shape == "gen":
        def gen():
            yield b"ab"
            yield b"c"
            yield b"defg"
            yield b"never-asked-for"
        return gen()
    return [b"abcdefg"]


def _status(environ, start_response):
    q = _qs(environ)
    code = int(q.get("code", "200"))
    reason = q.get("reason", "Custom")
    body = b"" if code in (204, 304) else b"status-body"
    headers = [("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
               ("X-Custom", "v")]
    if body:
        headers.append(("Content-Length", str(len(body))))
    start_response("%d %s" % (code, reason), headers)
    return [body]


def _errors(environ, start_response):
    token = _qs(environ).get("token", "wsgi-errors-token")
    err = environ["wsgi.errors"]
    err.write(token + "\n")
    err.flush()
    return _text(start_response, "logged")


def _big(environ, start_response):
    kb = int(_qs(environ).get("kb", "1024"))
    data = pattern(kb * 1024)
    return _text(start_response, data)


def _sleep(environ, start_response):
    q = _qs(environ)
    marker = q.get("marker")
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(float(q.get("s", "1")))
    return _text(start_response, str(os.getpid()))


ROUTES = {
    "/": lambda e, s: _text(s, "ok"),
    "/input": _input,
    "/write": _write,
    "/stream": _stream,
    "/stream-empty": _stream_empty,
    "/file": _file,
    "/exc_info": _exc_info,
    "/close": _close,
    "/head": _head,
    "/boom": _boom,
    "/boom-after": _boom_after,
    "/status": _status,
    "/cl-long": _cl_long,
    "/errors": _errors,
    "/big": _big,
    "/sleep": _sleep,
    "/pid": lambda e, s: _text(s, str(os.getpid())),
}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/environ" or path.startswith("/environ/"):
        return _environ(environ, start_response)
    handler = ROUTES.get(path)
    if handler is None:
        return _text(start_response, "not found: " + path, "404 Not Found")
    return handler(environ, start_response)


app = application

"""A WSGI conformance app for weir's tests (worker tests in Rust, end-to-end tests in pytest).

Serve it with `--chdir tests/apps --app conformance` (callable `application`), and the
ready check with `--ready-check conformance:ready`. Pure standard library.

Routes (PATH_INFO; query parameters in brackets):

  /hello                 b"hello", Content-Length set, a list of one bytes (the fast path).
  /environ[/anything]    the environ as JSON: str/int/float/bool/None/tuple values as such,
                         anything else as "<TypeName>" (e.g. "wsgi.input": "<Input>").
  /echo                  the request body (read with read()), same Content-Type.
  /input/read[?size=N]   read(N) until b"" (read() when N is absent), then checks that
                         read(), read(0) and readline() give b"" at the end. Echoes the body;
                         header X-Read-Calls: the number of read() calls that returned data.
  /input/readline[?limit=N]   JSON list of the lines readline(N) returned (latin-1).
  /input/readlines[?hint=N]   JSON list from readlines(N) (one call).
  /input/iter            JSON list of the lines `for line in wsgi.input` yields.
  /input/partial[?n=N]   reads only N bytes (default 1) and answers JSON {"got": <latin-1>};
                         the server must skip the rest of the body.
  /input/ignore          never touches wsgi.input; answers b"ignored".
  /write                 start_response's write() for b"w1" and b"w2", then returns [b"it"].
  /stream[?n=N&delay=MS] a generator of N (default 3) chunks b"chunk <i>\n", sleeping MS
                         (default 0) before each one after the first; no Content-Length.
                         The result's close() is counted (see /closes).
  /big[?n=BYTES]         BYTES (default 1 MiB) of b"x" as one bytes object, Content-Length.
  /filewrapper[?size=N&blksize=B]  a temp file of N (default 100000) bytes returned through
                         wsgi.file_wrapper(f, B) (B default 8192); its close() is counted.
  /exc_info              start_response 200, then on an exception start_response 500 with
                         exc_info (allowed before the head is sent): 500 b"recovered".
  /exc_info_after        yields b"first", then calls start_response again with exc_info
                         (the head is out, so it re-raises): the response is aborted.
  /raise_before          raises before start_response: the server answers 500.
  /raise_after           yields b"partial", then raises: the response is aborted.
  /raise_in_iter         start_response, then the iterable raises before any data: 500.
  /not_bytes             returns ["a str"]: an app error, 500.
  /no_start_response     returns [b"x"] without calling start_response: 500.
  /twice                 calls start_response twice without exc_info: 500.
  /bad_header            a header value with a newline: start_response raises, 500.
  /cl_short              Content-Length 10 but 5 bytes (a list): 500.
  /cl_short_stream       Content-Length 10 but a generator of 5 bytes: aborted.
  /cl_long[?shape=S]     Content-Length 3 but b"abcdef" (S=one; list: [b"ab", b"c", b"def"];
                         gen: a generator of those, then more): the server sends b"abc".
  /hop                   sets Connection and Transfer-Encoding headers (dropped by weir) and X-Ok.
  /status[?code=NNN]     an empty response with that status ("NNN Whatever").
  /impersonate           503 with the app's own X-Weir-Error: queue-full (dropped by weir), X-Ok,
                         body b"app".
  /latin1                a header value "café" (latin-1), body b"ok".
  /tracked[?raise=1]     a result object with close(); with raise=1 its iteration raises.
  /closes                JSON {"closes": N}: how many result/file close() calls so far.
  /errors                writes b"line one\nline two" to wsgi.errors (no newline at end),
                         flushes, answers b"logged".
  /stdin                 reads sys.stdin (the worker points fd 0 at /dev/null): JSON {"stdin": ...}.
  /sleep[?ms=MS]         sleeps MS (default 1000) then answers b"slept".
  /pid                   the worker's pid as text.
  /set_ready?v=1|0|raise sets what ready() does: return None, return False, or raise.
  anything else          404 b"not found".
"""
import json
import os
import sys
import tempfile
import time
from urllib.parse import parse_qs

CLOSES = 0
READY = "1"


def ready():
    """The ready check (--ready-check conformance:ready)."""
    if READY == "raise":
        raise RuntimeError("not ready: the test said so")
    if READY == "0":
        return False
    return None


def _q(environ, name, default=None):
    v = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return v[0] if v else default


def _jsonable(v):
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return "<%s>" % type(v).__name__


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _text(start_response, body, status="200 OK", extra=()):
    if isinstance(body, str):
        body = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


class Tracked:
    """An iterable with close(), counted in CLOSES."""

    def __init__(self, chunks, fail=False):
        self.chunks = chunks
        self.fail = fail

    def __iter__(self):
        for c in self.chunks:
            yield c
        if self.fail:
            raise RuntimeError("tracked iterable failed")

    def close(self):
        global CLOSES
        CLOSES += 1


class CountingFile:
    def __init__(self, f):
        self.f = f

    def read(self, n):
        return self.f.read(n)

    def close(self):
        global CLOSES
        CLOSES += 1
        self.f.close()


def application(environ, start_response):
    global READY
    path = environ.get("PATH_INFO", "")
    inp = environ["wsgi.input"]

    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path.startswith("/environ"):
        return _json(start_response, {k: _jsonable(v) for k, v in environ.items()})
    if path == "/echo":
        body = inp.read()
        ctype = environ.get("CONTENT_TYPE", "application/octet-stream")
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/input/read":
        size = _q(environ, "size")
        parts = []
        while True:
            chunk = inp.read(int(size)) if size else inp.read()
            if not chunk:
                break
            parts.append(chunk)
            if not size:
                break
        assert inp.read() == b"", "read() after the end"
        assert inp.read(0) == b"", "read(0)"
        assert inp.read(10) == b"", "read(10) after the end"
        assert inp.readline() == b"", "readline() after the end"
        body = b"".join(parts)
        return _text(start_response, body, extra=[("X-Read-Calls", str(len(parts)))])
    if path == "/input/readline":
        limit = int(_q(environ, "limit", "-1"))
        lines = []
        while True:
            line = inp.readline(limit)
            if not line:
                break
            lines.append(line.decode("latin-1"))
        return _json(start_response, lines)
    if path == "/input/readlines":
        hint = int(_q(environ, "hint", "-1"))
        return _json(start_response, [l.decode("latin-1") for l in inp.readlines(hint)])
    if path == "/input/iter":
        return _json(start_response, [l.decode("latin-1") for l in inp])
    if path == "/input/partial":
        n = int(_q(environ, "n", "1"))
        return _json(start_response, {"got": inp.read(n).decode("latin-1")})
    if path == "/input/ignore":
        return _text(start_response, b"ignored")
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"w1")
        write(b"w2")
        return [b"it"]
    if path == "/stream":
        n = int(_q(environ, "n", "3"))
        delay = int(_q(environ, "delay", "0")) / 1000.0

        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                yield b"chunk %d\n" % i

        return Tracked(gen())
    if path == "/big":
        n = int(_q(environ, "n", str(1 << 20)))
        return _text(start_response, b"x" * n)
    if path == "/filewrapper":
        size = int(_q(environ, "size", "100000"))
        blksize = int(_q(environ, "blksize", "8192"))
        f = tempfile.TemporaryFile()
        f.write(bytes(i % 251 for i in range(size)))
        f.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](CountingFile(f), blksize)
    if path == "/exc_info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"recovered"]
    if path == "/exc_info_after":

        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first"
            try:
                raise ValueError("late failure")
            except ValueError:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never"

        return gen()
    if path == "/raise_before":
        raise ValueError("raised before start_response")
    if path == "/raise_after":

        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"partial"
            raise ValueError("raised after the head")

        return gen()
    if path == "/raise_in_iter":

        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise ValueError("raised in the iterable")
            yield b""  # pragma: no cover

        return gen()
    if path == "/not_bytes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str"]
    if path == "/no_start_response":
        return [b"x"]
    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"x"]
    if path == "/bad_header":
        start_response("200 OK", [("X-Bad", "a\nb")])
        return [b"x"]
    if path == "/cl_short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    if path == "/cl_short_stream":

        def gen():
            start_response("200 OK", [("Content-Length", "10")])
            yield b"12345"

        return gen()
    if path == "/cl_long":
        start_response("200 OK", [("Content-Length", "3")])
        shape = _q(environ, "shape", "one")
        if shape == "list":
            return [b"ab", b"c", b"def"]
        if shape == "gen":
            def gen():
                yield b"ab"
                yield b"c"
                yield b"def"
                yield b"never-asked-for"
            return gen()
        return [b"abcdef"]
    if path == "/hop":
        start_response("200 OK", [("Connection", "close"), ("Transfer-Encoding", "chunked"), ("X-Ok", "1")])
        return [b"hop"]
    if path == "/status":
        code = _q(environ, "code", "204")
        start_response("%s Whatever" % code, [])
        return []
    if path == "/impersonate":
        start_response("503 Busy", [("X-Weir-Error", "queue-full"), ("X-Ok", "1")])
        return [b"app"]
    if path == "/latin1":
        start_response("200 OK", [("X-Latin", "caf\xe9")])
        return [b"ok"]
    if path == "/tracked":
        if _q(environ, "raise") == "1":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Tracked([], fail=True)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return Tracked([b"tra", b"cked"])
    if path == "/closes":
        return _json(start_response, {"closes": CLOSES})
    if path == "/errors":
        err = environ["wsgi.errors"]
        err.write("line one\nline two")
        err.flush()
        return _text(start_response, b"logged")
    if path == "/stdin":
        return _json(start_response, {"stdin": sys.stdin.read()})
    if path == "/sleep":
        time.sleep(int(_q(environ, "ms", "1000")) / 1000.0)
        return _text(start_response, b"slept")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/set_ready":
        READY = _q(environ, "v", "1")
        return _text(start_response, READY)
    return _text(start_response, b"not found", status="404 Not Found")

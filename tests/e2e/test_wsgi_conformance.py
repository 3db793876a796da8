"""PEP 3333 conformance, end to end: the same assertions through weir's HTTP listener
(`weir-http`) and through a real nginx `uwsgi_pass` to weir's uwsgi listener
(`weir-nginx`). With WEIR_E2E_REFERENCE=1 they also run against nginx -> uWSGI and against
Gunicorn, which checks the tests themselves; a few weir-specific assertions (x-weir-error,
X-Request-ID) are skipped there.

The app is apps/conformance_app.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from urllib.parse import quote

import pytest

from e2e_lib import Addr, get, pattern, raw_exchange, recv_all, parse_response, request, wait_for

BODY = b"line one\nline two\r\n\nlast line, no newline \xe9\xff"
BODY_LINES = [b"line one\n", b"line two\r\n", b"\n", b"last line, no newline \xe9\xff"]


# Where a reference server is known to differ from PEP 3333 / weir's contract. These
# become strict xfails on that reference: the test must fail there, which shows the test
# can tell the difference. weir targets are never listed here.
UWSGI_NO_BODY_502 = ("uWSGI answers nothing when the app raises before start_response "
                     "(nginx makes it a 502)")
REF_DEVIATIONS = {
    "test_required_keys_and_types": {"ref-nginx-uwsgi": "uWSGI leaves SCRIPT_NAME out unless nginx sends it"},
    "test_script_name_and_path_info": {"ref-nginx-uwsgi": "uWSGI leaves SCRIPT_NAME out unless nginx sends it"},
    "test_repeated_headers_joined": {
        "ref-nginx-uwsgi": "nginx 1.22 sends repeated headers as separate uwsgi vars and uWSGI keeps one",
        "ref-gunicorn": "Gunicorn joins repeated headers with ',' and no space"},
    "test_unread_body_keeps_connection_in_sync": {
        "ref-nginx-uwsgi": ("uWSGI may close without reading an unread body; nginx then answers 502 "
                            "(a race: not strict)", False)},
    "test_exc_info_replaces_headers_before_body": {
        "ref-nginx-uwsgi": "uWSGI sends an empty body after an exc_info restart",
        "ref-gunicorn": "Gunicorn keeps the first call's headers after an exc_info restart"},
    "test_second_start_response_without_exc_info_raises": {
        "ref-nginx-uwsgi": "uWSGI lets start_response be called twice without exc_info"},
    "test_exception_before_start_is_500_without_traceback": {"ref-nginx-uwsgi": UWSGI_NO_BODY_502},
    "test_worker_survives_exceptions": {"ref-nginx-uwsgi": UWSGI_NO_BODY_502},
}


@pytest.fixture(autouse=True)
def _known_reference_deviation(request):
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("target") if callspec else None
    reason = REF_DEVIATIONS.get(request.node.originalname, {}).get(name)
    if reason:
        reason, strict = reason if isinstance(reason, tuple) else (reason, True)
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=strict))


def L(lines):
    return [x.decode("latin-1") for x in lines]


def weir_only(tgt, why="weir-specific"):
    if not tgt.is_weir:
        pytest.skip("%s: not asserted on reference server %s" % (why, tgt.name))


def environ_of(tgt, path="/environ", method="GET", **kw):
    r = request(tgt.addr, method, path, **kw)
    assert r.status == 200, r
    return r.json()


# ---------------------------------------------------------------------------------------
# environ


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_method(tgt, method):
    body = b"x" if method in ("POST", "PUT", "PATCH") else None
    env = environ_of(tgt, method=method, body=body)["environ"]
    assert env["REQUEST_METHOD"] == method


def test_required_keys_and_types(tgt):
    d = environ_of(tgt)
    env, types = d["environ"], d["types"]
    for k in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL"):
        assert k in env, "missing %s in %r" % (k, sorted(env))
        assert types[k] == "str", (k, types[k])
    # QUERY_STRING may be absent when empty; if present it is a str
    assert types.get("QUERY_STRING", "str") == "str"
    # every CGI/HTTP value is a native str (PEP 3333: "native strings")
    for k, t in types.items():
        if k.isupper():
            assert t == "str", "%s is %s, PEP 3333 wants str" % (k, t)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    for k in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        assert types[k] == "bool", (k, types[k])
    assert env["wsgi.run_once"] is False
    assert d["input_methods"] == ["read", "readline", "readlines", "__iter__"]
    assert d["errors_methods"] == ["write", "writelines", "flush"]
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_multithread_multiprocess_flags(tgt):
    env = environ_of(tgt)["environ"]
    # one request at a time per worker process, several worker processes
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is True


def test_script_name_and_path_info(tgt):
    env = environ_of(tgt, "/environ/a/b.txt")["environ"]
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/a/b.txt"


def test_path_info_percent_decoded_latin1(tgt):
    # UTF-8 "café" and a space, percent-encoded on the wire; PATH_INFO carries the raw
    # bytes decoded as latin-1 (PEP 3333's "bytes in a str").
    d = environ_of(tgt, "/environ/caf%C3%A9%20x%21")
    assert d["environ"]["PATH_INFO"] == "/environ/caf\u00c3\u00a9 x!"
    assert bytes.fromhex(d["path_info_latin1_hex"]) == b"/environ/caf\xc3\xa9 x!"


def test_query_string_raw(tgt):
    qs = "a=1&b=%20x&c=caf%C3%A9&d=%2F&e&f=a+b"
    env = environ_of(tgt, "/environ?" + qs)["environ"]
    assert env["QUERY_STRING"] == qs
    assert env["PATH_INFO"] == "/environ"


def test_query_string_empty(tgt):
    env = environ_of(tgt, "/environ")["environ"]
    assert env.get("QUERY_STRING", "") == ""


def test_content_type_and_length(tgt):
    env = environ_of(tgt, method="POST", body=b"12345", headers=[("Content-Type", "text/x-e2e; charset=utf-8")])["environ"]
    assert env["CONTENT_TYPE"] == "text/x-e2e; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "5"
    env = environ_of(tgt)["environ"]
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert env.get("CONTENT_TYPE", "") == ""


def test_server_port_protocol_remote_addr(tgt):
    env = environ_of(tgt)["environ"]
    assert env["SERVER_PORT"] == str(tgt.addr.port)
    assert env["SERVER_NAME"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_server_protocol_http10(tgt):
    r = raw_exchange(tgt.addr, b"GET /environ HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert r.status == 200, r
    import json
    env = json.loads(r.body)["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_absolute_form_target_names_the_host(tgt):
    """RFC 9112 3.2.2: with a target in absolute form the target's authority is the host;
    the Host header is ignored."""
    if tgt.name != "weir-http":
        pytest.skip("only weir's own HTTP listener reads the request line (nginx does, in front of uwsgi)")
    r = raw_exchange(tgt.addr, b"GET http://a.example/environ?x=1 HTTP/1.1\r\nHost: b.example\r\n"
                               b"Connection: close\r\n\r\n")
    assert r.status == 200, r
    import json
    env = json.loads(r.body)["environ"]
    assert (env["HTTP_HOST"], env["SERVER_NAME"]) == ("a.example", "a.example"), env
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/environ", "x=1"), env
    r = raw_exchange(tgt.addr, b"GET http://a.example:8080/environ HTTP/1.1\r\nHost: b.example\r\n"
                               b"Connection: close\r\n\r\n")
    env = json.loads(r.body)["environ"]
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == ("a.example:8080", "a.example", "8080"), env


def test_http_headers(tgt):
    env = environ_of(tgt, headers=[("X-Custom-Thing", "hello world"), ("Accept", "text/plain"),
                                   ("User-Agent", "weir-e2e/1")])["environ"]
    assert env["HTTP_X_CUSTOM_THING"] == "hello world"
    assert env["HTTP_ACCEPT"] == "text/plain"
    assert env["HTTP_USER_AGENT"] == "weir-e2e/1"
    assert env["HTTP_HOST"]


def test_repeated_headers_joined(tgt):
    env = environ_of(tgt, headers=[("X-Rep", "a"), ("X-Rep", "b"), ("X-Rep", "c d")])["environ"]
    assert env["HTTP_X_REP"] == "a, b, c d"


def test_latin1_header_value(tgt):
    # an obs-text byte in a header value arrives as the same code point (latin-1)
    r = raw_exchange(tgt.addr, b"GET /environ HTTP/1.1\r\nHost: localhost\r\nX-Latin: caf\xe9\r\n"
                               b"Connection: close\r\n\r\n")
    assert r.status == 200, r
    import json
    assert json.loads(r.body)["environ"]["HTTP_X_LATIN"] == "caf\u00e9"


# ---------------------------------------------------------------------------------------
# wsgi.input


@pytest.mark.parametrize("mode,key,expected", [
    ("read", "data", BODY.decode("latin-1")),
    ("readline", "lines", L(BODY_LINES)),
    ("readlines", "lines", L(BODY_LINES)),
    ("iter", "lines", L(BODY_LINES)),
])
def test_input_modes(tgt, mode, key, expected):
    r = request(tgt.addr, "POST", "/input?mode=" + mode, body=BODY)
    assert r.status == 200, r
    assert r.json()[key] == expected


def test_input_read_n(tgt):
    r = request(tgt.addr, "POST", "/input?mode=read_n&n=3", body=BODY)
    assert r.status == 200, r
    chunks = r.json()["chunks"]
    assert "".join(chunks) == BODY.decode("latin-1")
    assert all(len(c) == 3 for c in chunks[:-1])


def test_input_read_past_end_returns_empty_at_once(tgt):
    # keep-alive connection: the server must not wait for bytes that will never come
    r = request(tgt.addr, "POST", "/input?mode=past_end", body=BODY, headers=[("Connection", "keep-alive")])
    assert r.status == 200, r
    d = r.json()
    assert d["data"] == BODY.decode("latin-1")
    assert d["after"] == ["", "", ""]
    assert d["after_seconds"] < 0.5


def test_input_empty_body(tgt):
    r = request(tgt.addr, "POST", "/input?mode=past_end", body=b"")
    assert r.status == 200, r
    assert r.json()["data"] == "" and r.json()["after"] == ["", "", ""]


def test_input_large_body(tgt):
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = request(tgt.addr, "POST", "/input?mode=sha", body=data, timeout=60)
    assert r.status == 200, r
    assert r.json()["length"] == len(data)
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_unread_body_keeps_connection_in_sync(tgt):
    conn = tgt.addr.connection(30)
    try:
        r1 = request(tgt.addr, "POST", "/input?mode=none", body=b"z" * 100_000, conn=conn)
        assert r1.status == 200, r1
        r2 = request(tgt.addr, "GET", "/pid", conn=conn)
        assert r2.status == 200 and r2.body.isdigit(), r2
    finally:
        conn.close()


def _chunked_upload(tgt, path, parts, extra_headers=b"", delay=0.0, trailer=b""):
    with tgt.addr.socket(30) as s:
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n" + extra_headers + b"\r\n")
        for p in parts:
            s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            if delay:
                time.sleep(delay)  # the scenario: the body arrives in pieces (pacing, not a wait)
        s.sendall(b"0\r\n" + trailer + b"\r\n")
        data = recv_all(s, time.monotonic() + 30)
    return parse_response(data)


@pytest.mark.parametrize("mode,key,expected", [
    ("read", "data", BODY.decode("latin-1")),
    ("readline", "lines", L(BODY_LINES)),
    ("iter", "lines", L(BODY_LINES)),
    ("read_n", "chunks", None),
])
def test_chunked_request_body(tgt, mode, key, expected):
    parts = [BODY[:5], BODY[5:6], BODY[6:20], BODY[20:]]
    r = _chunked_upload(tgt, "/input?mode=%s&n=4" % mode, parts, delay=0.05)
    assert r.status == 200, r
    import json
    d = json.loads(r.body)
    got = d[key]
    if expected is None:
        assert "".join(got) == BODY.decode("latin-1")
    else:
        assert got == expected


def test_chunked_request_body_large(tgt):
    data = os.urandom(1024 * 1024 + 3)
    parts = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    r = _chunked_upload(tgt, "/input?mode=sha", parts)
    assert r.status == 200, r
    import json
    d = json.loads(r.body)
    assert d["length"] == len(data) and d["sha256"] == hashlib.sha256(data).hexdigest()


def test_chunked_request_with_extension_and_trailer(tgt):
    with tgt.addr.socket(30) as s:
        s.sendall(b"POST /input?mode=read HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n"
                  b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = parse_response(recv_all(s, time.monotonic() + 30))
    assert r.status == 200, r
    import json
    assert json.loads(r.body)["data"] == "hello world"


# ---------------------------------------------------------------------------------------
# responses


def test_write_callable(tgt):
    r = get(tgt.addr, "/write")
    assert r.status == 200, r
    assert r.body == b"one-two-three"


def test_generator_streams_before_it_ends(tgt):
    """The first chunk reaches the client before the generator yields the second one."""
    n, delay = 3, 1.5
    with tgt.addr.socket(30) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /stream?n=%d&delay=%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % (n, str(delay).encode()))
        buf = b""
        t_first = None
        deadline = t0 + 30
        while True:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            c = s.recv(65536)
            if not c:
                break
            buf += c
            if t_first is None and b"chunk0" in buf:
                t_first = time.monotonic() - t0
        t_total = time.monotonic() - t0
    r = parse_response(buf)
    assert r.status == 200 and r.complete, r
    assert r.body == b"".join(b"chunk%d\n" % i for i in range(n))
    assert t_total >= (n - 1) * delay * 0.9, "the generator's sleeps did not happen? %.2fs" % t_total
    assert t_first is not None and t_first < delay * 0.9, (
        "first chunk after %.2fs, whole body after %.2fs: the body was collected before sending" % (t_first, t_total))


def test_empty_chunks_do_not_end_the_body(tgt):
    r = raw_exchange(tgt.addr, b"GET /stream-empty HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert r.status == 200 and r.complete, r
    assert r.body == b"ab"


@pytest.mark.parametrize("kind", ["file", "bytesio"])
def test_file_wrapper(tgt, kind):
    r = get(tgt.addr, "/file?kind=%s&kb=300" % kind)
    assert r.status == 200, r
    assert r.body == pattern(300 * 1024)


@pytest.mark.parametrize("kb", [0, 1, 64, 4096])
def test_big_response(tgt, kb):
    r = get(tgt.addr, "/big?kb=%d" % kb, timeout=60)
    assert r.status == 200, r
    assert len(r.body) == kb * 1024 and r.body == pattern(kb * 1024)


def test_status_and_repeated_response_headers(tgt):
    r = get(tgt.addr, "/status?code=418&reason=I%27m+a+teapot")
    assert r.status == 418
    assert r.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert r.header("X-Custom") == "v"
    assert r.body == b"status-body"


@pytest.mark.parametrize("code", [201, 204, 301, 404, 503])
def test_status_codes(tgt, code):
    r = get(tgt.addr, "/status?code=%d&reason=Whatever" % code)
    assert r.status == code, r
    assert r.body == (b"" if code == 204 else b"status-body")
    if tgt.is_weir:
        assert r.header("x-weir-error") is None, "an app's own %d is not weir's error" % code


def test_exc_info_replaces_headers_before_body(tgt):
    r = get(tgt.addr, "/exc_info?case=replace")
    assert r.status == 500, r
    assert r.header("X-Replaced") == "1" and r.header("X-Before") is None, r
    assert r.body == b"replaced"


def test_second_start_response_without_exc_info_raises(tgt):
    r = get(tgt.addr, "/exc_info?case=second_without")
    assert r.status == 200, r
    assert r.body.startswith(b"raised:"), r


def cut_detectable(tgt, with_length):
    if tgt.via_nginx and not with_length:
        pytest.skip("behind uwsgi_pass a response without Content-Length ends when the connection "
                    "does: nginx cannot tell a cut from the end")


@pytest.mark.parametrize("cl", [False, True], ids=["no-length", "content-length"])
def test_exc_info_after_body_cuts_connection(tgt, cl):
    cut_detectable(tgt, cl)
    path = b"/exc_info?case=after_body" + (b"&cl=1" if cl else b"")
    r = raw_exchange(tgt.addr, b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    assert not r.complete, "the response was ended cleanly although the app raised after it started: %r" % r
    assert b"must-not-be-sent" not in r.body


def test_head_has_no_body(tgt):
    for path in (b"/head", b"/head?gen=1"):
        r = raw_exchange(tgt.addr, b"HEAD " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                         head_request=True)
        assert r.status == 200, r
        assert r.body == b"", "HEAD %s answered with body bytes %r" % (path, r.body[:100])


def test_head_then_get_on_one_connection(tgt):
    conn = tgt.addr.connection(30)
    try:
        r1 = request(tgt.addr, "HEAD", "/head", conn=conn)
        assert r1.status == 200 and r1.body == b""
        r2 = request(tgt.addr, "GET", "/head?gen=1", conn=conn)
        assert r2.status == 200 and r2.body == b"head-body-must-not-be-sent" * 2, r2
    finally:
        conn.close()


def test_keep_alive_many_requests(tgt):
    conn = tgt.addr.connection(30)
    try:
        for i in range(30):
            r = request(tgt.addr, "GET", "/environ?i=%d" % i, conn=conn)
            assert r.status == 200, r
            assert r.json()["environ"]["QUERY_STRING"] == "i=%d" % i
    finally:
        conn.close()


def test_concurrent_requests(tgt):
    results = []
    lock = threading.Lock()

    def one(i):
        try:
            r = get(tgt.addr, "/big?kb=%d" % (i % 7 + 1))
            ok = r.status == 200 and r.body == pattern((i % 7 + 1) * 1024)
        except Exception as e:
            ok = repr(e)
        with lock:
            results.append(ok)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert results.count(True) == 40, results


# ---------------------------------------------------------------------------------------
# close()


@pytest.mark.parametrize("kind", ["list", "gen"])
def test_close_called(tgt, kind):
    marker = str(tgt.state_dir / ("close-%s-%d" % (kind, time.monotonic_ns())))
    r = get(tgt.addr, "/close?kind=%s&marker=%s" % (kind, quote(marker)))
    assert r.status == 200, r
    assert r.body == (b"list-body" if kind == "list" else b"gen-body")
    wait_for(lambda: os.path.exists(marker), 10, what="close() to be called")


def test_close_called_when_client_disconnects(tgt):
    marker = str(tgt.state_dir / ("close-slow-%d" % time.monotonic_ns()))
    path = "/close?kind=slow&n=600&delay=0.05&marker=%s" % quote(marker)
    with tgt.addr.socket(30) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode())
        buf = b""
        while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < 100:
            c = s.recv(65536)
            assert c, "connection closed early: %r" % buf
            buf += c
        assert b" 200 " in buf.split(b"\r\n", 1)[0]
    # the client is gone; the 600 chunks would take 30 s: close() must come well before
    t0 = time.monotonic()
    wait_for(lambda: os.path.exists(marker), 12, what="close() after the client went away")
    with open(marker) as f:
        info = f.read()
    sent = int(info.split("sent=")[1].split()[0])
    assert sent < 600, "the whole body was produced for a client that had left (%s, %.1fs)" % (info, time.monotonic() - t0)
    # and the worker serves again
    r = get(tgt.addr, "/pid")
    assert r.status == 200


# ---------------------------------------------------------------------------------------
# errors


def test_exception_before_start_is_500_without_traceback(tgt):
    r = get(tgt.addr, "/boom")
    assert r.status == 500, r
    assert b"Traceback" not in r.body and b"secret-boom-detail" not in r.body and b"RuntimeError" not in r.body, r
    if tgt.is_weir:
        assert r.header("x-weir-error") == "app-exception", r


def test_exception_traceback_logged_with_request_id(tgt):
    weir_only(tgt, "the log format is weir's")
    r = get(tgt.addr, "/boom")
    assert r.status == 500
    rid = r.header("X-Request-ID")
    assert rid, "no X-Request-ID on %r" % r

    def logged():
        out = tgt.backend.output()
        return "secret-boom-detail" in out and rid in out
    wait_for(logged, 10, what="the traceback and request id %s in weir's output" % rid)


@pytest.mark.parametrize("cl", [False, True], ids=["no-length", "content-length"])
def test_exception_after_start_cuts_connection(tgt, cl):
    cut_detectable(tgt, cl)
    path = b"/boom-after" + (b"?cl=1" if cl else b"")
    r = raw_exchange(tgt.addr, b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert r.status == 200, r
    assert not r.complete, "response ended cleanly although the app raised mid-body: %r" % r
    assert r.body.startswith(b"partial-"), r
    assert b"secret-boom-detail" not in r.raw


@pytest.mark.parametrize("shape", ["one", "list", "gen"])
def test_body_longer_than_content_length_is_cut_and_logged(tgt, shape):
    """The client gets exactly Content-Length bytes, and the excess is not silent: the
    worker logs a warning with the request id and how many bytes it dropped."""
    weir_only(tgt, "the warning is weir's")
    r = raw_exchange(tgt.addr, b"GET /cl-long?shape=" + shape.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                               b"Connection: close\r\n\r\n")
    assert r.status == 200 and r.complete and r.body == b"abc", r
    assert r.raw.endswith(b"\r\n\r\nabc"), "more than Content-Length on the wire: %r" % r.raw[-50:]
    rid = r.header("X-Request-ID")
    want = "request %s: warning: the app's body is longer than its Content-Length (3 bytes): 4 more bytes dropped" % rid
    wait_for(lambda: want in tgt.backend.output(), 10, what="%r in weir's output" % want)


def test_worker_survives_exceptions(tgt):
    # 2 workers: if raising requests cost a worker its life, more than 2 pids show up
    pids = set()
    for _ in range(6):
        pids.add(get(tgt.addr, "/pid").body)
        assert get(tgt.addr, "/boom").status == 500
        raw_exchange(tgt.addr, b"GET /boom-after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    pids |= set(get(tgt.addr, "/pid").body for _ in range(6))
    assert len(pids) <= 2, "workers were replaced after app exceptions: %r" % pids


def test_wsgi_errors_reach_the_log(tgt):
    token = "wsgi-errors-token-%d" % time.monotonic_ns()
    r = get(tgt.addr, "/errors?token=" + token)
    assert r.status == 200
    wait_for(lambda: token in tgt.backend.output(), 10, what="wsgi.errors output in the server log")


def test_not_found_is_the_apps(tgt):
    r = get(tgt.addr, "/no/such/route")
    assert r.status == 404 and r.body.startswith(b"not found"), r


# ---------------------------------------------------------------------------------------
# request id


def test_request_id_on_every_response(tgt):
    weir_only(tgt)
    ids = set()
    for path in ("/pid", "/status?code=404", "/boom", "/stream?n=1"):
        r = get(tgt.addr, path)
        rid = r.header("X-Request-ID")
        assert rid, "%s: no X-Request-ID in %r" % (path, r.headers)
        ids.add(rid)
    assert len(ids) == 4, "request ids are not unique: %r" % ids


def test_request_id_reaches_the_app(tgt):
    weir_only(tgt)
    r = get(tgt.addr, "/environ")
    rid = r.header("X-Request-ID")
    env = r.json()["environ"]
    assert rid in env.values(), "the request id %s is not in the environ: %r" % (rid, sorted(env))

"""Edge cases of the WSGI contract, end to end, with the worker engineer's own app
(tests/apps/conformance.py, its routes documented there), through weir's HTTP listener and
behind nginx. The worker's Rust tests check these at the worker; here they are checked
through the master and nginx, as a client sees them. One worker, so the app's close()
counter is exact.
"""

from __future__ import annotations

import time

import pytest

from e2e_lib import get, raw_exchange, request, wait_for


def closes(t) -> int:
    r = get(t.addr, "/closes")
    assert r.status == 200, r
    return r.json()["closes"]


def raw_get(t, path: str):
    return raw_exchange(t.addr, ("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())


def test_hello(wtgt):
    r = get(wtgt.addr, "/hello")
    assert r.status == 200 and r.body == b"hello", r


@pytest.mark.parametrize("size", [None, 1, 3, 4096])
def test_input_read_sizes(wtgt, size):
    body = bytes(range(256)) * 40
    r = request(wtgt.addr, "POST", "/input/read" + ("?size=%d" % size if size else ""), body=body)
    assert r.status == 200, r  # the app asserts read()/read(10)/readline() give b"" at the end
    assert r.body == body


def test_input_readline_limit(wtgt):
    r = request(wtgt.addr, "POST", "/input/readline?limit=4", body=b"abcdefgh\nij\n\nk")
    assert r.status == 200, r
    assert r.json() == ["abcd", "efgh", "\n", "ij\n", "\n", "k"]


def test_input_readlines_hint(wtgt):
    r = request(wtgt.addr, "POST", "/input/readlines?hint=1", body=b"one\ntwo\nthree\n")
    assert r.status == 200, r
    lines = r.json()
    assert lines and lines[0] == "one\n" and "".join(lines) == "one\ntwo\nthree\n"[:len("".join(lines))]


@pytest.mark.parametrize("path", ["/input/partial?n=1", "/input/ignore"])
def test_partly_read_body_keeps_the_connection_in_sync(wtgt, path):
    conn = wtgt.addr.connection(30)
    try:
        r1 = request(wtgt.addr, "POST", path, body=b"q" * 300_000, conn=conn)
        assert r1.status == 200, r1
        r2 = request(wtgt.addr, "POST", "/echo", body=b"second", conn=conn)
        assert r2.status == 200 and r2.body == b"second", r2
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/raise_before", "/raise_in_iter", "/not_bytes", "/no_start_response", "/twice",
                                  "/bad_header", "/cl_short", "/tracked?raise=1"])
def test_app_errors_before_the_body_are_500(wtgt, path):
    r = get(wtgt.addr, path)
    assert r.status == 500, r
    assert r.header("x-weir-error") == "app-exception", r
    assert b"Traceback" not in r.body, r
    assert r.header("X-Bad") is None
    # and the worker serves the next request
    assert get(wtgt.addr, "/hello").status == 200


@pytest.mark.parametrize("path", ["/raise_after", "/exc_info_after", "/cl_short_stream"])
def test_app_errors_mid_body_cut_the_connection(wtgt, path):
    if wtgt.via_nginx and path != "/cl_short_stream":
        pytest.skip("without Content-Length, nginx cannot tell a uwsgi response's cut from its end")
    r = raw_get(wtgt, path)
    assert r.status == 200, r
    assert not r.complete, "%s ended cleanly: %r" % (path, r)
    assert get(wtgt.addr, "/hello").status == 200


def test_exc_info_before_head(wtgt):
    r = get(wtgt.addr, "/exc_info")
    assert r.status == 500 and r.body == b"recovered", r
    assert r.header("x-weir-error") is None, "the app's own 500 is not weir's error: %r" % r


def test_app_cannot_send_weirs_error_header(wtgt):
    # The class header is weir's: an app's own 503 with x-weir-error is still the app's.
    r = get(wtgt.addr, "/impersonate")
    assert r.status == 503 and r.body == b"app", r
    assert r.header("x-weir-error") is None and r.header("x-ok") == "1", r
    assert r.header("retry-after") is None, r


def test_content_length_longer_body_is_cut_to_length(wtgt):
    conn = wtgt.addr.connection(30)
    try:
        r = request(wtgt.addr, "GET", "/cl_long", conn=conn)
        assert r.status == 200 and r.body == b"abc", r
        r2 = request(wtgt.addr, "GET", "/hello", conn=conn)
        assert r2.status == 200 and r2.body == b"hello", "the extra bytes leaked into the next response: %r" % r2
    finally:
        conn.close()


def test_hop_by_hop_headers_from_the_app_are_dropped(wtgt):
    r = raw_get(wtgt, "/hop")
    assert r.status == 200 and r.complete, r
    assert r.body == b"hop", r
    assert r.header("X-Ok") == "1"
    assert len([v for k, v in r.headers if k.lower() == "transfer-encoding"]) <= 1, r.headers


def test_latin1_response_header(wtgt):
    r = raw_get(wtgt, "/latin1")
    assert r.status == 200, r
    assert r.header("X-Latin").encode("latin-1") == b"caf\xe9", r.headers


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_statuses(wtgt, code):
    r = raw_get(wtgt, "/status?code=%d" % code)
    assert r.status == code and r.body == b"", r
    assert r.header("Transfer-Encoding") is None, r.headers


@pytest.mark.parametrize("path,delta", [("/tracked", 1), ("/tracked?raise=1", 1), ("/stream?n=3", 1),
                                        ("/filewrapper?size=50000&blksize=4096", 1)])
def test_close_is_called_once(wtgt, path, delta):
    before = closes(wtgt)
    r = get(wtgt.addr, path)
    assert r.status in (200, 500), r
    wait_for(lambda: closes(wtgt) >= before + delta, 10, what="close() on %s" % path)
    assert closes(wtgt) == before + delta, "close() called %d times for %s" % (closes(wtgt) - before, path)


def test_filewrapper_body(wtgt):
    r = get(wtgt.addr, "/filewrapper?size=200000&blksize=3000")
    assert r.status == 200 and r.body == bytes(i % 251 for i in range(200000))


def test_stdin_is_empty(wtgt):
    r = get(wtgt.addr, "/stdin")
    assert r.status == 200 and r.json() == {"stdin": ""}, r


def test_wsgi_errors_lines_in_log(wtgt):
    assert get(wtgt.addr, "/errors").status == 200
    wait_for(lambda: "line one" in wtgt.backend.output() and "line two" in wtgt.backend.output(), 10,
             what="wsgi.errors lines in weir's log")


def test_streaming_with_delay(wtgt):
    t0 = time.monotonic()
    r = get(wtgt.addr, "/stream?n=3&delay=300")
    assert r.status == 200 and r.body == b"chunk 0\nchunk 1\nchunk 2\n", r
    assert time.monotonic() - t0 >= 0.55

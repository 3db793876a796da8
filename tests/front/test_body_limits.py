"""`[server] max_body_size` (NGINX's client_max_body_size): a body over it is 413
`body-too-large` and never reaches the app, whether its size is declared (answered
before the body is read) or found while reading a chunked body, small or large; a body
at the limit passes.
"""

from __future__ import annotations

import time

import pytest

from e2e_lib import parse_response, recv_all, request
from front_lib import assert_weir_error, closed_by_peer, read_response_head, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(60)


def chunked(data: bytes, size: int = 64 * 1024) -> bytes:
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("limit,size", [("1KiB", 1024), ("2MiB", 2 << 20)])
def test_body_at_the_limit_passes(front, limit, size):
    f = front(config={"server": {"max_body_size": limit}})
    r = request(f.addr, "POST", "/echo?tag=at", body=b"a" * size, timeout=30)
    assert r.status == 200 and r.body == str(size).encode(), r


@pytest.mark.parametrize("limit,size", [("1KiB", 1025), ("2MiB", (2 << 20) + 1)])
def test_declared_body_over_the_limit_is_413_before_it_is_sent(front, limit, size):
    """The head alone is enough: NGINX answers 413 without reading the body."""
    f = front(config={"server": {"max_body_size": limit}})
    with f.addr.socket(10) as s:
        s.sendall(b"POST /echo?tag=over HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        head, rest = read_response_head(s, time.monotonic() + 5)
    assert head, "no answer to the head alone"
    r = parse_response(head + rest)
    assert_weir_error(r, 413, "body-too-large")
    assert "over" not in f.tags()


def test_refused_body_is_never_read_as_the_next_request(front):
    """A 413 on a keep-alive connection: the unread body (here shaped like a request) must
    not be parsed as the next request; the real next request is served or the
    connection closed."""
    f = front(config={"server": {"max_body_size": "1KiB"}}, workers=1)
    body = b"GET /env?tag=smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 3000
    payload = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
               + b"GET /env?tag=second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with f.addr.socket(10) as s:
        s.sendall(payload)
        _, data = closed_by_peer(s, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert data.count(b"HTTP/1.1 ") <= 2 and b"HTTP/1.1 400" not in data, data
    assert "smuggled" not in f.tags()


def test_expect_100_continue_over_the_limit_gets_413_not_100(front):
    f = front(config={"server": {"max_body_size": "1KiB"}})
    with f.addr.socket(10) as s:
        s.sendall(b"POST /echo?tag=expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_response_head(s, time.monotonic() + 5)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert "expect" not in f.tags()


@pytest.mark.parametrize("limit,size", [("1KiB", 4096), ("2MiB", 3 << 20)], ids=["small-buffered", "large-streamed"])
def test_chunked_body_over_the_limit_is_413(front, limit, size):
    """No Content-Length: the limit is found while reading. Under 1 MiB weir buffers the
    body before taking a worker; above it the body streams to the worker, and going over
    the limit mid-stream must still be a 413, not a dead worker."""
    f = front(config={"server": {"max_body_size": limit}, "queue": {"timeout": "4s"}}, workers=1)
    payload = (b"POST /echo?tag=chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + chunked(b"c" * size))
    with f.addr.socket(20) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_all(s, time.monotonic() + 10)
    r = parse_response(data)
    assert_weir_error(r, 413, "body-too-large")
    assert request(f.addr, "GET", "/env", timeout=10).status == 200, "the worker is free again"


def test_chunked_body_under_the_limit_reaches_the_app_whole(front):
    f = front(config={"server": {"max_body_size": "4MiB"}}, workers=1)
    for size in (10, 300 * 1024, 3 << 20):
        payload = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   + chunked(b"d" * size))
        with f.addr.socket(20) as s:
            s.sendall(payload)
            r = parse_response(recv_all(s, time.monotonic() + 20))
        assert r.status == 200 and r.body == str(size).encode(), (size, r)


# ---------------------------------------------------------------------------------------
# Large bodies stream to the worker: a client that fails mid-body must not hold it.


def _large_upload_head(kind: str, size: int) -> bytes:
    if kind == "chunked":
        return b"POST /echo?tag=up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return b"POST /echo?tag=up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size


def _large_upload_part(kind: str, data: bytes) -> bytes:
    return chunked(data)[:-5] if kind == "chunked" else data  # without the last-chunk marker


@pytest.mark.parametrize("kind", ["chunked", "content-length"])
def test_client_gone_mid_large_upload_frees_the_worker(front, kind):
    f = front(config={"server": {"max_body_size": "8MiB"}, "queue": {"timeout": "4s"}}, workers=1)
    s = f.addr.socket(10)
    s.sendall(_large_upload_head(kind, 4 << 20) + _large_upload_part(kind, b"u" * (2 << 20)))
    # over 1 MiB: the request went to the worker before its body ended, and the app started
    wait_tag_started(f.state, "up", timeout=10)
    s.close()
    t0 = time.monotonic()
    r = request(f.addr, "GET", "/env?tag=next", timeout=15)
    assert r.status == 200, r
    assert time.monotonic() - t0 < 5, "the next request waited %.1fs for the worker" % (time.monotonic() - t0)


@pytest.mark.parametrize("kind", ["chunked", "content-length"])
def test_client_stalled_mid_large_upload_gets_408_and_frees_the_worker(front, kind):
    """client_body_timeout also bounds a body that streams to the worker: a client that
    stops sending mid-upload gets 408 and the worker is freed."""
    f = front(config={"server": {"max_body_size": "8MiB", "client_body_timeout": "1s"}, "queue": {"timeout": "4s"}},
              workers=1)
    with f.addr.socket(15) as s:
        s.sendall(_large_upload_head(kind, 4 << 20) + _large_upload_part(kind, b"u" * (2 << 20)))
        t0 = time.monotonic()
        head, rest = read_response_head(s, time.monotonic() + 8)
        took = time.monotonic() - t0
    assert head, "the connection was closed without an answer"
    r = parse_response(head + rest)
    assert r.status == 408 and r.header("x-weir-error") == "client-timeout", r
    assert took < 4, took
    assert request(f.addr, "GET", "/env", timeout=10).status == 200

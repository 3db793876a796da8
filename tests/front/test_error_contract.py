"""The error contract, class by class: each answer weir makes itself is provoked for real
and checked for its status, `x-weir-error`, `x-request-id`, Retry-After (on 503s only),
and its body (JSON when Accept asks for it, a short text otherwise). The app's own
answers carry no x-weir-error.
"""

from __future__ import annotations

import signal
import time

import pytest

from e2e_lib import parse_response, recv_all
from front_lib import ACCEPTS, Background, assert_weir_error, get, request, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(60)

BOTH = pytest.mark.parametrize("accept", ["json", "text"])


def hdr(accept):
    return {"Accept": ACCEPTS[accept]}


@BOTH
def test_queue_full_is_503_at_once_with_retry_after(front, accept):
    f = front(config={"queue": {"max_size": 1, "retry_after": 3}}, workers=1, admin=True)
    busy = Background(f.addr, "/sleep?s=3&tag=busy")
    wait_tag_started(f.state, "busy")
    queued = Background(f.addr, "/env?tag=queued")
    f.wait_queued(1)
    t0 = time.monotonic()
    r = get(f.addr, "/env?tag=refused", headers=hdr(accept), timeout=10)
    took = time.monotonic() - t0
    assert_weir_error(r, 503, "queue-full", accept, retry_after=3)
    assert took < 1.0, "queue-full took %.2fs: it must be answered at once" % took
    assert busy.join().status == 200
    assert queued.join().status == 200, queued.resp
    assert "refused" not in f.tags()


@BOTH
def test_queue_timeout_is_503_with_retry_after(front, accept):
    f = front(config={"queue": {"timeout": "500ms", "retry_after": 2}}, workers=1)
    busy = Background(f.addr, "/sleep?s=4&tag=busy")
    wait_tag_started(f.state, "busy")
    t0 = time.monotonic()
    r = get(f.addr, "/env?tag=waited", headers=hdr(accept), timeout=10)
    took = time.monotonic() - t0
    assert_weir_error(r, 503, "queue-timeout", accept, retry_after=2)
    assert 0.4 <= took < 2.5, "queue-timeout after %.2fs, wanted about 0.5s" % took
    assert "waited" not in f.tags()
    assert busy.join().status == 200
    # A sentinel behind it on the one worker: had `waited` been left in the queue and run
    # after `busy`, it would have started (and logged its hit) before `after` did.
    assert get(f.addr, "/env?tag=after", timeout=10).status == 200
    assert "waited" not in f.tags()


@BOTH
def test_harakiri_is_504(front, accept):
    f = front(config={"app": {"harakiri": 1}}, workers=1)
    t0 = time.monotonic()
    r = get(f.addr, "/sleep?s=20&tag=long", headers=hdr(accept), timeout=15)
    took = time.monotonic() - t0
    assert_weir_error(r, 504, "harakiri", accept)
    assert 0.9 <= took < 4, "harakiri answered after %.2fs, wanted about 1s" % took
    # the worker was replaced and serves again
    assert get(f.addr, "/", timeout=30).status == 200


@BOTH
def test_deadline_while_running_is_504(front, accept):
    f = front(config={"server": {"request_timeout": "1s"}}, workers=1)
    t0 = time.monotonic()
    r = get(f.addr, "/sleep?s=20&tag=long", headers=hdr(accept), timeout=15)
    took = time.monotonic() - t0
    assert_weir_error(r, 504, "deadline", accept)
    assert 0.9 <= took < 4, "deadline answered after %.2fs, wanted about 1s" % took
    assert get(f.addr, "/", timeout=30).status == 200


@BOTH
def test_worker_died_is_502(front, accept):
    f = front(workers=1)
    r = get(f.addr, "/crash", headers=hdr(accept), timeout=15)
    assert_weir_error(r, 502, "worker-died", accept)
    assert get(f.addr, "/", timeout=30).status == 200


@BOTH
def test_body_too_large_is_413(front, accept):
    f = front(config={"server": {"max_body_size": "1KiB"}})
    r = request(f.addr, "POST", "/echo?tag=big", body=b"x" * 4096, headers=hdr(accept), timeout=10)
    assert_weir_error(r, 413, "body-too-large", accept)
    assert "big" not in f.tags()


@BOTH
def test_client_body_timeout_is_408(front, accept):
    f = front(config={"server": {"client_body_timeout": "1s"}})
    with f.addr.socket(10) as s:
        s.sendall(b"POST /echo?tag=slowbody HTTP/1.1\r\nHost: x\r\nAccept: %s\r\nContent-Length: 100\r\n"
                  b"Connection: close\r\n\r\n" % ACCEPTS[accept].encode() + b"y" * 10)
        t0 = time.monotonic()
        data = recv_all(s, time.monotonic() + 10)
        took = time.monotonic() - t0
    r = parse_response(data)
    assert_weir_error(r, 408, "client-timeout", accept)
    assert 0.9 <= took < 4, "408 after %.2fs, wanted about 1s" % took
    assert "slowbody" not in f.tags()


@BOTH
def test_bad_chunk_in_body_is_400_bad_request(front, accept):
    f = front()
    payload = (b"POST /echo?tag=badchunk HTTP/1.1\r\nHost: x\r\nAccept: %s\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n" % ACCEPTS[accept].encode())
    with f.addr.socket(10) as s:
        s.sendall(payload)
        data = recv_all(s, time.monotonic() + 10)
    r = parse_response(data)
    assert_weir_error(r, 400, "bad-request", accept)
    assert "badchunk" not in f.tags()


@BOTH
def test_headers_too_big_for_a_worker_packet_is_431_header_too_large(front, accept):
    # max_header_size lets 80 KiB of headers through hyper; a uwsgi packet holds 64 KiB.
    f = front(config={"server": {"max_header_size": "256KiB"}})
    headers = dict(hdr(accept))
    for i in range(10):
        headers["X-Big-%d" % i] = "b" * 8000
    r = get(f.addr, "/env?tag=bighead", headers=headers, timeout=10)
    assert_weir_error(r, 431, "header-too-large", accept)
    assert "bighead" not in f.tags()


@BOTH
def test_app_exception_is_500_app_exception(front, accept):
    f = front(workers=1)
    r = get(f.addr, "/boom", headers=hdr(accept), timeout=10)
    assert_weir_error(r, 500, "app-exception", accept)
    # the worker survives an exception
    assert get(f.addr, "/", timeout=10).status == 200


@BOTH
def test_queued_at_shutdown_is_503_shutting_down(front, accept):
    """SIGTERM: the request in flight finishes; one still queued is answered at once."""
    f = front(config={"queue": {"retry_after": 2}}, workers=1, admin=True)
    busy = Background(f.addr, "/sleep?s=2&tag=busy")
    wait_tag_started(f.state, "busy")
    queued = Background(f.addr, "/env?tag=queued", headers=hdr(accept))
    f.wait_queued(1)
    f.proc.signal(signal.SIGTERM)
    r = queued.join()
    assert_weir_error(r, 503, "shutting-down", accept, retry_after=2)
    assert queued.elapsed < 1.5, queued.elapsed
    assert busy.join().status == 200
    assert f.proc.wait(15) == 0
    assert "queued" not in f.tags()


def test_app_answers_carry_no_weir_error(front):
    f = front()
    for path, status in (("/", 200), ("/nothing-here", 404), ("/status?code=503", 503), ("/status?code=502", 502),
                         ("/status?code=504", 504)):
        r = get(f.addr, path, headers=hdr("json"), timeout=10)
        assert r.status == status, r
        assert r.header("x-weir-error") is None, "the app's own %d is attributed to weir: %r" % (status, r)
        assert r.header("x-request-id"), r
        assert r.header("retry-after") is None, r


def test_json_body_only_when_accept_asks_for_json(front):
    """Accept variants: application/json (also with a q value or among others) and
    +json types get JSON; a browser's Accept and no Accept get text."""
    f = front(workers=1)
    for accept, want_json in (("application/json", True), ("text/html;q=0.9, application/json", True),
                              ("application/problem+json", True), (None, False),
                              ("text/html,application/xhtml+xml,*/*;q=0.8", False), ("*/*", False)):
        h = {"Accept": accept} if accept else {}
        r = get(f.addr, "/crash", headers=h, timeout=15)
        assert r.status == 502, r
        ctype = r.header("content-type") or ""
        assert ctype.startswith("application/json") == want_json, "Accept %r got %r: %r" % (accept, ctype, r)

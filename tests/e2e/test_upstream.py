"""weir's front door before external app servers ([upstream]): a real uWSGI over the
uwsgi protocol and a real Gunicorn over HTTP, both serving tests/e2e/apps/sup_app.py.

Covers: requests pass through with identity headers; read_timeout -> 504
upstream-timeout; an unreachable server -> 502 upstream-connect, or for an idempotent
request the next server (next_upstream); max_conns with the queue in front -> 503
queue-full at once when the queue is at its bound; passive health marks a dead server
down so later requests go straight to the live one.
"""

import concurrent.futures
import shutil
import time

import pytest

from conftest import APPS
from e2e_lib import Addr, Proc, free_port, get, metric_value, request, sock_path, wait_for

UWSGI = shutil.which("uwsgi")
GUNICORN = shutil.which("gunicorn")


def start_uwsgi(tmp_path, short_tmp, processes=2, module="sup_app:application"):
    if not UWSGI:
        pytest.fail("uwsgi not found: run scripts/install-deps.sh", pytrace=False)
    sock = sock_path(short_tmp, "uwsgi-up")
    p = Proc("uwsgi", [UWSGI, "--socket", sock, "--chdir", str(APPS), "--module", module,
                       "--processes", str(processes), "--master", "--die-on-term", "--disable-logging",
                       "--need-app"], tmp_path / "logs")
    wait_for(lambda: __import__("os").path.exists(sock), 30, what="uWSGI socket")
    return p, "unix:" + sock


def start_gunicorn(tmp_path, workers=2, module="sup_app:application"):
    if not GUNICORN:
        pytest.fail("gunicorn not found: run scripts/install-deps.sh", pytrace=False)
    port = free_port()
    p = Proc("gunicorn", [GUNICORN, "--bind", "127.0.0.1:%d" % port, "--workers", str(workers),
                          "--chdir", str(APPS), module], tmp_path / "logs")

    def up():
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            return False
    wait_for(up, 30, what="Gunicorn port")
    return p, "127.0.0.1:%d" % port


def answers(w):
    try:
        get(w.addr, "/pid", timeout=5)
        return True
    except OSError:
        return False


def front(weir, servers, protocol, wait=True, **upstream):
    cfg = {"server": {"access_log": "off"},
           "upstream": dict({"servers": servers, "protocol": protocol}, **upstream)}
    w = weir(app=None, chdir=None, workers=None, config=cfg, ready_path="/pid", wait=wait)
    if not wait:  # no live server: ready once the listener answers at all
        wait_for(lambda: answers(w), 30, what="weir listener")
    return w


@pytest.fixture(params=["uwsgi", "http"])
def peer(request, tmp_path, short_tmp):
    if request.param == "uwsgi":
        p, addr = start_uwsgi(tmp_path, short_tmp)
    else:
        p, addr = start_gunicorn(tmp_path)
    yield request.param, addr
    p.stop()


def test_requests_pass_through_with_identity(weir, peer):
    protocol, addr = peer
    w = front(weir, [addr], protocol)
    r = get(w.addr, "/version")
    assert r.status == 200, r
    assert r.body.startswith(b"v0")
    assert r.header("x-request-id")
    assert r.header("x-weir-error") is None


def test_read_timeout_is_504_upstream_timeout(weir, peer):
    protocol, addr = peer
    w = front(weir, [addr], protocol, read_timeout="1s")
    t0 = time.monotonic()
    r = get(w.addr, "/sleep?s=4", headers=[("Accept", "application/json")])
    assert r.status == 504, r
    assert r.header("x-weir-error") == "upstream-timeout"
    assert r.json()["error"] == "upstream-timeout"
    assert time.monotonic() - t0 < 3.5


def test_unreachable_server(weir, peer, short_tmp):
    protocol, addr = peer
    dead = "unix:" + sock_path(short_tmp, "nobody") if protocol == "uwsgi" else "127.0.0.1:%d" % free_port()
    # Only the dead server: 502 upstream-connect, fast.
    w = front(weir, [dead], protocol, wait=False)
    r = get(w.addr, "/pid")
    assert r.status == 502 and r.header("x-weir-error") == "upstream-connect", r
    w.stop()
    # Dead first, live second: idempotent requests move on and succeed; the dead one is
    # then marked down (max_fails = 1), so a POST afterwards goes to the live one too.
    w = front(weir, [dead, addr], protocol, max_fails=1, fail_timeout="30s")
    for _ in range(4):
        r = get(w.addr, "/pid")
        assert r.status == 200, r
    r = request(w.addr, "POST", "/pid", body=b"x")
    assert r.status == 200, r


def test_non_idempotent_request_is_not_retried(weir, peer, short_tmp):
    protocol, addr = peer
    dead = "unix:" + sock_path(short_tmp, "nobody2") if protocol == "uwsgi" else "127.0.0.1:%d" % free_port()
    w = front(weir, [dead, addr], protocol, max_fails=100)
    statuses = set()
    for _ in range(6):  # round robin: some land on the dead server first
        statuses.add(request(w.addr, "POST", "/pid", body=b"x").status)
    assert statuses == {200, 502}


def test_max_conns_and_queue_full(weir, peer, tmp_path):
    protocol, addr = peer
    admin = Addr("127.0.0.1", free_port())
    cfg = {"server": {"access_log": "off"}, "queue": {"max_size": 1, "timeout": "10s"},
           "admin": {"listen": str(admin)},
           "upstream": {"servers": [addr], "protocol": protocol, "max_conns": 1, "read_timeout": "30s"}}
    w = weir(app=None, chdir=None, workers=None, config=cfg, ready_path="/pid")
    marker = tmp_path / "busy-started"
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        busy = ex.submit(get, w.addr, "/sleep?s=2&marker=%s" % marker)
        # the app runs the first request: it holds the only upstream connection
        wait_for(marker.exists, 15, what="the first request to reach the app")
        queued = ex.submit(get, w.addr, "/pid")
        # the second waits for that connection (weir_queue_depth: waiting for an upstream connection)
        wait_for(lambda: metric_value(admin, "weir_queue_depth") == 1, 10, what="the second request to queue")
        t0 = time.monotonic()
        r = get(w.addr, "/pid")
        assert r.status == 503 and r.header("x-weir-error") == "queue-full", r
        assert r.header("retry-after") == "1"
        assert time.monotonic() - t0 < 1.0
        assert busy.result().status == 200
        assert queued.result().status == 200


@pytest.mark.parametrize("protocol", ["uwsgi", "http"])
def test_a_route_slot_is_held_to_the_end_of_the_upstream_response_body(weir, tmp_path, short_tmp, protocol):
    """`[[route]] /stream max_concurrency = 1` before a real uWSGI or Gunicorn: A streams
    its body for about 1.6 s after its first chunk; B, sent on the same route once A's
    first chunk has come, must wait for A's slot until A's body has ended, as it would
    before a managed worker (the slot used to be given back at A's response head, so B ran
    alongside A)."""
    module = "conformance_app:application"
    if protocol == "uwsgi":
        p, addr = start_uwsgi(tmp_path, short_tmp, processes=3, module=module)
    else:
        p, addr = start_gunicorn(tmp_path, workers=3, module=module)
    try:
        cfg = {"server": {"access_log": "off"},
               "route": [{"path": "/stream", "max_concurrency": 1}],
               "upstream": {"servers": [addr], "protocol": protocol, "max_conns": 4, "read_timeout": "30s"}}
        w = weir(app=None, chdir=None, workers=None, config=cfg, ready_path="/pid")
        # A on a raw connection: once its first chunk has come, A holds the route's slot.
        sa = w.addr.socket(30)
        sa.sendall(b"GET /stream?n=5&delay=0.4 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"chunk0" not in got:
            data = sa.recv(65536)
            assert data, "A's connection closed early: %r" % got
            got += data
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            b = ex.submit(lambda: (get(w.addr, "/stream?n=1&delay=0", timeout=30), time.monotonic()))
            while not got.endswith(b"0\r\n\r\n"):
                data = sa.recv(65536)
                assert data, "A's connection closed before its body ended: %r" % got
                got += data
            a_end = time.monotonic()
            rb, b_end = b.result(30)
        sa.close()
        assert all(b"chunk%d\n" % i in got for i in range(5)), got
        assert rb.status == 200, rb
        assert b_end >= a_end, ("B ended %.2f s before A's body did: the route's slot was given back at A's "
                                "response head" % (a_end - b_end))
    finally:
        p.stop()


@pytest.mark.parametrize("protocol", ["uwsgi", "http"])
def test_a_slow_client_does_not_hold_the_upstream_connection(weir, tmp_path, short_tmp, protocol):
    """`max_conns = 1` before a real uWSGI or Gunicorn: A asks for 8 MiB and reads none of
    it (32 MiB unbuffered: more than the kernel's socket buffers and the few chunks in
    flight hold). weir reads the answer into its spool (memory, then a temp file), so the upstream's
    one connection is free at once and B is answered while A still has not read (NGINX's
    `uwsgi_buffering`/`proxy_buffering`). With `buffering = false` on the route, B waits
    for A's connection and is refused by the queue's timeout."""
    module = "conformance_app:application"
    if protocol == "uwsgi":
        p, addr = start_uwsgi(tmp_path, short_tmp, processes=2, module=module)
    else:
        p, addr = start_gunicorn(tmp_path, workers=2, module=module)
    try:
        cfg = {"server": {"access_log": "off"},
               "queue": {"timeout": "2s"},
               "route": [{"path": "/big", "buffering": False}],
               "upstream": {"servers": [addr], "protocol": protocol, "max_conns": 1, "read_timeout": "30s"}}
        w = weir(app=None, chdir=None, workers=None, config=cfg, ready_path="/pid")
        for path, b_status in (("/file?kind=bytesio&kb=8192", 200), ("/big?kb=32768", 503)):
            sa = w.addr.socket(30)
            sa.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 16 * 1024)
            sa.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            head = b""
            while b"\r\n\r\n" not in head:
                data = sa.recv(4096)
                assert data, "A's connection closed before its head"
                head += data
            assert head.startswith(b"HTTP/1.1 200"), head
            t0 = time.monotonic()
            rb = get(w.addr, "/pid", timeout=30)
            took = time.monotonic() - t0
            assert rb.status == b_status, (path, rb)
            if b_status == 200:
                assert took < 1.5, "B waited %.2fs for the connection A's slow read held" % took
            sa.close()
            # A's connection is given back when its client leaves
            wait_for(lambda: get(w.addr, "/pid", timeout=30).status == 200, 30, what="the connection back")
    finally:
        p.stop()

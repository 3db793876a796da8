"""The front-door promises through the uwsgi listener, with a real NGINX in front
(`uwsgi_pass`): weir's own answers keep their status, x-weir-error, Retry-After and
body through NGINX, and a request whose client left while it was queued never reaches a
worker (NGINX closes its upstream connection when its client goes).
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import threading
import time

import pytest

from e2e_lib import Addr, free_port, get, request, sock_path
from front_lib import (FRONT_APPS, Background, assert_weir_error, parse_prometheus, sample, tags_seen, to_toml,
                       wait_for, wait_tag_started)

pytestmark = pytest.mark.e2e_timeout(60)


@pytest.fixture
def behind_nginx(weir, nginx, short_tmp, state_dir):
    """start(config) -> (nginx's address, weir's admin address, nginx's directory)."""
    def start(config: dict, workers: int = 1):
        sock = sock_path(short_tmp, "front-uwsgi")
        port = free_port()
        cfg = dict(config)
        cfg["admin"] = {"listen": "127.0.0.1:%d" % port}
        srv = weir(app="front_app:application", chdir=FRONT_APPS, workers=workers, listen=None,
                   uwsgi_listen=["unix:" + sock], config=to_toml(cfg), env={"FRONT_STATE": str(state_dir)})
        wait_for(lambda: os.path.exists(sock) or not srv.alive, 30, what="weir's uwsgi socket")
        n = nginx("unix:" + sock)
        srv.wait_ready(n.addr)
        return n.addr, Addr("127.0.0.1", port), n.dir
    return start


def metric(admin, name, **labels):
    v = sample(parse_prometheus(get(admin, "/metrics", timeout=5).text), name, **labels)
    return 0.0 if v is None else v


def queue_depth(admin):
    return metric(admin, "weir_queue_depth")


@pytest.mark.parametrize("accept", ["json", "text"])
def test_queue_full_through_nginx(behind_nginx, state_dir, accept):
    addr, admin, _ = behind_nginx({"queue": {"max_size": 1, "retry_after": 5}})
    busy = Background(addr, "/sleep?s=2&tag=busy")
    wait_tag_started(state_dir, "busy")
    queued = Background(addr, "/env?tag=queued")
    wait_for(lambda: queue_depth(admin) == 1, 10, what="one queued request")
    r = get(addr, "/env?tag=refused", headers={"Accept": "application/json" if accept == "json" else "*/*"},
            timeout=10)
    assert_weir_error(r, 503, "queue-full", accept, retry_after=5)
    assert busy.join().status == 200 and queued.join().status == 200


def test_harakiri_through_nginx(behind_nginx):
    addr, _, _ = behind_nginx({"app": {"harakiri": 1}})
    r = get(addr, "/sleep?s=10", headers={"Accept": "application/json"}, timeout=15)
    assert_weir_error(r, 504, "harakiri", "json")
    assert json.loads(r.body)["request_id"] == r.header("x-request-id")


def test_client_gone_while_queued_behind_nginx_never_reaches_a_worker(behind_nginx, state_dir):
    addr, admin, ndir = behind_nginx({})
    busy = Background(addr, "/sleep?s=2&tag=busy")
    wait_tag_started(state_dir, "busy")
    s = addr.socket(10)
    s.sendall(b"GET /env?tag=gone HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: queue_depth(admin) == 1, 10, what="the request queued")
    s.close()
    # NGINX saw its client go (499) and closed its uwsgi connection to weir
    wait_for(lambda: " 499 " in (ndir / "access.log").read_text(), 10, what="NGINX to log 499")
    # ...and weir settled that request as 499 client-closed: it is never dispatched now
    wait_for(lambda: metric(admin, "weir_requests_total", status="499", **{"class": "client-closed"}) == 1, 10,
             what="weir to count the departed request as 499 client-closed")
    assert busy.join().status == 200
    # A sentinel behind it on the one worker: had `gone` still been queued, it would have
    # started (and logged its hit) before `after` did.
    assert get(addr, "/env?tag=after", timeout=10).status == 200
    tags = tags_seen(state_dir)
    assert "after" in tags, tags
    assert "gone" not in tags, "a request whose client left reached the app through NGINX: %r" % tags


def test_max_body_size_applies_behind_nginx(behind_nginx, state_dir):
    """[server] max_body_size is the app's limit whichever listener the request came in
    on (NGINX's own client_max_body_size here is 64m)."""
    addr, _, _ = behind_nginx({"server": {"max_body_size": "1KiB"}})
    r = request(addr, "POST", "/echo?tag=big", body=b"x" * 4096, timeout=10)
    assert r.status == 413 and r.header("x-weir-error") == "body-too-large", r
    assert "big" not in tags_seen(state_dir)


def test_a_closed_loop_behind_nginx_is_not_taken_for_rate_overload(behind_nginx):
    """Rate overload (on by default) behind a real NGINX. 2 workers, a 20 ms CPU endpoint;
    12 clients in a closed loop that resend at once after a 503, half on kept-alive
    connections to NGINX, half on a new connection for every request: 120 ms of work for
    a 50 ms target, so some are refused. NGINX opens a new uwsgi connection for every
    request, so weir tells a retry by the client's address (REMOTE_ADDR): a request from
    an address just refused is its retry, not new demand, and the loop, never more than
    12 requests, is not taken for rate overload."""
    addr, admin, _ = behind_nginx({}, workers=2)
    assert get(addr, "/work?ms=20", timeout=10).status == 200
    statuses = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 3

    def client(reconnect: bool):
        c = http.client.HTTPConnection(addr.host, addr.port, timeout=10)
        try:
            while time.monotonic() < stop:
                c.request("GET", "/work?ms=20", headers={"Connection": "close"} if reconnect else {})
                r = c.getresponse()
                r.read()
                if reconnect:
                    c.close()
                with lock:
                    statuses[r.status] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    overloads = metric(admin, "weir_queue_rate_overloads_total")
    print("statuses %r; rate overloads %d" % (dict(statuses), overloads))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 50, statuses
    assert statuses[503] > 0, "nothing refused, so no retry was judged: %r" % statuses
    assert overloads == 0


def test_new_clients_behind_nginx_at_twice_capacity_are_rate_overload(behind_nginx):
    """The other side of the test above: new clients, each from an address of its own
    (127.0.1.x: loopback takes the whole 127/8), arrive through NGINX at twice the
    capacity of 2 workers on a 20 ms endpoint, one request each on a new connection, and
    do not come back after a 503. That is new demand outrunning the workers: the pool
    becomes rate-overloaded, and the excess gets 503 queue-full."""
    addr, admin, _ = behind_nginx({}, workers=2)
    t0 = time.monotonic()
    for _ in range(10):
        assert get(addr, "/work?ms=20", timeout=10).status == 200
    capacity = 2 * 10 / max(time.monotonic() - t0, 0.02)  # 2 workers, each at its measured pace
    rate = max(20, int(2 * capacity))
    statuses = collections.Counter()

    async def one(i: int):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                addr.host, addr.port, local_addr=("127.0.1.%d" % (1 + i % 250), 0)), 10)
            w.write(b"GET /work?ms=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(r.readline(), 20)
            statuses[int(line.split()[1])] += 1
            w.close()
        except (OSError, asyncio.TimeoutError, IndexError, ValueError) as e:
            statuses[type(e).__name__] += 1

    async def flood():
        start = time.monotonic()
        tasks = []
        for i in range(rate * 3):
            at = start + i / rate
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    asyncio.run(flood())
    overloads = metric(admin, "weir_queue_rate_overloads_total")
    print("capacity about %.0f req/s; at %d req/s: %r; rate overloads %d" % (capacity, rate, dict(statuses), overloads))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, statuses
    assert overloads >= 1

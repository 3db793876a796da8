"""The front-door promises through the uwsgi listener, with a real NGINX in front
(`uwsgi_pass`): weir's own answers keep their status, x-weir-error, Retry-After and
body through NGINX, and a request whose client left while it was queued never reaches a
worker (NGINX closes its upstream connection when its client goes).
"""

from __future__ import annotations

import json
import os

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

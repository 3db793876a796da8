"""`[server] request_timeout`: the deadline of the whole request. It reaches the app as
environ["weir.deadline"] (absolute time.time() seconds), a request still queued at its
deadline is never started (504 deadline), and a request still running then is ended
(its worker killed, 504 deadline). `[[route]] request_timeout` overrides it per prefix.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from e2e_lib import get, parse_response, recv_all, sock_path
from front_lib import FRONT_APPS, Background, to_toml, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(60)


def env_of(addr, path="/env", **kw):
    t0 = time.time()
    r = get(addr, path, timeout=10, **kw)
    t1 = time.time()
    assert r.status == 200, r
    return json.loads(r.body), t0, t1


def assert_deadline(env, t0, t1, seconds):
    d = env.get("weir.deadline")
    assert isinstance(d, float), "weir.deadline missing or not a float: %r" % env
    assert t0 + seconds - 0.05 <= d <= t1 + seconds + 0.05, \
        "weir.deadline %.3f is not arrival + %ss (arrival in [%.3f, %.3f])" % (d, seconds, t0, t1)
    remaining = d - env["now"]
    assert seconds - 0.5 < remaining <= seconds + 0.05, "the app sees %.3fs left of %ss" % (remaining, seconds)


def test_environ_deadline_is_arrival_plus_request_timeout(front):
    f = front(config={"server": {"request_timeout": "5s"}})
    env, t0, t1 = env_of(f.addr)
    assert_deadline(env, t0, t1, 5)


def test_no_request_timeout_no_deadline(front):
    f = front()
    env, _, _ = env_of(f.addr)
    assert "weir.deadline" not in env, env


def test_route_request_timeout_overrides_and_longest_prefix_wins(front):
    f = front(config={"server": {"request_timeout": "5s"},
                      "route": [{"path": "/api", "request_timeout": "2s"},
                                {"path": "/api/v2", "request_timeout": "3s"},
                                {"path": "/norm/", "request_timeout": "4s"}]}, workers=2)
    for path, secs in (("/api/env", 2), ("/api/v1/env", 2), ("/api/v2/env", 3), ("/api/v2x/env", 2),
                       ("/apix/env", 5), ("/env", 5), ("/norm/env", 4), ("/normal/env", 5)):
        env, t0, t1 = env_of(f.addr, path)
        try:
            assert_deadline(env, t0, t1, secs)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (path, e))


def test_route_request_timeout_without_a_server_one(front):
    f = front(config={"route": [{"path": "/api", "request_timeout": "2s"}]})
    env, t0, t1 = env_of(f.addr, "/api/env")
    assert_deadline(env, t0, t1, 2)
    env, _, _ = env_of(f.addr, "/other/env")
    assert "weir.deadline" not in env, env


def test_request_queued_past_its_deadline_is_504_and_never_started(front):
    """One worker, held by a request on a route with a long deadline; a request with a 1 s
    deadline waits in the queue (queue timeout 10 s) and gets 504 deadline at about 1 s,
    without ever reaching the app."""
    f = front(config={"server": {"request_timeout": "1s"},
                      "route": [{"path": "/long", "request_timeout": "30s"}]}, workers=1, admin=True)
    holder = Background(f.addr, "/long/sleep?s=3&tag=holder")
    wait_tag_started(f.state, "holder")
    t0 = time.monotonic()
    r = get(f.addr, "/env?tag=late", headers={"Accept": "application/json"}, timeout=15)
    took = time.monotonic() - t0
    assert r.status == 504 and r.header("x-weir-error") == "deadline", r
    assert json.loads(r.body)["error"] == "deadline"
    assert 0.8 <= took < 2.5, "answered after %.2fs; the deadline was 1s" % took
    assert holder.join().status == 200
    # A sentinel behind it on the one worker: had `late` been left in the queue and run
    # after the holder, it would have started (and logged its hit) before `after` did.
    assert get(f.addr, "/long/env?tag=after", timeout=10).status == 200
    tags = f.tags()
    assert "after" in tags, tags
    assert "late" not in tags, "a request past its deadline was started"
    # the holder was not disturbed and the worker was not killed for the late request
    assert f.metric("weir_worker_restarts_total", reason="harakiri") == 0
    assert f.metric("weir_worker_restarts_total", reason="deadline") == 0


def test_deadline_ends_a_running_request_and_the_pool_recovers(front):
    f = front(config={"server": {"request_timeout": "1s"}}, workers=1, admin=True)
    t0 = time.monotonic()
    r = get(f.addr, "/sleep?s=30&tag=long", timeout=15)
    took = time.monotonic() - t0
    assert r.status == 504 and r.header("x-weir-error") == "deadline", r
    assert took < 3, took
    # the worker was killed (it never logged the end of its sleep) and replaced; the
    # restart is counted under its own reason, apart from harakiri
    f.wait_metric("weir_worker_restarts_total", 1, reason="deadline")
    assert get(f.addr, "/env", timeout=30).status == 200
    assert not any(h.get("event") == "end" and h.get("tag") == "long" for h in f.hits())


def test_deadline_shorter_than_harakiri_wins(front):
    f = front(config={"server": {"request_timeout": "1s"}, "app": {"harakiri": "1s"},
                      "route": [{"path": "/h", "request_timeout": "3s", "harakiri": "2s"}]}, workers=2)
    r = get(f.addr, "/h/sleep?s=30", timeout=15)
    assert r.status == 504 and r.header("x-weir-error") == "harakiri", r
    r = get(f.addr, "/sleep?s=30", timeout=15)
    assert r.status == 504 and r.header("x-weir-error") in ("deadline", "harakiri"), r


def test_deadline_reaches_the_app_behind_nginx(weir, nginx, short_tmp, state_dir):
    """Through the uwsgi listener (NGINX's uwsgi_pass), the deadline and request id reach
    the app too."""
    sock = sock_path(short_tmp, "front-uwsgi")
    srv = weir(app="front_app:application", chdir=FRONT_APPS, workers=1, listen=None, uwsgi_listen=["unix:" + sock],
               config=to_toml({"server": {"request_timeout": "5s"}}), env={"FRONT_STATE": str(state_dir)})
    wait_for(lambda: os.path.exists(sock), 30, what="weir's uwsgi socket")
    n = nginx("unix:" + sock)
    srv.wait_ready(n.addr)
    env, t0, t1 = env_of(n.addr)
    assert_deadline(env, t0, t1, 5)
    assert env.get("weir.request_id"), env


def test_deadline_during_a_streamed_body_cuts_it_visibly(front, tmp_path):
    """The head went out before the deadline; at the deadline the worker is killed and
    the body is cut: the client sees an incomplete chunked body (never a short body
    presented as whole), and the access log says aborted."""
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"request_timeout": "1s", "access_log": str(log)}}, workers=1)
    with f.addr.socket(15) as s:
        s.sendall(b"GET /stream?n=40&size=100&delay=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        t0 = time.monotonic()
        data = recv_all(s, time.monotonic() + 10)
        took = time.monotonic() - t0
    r = parse_response(data)
    assert r.status == 200 and r.framing == "chunked", r
    assert not r.complete, "a body cut at the deadline was ended as if whole"
    assert 0.8 <= took < 3, took
    rid = r.header("x-request-id")
    wait_for(lambda: any(json.loads(x).get("id") == rid for x in log.read_text().splitlines()), 10,
             what="the access log line")
    line = [json.loads(x) for x in log.read_text().splitlines() if json.loads(x)["id"] == rid][0]
    assert line.get("aborted") is True, line
    assert get(f.addr, "/env", timeout=30).status == 200

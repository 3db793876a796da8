"""Admission at arrival and per-route delay targets (`[queue] admission`, `target_factor`,
`min_target`; docs/config.md, [queue]): under overload the excess is refused at once
(503 `queue-full` with Retry-After), not after waiting out a 500 ms floor; the admitted
wait at most a few times their route's own service time; a slow route's queue does not
get a fast route's requests refused; a request with a short deadline is refused at
arrival when the wait ahead of it is longer.

Real workers running a CPU endpoint (front_app's /work?ms=N), `weir load` for an
open-loop load, and weir's JSON access log for each request's status and time from
arrival. The machine running these may be busy: the bounds are generous (the old
behaviour answered a refused request after 500 ms at least, and let admitted ones wait
over a second).
"""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import threading
import time

import pytest

from e2e_lib import get
from front_lib import Background, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(120)


def _load(weir_bin, tmp_path, f, path, *args, name="run"):
    """One bounded `weir load` run against the server under test; its JSON result."""
    out = tmp_path / (name + ".json")
    subprocess.run([str(weir_bin), "load", "http://%s:%d%s" % (f.addr.host, f.addr.port, path), *args,
                    "--timeout", "20s", "--json", str(out)], check=False, timeout=90,
                   stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _log_lines(log):
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def _pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def test_at_twice_capacity_refusals_are_fast_and_the_admitted_wait_little(front, weir_bin, tmp_path):
    """2 workers, a 20 ms CPU endpoint: capacity measured first (closed loop), then an
    open-loop load at twice that for 4 s. Only 200 and 503 (queue-full at arrival, or
    queue-timeout when shed after waiting); the 503s come back in milliseconds (p90 far
    under the old 500 ms floor); the admitted are answered within a bounded time. Rate
    overload is off here: this is admission by the delay target alone."""
    log = tmp_path / "access.jsonl"
    f = front(workers=2, admin=True, config={"server": {"access_log": str(log)},
                                             "queue": {"rate_overload": False}})
    cap = _load(weir_bin, tmp_path, f, "/work?ms=20", "--connections", "2", "--duration", "2s", name="cap")
    capacity = cap["achieved_rate"]
    assert capacity > 5, cap
    log.write_text("")
    rate = max(10, int(2 * capacity))
    run = _load(weir_bin, tmp_path, f, "/work?ms=20", "--rate", str(rate), "--duration", "4s",
                "--max-connections", "400")
    status = {int(k): v for k, v in run["status"].items()}
    print("capacity %.0f req/s; at %d req/s: status %r, classes %r" % (capacity, rate, status, run["weir_errors"]))
    assert run["errors"] == 0, run["errors_by_kind"]
    assert set(status) <= {200, 503}, status
    assert status.get(503, 0) > 0, "twice the capacity, nothing refused: %r" % status
    assert status.get(200, 0) > 0.5 * capacity * 4, "the workers idled: %r" % status
    wait_for(lambda: sum(1 for x in _log_lines(log) if x["path"] == "/work") >= run["requests"], 20,
             what="an access log line for every request of the load")
    lines = [x for x in _log_lines(log) if x["path"] == "/work"]
    refused = [x["total_ms"] for x in lines if x["status"] == 503]
    served = [x["total_ms"] for x in lines if x["status"] == 200]
    classes = {x.get("error") for x in lines if x["status"] == 503}
    print("503: p50 %.1f p90 %.1f ms; 200: p50 %.1f p90 %.1f p99 %.1f ms; classes %r" % (
        _pct(refused, 0.5), _pct(refused, 0.9), _pct(served, 0.5), _pct(served, 0.9), _pct(served, 0.99), classes))
    assert classes <= {"queue-full", "queue-timeout"}, classes
    assert "queue-full" in classes, "nothing was refused at arrival: %r" % classes
    # Refused at arrival: answered in milliseconds, not after the 500 ms floor of before.
    assert _pct(refused, 0.9) < 150, "503 p90 %.0f ms" % _pct(refused, 0.9)
    # The admitted wait at most a few service times (a generous bound on a busy machine:
    # before, p90 was over 700 ms at this load).
    assert _pct(served, 0.9) < 400, "200 p90 %.0f ms" % _pct(served, 0.9)
    assert f.metric("weir_queue_refused_total", when="arrival") > 0
    assert f.metric("weir_queue_actual_wait_seconds_count") > 0
    assert f.metric("weir_queue_predicted_wait_seconds_count") > 0
    # Rate overload, off here, never began.
    assert f.metric("weir_queue_rate_overloads_total") == 0


def test_new_clients_at_twice_capacity_meet_a_short_queue_and_a_closed_loop_does_not(front, weir_bin, tmp_path):
    """Rate overload ([queue] rate_overload, on by default, docs/config.md). 2 workers, a 20 ms CPU
    endpoint: the delay target is 50 ms (its floor), and the pool holds 2 running plus
    about 4 waiting within it.

    A closed loop of 4 clients (2 running, 2 waiting: 20 ms of work ahead) is queued, not
    refused, and is not taken for rate overload. Then new clients at twice capacity (200
    connections, each sending in turn, `--reuse oldest`): the pool becomes rate-overloaded,
    the excess gets fast 503s, and the admitted wait about one service time instead of
    the 50 ms target (measured against the same requests' own time on a worker, so a slow
    machine moves both). When the load stops, the state ends."""
    log = tmp_path / "access.jsonl"
    f = front(workers=2, admin=True, config={"server": {"access_log": str(log)}})
    closed = _load(weir_bin, tmp_path, f, "/work?ms=20", "--connections", "4", "--duration", "3s", name="closed")
    capacity = closed["achieved_rate"]
    status = {int(k): v for k, v in closed["status"].items()}
    print("closed loop of 4: %.0f req/s, status %r" % (capacity, status))
    assert capacity > 5, closed
    assert set(status) == {200}, "a closed loop within the target was refused: %r" % status
    assert f.metric("weir_queue_rate_overloads_total") == 0
    log.write_text("")
    rate = max(10, int(2 * capacity))
    run = _load(weir_bin, tmp_path, f, "/work?ms=20", "--rate", str(rate), "--duration", "4s",
                "--connections", "200", "--max-connections", "200", "--reuse", "oldest", name="open")
    status = {int(k): v for k, v in run["status"].items()}
    assert run["errors"] == 0, run["errors_by_kind"]
    assert set(status) <= {200, 503}, status
    assert status.get(503, 0) > 0.2 * run["requests"], "twice the capacity, little refused: %r" % status
    assert status.get(200, 0) > 0.5 * capacity * 4, "the workers idled: %r" % status
    assert f.metric("weir_queue_rate_overloads_total") >= 1
    wait_for(lambda: sum(1 for x in _log_lines(log) if x["path"] == "/work") >= run["requests"], 20,
             what="an access log line for every request of the load")
    lines = [x for x in _log_lines(log) if x["path"] == "/work"]
    served = [x for x in lines if x["status"] == 200]
    refused = [x["total_ms"] for x in lines if x["status"] == 503]
    queued = _pct([x["queue_ms"] for x in served], 0.5)
    worked = _pct([x["worker_ms"] for x in served], 0.5)
    print("at %d req/s: status %r; admitted: queue p50 %.1f ms, worker p50 %.1f ms; 503 p90 %.1f ms" % (
        rate, status, queued, worked, _pct(refused, 0.9)))
    assert _pct(refused, 0.9) < 150, "503 p90 %.0f ms" % _pct(refused, 0.9)
    # Without rate overload the admitted wait the target, 50 ms or more: 2.5 to 3.5 times
    # their time on a worker at the median, here and in bench/conns; with it about 1.3.
    assert queued < 1.8 * worked, "admitted waited %.1f ms at the median, %.1f ms on a worker" % (queued, worked)
    wait_for(lambda: f.metric("weir_queue_rate_overloaded") == 0, 20,
             what="rate overload to end once the load stopped")


def test_clients_that_reconnect_after_their_503_are_not_taken_for_new_demand(front):
    """Rate overload on, 2 workers, a 20 ms CPU endpoint. 12 clients in a closed loop that
    open a new connection for every request (`Connection: close`, as a script without a
    session does) and come straight back after a 503: 120 ms of work for a 50 ms target,
    so some are refused. Each reconnect after a refusal is that client's retry (its old
    connection ended just after the refusal, from the same address), not new demand, so
    the loop is not taken for rate overload: it never holds more than 12 requests."""
    f = front(workers=2, admin=True, config={"queue": {"rate_overload": True}})
    assert get(f.addr, "/work?ms=20", timeout=10).status == 200
    statuses = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 3

    def client():
        while time.monotonic() < stop:
            with socket.create_connection((f.addr.host, f.addr.port), timeout=10) as s:
                s.sendall(b"GET /work?ms=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = s.recv(64)
            with lock:
                statuses[int(head.split()[1])] += 1

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print("statuses %r; rate overloads %d" % (dict(statuses), f.metric("weir_queue_rate_overloads_total")))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 50, statuses
    assert statuses[503] > 0, "nothing refused, so no retry was judged: %r" % statuses
    assert f.metric("weir_queue_rate_overloads_total") == 0


def test_an_http2_closed_loop_is_not_taken_for_rate_overload(front):
    """Rate overload (on by default) with HTTP/2 streams (h2c, h2load for 3 s: 2
    connections of 6 streams each, a closed loop of 12 requests). 2 workers, a 20 ms CPU
    endpoint: 120 ms of work for a 50 ms target, so some are refused at once. Every stream
    h2load opens after a 503 on its connection is that client's retry, not new demand, so
    the loop is never taken for rate overload. (A loop of more than 16 requests beyond the
    target, started at once, is: its first round is indistinguishable from a flood, and
    the state ends about a second later, as its retries are not counted.)"""
    f = front(workers=2, admin=True, config={"server": {"h2c": True}})
    assert get(f.addr, "/work?ms=20", timeout=10).status == 200
    out = subprocess.run(["h2load", "-D", "3", "-c", "2", "-m", "6", "-T", "20",
                          "http://%s:%d/work?ms=20" % (f.addr.host, f.addr.port)],
                         capture_output=True, text=True, timeout=90).stdout
    print(out)
    codes = {k: int(v) for v, k in (x.split() for x in
                                   out.split("status codes:")[1].splitlines()[0].split(","))}
    assert codes["2xx"] > 50 and codes["5xx"] > 0, codes
    assert f.metric("weir_queue_rate_overloads_total") == 0


def test_a_slow_routes_queue_does_not_get_a_fast_routes_requests_refused(front):
    """/slow (max_concurrency 1, 1 s a request) has a long line of its own; requests of the
    default route (10 ms) are served at once on the other worker, none refused."""
    f = front(workers=2, admin=True, config={"route": [{"path": "/slow", "max_concurrency": 1}]})
    # The slow route's time is measured once.
    assert get(f.addr, "/slow/sleep?s=1&tag=first", timeout=10).status == 200
    slow = [Background(f.addr, "/slow/sleep?s=1&tag=s0")]
    wait_tag_started(f.state, "s0")
    slow += [Background(f.addr, "/slow/sleep?s=1&tag=s%d" % i) for i in range(1, 4)]
    f.wait_queued(3)
    for i in range(20):
        t0 = time.monotonic()
        r = get(f.addr, "/sleep?s=0.01&tag=fast%d" % i, timeout=10)
        took = time.monotonic() - t0
        assert r.status == 200, r
        assert took < 0.9, "a fast request took %.2fs behind the slow route" % took
    # The slow line itself: each admitted (3 s ahead at most, within the 10 s timeout),
    # all served in turn.
    assert all(s.join(30).status == 200 for s in slow)


def test_a_short_deadline_is_refused_at_arrival_when_the_wait_ahead_is_longer(front):
    """One worker. Route /w's time (0.3 s) and route /short's (0.2 s, request_timeout
    300 ms) are measured; then one request runs and two of /w wait (about 600 ms of work
    ahead). A /short request is refused at once, 503 queue-full with a Retry-After from
    the estimate, rather than waiting out its deadline (504 after 300 ms); a /w request
    (no deadline; its target is 2 x 0.3 s) is admitted and served."""
    f = front(workers=1, admin=True, config={
        "queue": {"retry_after": 7},
        "route": [{"path": "/short", "request_timeout": "300ms"}, {"path": "/w"}],
    })
    assert get(f.addr, "/w/sleep?s=0.3&tag=measure", timeout=10).status == 200
    assert get(f.addr, "/short/sleep?s=0.2&tag=measure-short", timeout=10).status == 200
    a = Background(f.addr, "/sleep?s=1&tag=a")
    wait_tag_started(f.state, "a")
    waiting = [Background(f.addr, "/w/sleep?s=0.3&tag=w0")]
    f.wait_queued(1)
    waiting.append(Background(f.addr, "/w/sleep?s=0.3&tag=w1"))
    f.wait_queued(2)
    t0 = time.monotonic()
    r = get(f.addr, "/short/sleep?s=0.01&tag=late", timeout=10)
    took = time.monotonic() - t0
    assert r.status == 503 and r.header("x-weir-error") == "queue-full", r
    assert took < 0.2, "refused after %.2fs" % took
    assert r.header("retry-after") == "1", "Retry-After from the estimate, not retry_after: %r" % r
    assert b"deadline" in r.body, r.body
    admitted = Background(f.addr, "/w/sleep?s=0.01&tag=admitted")
    assert admitted.join(30).status == 200
    for b in [a, *waiting]:
        assert b.join(30).status == 200
    assert "late" not in f.tags()

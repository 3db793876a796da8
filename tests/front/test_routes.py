"""`[[route]]`: per-prefix concurrency limits keep a slow endpoint from taking every
worker (the paper's example), and per-route harakiri. Prefixes match at segment
boundaries; the longest wins (deadlines per route are in test_deadline.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from e2e_lib import get
from front_lib import Background, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(90)


def fast_latencies(addr, seconds: float, path: str = "/fast/env", clients: int = 2) -> list:
    """`clients` loops of GET path for `seconds`; returns (latency, status) of each."""
    out, lock = [], threading.Lock()
    end = time.monotonic() + seconds

    def loop():
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                r = get(addr, path, timeout=30)
                st = r.status
            except Exception as e:
                st = repr(e)
            with lock:
                out.append((time.monotonic() - t0, st))
    ts = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 40)
    return out


def sleep_intervals(hits, prefix):
    """(start, end) app times of each finished /…/sleep request whose tag starts with prefix."""
    starts = {h["tag"]: h["t"] for h in hits if h.get("event") == "start" and (h.get("tag") or "").startswith(prefix)}
    ends = {h["tag"]: h["t"] for h in hits if h.get("event") == "end" and (h.get("tag") or "").startswith(prefix)}
    return sorted((starts[t], ends[t]) for t in starts if t in ends)


def test_slow_route_limited_to_one_worker_fast_requests_stay_fast(front):
    """workers=4, /slow max_concurrency=1: three 2 s /slow requests run one after the
    other on one worker while /fast requests keep being answered at once (a /fast request
    stuck behind a /slow one would wait up to 2 s)."""
    f = front(config={"route": [{"path": "/slow", "max_concurrency": 1}]}, workers=4, admin=True)
    slow = [Background(f.addr, "/slow/sleep?s=2&tag=slow%d" % i) for i in range(3)]
    wait_for(lambda: any((h.get("tag") or "").startswith("slow") for h in f.hits()), 30, what="a /slow request to start")
    lat = fast_latencies(f.addr, 4.0)
    busy = f.metric("weir_workers", state="busy")
    for b in slow:
        r = b.join()
        assert r.status == 200, r
    assert all(st == 200 for _, st in lat), [x for x in lat if x[1] != 200][:5]
    assert len(lat) >= 20, "only %d fast requests in 4s" % len(lat)
    times = sorted(t for t, _ in lat)
    worst, median = times[-1], times[len(times) // 2]
    assert worst < 1.0, "a /fast request took %.3fs while /slow ran" % worst
    assert median < 0.1, "/fast median %.3fs while /slow ran" % median
    assert busy <= 1, "%s workers busy while only /slow (limit 1) was running" % busy
    iv = sleep_intervals(f.hits(), "slow")
    assert len(iv) == 3, iv
    for (s1, e1), (s2, e2) in zip(iv, iv[1:]):
        assert s2 >= e1 - 0.01, "two /slow requests ran at once: %r" % iv
    assert max(b.elapsed for b in slow) >= 5.5, "the third /slow waited for the other two"


def test_without_a_route_limit_slow_requests_take_every_worker(front):
    """The control experiment: the same load with no [[route]] fills all 4 workers and a
    /fast request waits behind them (what NGINX -> uWSGI does)."""
    f = front(workers=4)
    slow = [Background(f.addr, "/slow/sleep?s=2&tag=slow%d" % i) for i in range(4)]
    wait_for(lambda: len({h["tag"] for h in f.hits() if (h.get("tag") or "").startswith("slow")}) == 4, 30,
             what="4 /slow requests running")
    t0 = time.monotonic()
    assert get(f.addr, "/fast/env", timeout=30).status == 200
    assert time.monotonic() - t0 > 1.0
    for b in slow:
        b.join()


def test_route_slot_wait_is_bounded_by_queue_timeout(front):
    f = front(config={"route": [{"path": "/slow", "max_concurrency": 1}],
                      "queue": {"timeout": "500ms", "retry_after": 4}}, workers=2)
    holder = Background(f.addr, "/slow/sleep?s=3&tag=holder")
    wait_tag_started(f.state, "holder")
    t0 = time.monotonic()
    r = get(f.addr, "/slow/env?tag=waiter", timeout=10)
    took = time.monotonic() - t0
    assert r.status == 503 and r.header("x-weir-error") == "queue-timeout", r
    assert r.header("retry-after") == "4", r
    assert 0.4 <= took < 2.0, took
    # other routes are not held up meanwhile
    assert get(f.addr, "/fast/env", timeout=5).status == 200
    assert holder.join().status == 200
    # `after` needs the route's only slot: had the refused waiter still been waiting for
    # it, it would have had the slot first (and logged its hit) before `after` could start.
    assert get(f.addr, "/slow/env?tag=after", timeout=10).status == 200
    assert "waiter" not in f.tags()


def test_requests_waiting_for_a_route_slot_count_against_queue_max_size(front):
    """The issue: "max_concurrency (at most that many workers busy on it; the rest wait in
    the queue)", and the queue is bounded by [queue] max_size. With max_size=2, the
    fourth concurrent /slow request cannot wait: 503 queue-full at once."""
    f = front(config={"route": [{"path": "/slow", "max_concurrency": 1}], "queue": {"max_size": 2}},
              workers=2, admin=True)
    holder = Background(f.addr, "/slow/sleep?s=3&tag=holder")
    wait_tag_started(f.state, "holder")
    waiters = [Background(f.addr, "/slow/sleep?s=0&tag=w%d" % i) for i in range(2)]
    f.wait_queued(2)  # both wait for the route slot (route waits count in weir_queue_depth)
    t0 = time.monotonic()
    r = get(f.addr, "/slow/env?tag=over", timeout=10)
    took = time.monotonic() - t0
    for w in waiters:
        w.join()
    holder.join()
    assert r.status == 503 and r.header("x-weir-error") == "queue-full", \
        "a third /slow waiter (max_size=2) got %r after %.2fs" % (r, took)
    assert took < 1.0


def test_requests_waiting_for_a_route_slot_are_visible_in_queue_depth(front):
    """docs/architecture.md: "The queue is visible: its depth and each request's wait are metrics".
    Requests waiting for a route slot are queued requests too."""
    f = front(config={"route": [{"path": "/slow", "max_concurrency": 1}]}, workers=2, admin=True)
    holder = Background(f.addr, "/slow/sleep?s=2&tag=holder")
    wait_tag_started(f.state, "holder")
    waiters = [Background(f.addr, "/slow/sleep?s=0&tag=w%d" % i) for i in range(3)]
    try:
        f.wait_queued(3, timeout=1.5)
    finally:
        for w in waiters:
            w.join()
        holder.join()


def test_route_harakiri(front):
    f = front(config={"route": [{"path": "/h", "harakiri": "1s"}]}, workers=2)
    t0 = time.monotonic()
    r = get(f.addr, "/h/sleep?s=30", timeout=15)
    assert r.status == 504 and r.header("x-weir-error") == "harakiri", r
    assert time.monotonic() - t0 < 3
    # elsewhere, and on a path that only shares the prefix's letters, no harakiri
    for path in ("/sleep?s=1.5", "/hx/sleep?s=1.5"):
        r = get(f.addr, path, timeout=15)
        assert r.status == 200, (path, r)


def test_route_limits_are_per_route(front):
    """Two limited routes do not share their slots."""
    f = front(config={"route": [{"path": "/a", "max_concurrency": 1}, {"path": "/b", "max_concurrency": 1}]},
              workers=3)
    a = Background(f.addr, "/a/sleep?s=1.5&tag=a")
    b = Background(f.addr, "/b/sleep?s=1.5&tag=b")
    wait_tag_started(f.state, "a")
    wait_tag_started(f.state, "b")
    assert a.join().status == 200 and b.join().status == 200
    assert a.elapsed < 2.5 and b.elapsed < 2.5, (a.elapsed, b.elapsed)

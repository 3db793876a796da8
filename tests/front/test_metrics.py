"""`/metrics` on the admin listener: well-formed Prometheus text (checked by a small
parser: every sample line `name{labels} value`, HELP/TYPE well formed, histogram buckets
cumulative) whose counters match the requests made; gauges for the queue and workers;
restarts by reason. Never served on the public listener.
"""

from __future__ import annotations

import math

import pytest

from e2e_lib import get, request
from front_lib import (Background, PromError, bucket, parse_prometheus, sample, wait_for,
                       wait_tag_started)

pytestmark = pytest.mark.e2e_timeout(60)

EXPECTED_FAMILIES = {
    "weir_requests_total": "counter",
    "weir_request_duration_seconds": "histogram",
    "weir_queue_wait_seconds": "histogram",
    "weir_queue_depth": "gauge",
    "weir_workers": "gauge",
    "weir_worker_restarts_total": "counter",
}


def requests_by_label(fams) -> dict:
    return {(ls["status"], ls["class"]): v for n, ls, v in fams["weir_requests_total"].samples}


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def test_parser_catches_bad_text():
    """The parser used below does reject what it must."""
    good = ("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n"
            "# TYPE c counter\nc{a=\"x\\\"y\"} 1\n")
    parse_prometheus(good)
    for bad in ("c{a=x} 1\n", "c 1 2 3\n", "# TYPE c countr\nc 1\n", "c 1", "# TYPE c counter\nc -1\n",
                "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n",
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
                "c 1\nc 2\n", "a 1\nb 1\na{x=\"1\"} 1\n", "c 1\n# TYPE c counter\n"):
        with pytest.raises(PromError):
            parse_prometheus(bad)


def test_metrics_parse_and_counters_match_the_requests(front):
    f = front(config={"server": {"max_body_size": "1KiB"}}, workers=2, admin=True)
    r = get(f.admin, "/metrics", timeout=10)
    assert r.status == 200, r
    assert r.header("content-type").startswith("text/plain; version=0.0.4"), r.headers
    before = parse_prometheus(r.text)
    for name, ty in EXPECTED_FAMILIES.items():
        assert name in before and before[name].type == ty, (name, before.get(name))
        assert before[name].help, "%s has no HELP" % name
    b_req = requests_by_label(before)
    b_dur = sample(before, "weir_request_duration_seconds_count")
    b_wait = sample(before, "weir_queue_wait_seconds_count")
    b_crash = sample(before, "weir_worker_restarts_total", reason="crash")

    for _ in range(5):
        assert get(f.addr, "/env", timeout=10).status == 200
    for _ in range(3):
        assert get(f.addr, "/nothing", timeout=10).status == 404
    for _ in range(2):
        assert request(f.addr, "POST", "/echo", body=b"x" * 4096, timeout=10).status == 413
    assert get(f.addr, "/crash", timeout=10).status == 502
    assert get(f.addr, "/status?code=503", timeout=10).status == 503
    want = {("200", ""): 5, ("404", ""): 3, ("413", "body-too-large"): 2, ("502", "worker-died"): 1, ("503", ""): 1}

    got = {}

    def settled():
        fams = f.metrics()
        got["fams"] = fams
        return delta(requests_by_label(fams), b_req) == want
    try:
        wait_for(settled, 10, what="the request counters")
    except TimeoutError:
        raise AssertionError("weir_requests_total moved by %r, wanted %r" % (
            delta(requests_by_label(got["fams"]), b_req), want))
    fams = got["fams"]
    assert sample(fams, "weir_request_duration_seconds_count") - b_dur == 12
    assert sample(fams, "weir_queue_wait_seconds_count") - b_wait == 12
    f.wait_metric("weir_worker_restarts_total", b_crash + 1, reason="crash")
    f.wait_metric("weir_workers", 2, state="idle", timeout=30)
    assert f.metric("weir_workers", state="busy") == 0
    assert f.metric("weir_queue_depth") == 0


def test_queue_and_worker_gauges_and_the_queue_wait_histogram(front):
    f = front(workers=2, admin=True)
    before = f.metrics()
    busy = [Background(f.addr, "/sleep?s=1.5&tag=busy%d" % i) for i in range(2)]
    wait_tag_started(f.state, "busy0")
    wait_tag_started(f.state, "busy1")
    queued = [Background(f.addr, "/env?tag=q%d" % i) for i in range(3)]
    f.wait_queued(3)
    assert f.metric("weir_workers", state="busy") == 2
    assert f.metric("weir_workers", state="idle") == 0
    for b in busy + queued:
        assert b.join().status == 200
    f.wait_queued(0)
    f.wait_metric("weir_workers", 2, state="idle")
    after = f.metrics()
    # the 3 queued requests waited about a second: above 0.5 s, under 2.5 s
    d = lambda le: bucket(after, "weir_queue_wait_seconds", le) - bucket(before, "weir_queue_wait_seconds", le)
    assert d(math.inf) == 5, d(math.inf)
    assert d(0.25) == 2, "only the two first requests waited under 0.25 s: %s" % d(0.25)
    assert d(2.5) == 5
    w_sum = sample(after, "weir_queue_wait_seconds_sum") - sample(before, "weir_queue_wait_seconds_sum")
    assert 2.0 <= w_sum <= 6.0, "3 requests waited ~1-1.5 s each; sum moved by %.3f" % w_sum


def test_duration_histogram_buckets(front):
    f = front(workers=1, admin=True)
    before = f.metrics()
    assert get(f.addr, "/sleep?s=0.3", timeout=10).status == 200  # 0.3 s plus weir's overhead
    wait_for(lambda: sample(f.metrics(), "weir_request_duration_seconds_count") ==
             sample(before, "weir_request_duration_seconds_count") + 1, 10, what="the duration count")
    after = f.metrics()
    d = lambda le: bucket(after, "weir_request_duration_seconds", le) - bucket(before, "weir_request_duration_seconds", le)
    assert d(0.25) == 0 and d(1.0) == 1 and d(math.inf) == 1, (d(0.25), d(1.0))


def test_restarts_by_reason(front):
    f = front(config={"route": [{"path": "/h", "harakiri": "1s"}]}, workers=1, admin=True)
    assert get(f.addr, "/crash", timeout=10).status == 502
    f.wait_metric("weir_worker_restarts_total", 1, reason="crash")
    assert get(f.addr, "/h/sleep?s=10", timeout=15).status == 504
    f.wait_metric("weir_worker_restarts_total", 1, reason="harakiri")
    assert get(f.addr, "/env", timeout=30).status == 200
    assert f.metric("weir_worker_restarts_total", reason="max-requests") == 0


def test_every_weir_class_is_a_label(front):
    f = front(config={"queue": {"max_size": 1, "timeout": "2s"}}, workers=1, admin=True)
    busy = Background(f.addr, "/sleep?s=3&tag=busy")
    wait_tag_started(f.state, "busy")
    q = Background(f.addr, "/env?tag=q")  # waits 2 s, then queue-timeout
    f.wait_queued(1)
    assert get(f.addr, "/env", timeout=10).status == 503  # queue-full
    assert q.join().header("x-weir-error") == "queue-timeout"
    busy.join()
    f.wait_metric("weir_requests_total", 1, status="503", **{"class": "queue-full"})
    f.wait_metric("weir_requests_total", 1, status="503", **{"class": "queue-timeout"})


def test_app_exception_is_a_class_label(front):
    """The error contract (docs/errors.md): the class of x-weir-error is also a metric label."""
    f = front(workers=1, admin=True)
    r = get(f.addr, "/boom", timeout=10)
    assert r.header("x-weir-error") == "app-exception", r
    f.wait_metric("weir_requests_total", 1, status="500", **{"class": "app-exception"})


def test_requests_refused_before_the_handler_are_counted(front):
    """Requests refused by the framing gate (before hyper parses them) are counted and logged."""
    f = front(workers=1, admin=True)
    with f.addr.socket(10) as s:
        s.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    f.wait_metric("weir_requests_total", 1, status="400", **{"class": "bad-request"}, timeout=3)


def test_405_and_501_refusals_are_class_labels(front):
    f = front(workers=1, admin=True)
    for payload in (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                    b"POST /env HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"):
        with f.addr.socket(10) as s:
            s.sendall(payload)
            assert s.recv(100).startswith(b"HTTP/1.1 "), payload
    f.wait_metric("weir_requests_total", 1, status="405", **{"class": "method-not-allowed"}, timeout=5)
    f.wait_metric("weir_requests_total", 1, status="501", **{"class": "not-implemented"}, timeout=5)


def test_admin_endpoints_are_not_on_the_public_listener(front):
    f = front(workers=1, admin=True)
    for path in ("/metrics", "/livez", "/readyz"):
        r = get(f.addr, path, timeout=10)
        assert r.status == 404 and r.body == b"not found", "%s on the public listener: %r" % (path, r)
    assert get(f.admin, "/livez", timeout=10).status == 200
    assert get(f.admin, "/anything", timeout=10).status == 404
    # the admin requests are not counted as app requests
    fams = f.metrics()
    assert sum(v for n, ls, v in fams["weir_requests_total"].samples if ls["status"] == "404") == 3

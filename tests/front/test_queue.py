"""The dispatch queue: bounded (queue-full at once), timed (queue-timeout), clients that
leave while queued never reach a worker, and the defaults turn a load far above capacity
into fast 503s and full-speed service, never 502/504 or hanging connections.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time

import pytest

from e2e_lib import get
from front_lib import Background, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(90)


def test_tiny_queue_one_running_one_queued_third_refused_at_once(front):
    f = front(config={"queue": {"max_size": 1}}, workers=1, admin=True)
    a = Background(f.addr, "/sleep?s=2&tag=a")
    wait_tag_started(f.state, "a")
    b = Background(f.addr, "/sleep?s=0&tag=b")
    f.wait_queued(1)
    t0 = time.monotonic()
    c = get(f.addr, "/sleep?s=0&tag=c", timeout=10)
    took = time.monotonic() - t0
    assert c.status == 503 and c.header("x-weir-error") == "queue-full", c
    assert c.header("retry-after") == "1", "default retry_after is 1: %r" % c
    assert took < 1.0, "the third request waited %.2fs" % took
    ra, rb = a.join(), b.join()
    assert ra.status == 200 and rb.status == 200, (ra, rb)
    assert b.elapsed > 1.0, "b was queued behind a: %.2fs" % b.elapsed
    starts = [h["tag"] for h in f.hits() if h.get("event") == "start" and h.get("tag")]
    assert starts == ["a", "b"], starts
    # the queue is free again
    assert get(f.addr, "/sleep?s=0&tag=d", timeout=10).status == 200
    f.wait_queued(0)


def _queued_raw(addr, path):
    s = addr.socket(30)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return s


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_while_queued_never_reaches_a_worker(front, how):
    f = front(workers=1, admin=True)
    a = Background(f.addr, "/sleep?s=2&tag=a")
    wait_tag_started(f.state, "a")
    gone = [_queued_raw(f.addr, "/env?tag=gone%d" % i) for i in range(3)]
    f.wait_queued(3)
    for s in gone:
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # weir settles each departed request as 499 client-closed (one outcome per request:
    # such a request is never dispatched afterwards)
    f.wait_metric("weir_requests_total", 3, status="499", **{"class": "client-closed"})
    stays = Background(f.addr, "/env?tag=stays")
    assert a.join().status == 200
    r = stays.join()
    assert r.status == 200, r
    # The one worker went from a straight to `stays`. `stays` was queued after the three, so
    # a wrongly dispatched one would have started (and logged its hit) on that worker before
    # `stays` did: its answer proves the hit log is complete for them, no waiting needed.
    seen = f.tags()
    assert "stays" in seen, seen
    assert not {"gone0", "gone1", "gone2"} & seen, "requests of departed clients reached the app: %r" % seen
    f.wait_metric("weir_workers", 0, state="busy")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_while_waiting_for_a_route_slot_never_reaches_a_worker(front, how):
    f = front(config={"route": [{"path": "/slow", "max_concurrency": 1}]}, workers=2, admin=True)
    a = Background(f.addr, "/slow/sleep?s=2&tag=a")
    wait_tag_started(f.state, "a")
    s = _queued_raw(f.addr, "/slow/env?tag=gone")
    f.wait_queued(1)  # a request waiting for a route slot counts in weir_queue_depth
    if how == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    f.wait_metric("weir_requests_total", 1, status="499", **{"class": "client-closed"})
    f.wait_queued(0)
    assert a.join().status == 200
    # `after` needs the route's only slot: had `gone` still been waiting for it, it would
    # have had the slot first (and logged its hit) before `after` could start.
    r = get(f.addr, "/slow/env?tag=after", timeout=10)
    assert r.status == 200, r
    assert "gone" not in f.tags()


def test_client_gone_while_queued_is_in_the_access_log(front, tmp_path):
    """NGINX logs 499 for a client that closed its connection before the answer; weir
    logs such a request as 499 `client-closed` (and counts it), with the time it spent
    queued."""
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1, admin=True)
    a = Background(f.addr, "/sleep?s=1.5&tag=a")
    wait_tag_started(f.state, "a")
    s = _queued_raw(f.addr, "/env?tag=gone")
    f.wait_queued(1)
    # The scenario, not a wait for an event: the client stays queued for half a second
    # before it leaves, and the log must show that wait in queue_ms.
    time.sleep(0.5)
    s.close()
    assert a.join().status == 200
    assert get(f.addr, "/env?tag=after", timeout=10).status == 200

    def lines():
        return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    wait_for(lambda: len([x for x in lines() if x["path"] == "/env"]) == 2, 10,
             what="two access log lines for /env (the departed client's and the next)")
    gone = [x for x in lines() if x["path"] == "/env" and x["status"] != 200]
    assert len(gone) == 1, lines()
    x = gone[0]
    assert x["status"] == 499 and x["error"] == "client-closed" and x.get("aborted") is True, x
    assert x["bytes"] == 0, x
    f.wait_metric("weir_requests_total", 1, status="499", **{"class": "client-closed"})
    assert x["queue_ms"] >= 400, "the request waited in the queue for over 0.5 s, the log says %r" % x


def _burst(f, n, path):
    """n clients at once; each result is (status, x-weir-error, retry-after, seconds)."""
    results = [None] * n
    go = threading.Event()

    def one(i):
        go.wait(30)
        t0 = time.monotonic()
        try:
            r = get(f.addr, path, timeout=60)
            results[i] = (r.status, r.header("x-weir-error"), r.header("retry-after"), time.monotonic() - t0)
        except Exception as e:
            results[i] = ("error", repr(e), None, time.monotonic() - t0)
    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join(90)
    assert all(r is not None for r in results), "clients left hanging"
    errors = [r for r in results if r[0] == "error"]
    assert not errors, "%d connection errors, e.g. %r" % (len(errors), errors[:5])
    bad = [r for r in results if r[0] not in (200, 503)]
    assert not bad, "statuses other than 200/503: %r" % bad[:10]
    return results


@pytest.mark.e2e_timeout(120)
def test_default_queue_turns_overload_into_fast_503s_and_full_speed_service(front):
    """No [queue] section: 300 clients at once against 2 workers at 100 ms a request
    (50 times what 2 workers serve per second). Every client gets an answer: 200, or 503
    with Retry-After (queue-full at once; queue-timeout once the queue has stood for a
    second and a request waited past the delay target). No 502, no 504, no error, nothing
    left hanging, and no admitted request waits out a long queue."""
    f = front(workers=2, config={"server": {"access_log": "off"}})
    results = _burst(f, 300, "/sleep?s=0.1")
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert served, "nothing served"
    assert refused, "300 clients against a queue of 128 + 2 workers: some must be refused"
    assert all(r[1] in ("queue-full", "queue-timeout") and r[2] == "1" for r in refused), \
        "every 503 is queue-full or queue-timeout with Retry-After: %r" % {(r[1], r[2]) for r in refused}
    slow_refusals = [r[3] for r in refused if r[3] > 2.5]
    assert not slow_refusals, "refusals must be fast; %d took over 2.5s (max %.2fs)" % (
        len(slow_refusals), max(slow_refusals))
    worst = max(r[3] for r in served)
    print("served %d (worst %.2fs), refused %d (worst %.3fs)" % (len(served), worst, len(refused),
                                                                 max(r[3] for r in refused)))
    # FIFO would make the last of the 128 queued wait 128 x 50 ms = 6.4 s (see the test below).
    assert worst < 3, "an admitted request waited %.1fs" % worst


@pytest.mark.e2e_timeout(120)
def test_without_codel_the_same_burst_waits_out_the_fifo(front):
    """The same burst with `codel = false`: the queue is a plain bounded FIFO, so every
    queued request is served, the last after seconds. This is what the shedding avoids."""
    f = front(workers=2, config={"server": {"access_log": "off"}, "queue": {"codel": False}})
    results = _burst(f, 300, "/sleep?s=0.1")
    assert {r[1] for r in results if r[0] == 503} == {"queue-full"}
    worst = max(r[3] for r in results if r[0] == 200)
    assert worst > 4, "the FIFO's last request waited only %.1fs" % worst


def _weir_load(weir_bin, tmp_path, f, path, *args):
    """One `weir load` run against the server under test (bounded); its JSON result."""
    out = tmp_path / "run.json"
    subprocess.run([str(weir_bin), "load", "http://%s:%d%s" % (f.addr.host, f.addr.port, path), *args,
                    "--timeout", "20s", "--json", str(out)], check=False, timeout=90, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


@pytest.mark.e2e_timeout(120)
def test_sustained_overload_is_shed_and_the_workers_stay_busy(front, weir_bin, tmp_path):
    """An open-loop load at 3 times capacity for 5 s (weir load at 60 req/s against 2
    workers at 100 ms): the excess is refused with 503s, the workers serve at capacity the
    whole time, and admitted requests are answered within about a second, not after the
    queue timeout (10 s)."""
    f = front(workers=2, config={"server": {"access_log": "off"}})
    run = _weir_load(weir_bin, tmp_path, f, "/sleep?s=0.1", "--rate", "60", "--duration", "5s")
    status = {int(k): v for k, v in run["status"].items()}
    assert set(status) <= {200, 503}, status
    assert run["errors"] == 0, run["errors_by_kind"]
    served = status.get(200, 0)
    print("status %r, classes %r, latency %r" % (status, run.get("weir_errors"), run["latency_ms"]))
    # 2 workers at 100 ms serve 20 req/s: about 100 in 5 s (the queue drains after the end)
    assert served >= 80, "the workers idled under overload: %d served" % served
    assert status.get(503, 0) >= 100, status
    p99 = run["latency_ms"]["p99"]
    assert p99 < 3000, "p99 %.0f ms: admitted requests waited out the queue" % p99


# weir's behaviour before admission at arrival and per-route targets (docs/config.md,
# [queue]): a saturated closed loop is queued, whatever its length.
LEGACY_QUEUE = {"admission": False, "target_factor": 4, "min_target": "500ms"}


@pytest.mark.e2e_timeout(60)
def test_a_saturated_closed_loop_is_queued_not_shed(front, weir_bin, tmp_path):
    """30 connections in a closed loop on 2 workers at 10 ms (a benchmark like wrk -c30),
    with the earlier queue settings (LEGACY_QUEUE): the queue never empties, but every
    wait is short (about 150 ms) against the 500 ms floor, so nothing is shed: all 200,
    served in order."""
    f = front(workers=2, config={"server": {"access_log": "off"}, "queue": LEGACY_QUEUE})
    run = _weir_load(weir_bin, tmp_path, f, "/sleep?s=0.01", "--connections", "30", "--duration", "3s")
    assert run["errors"] == 0, run["errors_by_kind"]
    assert set(run["status"]) == {"200"}, run["status"]
    assert run["requests"] > 200, run["requests"]


@pytest.mark.e2e_timeout(60)
def test_a_saturated_closed_loop_keeps_the_workers_busy_and_refuses_the_excess(front, weir_bin, tmp_path):
    """The same closed loop with the defaults: 140 ms of work queued is more than the
    10 ms route's target (the 20 ms floor), so the excess is refused at arrival (503
    queue-full, at once) while the queue keeps a target's worth of work: the workers never
    idle, and the requests served wait little."""
    f = front(workers=2, config={"server": {"access_log": "off"}})
    run = _weir_load(weir_bin, tmp_path, f, "/sleep?s=0.01", "--connections", "30", "--duration", "3s")
    assert run["errors"] == 0, run["errors_by_kind"]
    assert set(run["status"]) <= {"200", "503"}, run["status"]
    assert set(run["weir_errors"]) <= {"queue-full"}, run["weir_errors"]
    # 2 workers at 10 ms serve about 200 req/s: 600 in 3 s, if the workers never idle.
    assert run["status"].get("200", 0) > 300, run["status"]


def test_queue_depth_drops_when_queued_clients_leave(front):
    """weir_queue_depth counts requests waiting now: clients that left are not waiting."""
    f = front(workers=1, admin=True)
    a = Background(f.addr, "/sleep?s=3&tag=a")
    wait_tag_started(f.state, "a")
    socks = [_queued_raw(f.addr, "/env?tag=gone%d" % i) for i in range(3)]
    f.wait_queued(3)
    for s in socks:
        s.close()
    try:
        f.wait_queued(0, timeout=1.5)
    finally:
        a.join()

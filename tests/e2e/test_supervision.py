"""The supervisor, end to end: crash, harakiri, recycling, reload under load, graceful
shutdown, import failures. weir only (these are weir's own promises).

The app is apps/sup_app.py, copied into a fresh directory per test (weir --chdir there),
where the test writes VERSION and IMPORT_DELAY files that the app reads at import time.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from e2e_lib import (APPS, Addr, get, parse_response, pgid_members, pid_alive, recv_all, run_load, sock_path,
                     wait_for)


@pytest.fixture
def app_dir(tmp_path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    shutil.copy(APPS / "sup_app.py", d / "sup_app.py")
    (d / "VERSION").write_text("v1")
    return d


def start_sup(weir, app_dir, **kw):
    kw.setdefault("app", "sup_app:application")
    kw.setdefault("chdir", app_dir)
    return weir(**kw)


def pid_of(r) -> int:
    assert r.status == 200, r
    return int(r.body.split()[-1])


def sleep_in_background(addr: Addr, path: str, timeout: float = 60):
    """Starts GET path in a thread; returns (thread, box) where box["resp"|"error"] is set,
    and box["end"] (time.monotonic()) once the answer (or the error) came."""
    box = {}

    def run():
        try:
            box["resp"] = get(addr, path, timeout=timeout)
        except Exception as e:
            box["error"] = e
        box["end"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def marker_pid(marker: Path, timeout: float = 30) -> int:
    wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout, what="request to reach the app (%s)" % marker)
    return int(marker.read_text())


# ---------------------------------------------------------------------------------------
# a worker dies mid-request


@pytest.mark.e2e_timeout(120)
def test_crash_is_502_worker_died_and_nobody_else_notices(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=2)
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/pid", threads=4, stop=stop, max_per_thread=400, max_seconds=60)
    crashes = []
    try:
        for _ in range(3):
            r = get(srv.addr, "/crash", timeout=30)
            crashes.append(r)
    finally:
        # keep the load going a little after the last crash (bounded), then stop
        t_end = time.monotonic() + 1.0
        wait_for(lambda: time.monotonic() > t_end, 5)
        stop.set()
        for t in threads:
            t.join(60)
    for r in crashes:
        assert r.status == 502, r
        assert r.header("x-weir-error") == "worker-died", r
        assert r.header("X-Request-ID"), r
    assert res.failures == [], res.summary()
    assert res.ok > 0
    # the pool is whole again: two concurrent requests run on two live workers
    pids = concurrent_pids(srv.addr, 2, 1.0)
    assert len(pids) == 2, pids


def concurrent_pids(addr: Addr, n: int, seconds: float) -> set:
    boxes = [sleep_in_background(addr, "/sleep?s=%s" % seconds) for _ in range(n)]
    pids = set()
    for t, box in boxes:
        t.join(60)
        assert "resp" in box, box
        pids.add(pid_of(box["resp"]))
    return pids


@pytest.mark.e2e_timeout(90)
def test_sigkill_of_busy_worker_is_502(weir, app_dir, tmp_path):
    srv = start_sup(weir, app_dir, workers=2)
    marker = tmp_path / "busy"
    t, box = sleep_in_background(srv.addr, "/sleep?s=20&marker=%s" % marker)
    pid = marker_pid(marker)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # a worker of the weir this test started
    t.join(30)
    r = box.get("resp")
    assert r is not None, box
    assert r.status == 502 and r.header("x-weir-error") == "worker-died", r
    assert time.monotonic() - t0 < 5, "the 502 came %.1fs after the worker died" % (time.monotonic() - t0)
    # a fresh worker took the slot
    pids = concurrent_pids(srv.addr, 2, 0.5)
    assert pid not in pids and len(pids) == 2, pids


@pytest.mark.e2e_timeout(90)
@pytest.mark.parametrize("preload", ["on", "off"], ids=["forked", "execd"])
def test_master_signals_to_every_process_leave_the_workers_alone(weir, app_dir, tmp_path, preload):
    """`pkill -HUP weir`, `killall -USR1 weir` or `systemctl kill -s USR2 weir` (every
    process of the unit, by default) deliver the master's signals to the workers and the
    zygote too. Python's default for these is to die; a worker must neither die nor lose
    the request in its hands (its answer is 200, late by nothing). The master itself is
    not signalled here: its own handling is tested elsewhere."""
    srv = start_sup(weir, app_dir, workers=2, args=["--preload", preload])
    before = concurrent_pids(srv.addr, 2, 0.2)
    marker = tmp_path / "busy"
    t, box = sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % marker)
    busy = marker_pid(marker)
    others = [p for p in pgid_members(srv.proc.pid) if p != srv.proc.pid]  # workers, zygote
    assert busy in others, (busy, others)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGQUIT):
        for p in others:
            os.kill(p, sig)
    t.join(30)
    r = box.get("resp")
    assert r is not None and r.status == 200, box
    assert pid_of(r) == busy
    assert all(pid_alive(p) for p in others), [p for p in others if not pid_alive(p)]
    assert concurrent_pids(srv.addr, 2, 0.2) == before


# ---------------------------------------------------------------------------------------
# harakiri


@pytest.mark.e2e_timeout(90)
def test_harakiri_is_504_and_pool_recovers(weir, app_dir, tmp_path):
    srv = start_sup(weir, app_dir, workers=2, args=["--harakiri", "1"])
    marker = tmp_path / "slow"
    t0 = time.monotonic()
    r = get(srv.addr, "/sleep?s=5&marker=%s" % marker, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status == 504, r
    assert r.header("x-weir-error") == "harakiri", r
    assert elapsed < 4.0, "harakiri 1s answered after %.1fs (the request sleeps 5s)" % elapsed
    killed = int(marker.read_text())
    wait_for(lambda: not pid_alive(killed), 10, what="the harakiri'd worker %d to be gone" % killed)
    pids = concurrent_pids(srv.addr, 2, 0.3)
    assert killed not in pids and len(pids) == 2, pids
    for _ in range(10):
        assert get(srv.addr, "/pid").status == 200


@pytest.mark.e2e_timeout(90)
def test_harakiri_does_not_disturb_other_requests(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=3, config={"app": {"harakiri": "1s"}})
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/pid", threads=3, stop=stop, max_per_thread=300, max_seconds=60)
    try:
        slow = [get(srv.addr, "/sleep?s=4", timeout=30) for _ in range(2)]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    for r in slow:
        assert r.status == 504 and r.header("x-weir-error") == "harakiri", r
    assert res.failures == [], res.summary()


# ---------------------------------------------------------------------------------------
# recycling


@pytest.mark.e2e_timeout(120)
def test_max_requests_recycles_without_failures(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=None, config={"app": {"workers": 2, "max_requests": 5}})
    pids = []
    for i in range(50):
        r = get(srv.addr, "/pid", timeout=30)
        assert r.status == 200, "request %d: %r" % (i, r)
        pids.append(int(r.body))
    distinct = set(pids)
    # 50 requests, 5 per worker life: about 10 lives
    assert len(distinct) >= 8, "only %d worker pids over 50 requests with max_requests=5: %r" % (len(distinct), pids)
    # no worker served more than max_requests
    worst = max(pids.count(p) for p in distinct)
    assert worst <= 5, "a worker served %d requests with max_requests=5" % worst


@pytest.mark.e2e_timeout(120)
@pytest.mark.parametrize("preload", ["auto", False], ids=["forked", "exec"])
def test_max_requests_with_jitter_under_concurrency(weir, app_dir, preload):
    # both process models: workers forked by the zygote (the default) and exec'd ones
    srv = start_sup(weir, app_dir, workers=None,
                    config={"app": {"workers": 2, "max_requests": 4, "max_requests_jitter": 4,
                                    "preload": preload}})
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/pid", threads=4, stop=stop, max_per_thread=40, max_seconds=60,
                            keep_bodies=True)
    for t in threads:
        t.join(90)
    stop.set()
    assert res.failures == [], res.summary()
    assert res.ok == 160
    pids = [int(b) for _, b in res.bodies]
    worst = max(pids.count(p) for p in set(pids))
    assert len(set(pids)) >= 160 // 8, "too few worker lives: %d" % len(set(pids))
    assert worst <= 8, "a worker served %d requests with max_requests=4 + jitter 4" % worst


@pytest.mark.e2e_timeout(90)
def test_max_requests_one(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=None, config={"app": {"workers": 2, "max_requests": 1}})
    pids = []
    for i in range(12):
        r = get(srv.addr, "/pid", timeout=30)
        assert r.status == 200, "request %d: %r" % (i, r)
        pids.append(int(r.body))
    assert len(set(pids)) == 12, pids


@pytest.mark.e2e_timeout(120)
def test_reload_on_rss(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=None, config={"app": {"workers": 1, "reload_on_rss": "150MiB"}})
    p0 = pid_of(get(srv.addr, "/pid"))
    r = get(srv.addr, "/grow?mb=200", timeout=60)
    assert r.status == 200, r
    assert pid_of(r) == p0
    # from now on, within a few requests, a new worker answers, and none fails
    seen = []
    for i in range(40):
        r = get(srv.addr, "/pid", timeout=30)
        assert r.status == 200, "request %d after growing: %r" % (i, r)
        seen.append(pid_of(r))
        if seen[-1] != p0:
            break
        time.sleep(0.25)  # pacing of a bounded poll: RSS is sampled by the supervisor
    assert seen[-1] != p0, "the worker at 200 MiB was never recycled with reload_on_rss=150MiB: %r" % seen
    wait_for(lambda: not pid_alive(p0), 15, what="the big worker to exit")


# ---------------------------------------------------------------------------------------
# graceful reload


def first_v2_answers(res) -> dict:
    """pid -> the time its first v2 answer arrived."""
    out = {}
    for st, en, b in sorted(list(res.timed), key=lambda x: x[1]):
        if b.startswith(b"v2 "):
            out.setdefault(int(b.split()[1]), en)
    return out


@pytest.mark.e2e_timeout(180)
@pytest.mark.parametrize("via", ["http", "nginx", "http-exec"])
def test_sighup_reload_under_load_serves_new_code_with_zero_failures(weir, nginx, app_dir, tmp_path, short_tmp, via):
    # importing takes a second: a supervisor that sends traffic to workers before they are
    # ready, or kills the old ones first, fails requests here. Under this load requests
    # are offered behind busy workers ([app] prefetch, the default), forked workers by
    # default, exec'd ones with "http-exec".
    (app_dir / "IMPORT_DELAY").write_text("1.0")
    uw = [sock_path(short_tmp, "hup")] if via == "nginx" else []
    args = ["--preload", "off"] if via == "http-exec" else []
    srv = start_sup(weir, app_dir, workers=2, ready_path="/version", uwsgi_listen=["unix:" + u for u in uw],
                    args=args)
    addr = nginx("unix:" + uw[0]).addr if uw else srv.addr
    v1 = get(addr, "/version").text
    assert v1.startswith("v1 "), v1

    stop = threading.Event()
    res, threads = run_load(addr, "/version", threads=6, stop=stop, max_per_thread=5000, max_seconds=90,
                            keep_bodies=True)
    try:
        wait_for(lambda: res.ok >= 50, 30, what="load to get going")
        # a request in flight across the reload: it finishes on its old worker
        marker = tmp_path / "inflight"
        t_slow, box = sleep_in_background(addr, "/sleep?s=3&marker=%s" % marker)
        old_pid = marker_pid(marker)
        (app_dir / "VERSION").write_text("v2")
        t_hup = time.monotonic()
        srv.proc.signal(signal.SIGHUP)
        # load goes on until every new worker has answered, and 2 s more (bounded)
        def all_new_seen_for_a_while():
            firsts = first_v2_answers(res)
            return len(firsts) >= 2 and time.monotonic() - max(firsts.values()) > 2.0
        wait_for(all_new_seen_for_a_while, 60, interval=0.1, what="both new workers serving v2 for 2 s after SIGHUP")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    t_slow.join(30)
    assert res.failures == [], res.summary()
    r = box.get("resp")
    assert r is not None and r.status == 200, box
    assert pid_of(r) == old_pid, "the in-flight request was answered by another process?"
    # once both new workers have answered, old ones take no new request: a request that
    # started after that (+0.5 s of slack) and got v1 went to a worker that should be leaving
    t_new = max(first_v2_answers(res).values())
    late_v1 = [(round(st - t_hup, 2), round(en - t_hup, 2), b) for st, en, b in res.timed
               if b.startswith(b"v1 ") and st > t_new + 0.5]
    assert not late_v1, ("old workers served requests that started after both new workers were serving "
                         "(new generation serving at +%.2fs after SIGHUP; (start, end, body) after SIGHUP): %r"
                         % (t_new - t_hup, late_v1[:10]))
    assert srv.alive
    # all old workers leave
    old = {int(b.split()[1]) for t, b in res.bodies if b.startswith(b"v1 ")} | {old_pid}
    new = {int(b.split()[1]) for t, b in res.bodies if b.startswith(b"v2 ")}
    assert not (old & new)
    wait_for(lambda: not any(pid_alive(p) for p in old), 30, what="old workers %r to exit" % old)
    assert time.monotonic() - t_hup < 60


@pytest.mark.e2e_timeout(120)
def test_sighup_twice_quickly(weir, app_dir):
    srv = start_sup(weir, app_dir, workers=2)
    for v in ("v2", "v3"):
        (app_dir / "VERSION").write_text(v)
        srv.proc.signal(signal.SIGHUP)
    wait_for(lambda: all(get(srv.addr, "/version").text.startswith("v3 ") for _ in range(4)), 60,
             interval=0.2, what="v3 served by every worker")
    assert srv.alive


# ---------------------------------------------------------------------------------------
# shutdown


@pytest.mark.e2e_timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["SIGTERM", "SIGINT", "SIGQUIT"])
def test_graceful_shutdown_finishes_in_flight(weir, app_dir, tmp_path, sig):
    srv = start_sup(weir, app_dir, workers=2)
    worker_pids = concurrent_pids(srv.addr, 2, 0.2)
    marker = tmp_path / "inflight"
    t, box = sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % marker)
    marker_pid(marker)
    t0 = time.monotonic()
    srv.proc.signal(sig)
    code = srv.proc.wait(30)
    t.join(30)
    assert code == 0, "weir exited with %r after %s" % (code, signal.Signals(sig).name)
    r = box.get("resp")
    assert r is not None and r.status == 200, box
    assert time.monotonic() - t0 < 20
    # it stopped accepting: nothing answers there any more
    with pytest.raises((OSError, http.client.HTTPException)):
        get(srv.addr, "/pid", timeout=3)
    wait_for(lambda: not any(pid_alive(p) for p in worker_pids), 10, what="workers to exit with the master")


@pytest.mark.e2e_timeout(90)
def test_stops_accepting_at_sigterm(weir, app_dir, tmp_path):
    srv = start_sup(weir, app_dir, workers=1)
    marker = tmp_path / "inflight"
    t, box = sleep_in_background(srv.addr, "/sleep?s=3&marker=%s" % marker)
    marker_pid(marker)
    srv.proc.signal(signal.SIGTERM)
    # weir acted on the signal: it logs this line, then stops accepting
    wait_for(lambda: "SIGTERM: draining" in srv.output(), 10, what="weir to log that it drains")
    assert "resp" not in box, "the in-flight request ended early: %r" % box  # it runs 3 s
    try:
        late = get(srv.addr, "/pid", timeout=15)
    except (OSError, http.client.HTTPException):
        late = None  # refused or reset: not accepted
    assert late is None or late.status != 200, "a request that arrived after SIGTERM was served: %r" % late
    t.join(30)
    assert box.get("resp") is not None and box["resp"].status == 200, box
    assert srv.proc.wait(30) == 0


def accept_queue(port: int) -> Optional[int]:
    """Connections waiting in the kernel's accept queue of the listener on 127.0.0.1:port
    (/proc/net/tcp's rx_queue of the LISTEN socket), or None if there is no such listener."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    return None


@pytest.mark.e2e_timeout(90)
def test_a_request_on_its_way_when_the_drain_begins_is_answered(weir, app_dir, tmp_path):
    """A connection accepted just before SIGTERM, whose request comes just after it (a
    client that connected as the drain began), is read and answered, then closed: here
    `503 shutting-down` with Retry-After, as any request the stopping pool cannot take
    (at an upgrade's handover the old master's workers serve it: test_upgrade's fresh
    connections). The drain closes at once only connections idle at a request boundary;
    before, this one was closed with its request unanswered."""
    srv = start_sup(weir, app_dir, workers=1)
    with socket.create_connection((srv.addr.host, srv.addr.port), timeout=20) as s:
        wait_for(lambda: accept_queue(srv.addr.port) == 0, 10, what="weir to accept the connection")
        srv.proc.signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: draining" in srv.output(), 10, what="weir to log that it drains")
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: weir\r\n\r\n")
        data = recv_all(s, time.monotonic() + 20)  # to the end: weir closes after the answer
    assert data, "the connection was closed with the request unanswered"
    r = parse_response(data)
    assert r.status == 503 and r.complete, data[:300]
    assert r.header("x-weir-error") == "shutting-down" and r.header("retry-after"), data[:300]
    assert srv.proc.wait(30) == 0


@pytest.mark.e2e_timeout(90)
def test_graceful_timeout_caps_shutdown(weir, app_dir, tmp_path):
    srv = start_sup(weir, app_dir, workers=1, config={"app": {"graceful_timeout": "1s"}})
    marker = tmp_path / "inflight"
    t, box = sleep_in_background(srv.addr, "/sleep?s=30&marker=%s" % marker)
    pid = marker_pid(marker)
    t0 = time.monotonic()
    srv.proc.signal(signal.SIGTERM)
    code = srv.proc.wait(20)
    elapsed = time.monotonic() - t0
    assert code is not None, "weir still running 20 s after SIGTERM with graceful_timeout=1s"
    assert elapsed < 6, "shutdown took %.1fs with graceful_timeout=1s" % elapsed
    t.join(10)
    wait_for(lambda: not pid_alive(pid), 10, what="the busy worker to be gone")


@pytest.mark.e2e_timeout(90)
@pytest.mark.parametrize("again", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_stop_signal_during_the_drain_stops_now(weir, app_dir, tmp_path, again):
    """A second Ctrl-C (or SIGTERM, SIGQUIT) while weir drains ends the drain at once, as
    NGINX's fast shutdown: the busy worker is killed as when graceful_timeout runs out, its
    client still gets an answer, and weir exits 0 with no process left."""
    srv = start_sup(weir, app_dir, workers=1, config={"app": {"graceful_timeout": "60s"}})
    marker = tmp_path / "inflight"
    t, box = sleep_in_background(srv.addr, "/sleep?s=60&marker=%s" % marker)
    pid = marker_pid(marker)
    srv.proc.signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: draining" in srv.output(), 10, what="weir to log that it drains")
    assert srv.alive and "resp" not in box  # the drain waits for the 60 s request
    t0 = time.monotonic()
    srv.proc.signal(again)
    code = srv.proc.wait(20)
    assert code == 0, "weir exited with %r after a second signal" % code
    assert time.monotonic() - t0 < 10
    assert "during the drain: stopping now" in srv.output()
    t.join(10)
    r = box.get("resp")
    assert r is not None and r.status == 502, box
    assert r.header("x-weir-error") == "worker-died", r.headers
    wait_for(lambda: not pid_alive(pid), 10, what="the busy worker to be gone")


# ---------------------------------------------------------------------------------------
# startup


@pytest.mark.e2e_timeout(60)
def test_listener_bound_at_once_requests_wait_for_ready_worker(weir, app_dir):
    (app_dir / "IMPORT_DELAY").write_text("3")
    t0 = time.monotonic()
    srv = start_sup(weir, app_dir, workers=1, wait=False)

    def connectable():
        if not srv.alive:
            pytest.fail("weir exited: %s" % srv.proc.describe())
        with srv.addr.socket(1):
            return True
    wait_for(connectable, 20, what="the listener")
    t_bound = time.monotonic() - t0
    assert t_bound < 2.5, "the listener was bound after %.1fs: not before the app imported (3 s)" % t_bound
    r = get(srv.addr, "/version", timeout=30)
    assert r.status == 200 and r.text.startswith("v1"), r


@pytest.mark.e2e_timeout(90)
def test_import_failure_exits_non_zero_with_the_error(weir):
    srv = weir(app="bad_import_app:application", wait=False)
    code = srv.proc.wait(60)
    assert code is not None, "weir still running 60 s after an app that cannot be imported (spinning?)"
    assert code != 0
    out = srv.output()
    assert "e2e-import-failure-token" in out, out[-3000:]
    # it did not spin: a bounded number of attempts
    assert out.count("e2e-import-failure-token") < 50, "import retried %d times" % out.count("e2e-import-failure-token")


@pytest.mark.e2e_timeout(60)
def test_missing_module_exits_2_naming_it(weir):
    srv = weir(app="no_such_module_e2e:application", wait=False)
    code = srv.proc.wait(45)
    assert code == 2, "exit status %r" % code
    assert "no_such_module_e2e" in srv.output()


@pytest.mark.e2e_timeout(60)
def test_missing_callable_exits_non_zero_naming_it(weir):
    srv = weir(app="sup_app:no_such_callable", chdir=APPS, wait=False)
    code = srv.proc.wait(45)
    assert code not in (None, 0), "exit status %r" % code
    assert "no_such_callable" in srv.output()


@pytest.mark.e2e_timeout(60)
def test_worker_crash_at_import_after_reload_keeps_old_workers(weir, app_dir):
    """A reload whose new code fails to import must not take the service down."""
    srv = start_sup(weir, app_dir, workers=2)
    assert len(concurrent_pids(srv.addr, 2, 0.5)) == 2  # both first workers are up
    (app_dir / "sup_app.py").write_text("raise RuntimeError('broken-reload-token')\n")
    srv.proc.signal(signal.SIGHUP)
    # poll a while: every answer is still a v1 200 from the old workers
    t_end = time.monotonic() + 5
    n = 0
    while time.monotonic() < t_end:
        r = get(srv.addr, "/version", timeout=30)
        assert r.status == 200 and r.text.startswith("v1 "), r
        n += 1
    assert n > 0
    wait_for(lambda: "broken-reload-token" in srv.output(), 20, what="the failed import in the log")

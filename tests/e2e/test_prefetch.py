"""Prefetch, end to end: when every worker is busy, the master may write the next queued
request into a busy worker's socket ("offer" it) and take it back ("revoke" it) until the
worker starts it. Whatever it does, the promises of a pool that dispatches to idle workers
only must hold:

- a fast request never waits behind a slow one while another worker is free (no
  head-of-line blocking);
- a request waiting behind a worker that is harakiri'd, crashes or is killed is served by a
  fresh worker (200), never answered 502/504 for someone else's request;
- recycling (max_requests, reload_on_rss) and SIGHUP reloads under load fail nothing;
- a request whose client left before it started never reaches the app.

Those behavioural tests do not name the `prefetch` setting (it is on by default), so they
hold for a pool with or without the feature. The setting itself (`[app] prefetch`,
`--prefetch on|off`, exit 2 for a bad value) and its counters on the admin /metrics
(`weir_prefetch_total{outcome="offered"|"revoked"}`) are checked at the end.

The app is apps/prefetch_app.py (sup_app plus /touch?marker= and /crash-after?marker=),
copied with sup_app.py into a fresh directory per test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from e2e_lib import APPS, Addr, free_port, get, pid_alive, run_load, wait_for

from test_cli_config import run_weir
from test_supervision import first_v2_answers, marker_pid, pid_of, sleep_in_background

PROCESS_MODELS = pytest.mark.parametrize("preload", ["on", "off"], ids=["forked", "exec"])


@pytest.fixture
def app_dir(tmp_path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    for f in ("sup_app.py", "prefetch_app.py"):
        shutil.copy(APPS / f, d / f)
    (d / "VERSION").write_text("v1")
    return d


def start_app(weir, app_dir, preload=None, admin=False, config=None, **kw):
    """weir on prefetch_app; preload "on"/"off" adds --preload; admin=True adds an admin
    listener (returned as srv.admin) and waits until it answers."""
    kw.setdefault("app", "prefetch_app:application")
    kw.setdefault("chdir", app_dir)
    if preload is not None:
        kw["args"] = ["--preload", preload] + list(kw.get("args", ()))
    config = dict(config or {})
    admin_addr = None
    if admin:
        admin_addr = Addr("127.0.0.1", free_port())
        config["admin"] = {"listen": "%s:%d" % (admin_addr.host, admin_addr.port)}
    srv = weir(config=config or None, **kw)
    srv.admin = admin_addr
    if admin_addr is not None:
        wait_for(lambda: get(admin_addr, "/livez", timeout=2).status == 200, 30, what="admin /livez")
    return srv


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(admin: Addr, name: str, **labels):
    """One series of the admin /metrics (labels must match exactly); None when absent."""
    r = get(admin, "/metrics", timeout=10)
    assert r.status == 200, r
    for line in r.text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or line.startswith("#") or m.group(1) != name:
            continue
        if dict(_LABEL.findall(m.group(2) or "")) == labels:
            return float(m.group(3))
    return None


def raw_get(addr: Addr, path: str) -> socket.socket:
    """Sends GET path on a new connection and returns the socket, unread."""
    s = addr.socket(30)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), addr.host_header.encode()))
    return s


def load_for(addr: Addr, path: str, threads: int, seconds: float, max_per_thread: int = 3000):
    """`threads` clients looping GET path for `seconds` (bounded in count too); joined."""
    stop = threading.Event()
    res, ts = run_load(addr, path, threads=threads, stop=stop, max_per_thread=max_per_thread,
                       max_seconds=seconds, keep_bodies=True)
    for t in ts:
        t.join(seconds + 60)
    stop.set()
    assert not any(t.is_alive() for t in ts), "load clients still running"
    return res


# ---------------------------------------------------------------------------------------
# no head-of-line blocking


@pytest.mark.e2e_timeout(90)
def test_fast_requests_never_wait_behind_a_slow_one(weir, app_dir, tmp_path):
    srv = start_app(weir, app_dir, workers=2)
    marker = tmp_path / "slow"
    t_slow, box = sleep_in_background(srv.addr, "/sleep?s=4&marker=%s" % marker)
    slow_pid = marker_pid(marker)
    # 4 clients on 2 workers, one of them asleep for 4 s: every worker is busy most of the
    # time, so requests wait; none may wait for the sleeper
    res = load_for(srv.addr, "/pid", threads=4, seconds=1.5, max_per_thread=2000)
    assert "resp" not in box and "error" not in box, "the slow request ended during the load: %r" % box
    assert res.failures == [], res.summary()
    assert res.ok >= 20, res.summary()
    durations = sorted(en - st for st, en, _ in res.timed)
    assert durations[-1] < 1.0, ("the slowest of %d fast requests took %.2fs while one worker was free "
                                 "(the slow one sleeps 4 s); slowest five: %r"
                                 % (len(durations), durations[-1], [round(d, 3) for d in durations[-5:]]))
    fast_pids = {int(b) for _, b in res.bodies}
    assert slow_pid not in fast_pids, "the sleeping worker %d answered fast requests: %r" % (slow_pid, fast_pids)
    t_slow.join(30)
    r = box.get("resp")
    assert r is not None, box
    assert pid_of(r) == slow_pid, r


# ---------------------------------------------------------------------------------------
# the worker in front dies: the request behind it is served by a fresh worker


@pytest.mark.e2e_timeout(90)
@PROCESS_MODELS
def test_harakiri_of_the_busy_worker_does_not_fail_the_request_behind_it(weir, app_dir, tmp_path, preload):
    srv = start_app(weir, app_dir, workers=1, preload=preload, args=["--harakiri", "2"])
    ma, mb = tmp_path / "a", tmp_path / "b"
    ta, box = sleep_in_background(srv.addr, "/sleep?s=10&marker=%s" % ma)
    pid_a = marker_pid(ma)
    t0 = time.monotonic()
    rb = get(srv.addr, "/touch?marker=%s" % mb, timeout=30)  # waits behind A, the only worker
    took = time.monotonic() - t0
    ta.join(30)
    ra = box.get("resp")
    assert ra is not None, box
    assert ra.status == 504 and ra.header("x-weir-error") == "harakiri", ra
    assert rb.status == 200, "the request behind the harakiri'd one: %r" % rb
    pid_b = pid_of(rb)
    assert pid_b != pid_a, "B was answered by the harakiri'd worker %d" % pid_a
    assert int(mb.read_text()) == pid_b, "B ran in %s but was answered by %d" % (mb.read_text(), pid_b)
    assert took < 15, "B took %.1fs (harakiri 2 s, then a fresh worker)" % took
    wait_for(lambda: not pid_alive(pid_a), 10, what="the harakiri'd worker %d to be gone" % pid_a)
    assert get(srv.addr, "/pid").status == 200


@pytest.mark.e2e_timeout(90)
@PROCESS_MODELS
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_death_of_the_busy_worker_does_not_fail_the_request_behind_it(weir, app_dir, tmp_path, preload, how):
    srv = start_app(weir, app_dir, workers=1, preload=preload)
    ma, mb = tmp_path / "a", tmp_path / "b"
    if how == "exit":
        # A marks, sleeps 1.5 s, then os._exit(3) under its own steam
        ta, box = sleep_in_background(srv.addr, "/crash-after?s=1.5&marker=%s" % ma)
        pid_a = marker_pid(ma)
        rb = get(srv.addr, "/touch?marker=%s" % mb, timeout=30)
    else:
        ta, box = sleep_in_background(srv.addr, "/sleep?s=20&marker=%s" % ma)
        pid_a = marker_pid(ma)
        tb, box_b = sleep_in_background(srv.addr, "/touch?marker=%s" % mb, timeout=30)
        time.sleep(0.3)  # the scenario, not a readiness wait: B waits behind A a while
        assert not mb.exists(), "B ran while the only worker was busy with A"
        os.kill(pid_a, signal.SIGKILL)  # the worker of the weir this test started
        tb.join(30)
        rb = box_b.get("resp")
        assert rb is not None, box_b
    ta.join(30)
    ra = box.get("resp")
    assert ra is not None, box
    assert ra.status == 502 and ra.header("x-weir-error") == "worker-died", ra
    assert rb.status == 200, "the request behind the one that died: %r" % rb
    pid_b = pid_of(rb)
    assert pid_b != pid_a, "B was answered by the dead worker %d" % pid_a
    assert int(mb.read_text()) == pid_b
    assert get(srv.addr, "/pid").status == 200


# ---------------------------------------------------------------------------------------
# the client leaves before its request started


@pytest.mark.e2e_timeout(90)
@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_while_waiting_behind_a_busy_worker_never_reaches_the_app(weir, app_dir, tmp_path, how):
    srv = start_app(weir, app_dir, workers=1)
    ma, mb = tmp_path / "a", tmp_path / "b"
    ta, box = sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % ma)
    pid_a = marker_pid(ma)
    s = raw_get(srv.addr, "/touch?marker=%s" % mb)
    time.sleep(0.3)  # the scenario, not a readiness wait: give the master time to offer B
    if how == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    ta.join(30)
    ra = box.get("resp")
    assert ra is not None and ra.status == 200, box
    # the only worker went on from A to C: had B been started, it would have run before C
    rc = get(srv.addr, "/pid", timeout=30)
    assert pid_of(rc) == pid_a, "C was answered by %d, not the worker %d (replaced to drop B?)" % (pid_of(rc), pid_a)
    assert not mb.exists(), "the request of a client that left (B) reached the app (pid %s)" % mb.read_text()
    assert get(srv.addr, "/pid", timeout=30).status == 200
    assert not mb.exists(), "B reached the app late"


# ---------------------------------------------------------------------------------------
# recycling and reloads under load: zero failures


@pytest.mark.e2e_timeout(120)
def test_max_requests_one_under_load_zero_failures(weir, app_dir):
    # every worker retires after each request: nothing may be left waiting on it
    srv = start_app(weir, app_dir, workers=None, config={"app": {"workers": 2, "max_requests": 1}})
    res = load_for(srv.addr, "/pid", threads=4, seconds=60, max_per_thread=15)
    assert res.failures == [], res.summary()
    assert res.ok == 60, res.summary()
    pids = [int(b) for _, b in res.bodies]
    assert len(set(pids)) == len(pids), "a worker served twice with max_requests=1: %r" % sorted(pids)


@pytest.mark.e2e_timeout(120)
def test_reload_on_rss_under_load_zero_failures(weir, app_dir):
    srv = start_app(weir, app_dir, workers=None, config={"app": {"workers": 2, "reload_on_rss": "150MiB"}})
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/pid", threads=4, stop=stop, max_per_thread=5000, max_seconds=60)
    try:
        wait_for(lambda: res.ok >= 20, 30, what="load to get going")
        r = get(srv.addr, "/grow?mb=200", timeout=60)
        assert r.status == 200, r
        big = pid_of(r)
        # the supervisor samples RSS: the big worker leaves within a few seconds, under load
        wait_for(lambda: not pid_alive(big), 30, what="the worker at 200 MiB (%d) to be recycled" % big)
        n = res.ok
        wait_for(lambda: res.ok >= n + 20, 30, what="load to go on after the recycle")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert res.failures == [], res.summary()


@pytest.mark.e2e_timeout(180)
@PROCESS_MODELS
def test_sighup_reload_under_load_zero_failures(weir, app_dir, tmp_path, preload):
    # importing takes a second, so old and new workers overlap for a while under load
    (app_dir / "IMPORT_DELAY").write_text("1.0")
    srv = start_app(weir, app_dir, workers=2, preload=preload, ready_path="/version")
    assert get(srv.addr, "/version").text.startswith("v1 ")
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/version", threads=6, stop=stop, max_per_thread=5000, max_seconds=90,
                            keep_bodies=True)
    try:
        wait_for(lambda: res.ok >= 50, 30, what="load to get going")
        marker = tmp_path / "inflight"
        t_slow, box = sleep_in_background(srv.addr, "/sleep?s=3&marker=%s" % marker)
        old_pid = marker_pid(marker)
        (app_dir / "VERSION").write_text("v2")
        t_hup = time.monotonic()
        srv.proc.signal(signal.SIGHUP)

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
    assert pid_of(r) == old_pid, "the in-flight request was answered by another process"
    # once both new workers answer, an old (leaving) worker takes no new request
    t_new = max(first_v2_answers(res).values())
    late_v1 = [(round(st - t_hup, 2), round(en - t_hup, 2), b) for st, en, b in res.timed
               if b.startswith(b"v1 ") and st > t_new + 0.5]
    assert not late_v1, "leaving workers served requests that started after the new ones served: %r" % late_v1[:10]
    for _ in range(10):
        r = get(srv.addr, "/version", timeout=30)
        assert r.status == 200 and r.text.startswith("v2 "), r
    old = {int(b.split()[1]) for _, b in res.bodies if b.startswith(b"v1 ")} | {old_pid}
    wait_for(lambda: not any(pid_alive(p) for p in old), 30, what="old workers %r to exit" % old)
    assert srv.alive


@pytest.mark.e2e_timeout(90)
def test_sigterm_answers_the_request_waiting_behind_a_busy_worker(weir, app_dir, tmp_path):
    """A request that had not started at SIGTERM gets 503 `shutting-down` (docs/errors.md:
    it had not reached a worker) and the app never sees it, or it is served (200, and the
    app saw it); never a 502/504, a reset, or an answer that disagrees with what ran."""
    srv = start_app(weir, app_dir, workers=1)
    ma, mb = tmp_path / "a", tmp_path / "b"
    ta, box_a = sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % ma)
    pid_a = marker_pid(ma)
    tb, box_b = sleep_in_background(srv.addr, "/touch?marker=%s" % mb)
    time.sleep(0.3)  # the scenario, not a readiness wait: B waits behind A a while
    srv.proc.signal(signal.SIGTERM)
    code = srv.proc.wait(30)
    ta.join(30)
    tb.join(30)
    assert code == 0, "weir exited with %r after SIGTERM" % code
    ra, rb = box_a.get("resp"), box_b.get("resp")
    assert ra is not None and pid_of(ra) == pid_a, box_a
    assert rb is not None, box_b
    if rb.status == 200:
        assert int(mb.read_text()) == pid_of(rb), rb
    else:
        assert rb.status == 503 and rb.header("x-weir-error") == "shutting-down", rb
        assert not mb.exists(), "B was answered 503 shutting-down, yet the app ran it (pid %s)" % mb.read_text()


# ---------------------------------------------------------------------------------------
# the setting and its counters


@pytest.mark.e2e_timeout(120)
@PROCESS_MODELS
def test_prefetch_is_on_by_default_and_recycling_under_load_fails_nothing(weir, app_dir, preload):
    srv = start_app(weir, app_dir, workers=None, preload=preload, admin=True,
                    config={"app": {"workers": 2, "max_requests": 20}})
    res = load_for(srv.addr, "/pid", threads=8, seconds=3.0, max_per_thread=1000)
    assert res.failures == [], res.summary()
    assert res.ok >= 100, res.summary()
    pids = [int(b) for _, b in res.bodies]
    worst = max(pids.count(p) for p in set(pids))
    assert worst <= 20, "a worker served %d requests with max_requests=20" % worst
    assert (metric(srv.admin, "weir_worker_restarts_total", reason="max-requests") or 0) > 0
    offered = metric(srv.admin, "weir_prefetch_total", outcome="offered")
    revoked = metric(srv.admin, "weir_prefetch_total", outcome="revoked")
    assert offered is not None and revoked is not None, \
        "weir_prefetch_total{outcome=offered|revoked} missing from /metrics:\n%s" % get(srv.admin, "/metrics").text
    assert offered > 0, "8 clients on 2 workers for 3 s and no request was ever offered to a busy worker"
    assert revoked <= offered, (offered, revoked)


@pytest.mark.e2e_timeout(120)
@pytest.mark.parametrize("how", ["config", "flag"])
def test_prefetch_off_offers_nothing(weir, app_dir, how):
    kw = {"config": dict(config={"app": {"workers": 2, "max_requests": 20, "prefetch": False}}),
          "flag": dict(config={"app": {"workers": 2, "max_requests": 20}}, args=["--prefetch", "off"])}[how]
    srv = start_app(weir, app_dir, workers=None, admin=True, **kw)
    res = load_for(srv.addr, "/pid", threads=8, seconds=3.0, max_per_thread=1000)
    assert res.failures == [], res.summary()
    assert res.ok >= 100, res.summary()
    offered = metric(srv.admin, "weir_prefetch_total", outcome="offered")
    assert not offered, "prefetch off, yet %r requests were offered to busy workers" % offered
    assert not metric(srv.admin, "weir_prefetch_total", outcome="revoked")


GOOD_VALUES = [
    ("flag-on", ["--prefetch", "on"], None),
    ("flag-off", ["--prefetch", "off"], None),
    ("config-true", [], "prefetch = true"),
    ("config-false", [], "prefetch = false"),
]


@pytest.mark.parametrize("case,args,line", GOOD_VALUES, ids=[c[0] for c in GOOD_VALUES])
def test_prefetch_values_pass_check(weir_bin, tmp_path, case, args, line):
    cfg = tmp_path / "weir.toml"
    cfg.write_text("[app]\nmodule = 'sup_app:application'\n%s\n" % (line or ""))
    code, out = run_weir(weir_bin, ["serve", "--config", cfg, "--chdir", APPS, "--check"] + args)
    assert code == 0, "exit status %r for %s; output:\n%s" % (code, case, out)


def test_help_documents_prefetch(weir_bin):
    code, out = run_weir(weir_bin, ["serve", "--help"])
    assert code == 0, out
    assert "--prefetch" in out, out


BAD_VALUES = [
    ("flag-maybe", ["--app", "sup_app:application", "--prefetch", "maybe"], None),
    ("config-string", [], "[app]\nmodule = 'sup_app:application'\nprefetch = \"x\"\n"),
    ("config-table", [], "[app]\nmodule = 'sup_app:application'\nprefetch = { on = true }\n"),
]


@pytest.mark.parametrize("case,args,text", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_prefetch_value_exits_2_naming_the_key(weir_bin, tmp_path, case, args, text):
    argv = ["serve", "--chdir", APPS, "--listen", "127.0.0.1:%d" % free_port()] + args
    if text is not None:
        cfg = tmp_path / "weir.toml"
        cfg.write_text(text)
        argv += ["--config", cfg]
    code, out = run_weir(weir_bin, argv)
    assert code == 2, "exit status %r for %s; output:\n%s" % (code, case, out)
    assert "prefetch" in out, "the error does not name prefetch:\n%s" % out
    assert "Traceback" not in out and "panicked" not in out, out

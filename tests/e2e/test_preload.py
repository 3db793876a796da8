"""`[app] preload` / `--preload`, end to end: the app is imported once, in a zygote, and the
workers are forked from it; crash, harakiri, recycling, reload, a dying zygote and a dying
master keep weir's promises. The modes: "auto" (the default) forks unless the import left a
socket open or a thread running, then each worker imports the app itself; true (`--preload`,
`--preload on`) forks anyway with a warning; false (`--preload off`) never forks.

The app is apps/preload_app.py (sup_app plus /preload, which reports the importing pid, the
worker's pid and parent, and the pids its `os.register_at_fork(after_in_child=...)` hook ran
in), copied with sup_app.py into a fresh directory per test.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from e2e_lib import APPS, get, pgid_members, pid_alive, run_load, wait_for

from test_cli_config import run_weir
from test_supervision import concurrent_pids, marker_pid, sleep_in_background


@pytest.fixture
def app_dir(tmp_path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    for f in ("sup_app.py", "preload_app.py"):
        shutil.copy(APPS / f, d / f)
    (d / "VERSION").write_text("v1")
    return d


def start_preload(weir, app_dir, **kw):
    kw.setdefault("app", "preload_app:application")
    kw.setdefault("chdir", app_dir)
    kw["args"] = ["--preload"] + list(kw.get("args", ()))
    return weir(**kw)


def info(addr, s=0.0) -> dict:
    r = get(addr, "/preload?s=%s" % s if s else "/preload", timeout=30)
    assert r.status == 200, r
    return r.json()


def concurrent_infos(addr, n: int, seconds: float = 0.8) -> list:
    """n requests at once, each holding its worker for `seconds`: n distinct workers."""
    out, errs = [], []

    def one():
        try:
            out.append(info(addr, seconds))
        except Exception as e:  # reported below
            errs.append(e)
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errs, errs
    return out


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def ppid_of(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def zygote_pids(master: int) -> list:
    """The master's children that are zygotes."""
    out = []
    for pid in pgid_members(master):
        try:
            if ppid_of(pid) == master and "--zygote" in cmdline(pid):
                out.append(pid)
        except OSError:
            pass
    return out


# ---------------------------------------------------------------------------------------
# forked workers


@pytest.mark.e2e_timeout(90)
def test_workers_are_forked_from_one_import_and_fork_hooks_ran(weir, app_dir):
    srv = start_preload(weir, app_dir, workers=3)
    infos = concurrent_infos(srv.addr, 3)
    pids = {i["pid"] for i in infos}
    assert len(pids) == 3, infos
    imports = {i["import_pid"] for i in infos}
    assert len(imports) == 1, "the workers did not share one import: %r" % infos
    zygote = imports.pop()
    assert zygote not in pids, infos
    assert zygote_pids(srv.proc.pid) == [zygote], (zygote, zygote_pids(srv.proc.pid))
    for i in infos:
        assert i["ppid"] == zygote, "worker %d's parent is %d, not the zygote %d" % (i["pid"], i["ppid"], zygote)
        # the after_in_child hook ran once, in the worker itself
        assert i["after_fork"] == [i["pid"]], i
    for _ in range(10):
        assert get(srv.addr, "/pid").status == 200
    assert "forked from zygote %d" % zygote in srv.output()


@pytest.mark.e2e_timeout(60)
def test_threads_started_at_import_are_named_in_a_warning(weir, app_dir):
    (app_dir / "START_THREAD").write_text("")
    srv = start_preload(weir, app_dir, workers=2)
    out = srv.output()
    assert "threads do not survive fork" in out and "e2e-import-thread" in out, out[-3000:]
    # the workers do not have the thread (fork copies only the calling thread)
    for i in concurrent_infos(srv.addr, 2):
        assert i["threads"] == 1, i


# ---------------------------------------------------------------------------------------
# crash, harakiri, recycling


@pytest.mark.e2e_timeout(90)
def test_crash_is_502_and_a_new_forked_worker_takes_the_slot(weir, app_dir, tmp_path):
    srv = start_preload(weir, app_dir, workers=2)
    zygote = info(srv.addr)["import_pid"]
    marker = tmp_path / "busy"
    t, box = sleep_in_background(srv.addr, "/sleep?s=20&marker=%s" % marker)
    victim = marker_pid(marker)
    os.kill(victim, signal.SIGKILL)  # a worker of the weir this test started
    t.join(30)
    r = box.get("resp")
    assert r is not None and r.status == 502 and r.header("x-weir-error") == "worker-died", box
    r = get(srv.addr, "/crash", timeout=30)
    assert r.status == 502 and r.header("x-weir-error") == "worker-died", r
    infos = concurrent_infos(srv.addr, 2)
    assert victim not in {i["pid"] for i in infos} and len({i["pid"] for i in infos}) == 2, infos
    assert {i["import_pid"] for i in infos} == {zygote}, infos
    # an idle worker killed from outside: the zygote reaps it and reports how it died
    idle = infos[0]["pid"]
    os.kill(idle, signal.SIGKILL)
    wait_for(lambda: "(pid %d) exited on its own: signal: 9" % idle in srv.output(), 10,
             what="the idle worker's exit status (signal 9) in the log")
    infos = concurrent_infos(srv.addr, 2)
    assert idle not in {i["pid"] for i in infos} and len({i["pid"] for i in infos}) == 2, infos


@pytest.mark.e2e_timeout(90)
def test_harakiri_is_504(weir, app_dir, tmp_path):
    srv = start_preload(weir, app_dir, workers=2, args=["--harakiri", "1"])
    marker = tmp_path / "slow"
    t0 = time.monotonic()
    r = get(srv.addr, "/sleep?s=5&marker=%s" % marker, timeout=30)
    assert r.status == 504 and r.header("x-weir-error") == "harakiri", r
    assert time.monotonic() - t0 < 4.0
    killed = int(marker.read_text())
    wait_for(lambda: not pid_alive(killed), 10, what="the harakiri'd worker %d to be gone" % killed)
    pids = concurrent_pids(srv.addr, 2, 0.3)
    assert killed not in pids and len(pids) == 2, pids


@pytest.mark.e2e_timeout(180)
def test_sighup_reload_under_load_imports_new_code_in_a_new_zygote(weir, app_dir, tmp_path):
    (app_dir / "IMPORT_DELAY").write_text("1.0")
    srv = start_preload(weir, app_dir, workers=2, ready_path="/version")
    old_zygote = info(srv.addr)["import_pid"]
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/version", threads=6, stop=stop, max_per_thread=5000, max_seconds=90,
                            keep_bodies=True)
    try:
        wait_for(lambda: res.ok >= 50, 30, what="load to get going")
        marker = tmp_path / "inflight"
        t_slow, box = sleep_in_background(srv.addr, "/sleep?s=3&marker=%s" % marker)
        old_pid = marker_pid(marker)
        (app_dir / "VERSION").write_text("v2")
        srv.proc.signal(signal.SIGHUP)

        def new_workers_serving():
            v2 = {int(b.split()[1]) for _, b in list(res.bodies) if b.startswith(b"v2 ")}
            return len(v2) >= 2
        wait_for(new_workers_serving, 60, interval=0.1, what="both new workers serving v2 after SIGHUP")
        t_end = time.monotonic() + 1.0
        wait_for(lambda: time.monotonic() > t_end, 5)  # a second more of load on the new ones
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    t_slow.join(30)
    assert res.failures == [], res.summary()
    r = box.get("resp")
    assert r is not None and r.status == 200 and int(r.body) == old_pid, box
    new = info(srv.addr)
    assert new["version"] == "v2" and new["import_pid"] != old_zygote, new
    # the old generation leaves: its workers, then its zygote
    old = {int(b.split()[1]) for _, b in res.bodies if b.startswith(b"v1 ")} | {old_pid, old_zygote}
    wait_for(lambda: not any(pid_alive(p) for p in old), 30, what="the old workers and zygote %r to exit" % old)
    assert zygote_pids(srv.proc.pid) == [new["import_pid"]]


@pytest.mark.e2e_timeout(90)
def test_reload_with_broken_code_keeps_the_old_workers(weir, app_dir):
    srv = start_preload(weir, app_dir, workers=2)
    zygote = info(srv.addr)["import_pid"]
    (app_dir / "preload_app.py").write_text("raise RuntimeError('broken-preload-reload-token')\n")
    srv.proc.signal(signal.SIGHUP)
    wait_for(lambda: "broken-preload-reload-token" in srv.output(), 30, what="the failed import in the log")
    wait_for(lambda: "reload failed" in srv.output(), 30, what="the reload to be given up")
    for _ in range(10):
        i = info(srv.addr)
        assert i["version"] == "v1" and i["import_pid"] == zygote, i
    assert srv.alive


# ---------------------------------------------------------------------------------------
# a dying zygote, a dying master


@pytest.mark.e2e_timeout(120)
def test_zygote_sigkill_fails_no_request_and_a_later_crash_is_respawned(weir, app_dir):
    srv = start_preload(weir, app_dir, workers=2)
    zygote = info(srv.addr)["import_pid"]
    stop = threading.Event()
    res, threads = run_load(srv.addr, "/pid", threads=3, stop=stop, max_per_thread=2000, max_seconds=60)
    try:
        wait_for(lambda: res.ok >= 30, 30, what="load to get going")
        os.kill(zygote, signal.SIGKILL)  # the zygote of the weir this test started
        wait_for(lambda: not pid_alive(zygote), 10, what="the zygote to die")
        n = res.ok
        wait_for(lambda: res.ok >= n + 100, 30, what="100 more answers after the zygote died")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert res.failures == [], res.summary()
    wait_for(lambda: "zygote (pid %d) exited" % zygote in srv.output(), 10, what="the zygote's death in the log")
    # a crash now needs a new zygote: the slot gets one and the pool is whole again
    r = get(srv.addr, "/crash", timeout=30)
    assert r.status == 502 and r.header("x-weir-error") == "worker-died", r
    infos = concurrent_infos(srv.addr, 2)
    assert len({i["pid"] for i in infos}) == 2, infos
    # the worker that did not crash still comes from the dead zygote; the new one from a new
    imports = {i["import_pid"] for i in infos}
    assert len(imports) == 2 and zygote in imports, infos
    assert srv.alive


@pytest.mark.e2e_timeout(60)
def test_sigterm_drains_then_workers_and_zygote_exit(weir, app_dir, tmp_path):
    srv = start_preload(weir, app_dir, workers=2)
    concurrent_infos(srv.addr, 2)
    procs = [p for p in pgid_members(srv.proc.pid) if p != srv.proc.pid]
    assert len(procs) == 3, procs  # the zygote and 2 workers
    marker = tmp_path / "inflight"
    t, box = sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % marker)
    marker_pid(marker)
    srv.proc.signal(signal.SIGTERM)
    code = srv.proc.wait(30)
    t.join(30)
    assert code == 0, "weir exited with %r after SIGTERM" % code
    r = box.get("resp")
    assert r is not None and r.status == 200, box
    wait_for(lambda: not any(pid_alive(p) for p in procs), 10, what="the zygote and workers %r to exit" % procs)


@pytest.mark.e2e_timeout(60)
@pytest.mark.parametrize("case", ["idle", "busy", "zygote-stopped"])
def test_sigterm_master_exits_after_reaping_every_child(weir, app_dir, tmp_path, case):
    """The master reaps its zygote and workers before it exits: once its exit status is
    in, not one of them is alive (checked at once, no waiting), and its log says the
    zygote was reaped before "weir stopped". A zygote that cannot exit by itself (stopped
    here) is killed and reaped after a grace period, not left behind."""
    import re
    srv = start_preload(weir, app_dir, workers=2)
    infos = concurrent_infos(srv.addr, 2)
    master = srv.proc.pid
    m = re.search(r"zygote started.*?pid=(\d+)", srv.output())
    assert m, srv.output()
    zygote = int(m.group(1))
    assert {i["import_pid"] for i in infos} == {zygote}, infos
    workers = {i["pid"] for i in infos}
    procs = [p for p in pgid_members(master) if p != master]
    assert set(procs) == workers | {zygote}, (procs, workers, zygote)
    if case == "busy":
        marker = tmp_path / "inflight"
        t, box = sleep_in_background(srv.addr, "/sleep?s=1&marker=%s" % marker)
        marker_pid(marker)
    if case == "zygote-stopped":
        os.kill(zygote, signal.SIGSTOP)  # the zygote of the weir this test started
    srv.proc.signal(signal.SIGTERM)
    code = srv.proc.wait(30)
    alive = [p for p in procs if pid_alive(p)]
    out = srv.output()
    assert code == 0, "weir exited with %r after SIGTERM" % code
    assert not alive, "alive after the master exited: %r (zygote %d, workers %r)\n%s" % (
        alive, zygote, sorted(workers), out[-3000:])
    assert pgid_members(master) == [], pgid_members(master)
    reaped = re.search(r"zygote (left|\(pid \d+\) (exited|did not exit)).*pid=%d\b" % zygote, out)
    stopped = out.find("weir stopped")
    assert reaped and 0 <= reaped.start() < stopped, "the zygote was not reaped before weir stopped:\n%s" % out[-3000:]
    if case == "busy":
        t.join(30)
        r = box.get("resp")
        assert r is not None and r.status == 200, box


@pytest.mark.e2e_timeout(60)
def test_master_sigkill_leaves_no_weir_process(weir, app_dir, tmp_path):
    srv = start_preload(weir, app_dir, workers=3)
    concurrent_infos(srv.addr, 3)
    master = srv.proc.pid
    procs = [p for p in pgid_members(master) if p != master]
    assert len(procs) >= 4, "expected a zygote and 3 workers, found %r" % procs
    # one worker busy when the master dies: it finishes its request, then leaves
    marker = tmp_path / "busy"
    sleep_in_background(srv.addr, "/sleep?s=2&marker=%s" % marker)
    marker_pid(marker)
    srv.proc.signal(signal.SIGKILL)
    srv.proc.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in procs), 20,
             what="every weir process (%r) to exit after the master's SIGKILL" % procs)


# ---------------------------------------------------------------------------------------
# errors


@pytest.mark.e2e_timeout(60)
def test_import_failure_exits_2_naming_the_module(weir):
    srv = weir(app="no_such_module_preload_e2e:application", args=["--preload"], wait=False)
    code = srv.proc.wait(45)
    assert code == 2, "exit status %r" % code
    out = srv.output()
    assert "no_such_module_preload_e2e" in out, out[-3000:]
    assert out.count("cannot import app") < 20, "import retried too often:\n" + out[-3000:]


def test_bad_preload_value_exits_2_naming_the_key(weir_bin, tmp_path):
    cfg = tmp_path / "weir.toml"
    cfg.write_text("[app]\nmodule = 'sup_app:application'\npreload = 'yes'\n")
    code, out = run_weir(weir_bin, ["serve", "--config", cfg, "--chdir", APPS, "--check"])
    assert code == 2, out
    assert "app.preload" in out and 'true, false or "auto"' in out, out
    code, out = run_weir(weir_bin, ["serve", "--app", "sup_app:application", "--chdir", APPS,
                                    "--preload", "sometimes", "--check"])
    assert code == 2, out
    assert "--preload" in out and "auto" in out and "off" in out, out


# ---------------------------------------------------------------------------------------
# the modes: "auto" (default), true, false


@pytest.fixture
def db_listener():
    """A TCP listener on 127.0.0.1 standing in for a database: the app connects at import."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s
    s.close()


def connect_at_import(app_dir, listener) -> str:
    addr = "127.0.0.1:%d" % listener.getsockname()[1]
    (app_dir / "CONNECT_TO").write_text(addr)
    return addr


def assert_forked(srv, n):
    infos = concurrent_infos(srv.addr, n)
    assert len({i["pid"] for i in infos}) == n, infos
    imports = {i["import_pid"] for i in infos}
    assert len(imports) == 1 and imports.pop() not in {i["pid"] for i in infos}, \
        "the workers were not forked from one import: %r" % infos
    return infos


def assert_each_imports(srv, n):
    infos = concurrent_infos(srv.addr, n)
    assert len({i["pid"] for i in infos}) == n, infos
    for i in infos:
        assert i["import_pid"] == i["pid"], "worker %d did not import the app itself: %r" % (i["pid"], infos)
        assert i["ppid"] == srv.proc.pid, i
    return infos


@pytest.mark.e2e_timeout(60)
def test_default_is_auto_and_forks_a_plain_app(weir, app_dir):
    srv = weir(app="preload_app:application", chdir=app_dir, workers=3)
    infos = assert_forked(srv, 3)
    assert zygote_pids(srv.proc.pid) == [infos[0]["import_pid"]]
    out = srv.output()
    assert 'forked from it (preload = "auto")' in out, out[-3000:]
    assert "preload=auto:" not in out, out[-3000:]


@pytest.mark.e2e_timeout(60)
def test_auto_with_a_socket_open_at_import_execs_each_worker(weir, app_dir, db_listener):
    addr = connect_at_import(app_dir, db_listener)
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2)
    assert_each_imports(srv, 2)
    out = srv.output()
    assert "preload=auto: the app left a socket connected to %s (fd " % addr in out, out[-3000:]
    assert "each worker imports the app itself" in out, out[-3000:]
    assert out.count("preload=auto:") == 1, out[-3000:]
    assert "workers are exec'd" in out, out[-3000:]
    # the zygote has left: only workers are the master's children
    wait_for(lambda: zygote_pids(srv.proc.pid) == [], 10, what="the zygote to exit")
    for _ in range(10):
        assert get(srv.addr, "/pid").status == 200
    # a crashed worker is replaced by an exec'd one too
    assert get(srv.addr, "/crash").status == 502
    wait_for(lambda: get(srv.addr, "/pid").status == 200, 30, what="the respawned worker")
    assert_each_imports(srv, 2)


@pytest.mark.e2e_timeout(60)
def test_auto_with_an_sqlite_database_open_at_import_execs_each_worker(weir, app_dir):
    (app_dir / "OPEN_SQLITE").write_text("")
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2)
    assert_each_imports(srv, 2)
    out = srv.output()
    assert "preload=auto: the app left the file %s open for writing (fd " % (app_dir / "import.db") in out, out[-3000:]


@pytest.mark.e2e_timeout(60)
def test_auto_forks_when_the_import_only_keeps_a_log_open_for_appending(weir, app_dir):
    (app_dir / "APPEND_LOG").write_text("")
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2)
    assert_forked(srv, 2)
    assert "preload=auto:" not in srv.output()


@pytest.mark.e2e_timeout(60)
def test_auto_with_a_thread_started_at_import_execs_each_worker(weir, app_dir):
    (app_dir / "START_THREAD").write_text("")
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2)
    for i in assert_each_imports(srv, 2):
        assert i["threads"] == 2, i  # each worker started its own
    out = srv.output()
    assert "preload=auto: the app left the thread e2e-import-thread running" in out, out[-3000:]


@pytest.mark.e2e_timeout(60)
@pytest.mark.parametrize("how", ["bare-flag", "flag-on", "config-true"])
def test_preload_true_forks_anyway_with_a_warning(weir, app_dir, db_listener, how):
    addr = connect_at_import(app_dir, db_listener)
    kw = {"bare-flag": dict(args=["--preload"]), "flag-on": dict(args=["--preload", "on"]),
          "config-true": dict(config="[app]\npreload = true\n")}[how]
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2, **kw)
    assert_forked(srv, 2)
    out = srv.output()
    assert "preload=true: the app left a socket connected to %s (fd " % addr in out, out[-3000:]
    assert "forking anyway" in out and "despite the findings" in out, out[-3000:]


@pytest.mark.e2e_timeout(60)
@pytest.mark.parametrize("how", ["flag-off", "config-false"])
def test_preload_false_execs_every_worker(weir, app_dir, how):
    kw = {"flag-off": dict(args=["--preload", "off"]), "config-false": dict(config="[app]\npreload = false\n")}[how]
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2, **kw)
    assert_each_imports(srv, 2)
    assert zygote_pids(srv.proc.pid) == []
    out = srv.output()
    assert "workers are exec'd, each imports the app itself (preload = false)" in out, out[-3000:]
    assert "zygote" not in out, out[-3000:]


@pytest.mark.e2e_timeout(90)
def test_auto_checks_again_on_each_reload(weir, app_dir, db_listener):
    srv = weir(app="preload_app:application", chdir=app_dir, workers=2)
    assert_forked(srv, 2)
    # the next deploy connects at import: its generation is exec'd
    addr = connect_at_import(app_dir, db_listener)
    (app_dir / "VERSION").write_text("v2")
    srv.proc.signal(signal.SIGHUP)
    wait_for(lambda: info(srv.addr)["version"] == "v2", 60, what="the reloaded generation")
    wait_for(lambda: "reload: new workers ready" in srv.output(), 30, what="the reload to finish")
    assert_each_imports(srv, 2)
    assert "socket connected to %s" % addr in srv.output()
    # and the one after that does not: forked again
    (app_dir / "CONNECT_TO").unlink()
    (app_dir / "VERSION").write_text("v3")
    srv.proc.signal(signal.SIGHUP)
    wait_for(lambda: info(srv.addr)["version"] == "v3", 60, what="the second reload")
    wait_for(lambda: srv.output().count("reload: new workers ready") == 2, 30, what="the second reload to finish")
    assert_forked(srv, 2)

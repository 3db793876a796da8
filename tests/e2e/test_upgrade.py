"""Upgrading weir itself (SIGUSR2): the running master starts the executable at its own
path, as it is on disk now, on the same listening sockets; once the new master's workers
are ready the old one drains and exits. A new binary that fails leaves the old one serving.

The weir under test runs from a copy of the binary in the test's directory, so the test can
replace that file as an upgrade does (a rename over it: the running master's
/proc/self/exe then reads "... (deleted)"). Open-loop load runs across each upgrade:
`weir load` at a steady rate (kept-alive connections, reopened when the server closes an
idle one, as any HTTP client does) and a Python loop of fresh connections; both must see
zero failed requests and zero connection errors. The serving master is told by the
workers' ancestry: GET /pid gives a worker's pid, and its parent chain leads to its master.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_ready
from e2e_lib import APPS, Addr, Proc, free_port, get, open_files, pid_alive, sock_path, wait_for
from test_systemd import SOCKET_ACTIVATE, NotifySocket

RATE = 200  # weir load's requests/s
FRESH_RATE = 40  # the fresh-connection loop's requests/s


def install(src: Path, dst: Path):
    """Puts src at dst the way `install` or a package manager does: a new file renamed over
    the old one (the running binary keeps its inode)."""
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dst)


def install_script(dst: Path, text: str):
    tmp = dst.with_name(dst.name + ".new")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, dst)


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.append(pid)
    return out


def served_by(addr: Addr) -> list[int]:
    """The ancestors (zygote, master, ...) of the worker that answers GET /pid."""
    r = get(addr, "/pid", timeout=10)
    assert r.status == 200, r
    return ancestors(int(r.body))


def new_masters(proc: Proc) -> int:
    """How many new masters the old one logged starting so far."""
    return len(re.findall(r"as the new master \(pid (\d+)\)", proc.output()))


def new_master_pid(proc: Proc, after: int = 0) -> int:
    """The pid of a new master the old one logged starting (the first after `after`
    earlier ones); polls the log until it is there."""
    def found():
        pids = re.findall(r"as the new master \(pid (\d+)\)", proc.output())
        return int(pids[after]) if len(pids) > after else None
    return wait_for(found, 30, what="the old master's log of new master #%d" % (after + 1))


class Load:
    """`weir load` at RATE req/s, and a Python loop of fresh connections at FRESH_RATE,
    both for `seconds` (bounded in count and time)."""

    def __init__(self, weir_bin: Path, addr: Addr, tmp: Path, seconds: float):
        self.addr = addr
        self.seconds = seconds
        self.json = tmp / ("load-%d.json" % time.monotonic_ns())
        target = ("unix:%s:/pid" % addr.unix) if addr.unix else "http://%s:%d/pid" % (addr.host, addr.port)
        self.proc = subprocess.Popen(
            [str(weir_bin), "load", "--rate", str(RATE), "-d", "%ss" % seconds, "--timeout", "20s",
             "--max-lateness", "1s", "--quiet", "--no-progress", "--json", str(self.json), target],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.fresh_ok = 0
        self.fresh_errors: list = []
        self.thread = threading.Thread(target=self._fresh, daemon=True)
        self.thread.start()

    def _fresh(self):
        t0 = time.monotonic()
        for i in range(int(FRESH_RATE * self.seconds)):
            # Pacing of the schedule, not a wait for readiness.
            time.sleep(max(0.0, t0 + i / FRESH_RATE - time.monotonic()))
            if time.monotonic() - t0 > self.seconds + 10:
                break
            try:
                r = get(self.addr, "/pid", timeout=20)
                if r.status == 200:
                    self.fresh_ok += 1
                else:
                    self.fresh_errors.append(r)
            except Exception as e:  # a connection error is what the test looks for
                self.fresh_errors.append(repr(e))

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self) -> dict:
        out, _ = self.proc.communicate(timeout=self.seconds + 60)
        self.thread.join(timeout=self.seconds + 60)
        assert not self.thread.is_alive()
        assert self.proc.returncode == 0, out
        res = json.loads(self.json.read_text())
        return res

    def check(self):
        """Zero failed requests, zero connection errors, on both clients."""
        res = self.finish()
        summary = {k: res[k] for k in ("requests", "completed", "status", "errors", "errors_by_kind")}
        summary["reconnects"] = res["generator"]["reconnects"]
        # Whole in the report (an assertion message's dict is cut short): an error's kind
        # tells a reset at the handover from a refused connection.
        print("load: %r" % summary)
        assert res["errors"] == 0 and not res["errors_by_kind"], summary
        assert res["status"] == {"200": res["requests"]}, summary
        assert res["requests"] >= 0.9 * RATE * self.seconds, summary
        assert not self.fresh_errors, self.fresh_errors[:5]
        assert self.fresh_ok >= 0.9 * FRESH_RATE * self.seconds, self.fresh_ok
        return summary


def started(load: Load):
    """Waits until the load has been running for a while (the fresh loop counts)."""
    wait_for(lambda: load.fresh_ok >= 20, 30, what="the load running")


def weir_args(*extra) -> list:
    return ["serve", "--app", "conformance_app:application", "--chdir", str(APPS), "--workers", "2",
            "--access-log", "off", *extra]


@pytest.fixture
def weir_copy(weir_bin, tmp_path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    dst = d / "weir"
    install(weir_bin, dst)
    return dst


@pytest.mark.e2e_timeout(180)
def test_upgrade_under_load_fails_no_request(weir_bin, weir_copy, tmp_path, notify_socket):
    port, admin_port = free_port(), free_port()
    addr, admin = Addr("127.0.0.1", port), Addr("127.0.0.1", admin_port)
    old = Proc("weir", [weir_copy, *weir_args("--listen", "127.0.0.1:%d" % port,
                                              "--admin-listen", "127.0.0.1:%d" % admin_port)],
               tmp_path / "logs", cwd=tmp_path, env={"NOTIFY_SOCKET": notify_socket.path})
    new_pid = None
    try:
        wait_ready(old, addr, "/pid")
        notify_socket.wait_for("READY", "1")
        assert old.pid in served_by(addr)
        # The new version is installed over the running one.
        install(weir_bin, weir_copy)
        load = Load(weir_bin, addr, tmp_path, seconds=10)
        started(load)
        old.signal(signal.SIGUSR2)
        # The old master hands over and exits 0 while the load still runs.
        assert old.wait(60) == 0, old.describe()
        assert load.running(), "the load ended before the upgrade did: nothing was tested"
        new_pid = new_master_pid(old)
        assert pid_alive(new_pid)
        # systemd is told to follow the new master, and is not told the service stops.
        m = notify_socket.wait_for("MAINPID", str(new_pid), timeout=10)
        assert m.get("READY") == "1", m
        assert not [x for x in notify_socket.messages if "STOPPING" in x], notify_socket.messages
        # Every listener is the new master's now: the HTTP one answers from its workers,
        # the admin one from itself.
        lineage = served_by(addr)
        assert new_pid in lineage and old.pid not in lineage, (new_pid, lineage)
        assert get(admin, "/livez").status == 200
        # The new master's workers see none of the handover's variables, and hold none of
        # its listening sockets (only the master's copies lost close-on-exec).
        wpid = int(get(addr, "/pid").body)
        env = Path("/proc/%d/environ" % wpid).read_bytes().split(b"\0")
        assert not [e for e in env if e.startswith((b"LISTEN_", b"WEIR_UPGRADE_FD=", b"NOTIFY_SOCKET="))], env
        master_fds = open_files(new_pid)
        listening = {x for x in master_fds if x.startswith("socket:")}
        worker_fds = open_files(wpid, skip_stdio=True)
        inherited = {os.readlink("/proc/%d/fd/%d" % (new_pid, fd)) for fd in (3, 4)}
        assert inherited <= listening and not (worker_fds & inherited), (worker_fds, inherited)
        out = old.output()
        assert "handing over" in out and "the old master handed over" in out, out
        summary = load.check()
        print("load across the upgrade:", summary, "fresh connections:", load.fresh_ok)
        # The new master is a full master, and systemd hears from it now: it reloads on
        # SIGHUP, and drains on SIGTERM.
        os.kill(new_pid, signal.SIGHUP)
        notify_socket.wait_for("RELOADING", "1", timeout=30)
        notify_socket.wait_for("READY", "1", timeout=60)
        assert new_pid in served_by(addr)
        os.kill(new_pid, signal.SIGTERM)
        notify_socket.wait_for("STOPPING", "1", timeout=30)
        wait_for(lambda: not pid_alive(new_pid), 30, what="the new master's exit")
    finally:
        if new_pid and pid_alive(new_pid):
            os.kill(new_pid, signal.SIGKILL)
        old.stop()


@pytest.mark.e2e_timeout(180)
def test_repeated_upgrades_under_load_fail_no_request(weir_bin, weir_copy, tmp_path):
    """Five upgrades in a row under one load, each new master upgraded in turn: a request
    read by an old master as its drain began is still served by its workers."""
    port = free_port()
    addr = Addr("127.0.0.1", port)
    first = Proc("weir", [weir_copy, *weir_args("--listen", "127.0.0.1:%d" % port)], tmp_path / "logs",
                 cwd=tmp_path)
    masters = [first.pid]
    try:
        wait_ready(first, addr, "/pid")
        load = Load(weir_bin, addr, tmp_path, seconds=15)
        started(load)
        for k in range(5):
            install(weir_bin, weir_copy)
            os.kill(masters[-1], signal.SIGUSR2)
            masters.append(new_master_pid(first, after=k))
            prev = masters[-2]
            wait_for(lambda: not pid_alive(prev), 60, what="master %d (pid %d) handing over" % (k, prev))
        assert load.running(), "the load ended before the upgrades did: nothing was tested"
        assert masters[-1] in served_by(addr)
        print("five upgrades:", load.check(), "fresh connections:", load.fresh_ok)
        os.kill(masters[-1], signal.SIGTERM)
        wait_for(lambda: not pid_alive(masters[-1]), 30, what="the last master's exit")
    finally:
        for pid in masters[1:]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        first.stop()


@pytest.fixture
def notify_socket(short_tmp):
    p = short_tmp / ("notify-upg-%d.sock" % os.getpid())
    p.unlink(missing_ok=True)
    n = NotifySocket(p)
    yield n
    n.close()
    p.unlink(missing_ok=True)


def log_line(proc: Proc, pattern: str, timeout: float = 60) -> str:
    """Polls the process's output for a line matching pattern."""
    rx = re.compile(pattern)

    def found():
        for line in proc.output().splitlines():
            if rx.search(line):
                return line
        if not proc.alive:
            raise AssertionError("%s exited\n%s" % (proc.name, proc.describe()))
        return None
    return wait_for(found, timeout, what="log line %r" % pattern)


@pytest.mark.e2e_timeout(240)
def test_a_new_binary_that_fails_leaves_the_old_master_serving(weir_bin, weir_copy, tmp_path):
    port = free_port()
    addr = Addr("127.0.0.1", port)
    conf = tmp_path / "weir.toml"
    conf.write_text('[server]\nupgrade_timeout = "3s"\n')
    old = Proc("weir", [weir_copy, *weir_args("--listen", "127.0.0.1:%d" % port, "--config", conf)],
               tmp_path / "logs", cwd=tmp_path)
    try:
        wait_ready(old, addr, "/pid")
        load = Load(weir_bin, addr, tmp_path, seconds=12)
        started(load)

        # 1. It exits at once.
        install_script(weir_copy, "#!/bin/sh\necho 'new weir: refusing to start' >&2\nexit 1\n")
        old.signal(signal.SIGUSR2)
        line = log_line(old, r"upgrade failed: the new master \(pid \d+\) exited \(exit status: 1\)")
        assert "this master keeps serving" in line, line
        assert "new weir: refusing to start" in old.output()

        # 2. It cannot be executed (no #! and not an ELF file): execve's error is reported.
        install_script(weir_copy, "this is not a program\n")
        old.signal(signal.SIGUSR2)
        line = log_line(old, r"upgrade failed: cannot (start|run) .*: Exec format error")

        # 3. It never becomes ready: stopped after upgrade_timeout. A second SIGUSR2
        # meanwhile is ignored.
        install_script(weir_copy, "#!/bin/sh\nexec sleep 300\n")
        before = new_masters(old)
        old.signal(signal.SIGUSR2)
        stuck = new_master_pid(old, after=before)
        old.signal(signal.SIGUSR2)
        log_line(old, r"SIGUSR2 ignored: an upgrade is already in progress \(new master pid %d\)" % stuck)
        line = log_line(old, r"upgrade failed: the new master \(pid %d\) was not ready within 3s" % stuck)
        wait_for(lambda: not pid_alive(stuck), 20, what="the stuck new master stopped")

        # Through all of it, the old master served every request.
        assert old.alive
        assert old.pid in served_by(addr)
        load.check()

        # And a good binary still upgrades it afterwards.
        install(weir_bin, weir_copy)
        before = new_masters(old)
        old.signal(signal.SIGUSR2)
        assert old.wait(60) == 0, old.describe()
        new_pid = new_master_pid(old, after=before)
        try:
            assert new_pid in served_by(addr)
        finally:
            os.kill(new_pid, signal.SIGTERM)
            wait_for(lambda: not pid_alive(new_pid), 30, what="the new master's exit")
    finally:
        old.stop()


@pytest.mark.e2e_timeout(180)
def test_upgrade_with_unix_sockets(weir_bin, weir_copy, tmp_path, short_tmp, nginx):
    """HTTP and uwsgi listeners on Unix sockets: served across the upgrade, their files
    left in place by the old master and removed by the new one when it stops."""
    http_sock, uwsgi_sock = sock_path(short_tmp, "upg-http"), sock_path(short_tmp, "upg-uwsgi")
    addr = Addr(unix=http_sock)
    old = Proc("weir", [weir_copy, *weir_args("--listen", "unix:" + http_sock, "--uwsgi-listen", "unix:" + uwsgi_sock)],
               tmp_path / "logs", cwd=tmp_path)
    new_pid = third = None
    try:
        wait_ready(old, addr, "/pid")
        wait_for(lambda: os.path.exists(uwsgi_sock), 20, what="the uwsgi socket")
        n = nginx("unix:" + uwsgi_sock)
        assert get(n.addr, "/pid").status == 200
        install(weir_bin, weir_copy)
        load = Load(weir_bin, addr, tmp_path, seconds=8)
        started(load)
        old.signal(signal.SIGUSR2)
        assert old.wait(60) == 0, old.describe()
        assert load.running(), "the load ended before the upgrade did: nothing was tested"
        new_pid = new_master_pid(old)
        # The old master did not remove the files it handed over.
        assert os.path.exists(http_sock) and os.path.exists(uwsgi_sock)
        assert new_pid in served_by(addr)
        # nginx -> the uwsgi socket reaches the new master's workers.
        r = get(n.addr, "/pid")
        assert r.status == 200 and new_pid in ancestors(int(r.body)), r
        load.check()
        # The new master upgrades in turn (its log goes where the first one's went): the
        # files go over again, and the third master owns them.
        os.kill(new_pid, signal.SIGUSR2)
        third = new_master_pid(old, after=1)
        wait_for(lambda: not pid_alive(new_pid), 60, what="the second master's exit")
        assert os.path.exists(http_sock) and os.path.exists(uwsgi_sock)
        assert third in served_by(addr)
        os.kill(third, signal.SIGTERM)
        wait_for(lambda: not pid_alive(third), 30, what="the third master's exit")
        # The last master owned the files and removed them when it stopped.
        assert not os.path.exists(http_sock) and not os.path.exists(uwsgi_sock)
    finally:
        for pid in (new_pid, third):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        old.stop()


@pytest.mark.e2e_timeout(120)
def test_sigterm_during_an_upgrade_stops_both(weir_copy, tmp_path, short_tmp):
    """SIGTERM while the new master is not ready: the new master is stopped, the old one
    drains, exits 0 and removes its socket file (it never handed it over)."""
    http_sock = sock_path(short_tmp, "upg-term")
    addr = Addr(unix=http_sock)
    old = Proc("weir", [weir_copy, *weir_args("--listen", "unix:" + http_sock)], tmp_path / "logs", cwd=tmp_path)
    try:
        wait_ready(old, addr, "/pid")
        install_script(weir_copy, "#!/bin/sh\nexec sleep 300\n")
        old.signal(signal.SIGUSR2)
        stuck = new_master_pid(old)
        # SIGHUP during the upgrade is ignored (the new master reads the config itself).
        old.signal(signal.SIGHUP)
        log_line(old, r"SIGHUP ignored: an upgrade is in progress")
        old.signal(signal.SIGTERM)
        assert old.wait(30) == 0, old.describe()
        assert "stopping the new master (pid %d)" % stuck in old.output()
        assert not pid_alive(stuck)
        assert not os.path.exists(http_sock)
    finally:
        old.stop()


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate missing: scripts/install-deps.sh")
@pytest.mark.e2e_timeout(120)
def test_upgrade_under_socket_activation_leaves_systemds_socket_file(weir_bin, weir_copy, tmp_path, short_tmp):
    """A Unix socket systemd passed goes over to the new master like the others, and its
    file stays systemd's: no master removes it."""
    path = short_tmp / ("upg-act-%d.sock" % os.getpid())
    path.unlink(missing_ok=True)
    argv = [SOCKET_ACTIVATE, "-l", str(path), "--fdname=http", weir_copy, *weir_args()]
    old = Proc("weir", argv, tmp_path / "logs", cwd=tmp_path)
    new_pid = None
    try:
        wait_for(path.exists, 20, what="systemd-socket-activate's socket file")
        addr = Addr(unix=str(path))
        wait_ready(old, addr, "/pid")
        old.signal(signal.SIGUSR2)
        assert old.wait(60) == 0, old.describe()
        new_pid = new_master_pid(old)
        assert new_pid in served_by(addr)
        os.kill(new_pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(new_pid), 30, what="the new master's exit")
        assert path.exists(), "a master removed the socket file systemd made"
    finally:
        if new_pid and pid_alive(new_pid):
            os.kill(new_pid, signal.SIGKILL)
        old.stop()
        path.unlink(missing_ok=True)


def weir_children(master: int) -> dict[int, str]:
    """The master's descendants that run `weir worker` (workers and zygote): pid -> cmdline."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if " worker " in cmd and master in ancestors(int(d)):
            out[int(d)] = cmd
    return out


@pytest.mark.e2e_timeout(120)
@pytest.mark.parametrize("preload", ["off", "auto"])
def test_workers_run_the_masters_binary_after_the_file_is_replaced(weir_copy, tmp_path, preload):
    # Workers are started through /proc/self/exe: with a file at the path that could not
    # even run a worker, respawned workers (and, with preload, a new zygote after a SIGHUP
    # reload) still run the master's version; only SIGUSR2 changes it.
    port = free_port()
    addr = Addr("127.0.0.1", port)
    old = Proc("weir", [weir_copy, *weir_args("--listen", "127.0.0.1:%d" % port, "--preload", preload)],
               tmp_path / "logs", cwd=tmp_path)
    try:
        wait_ready(old, addr, "/pid")
        install_script(weir_copy, "#!/bin/sh\necho 'not weir' >&2\nexit 1\n")
        def worker_pids():
            # not the zygote (a child of the master running --zygote; its forks are workers)
            return {p for p, c in weir_children(old.pid).items()
                    if not ("--zygote" in c and ancestors(p)[:1] == [old.pid])}
        workers = worker_pids()
        assert len(workers) == 2, weir_children(old.pid)
        for p in workers:
            os.kill(p, signal.SIGKILL)

        def replaced(gone):
            now = worker_pids()
            return now if len(now) == 2 and now.isdisjoint(gone) else None
        new = wait_for(lambda: replaced(workers), 30, what="the killed workers replaced")
        old.signal(signal.SIGHUP)
        reloaded = wait_for(lambda: replaced(workers | new), 30, what="the reloaded workers")
        wait_for(lambda: get(addr, "/pid", timeout=10).status == 200, 30, what="an answer after the reload")
        for pid in (new | reloaded) & set(weir_children(old.pid)):
            exe = os.readlink("/proc/%d/exe" % pid)
            assert exe.endswith("(deleted)"), "worker %d runs %s, not the master's binary" % (pid, exe)
        assert "not weir" not in old.output()
    finally:
        old.stop()


@pytest.mark.e2e_timeout(120)
def test_upgrade_hands_over_the_tls_listener(weir_bin, weir_copy, tmp_path):
    # A TLS listener is handed over like the others (named `https`): the new master
    # serves HTTPS on the same socket with its own certificates.
    port, tls_port = free_port(), free_port()
    addr = Addr("127.0.0.1", port)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    conf = tmp_path / "weir.toml"
    conf.write_text('[server]\ntls_listen = ["127.0.0.1:%d"]\n\n[tls]\ncertificate = "%s"\nkey = "%s"\n'
                    % (tls_port, cert, key))
    old = Proc("weir", [weir_copy, *weir_args("--listen", "127.0.0.1:%d" % port, "--config", conf)],
               tmp_path / "logs", cwd=tmp_path)
    new_pid = None

    def https_pid():
        r = subprocess.run(["curl", "-sS", "--cacert", str(cert), "--max-time", "10",
                            "https://localhost:%d/pid" % tls_port, "--resolve", "localhost:%d:127.0.0.1" % tls_port],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)
    try:
        wait_ready(old, addr, "/pid")
        assert old.pid in ancestors(https_pid())
        install(weir_bin, weir_copy)
        old.signal(signal.SIGUSR2)
        assert old.wait(60) == 0, old.describe()
        new_pid = new_master_pid(old)
        lineage = ancestors(https_pid())
        assert new_pid in lineage and old.pid not in lineage, (new_pid, lineage)
    finally:
        if new_pid and pid_alive(new_pid):
            os.kill(new_pid, signal.SIGTERM)
            wait_for(lambda: not pid_alive(new_pid), 30, what="the new master's exit")
        old.stop()

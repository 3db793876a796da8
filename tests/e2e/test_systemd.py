"""systemd: readiness notification (Type=notify) and socket activation.

- A NOTIFY_SOCKET bound by the test (a Unix datagram socket, as systemd's) reads what weir
  says: READY=1 once the workers are ready, STATUS= lines, RELOADING=1 with MONOTONIC_USEC
  then READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM, WATCHDOG=1 with
  WATCHDOG_USEC.
- systemd-socket-activate (Debian's systemd package) starts weir on inherited sockets,
  named `http` and `uwsgi`.
- A restart under socket activation loses no connection: the test holds the listening
  socket (as systemd does), and requests sent while no weir runs are answered by the next.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import wait_ready
from e2e_lib import APPS, Addr, Proc, free_port, get, open_files, wait_for

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


class NotifySocket:
    """A Unix datagram socket in the role of systemd's notification socket."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict] = []

    def _read(self, timeout: float):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        msg = {}
        for line in data.decode().splitlines():
            k, _, v = line.partition("=")
            msg[k] = v
        self.messages.append(msg)
        return msg

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0) -> dict:
        """The next message (after those already read) that carries key (=value)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s=%s within %.0fs; got %r" % (key, value, timeout, self.messages))
            m = self._read(left)
            if m is not None and key in m and (value is None or m[key] == value):
                return m

    def close(self):
        self.sock.close()


def weir_argv(weir_bin, *extra):
    return [str(weir_bin), "serve", "--app", "conformance_app:application", "--chdir", str(APPS),
            "--workers", "2", *extra]


@pytest.fixture
def notify_socket(short_tmp):
    p = short_tmp / ("notify-%d.sock" % os.getpid())
    if p.exists():
        p.unlink()
    n = NotifySocket(p)
    yield n
    n.close()
    p.unlink(missing_ok=True)


@pytest.mark.e2e_timeout(120)
def test_notify_ready_reload_stopping(weir_bin, tmp_path, notify_socket):
    port = free_port()
    addr = Addr("127.0.0.1", port)
    proc = Proc("weir", weir_argv(weir_bin, "--listen", "127.0.0.1:%d" % port), tmp_path / "logs",
                cwd=tmp_path, env={"NOTIFY_SOCKET": notify_socket.path})
    try:
        ready = notify_socket.wait_for("READY", "1")
        # READY=1 comes once the workers are ready: the listener answers from a worker now,
        # and the status counts both workers.
        assert ready["STATUS"] == "workers: 0 busy, 2 idle; queue: 0", ready
        r = get(addr, "/pid")
        assert r.status == 200, r
        # The worker sees none of systemd's variables.
        env = Path("/proc/%d/environ" % int(r.body)).read_bytes().split(b"\0")
        assert not [e for e in env if e.startswith(b"NOTIFY_SOCKET=")], env

        proc.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0, reloading
        # CLOCK_MONOTONIC, as systemd compares it: close to Python's monotonic clock.
        assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
        again = notify_socket.wait_for("READY", "1")
        assert again["STATUS"].startswith("workers: "), again
        assert get(addr, "/").status == 200

        proc.signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING", "1")
        assert stopping["STATUS"].startswith("draining"), stopping
        assert proc.wait(30) == 0, proc.describe()
    finally:
        proc.stop()


@pytest.mark.e2e_timeout(60)
def test_notify_watchdog(weir_bin, tmp_path, notify_socket):
    port = free_port()
    proc = Proc("weir", weir_argv(weir_bin, "--listen", "127.0.0.1:%d" % port), tmp_path / "logs",
                cwd=tmp_path, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "400000"})
    try:
        notify_socket.wait_for("READY", "1")
        # Every half of WATCHDOG_USEC: several pings in a couple of seconds.
        t0 = time.monotonic()
        for _ in range(3):
            m = notify_socket.wait_for("WATCHDOG", "1", timeout=5)
            assert "STATUS" in m, m
        assert time.monotonic() - t0 < 3
    finally:
        proc.stop()


@pytest.mark.e2e_timeout(60)
def test_notify_watchdog_of_another_pid_is_ignored(weir_bin, tmp_path, notify_socket):
    """WATCHDOG_PID names the process the watchdog is for: not weir's pid, no pings."""
    port = free_port()
    proc = Proc("weir", weir_argv(weir_bin, "--listen", "127.0.0.1:%d" % port), tmp_path / "logs",
                cwd=tmp_path, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000",
                                   "WATCHDOG_PID": "1"})
    try:
        notify_socket.wait_for("READY", "1")
        # A sentinel after the interval: the first periodic message is a plain STATUS.
        m = notify_socket.wait_for("STATUS", timeout=10)
        assert "WATCHDOG" not in m, m
        assert not [x for x in notify_socket.messages if "WATCHDOG" in x], notify_socket.messages
    finally:
        proc.stop()


def _socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _holds_socket(pid: int, inode: int) -> bool:
    return "socket:[%d]" % inode in open_files(pid)


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate missing: scripts/install-deps.sh")
@pytest.mark.e2e_timeout(120)
def test_systemd_socket_activate_http_and_uwsgi(weir_bin, tmp_path, nginx, notify_socket):
    http_port, uwsgi_port = free_port(), free_port()
    argv = [SOCKET_ACTIVATE, "-l", "127.0.0.1:%d" % http_port, "-l", "127.0.0.1:%d" % uwsgi_port,
            "--fdname=http:uwsgi", "-E", "NOTIFY_SOCKET=" + notify_socket.path, *weir_argv(weir_bin)]
    # It passes its child only the variables it is told (-E), and LISTEN_*.
    proc = Proc("weir", argv, tmp_path / "logs", cwd=tmp_path)
    try:
        # systemd-socket-activate listens, and execs weir at the first connection (as its
        # own process: LISTEN_PID is its pid). That first request waits in the socket.
        addr = Addr("127.0.0.1", http_port)
        wait_for(lambda: socket.create_connection(("127.0.0.1", http_port), timeout=1).close() or True, 20,
                 what="systemd-socket-activate listening")
        r = wait_ready(proc, addr, "/pid")
        assert r.status == 200, r
        notify_socket.wait_for("READY", "1")
        # No default 127.0.0.1:8000 was added, and the log names the inherited listeners.
        out = proc.output()
        assert "http://127.0.0.1:%d" % http_port in out and "uwsgi://127.0.0.1:%d" % uwsgi_port in out, out
        assert "127.0.0.1:8000" not in out, out
        # The uwsgi-named socket speaks uwsgi: a real nginx uwsgi_passes to it.
        n = nginx("127.0.0.1:%d" % uwsgi_port)
        r = get(n.addr, "/environ?via=nginx")
        assert r.status == 200 and r.json()["environ"]["QUERY_STRING"] == "via=nginx", r
        # Workers inherit neither the listening sockets (close-on-exec) nor the variables.
        wpid = int(get(addr, "/pid").body)
        env = Path("/proc/%d/environ" % wpid).read_bytes().split(b"\0")
        assert not [e for e in env if e.startswith((b"LISTEN_", b"NOTIFY_SOCKET="))], env
        fds = open_files(wpid, skip_stdio=True)
        master_sockets = {os.readlink("/proc/%d/fd/%d" % (proc.pid, fd)) for fd in (3, 4)}
        assert all(s.startswith("socket:[") for s in master_sockets), master_sockets
        assert not (fds & master_sockets), (fds, master_sockets)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.describe()
    finally:
        proc.stop()


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate missing: scripts/install-deps.sh")
@pytest.mark.e2e_timeout(60)
def test_systemd_socket_activate_unix_socket(weir_bin, tmp_path, short_tmp):
    """An inherited Unix socket is served, and its file (systemd's) is left in place."""
    path = short_tmp / ("act-%d.sock" % os.getpid())
    path.unlink(missing_ok=True)
    argv = [SOCKET_ACTIVATE, "-l", str(path), "--fdname=http", *weir_argv(weir_bin)]
    proc = Proc("weir", argv, tmp_path / "logs", cwd=tmp_path)
    try:
        wait_for(path.exists, 20, what="systemd-socket-activate's socket file")
        r = wait_ready(proc, Addr(unix=str(path)), "/pid")
        assert r.status == 200, r
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.describe()
        assert path.exists(), "weir removed the inherited socket's file"
    finally:
        proc.stop()
        path.unlink(missing_ok=True)


def _start_on_fd(weir_bin, tmp_path, sock: socket.socket, name: str, extra=()):
    """weir on an inherited socket, as systemd starts it: the descriptor as 3, LISTEN_FDS=1
    and LISTEN_PID set to the pid weir runs as (bash execs into weir)."""
    fd = sock.fileno()
    script = ('exec 3<&%d; [ %d = 3 ] || exec %d<&-; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http; '
              'exec "$@"') % (fd, fd, fd)
    argv = ["bash", "-c", script, "weir", *weir_argv(weir_bin, *extra)]
    return Proc(name, argv, tmp_path / "logs", cwd=tmp_path, pass_fds=(fd,))


def _send_get(port: int, path: str) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    c.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
    return c


def _read_answer(c: socket.socket) -> bytes:
    data = b""
    while True:
        b = c.recv(65536)
        if not b:
            return data
        data += b


@pytest.mark.e2e_timeout(120)
def test_restart_under_socket_activation_loses_no_connection(weir_bin, tmp_path):
    """The test holds the listening socket as systemd does: while no weir runs, new
    connections wait in its backlog, and the next weir answers them all."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    addr = Addr("127.0.0.1", port)
    first = _start_on_fd(weir_bin, tmp_path, listener, "weir-first")
    try:
        wait_ready(first, addr, "/pid")
        # weir serves the socket it was given: it holds the very socket.
        assert _holds_socket(first.pid, _socket_inode(listener))
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.describe()
        # No weir now: these connections are accepted by the kernel into the backlog.
        waiting = [_send_get(port, "/pid") for _ in range(10)]
        second = _start_on_fd(weir_bin, tmp_path, listener, "weir-second")
        try:
            answers = [_read_answer(c) for c in waiting]
            for a in answers:
                assert a.startswith(b"HTTP/1.1 200 "), (a, second.describe())
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.describe()
        finally:
            second.stop()
            for c in waiting:
                c.close()
    finally:
        first.stop()
        listener.close()


@pytest.mark.e2e_timeout(60)
def test_inherited_socket_replaces_the_same_configured_address(weir_bin, tmp_path):
    """--listen names the inherited socket's address: weir serves the socket it was given
    instead of binding (which would fail: the address is in use)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    other = free_port()
    proc = _start_on_fd(weir_bin, tmp_path, listener, "weir",
                        extra=("--listen", "127.0.0.1:%d" % port, "--listen", "127.0.0.1:%d" % other))
    try:
        wait_ready(proc, Addr("127.0.0.1", port), "/pid")
        wait_ready(proc, Addr("127.0.0.1", other), "/pid")
        assert _holds_socket(proc.pid, _socket_inode(listener))
    finally:
        proc.stop()
        listener.close()


@pytest.mark.e2e_timeout(60)
def test_listen_pid_of_another_process_is_ignored(weir_bin, tmp_path):
    """LISTEN_PID that is not weir's pid: the descriptors are not weir's to take."""
    port = free_port()
    proc = Proc("weir", weir_argv(weir_bin, "--listen", "127.0.0.1:%d" % port), tmp_path / "logs",
                cwd=tmp_path, env={"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"})
    try:
        wait_ready(proc, Addr("127.0.0.1", port), "/pid")
    finally:
        proc.stop()

"""Helpers for weir's end-to-end tests: processes, free ports, HTTP clients, polling.

No fixed sleeps: everything that waits polls a condition under a deadline.
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APPS = HERE / "apps"


def pattern(n: int) -> bytes:
    """The same deterministic bytes as apps/conformance_app.pattern."""
    block = bytes((i * 7 + 3) % 251 for i in range(251))
    reps = n // len(block) + 1
    return (block * reps)[:n]


# Ports free_port handed out lately (in this process). The kernel may give the same free
# port to two bind(0) calls in a row, and a test that asks for two (a listener and an
# admin listener) then starts weir on one port twice, which weir refuses.
_RECENT_PORTS: "collections.deque[int]" = collections.deque(maxlen=4096)


def free_port() -> int:
    """A loopback TCP port nobody listens on now, not handed out lately by this function."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port
    raise RuntimeError("no fresh loopback port in 100 tries")


def sock_path(dir: Path, name: str) -> str:
    """A fresh socket path in dir (keep dir short: sun_path holds 108 bytes)."""
    for i in range(10_000):
        p = dir / ("%s-%d.sock" % (name, i))
        if not p.exists():
            return str(p)
    raise RuntimeError("no free socket name in %s" % dir)


def wait_for(cond: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls cond() until it returns a truthy value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # the condition may fail until it holds
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)" % (timeout, what, last_exc))
        time.sleep(interval)


_METRIC_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(admin: "Addr", name: str, **labels) -> Optional[float]:
    """The value of one series on weir's admin listener (GET /metrics), None if absent.

    A quick reader for polling (e.g. `weir_queue_depth`); tests/front/front_lib.py has the
    full Prometheus parser and its checks.
    """
    r = get(admin, "/metrics", timeout=5)
    if r.status != 200:
        raise AssertionError("GET /metrics on %s: %r" % (admin, r))
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        n, _, rest = series.partition("{")
        if n == name and dict(_METRIC_LABEL.findall(rest)) == labels:
            return float(value)
    return None


def open_files(pid: int, skip_stdio: bool = False) -> set[str]:
    """What a live process's file descriptors point at (readlink of /proc/PID/fd/N):
    "socket:[inode]", paths, pipes. A descriptor closed between listing the directory and
    reading its link is skipped: a process under load opens and closes them all along."""
    targets = set()
    for fd in Path("/proc/%d/fd" % pid).iterdir():
        if skip_stdio and fd.name in ("0", "1", "2"):
            continue
        try:
            targets.add(os.readlink(fd))
        except FileNotFoundError:
            pass
    return targets


def pid_alive(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def pgid_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


# ---------------------------------------------------------------------------------------
# Processes


ALL_PROCS: list["Proc"] = []


class Proc:
    """A child process in its own process group, its stdout/stderr captured to files."""

    def __init__(self, name: str, argv: list[str], logdir: Path, cwd: Optional[Path] = None,
                 env: Optional[dict] = None, pass_fds: tuple = ()):
        self.name = name
        self.argv = [str(a) for a in argv]
        logdir.mkdir(parents=True, exist_ok=True)
        n = sum(1 for p in ALL_PROCS if p.name == name)
        self.stdout_path = logdir / ("%s-%d.stdout" % (name, n))
        self.stderr_path = logdir / ("%s-%d.stderr" % (name, n))
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                      cwd=str(cwd) if cwd else None, env=full_env, start_new_session=True,
                                      pass_fds=pass_fds)
        self.pid = self.popen.pid
        ALL_PROCS.append(self)

    # -- state
    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.poll()

    def output(self) -> str:
        """stdout + stderr so far, as text."""
        parts = []
        for p in (self.stdout_path, self.stderr_path):
            try:
                parts.append(p.read_bytes().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def describe(self, tail_lines: int = 150) -> str:
        def tail(p):
            try:
                lines = p.read_bytes().decode("utf-8", "replace").splitlines()
            except OSError:
                return "<unreadable>"
            cut = len(lines) - tail_lines
            return ("[... %d lines cut ...]\n" % cut if cut > 0 else "") + "\n".join(lines[-tail_lines:])
        rc = self.returncode
        return "$ %s\n(pid %d, %s)\n--- stdout (%s)\n%s\n--- stderr (%s)\n%s\n" % (
            " ".join(self.argv), self.pid, "running" if rc is None else "exit status %s" % rc,
            self.stdout_path, tail(self.stdout_path), self.stderr_path, tail(self.stderr_path))

    # -- control
    def signal(self, sig: int):
        if self.alive:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, term_timeout: float = 15.0) -> Optional[int]:
        """SIGTERM, then SIGKILL to the whole process group after term_timeout. Idempotent."""
        if self.alive:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(term_timeout) is None:
                self._kill_group()
                self.wait(10)
        # Whatever the group leader left behind (workers of a crashed master) goes too.
        self._kill_group()
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass
        return self.returncode

    def _kill_group(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------------------------
# HTTP clients


@dataclass
class Resp:
    status: int
    reason: str
    headers: list  # [(name, value)] in order, as received
    body: bytes
    elapsed: float = 0.0

    def header(self, name: str) -> Optional[str]:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None

    def header_all(self, name: str) -> list:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self):
        b = self.body[:300]
        return "<Resp %d %s headers=%r body=%r%s>" % (self.status, self.reason, self.headers, b,
                                                     "..." if len(self.body) > 300 else "")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


@dataclass
class Addr:
    """Where a client connects: TCP host:port, or a Unix socket path."""
    host: str = "127.0.0.1"
    port: int = 0
    unix: Optional[str] = None

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        if self.unix:
            return UnixHTTPConnection(self.unix, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def socket(self, timeout: float = 30.0) -> socket.socket:
        if self.unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(self.unix)
            return s
        return socket.create_connection((self.host, self.port), timeout=timeout)

    @property
    def host_header(self) -> str:
        return "localhost" if self.unix else "%s:%d" % (self.host, self.port)

    def __str__(self):
        return "unix:" + self.unix if self.unix else "%s:%d" % (self.host, self.port)


def request(addr: Addr, method: str, path: str, body: Optional[bytes] = None, headers=(), timeout: float = 30.0,
            conn: Optional[http.client.HTTPConnection] = None) -> Resp:
    """One request; a new connection unless conn is given. headers: [(name, value)]."""
    own = conn is None
    c = conn or addr.connection(timeout)
    t0 = time.monotonic()
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        for k, v in hdrs:
            c.putheader(k, v)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, r.reason, list(r.getheaders()), data, time.monotonic() - t0)
    finally:
        if own:
            c.close()


def get(addr: Addr, path: str, **kw) -> Resp:
    return request(addr, "GET", path, **kw)


# -- raw sockets: for streaming, chunked uploads, HEAD, cut connections

@dataclass
class RawResp:
    status: int
    headers: list
    body: bytes
    complete: bool  # the body ended as its framing said (Content-Length reached / last chunk)
    framing: str  # "length", "chunked", "eof", "none"
    raw: bytes = b""

    def header(self, name):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None


def parse_head(data: bytes):
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    return status, headers, rest


def parse_response(data: bytes, head_request: bool = False) -> RawResp:
    """Parses one whole response read until EOF (Connection: close)."""
    if b"\r\n\r\n" not in data:
        raise ValueError("no complete response head in %r" % data[:200])
    status, headers, rest = parse_head(data)
    hmap = {k.lower(): v for k, v in headers}
    if head_request or status in (204, 304) or 100 <= status < 200:
        return RawResp(status, headers, rest, rest == b"", "none", data)
    te = hmap.get("transfer-encoding", "").lower()
    if "chunked" in te:
        body, complete = b"", False
        buf = rest
        while True:
            line, sep, after = buf.partition(b"\r\n")
            if not sep:
                break
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                break
            if size == 0:
                complete = True  # the last-chunk marker arrived: the server ended the body
                break
            if len(after) < size + 2:
                body += after[:size]
                break
            body += after[:size]
            buf = after[size + 2:]
        return RawResp(status, headers, body, complete, "chunked", data)
    if "content-length" in hmap:
        n = int(hmap["content-length"])
        return RawResp(status, headers, rest[:n], len(rest) >= n, "length", data)
    return RawResp(status, headers, rest, True, "eof", data)


def recv_all(sock: socket.socket, deadline: float) -> bytes:
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("response not finished before the deadline; got %r" % b"".join(chunks)[:500])
        sock.settimeout(remaining)
        try:
            c = sock.recv(65536)
        except ConnectionResetError:
            break
        if not c:
            break
        chunks.append(c)
    return b"".join(chunks)


def raw_exchange(addr: Addr, payload: bytes, timeout: float = 30.0, head_request: bool = False) -> RawResp:
    """Sends raw bytes (should carry Connection: close), reads until EOF, parses."""
    with addr.socket(timeout) as s:
        s.sendall(payload)
        data = recv_all(s, time.monotonic() + timeout)
    return parse_response(data, head_request)


# ---------------------------------------------------------------------------------------
# Load


@dataclass
class LoadResult:
    ok: int = 0
    failures: list = field(default_factory=list)  # (time, description)
    bodies: list = field(default_factory=list)  # (start time, body) of successes, when kept
    timed: list = field(default_factory=list)  # (start time, end time, body) of successes, when kept

    def summary(self) -> str:
        return "%d ok, %d failed; first failures: %r" % (self.ok, len(self.failures), self.failures[:10])


def run_load(addr: Addr, path: str, threads: int, stop: threading.Event, max_per_thread: int = 5000,
             max_seconds: float = 60.0, keep_bodies: bool = False, timeout: float = 30.0,
             ok: Callable[[Resp], bool] = lambda r: r.status == 200) -> tuple[LoadResult, list]:
    """Starts `threads` clients looping GET path until stop is set (or the bounds are hit).

    Returns (result, thread list); join the threads after setting stop. Bounded in count
    (max_per_thread) and time (max_seconds) whatever the caller does.
    """
    res = LoadResult()
    lock = threading.Lock()
    t_end = time.monotonic() + max_seconds

    def client():
        for _ in range(max_per_thread):
            if stop.is_set() or time.monotonic() > t_end:
                return
            now = time.monotonic()
            try:
                r = get(addr, path, timeout=timeout)
                good = ok(r)
                with lock:
                    if good:
                        res.ok += 1
                        if keep_bodies:
                            res.bodies.append((now, r.body))
                            res.timed.append((now, time.monotonic(), r.body))
                    else:
                        res.failures.append((now, "%d %s x-weir-error=%s body=%r" % (
                            r.status, r.reason, r.header("x-weir-error"), r.body[:200])))
            except Exception as e:
                with lock:
                    res.failures.append((now, repr(e)))

    ts = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    return res, ts

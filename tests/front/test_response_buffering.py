"""Bounded response buffering (issue 16, section 1): weir reads a worker's answer ahead of
a slow client into memory (`[server] response_buffer`, `response_buffers_total`), then an
unlinked temp file (`temp_path`, `max_temp_file_size`), then paces the worker by the client;
`[[route]] buffering = false` streams as the app yields with the worker held; `[server]
send_timeout` drops a client that takes nothing.

The app is apps/buffering_app.py. The master's memory is read from /proc/<pid>/status
(VmRSS); its temp files, unlinked at creation, are the "(deleted)" entries of
/proc/<pid>/fd.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from e2e_lib import Addr, free_port, get, metric_value, wait_for
from front_lib import FRONT_APPS

pytestmark = pytest.mark.e2e_timeout(180)

MIB = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def temp_files(pid: int, temp_dir: str = tempfile.gettempdir()) -> int:
    """The master's open unlinked files in the temp directory (its spilled answers; the
    default temp_path is the system's, TMPDIR or /tmp, as Python's)."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            if link.startswith(temp_dir.rstrip("/") + "/") and link.endswith("(deleted)"):
                n += 1
        except OSError:
            pass
    return n


def slow_socket(addr, path: str, rcvbuf: int = 16 * 1024) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((addr.host, addr.port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    return s


def read_head(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(4096)
        assert c, "closed before the head: %r" % data
        data += c
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class SlowReader:
    """Reads an answer at `rate` bytes/s with a small receive buffer, for `hold` seconds
    (or to its end), on its own thread."""

    def __init__(self, addr, path: str, rate: int, hold: float):
        self.s = slow_socket(addr, path)
        self.rate, self.hold = rate, hold
        self.head = None
        self.got = 0
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            head, rest = read_head(self.s)
            self.head = head
            self.got = len(rest)
            t0 = time.monotonic()
            step = 0.1
            while time.monotonic() - t0 < self.hold:
                want = int(self.rate * step)
                while want > 0:
                    c = self.s.recv(min(want, 4096))
                    if not c:
                        return
                    self.got += len(c)
                    want -= len(c)
                time.sleep(step)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.s.close()


def start(weir, tmp_path, config=None, workers=4):
    state = tmp_path / "bufstate"
    state.mkdir(exist_ok=True)
    log = tmp_path / "access.log"
    cfg = {"server": {"access_log": str(log)}}
    for k, v in (config or {}).items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    srv = weir(app="buffering_app:application", chdir=FRONT_APPS, workers=workers, config=cfg,
               env={"BUF_STATE": str(state)}, ready_path="/hello")
    return srv, state, log


def log_lines(log: Path) -> list:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_slow_clients_of_large_answers_bounded_memory_workers_freed_temp_files_gone(weir, tmp_path):
    """The issue's test, with the defaults (no buffering keys): 24 clients reading 32 MiB
    answers at 40 KiB/s with 4 workers; /hello meanwhile answered 200 in under 500 ms each;
    the master's RSS under 256 MiB; the temp files gone with the answers."""
    srv, _, _ = start(weir, tmp_path)
    pid = srv.proc.pid
    base = rss_mib(pid)
    readers = [SlowReader(srv.addr, "/big?mib=32", rate=40 * 1024, hold=9.0) for _ in range(24)]
    # The 24 answers start (768 MiB for 4 workers: the queue drains in about a second);
    # then, while the slow clients hold them, /hello must find a free worker at once.
    t0 = time.monotonic()
    wait_for(lambda: all(rd.head is not None or rd.error for rd in readers), 30, what="the 24 answers' heads")
    ramp = time.monotonic() - t0
    lat, rss, files = [], [], []
    end = time.monotonic() + 6.0
    while time.monotonic() < end:
        t0 = time.monotonic()
        r = get(srv.addr, "/hello", timeout=10)
        lat.append(time.monotonic() - t0)
        assert r.status == 200 and r.body == b"hello", r
        rss.append(rss_mib(pid))
        files.append(temp_files(pid))
        time.sleep(0.1)
    for rd in readers:
        rd.thread.join(30)
    for rd in readers:
        assert rd.error is None, rd.error
        assert rd.head is not None and rd.head.startswith(b"HTTP/1.1 200"), rd.head
        assert rd.got > 100 * 1024, "a slow reader got only %d bytes" % rd.got
    print("buffering: master RSS %.0f MiB at start, max %.0f MiB while 24 slow clients held 32 MiB answers "
          "(heads within %.2fs); /hello max %.0f ms over %d fetches; temp files max %d"
          % (base, max(rss), ramp, max(lat) * 1e3, len(lat), max(files)))
    assert max(lat) < 0.5, "a /hello took %.0f ms while slow clients held large answers" % (max(lat) * 1e3)
    assert max(rss) < 256, "the master's RSS reached %.0f MiB" % max(rss)
    assert max(files) > 0, "no answer was spilled to a temp file"
    # The clients closed: their answers, memory and temp files are gone.
    wait_for(lambda: temp_files(pid) == 0, 10, what="the temp files closed")
    assert get(srv.addr, "/hello", timeout=10).status == 200


def test_buffering_false_streams_as_produced_and_holds_the_worker_until_the_client_reads(weir, tmp_path):
    srv, state, _ = start(weir, tmp_path, config={"route": [{"path": "/unbuf", "buffering": False}]}, workers=2)
    size, n = 256 * 1024, 64  # 16 MiB
    # Buffered (the default): the worker finishes although the client reads nothing.
    b = slow_socket(srv.addr, "/gen?n=%d&size=%d&tag=b" % (n, size))
    read_head(b)
    wait_for(lambda: (state / "b.done").exists(), 20, what="the buffered answer's worker to finish")
    # Unbuffered: the worker can run ahead only by the socket buffers and a few chunks.
    u = slow_socket(srv.addr, "/unbuf/gen?n=%d&size=%d&tag=u" % (n, size))
    _, early = read_head(u)
    time.sleep(2.0)
    progress = (state / "u.progress").read_text().split() if (state / "u.progress").exists() else []
    assert not (state / "u.done").exists(), "the unbuffered answer's worker finished while its client read nothing"
    assert len(progress) < n // 2, "the worker yielded %d of %d chunks to a client that read nothing" % (len(progress), n)
    # The client reads: the worker goes on, and the whole answer arrives (chunked).
    u.settimeout(30)
    got, tail = len(early), early[-16:]
    while not tail.endswith(b"\r\n0\r\n\r\n"):
        c = u.recv(1 << 16)
        assert c, "closed after %d bytes" % got
        got += len(c)
        tail = (tail + c)[-16:]
    wait_for(lambda: (state / "u.done").exists(), 20, what="the unbuffered answer's worker to finish")
    assert got >= n * size, got
    u.close()
    b.close()
    # Chunks arrive as the app yields them.
    s = slow_socket(srv.addr, "/unbuf/gen?n=3&size=10&delay=0.6&tag=t")
    t0 = time.monotonic()
    head, rest = read_head(s)
    while b"y" * 10 not in rest:
        rest += s.recv(4096)
    first = time.monotonic() - t0
    s.close()
    assert first < 0.5, "the first chunk came after %.2fs" % first


def test_send_timeout_drops_a_client_that_takes_nothing_and_frees_its_temp_file(weir, tmp_path):
    admin = Addr("127.0.0.1", free_port())
    srv, _, log = start(weir, tmp_path, config={"server": {"send_timeout": "1s"},
                                                "admin": {"listen": "%s:%d" % (admin.host, admin.port)}},
                        workers=1)
    pid = srv.proc.pid
    s = slow_socket(srv.addr, "/big?mib=32&tag=stuck")
    t0 = time.monotonic()
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head
    wait_for(lambda: temp_files(pid) > 0, 10, what="the answer to spill to a temp file")
    # /metrics shows the spool while it holds the answer (read before send_timeout fires:
    # the file is there for about a second, the counter stays).
    files_seen = metric_value(admin, "weir_response_buffer_temp_files")
    # Reading nothing: dropped about a second after its buffers filled, the file freed.
    wait_for(lambda: temp_files(pid) == 0, 10, what="the temp file freed after send_timeout")
    assert files_seen in (0, 1), files_seen
    assert metric_value(admin, "weir_response_buffer_spilled_bytes_total") > 0
    wait_for(lambda: metric_value(admin, "weir_response_buffer_temp_files") == 0
             and metric_value(admin, "weir_response_buffer_memory_bytes") == 0, 10,
             what="the spool's gauges back to zero")
    dropped = time.monotonic() - t0
    got = len(rest)
    try:
        while True:
            c = s.recv(1 << 16)
            if not c:
                break
            got += len(c)
    except ConnectionResetError:
        pass
    s.close()
    assert got < 32 * MIB, "the whole answer arrived: the client was not dropped"
    assert dropped < 6, dropped
    wait_for(lambda: any(e.get("path") == "/big" for e in log_lines(log)), 10, what="the log line")
    line = [e for e in log_lines(log) if e.get("path") == "/big"][-1]
    assert line["error"] == "client-timeout", line
    assert line.get("aborted") is True, line
    # The worker was not held, and weir goes on serving.
    assert get(srv.addr, "/hello", timeout=10).status == 200

"""Slow clients cannot hold connections (slowloris): a head that takes longer than
`[server] client_header_timeout` to arrive gets the connection dropped (or a 408), it
never reaches a worker, and normal clients are served at full speed meanwhile.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from front_lib import closed_by_peer, get

pytestmark = pytest.mark.e2e_timeout(90)


class Loris:
    """Sends a request head one byte every `interval` seconds, on its own thread, until the
    server closes the connection or the head is complete."""

    def __init__(self, addr, tag: str, interval: float = 0.2):
        self.head = ("GET /env?tag=%s HTTP/1.1\r\nHost: x\r\nX-Slow: %s\r\n\r\n" % (tag, "s" * 60)).encode()
        self.sock = addr.socket(30)
        self.started = time.monotonic()
        self.closed_at = None
        self.sent = 0
        self.answer = b""
        self.interval = interval
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            for i in range(len(self.head)):
                self.sock.sendall(self.head[i:i + 1])
                self.sent += 1
                # a close shows up as EOF/reset on a read; poll for it between bytes
                self.sock.settimeout(self.interval)
                try:
                    c = self.sock.recv(4096)
                    if not c:
                        break
                    self.answer += c
                except socket.timeout:
                    pass
            else:
                closed, data = closed_by_peer(self.sock, time.monotonic() + 15)
                self.answer += data
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.closed_at = time.monotonic()
            self.sock.close()

    @property
    def lasted(self):
        return (self.closed_at or time.monotonic()) - self.started


def test_slowloris_dropped_after_client_header_timeout_normal_clients_served(front):
    f = front(config={"server": {"client_header_timeout": "1s"}}, workers=2)
    lorises = [Loris(f.addr, "loris%d" % i) for i in range(30)]
    # meanwhile, normal clients: each request answered at once
    lat = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        t0 = time.monotonic()
        r = get(f.addr, "/env?tag=normal", timeout=10)
        lat.append(time.monotonic() - t0)
        assert r.status == 200, r
    for lo in lorises:
        lo.thread.join(20)
    assert max(lat) < 1.0, "a normal request took %.3fs during the slowloris" % max(lat)
    for lo in lorises:
        assert lo.closed_at is not None, "a slow client is still connected"
        assert lo.sent < len(lo.head), "a slow client finished its head (%d bytes in %.1fs)" % (lo.sent, lo.lasted)
        assert 0.8 <= lo.lasted < 3.5, "a slow client was dropped after %.2fs (client_header_timeout 1s)" % lo.lasted
        if lo.answer:
            assert lo.answer.startswith(b"HTTP/1.1 408"), lo.answer[:200]
    assert f.tags() == {"normal"}, f.tags()


def test_connection_that_sends_nothing_is_closed(front):
    """NGINX closes a connection that sends no request within client_header_timeout."""
    f = front(config={"server": {"client_header_timeout": "1s"}}, workers=1)
    with f.addr.socket(10) as s:
        t0 = time.monotonic()
        closed, data = closed_by_peer(s, time.monotonic() + 6)
        took = time.monotonic() - t0
    assert closed, "a silent connection is still open after 6s (client_header_timeout 1s)"
    assert took < 3.5, took
    assert not data or data.startswith(b"HTTP/1.1 408"), data[:200]


def test_idle_keepalive_connection_is_closed(front):
    """After a request, a keep-alive connection that stays silent does not stay open
    for ever (keepalive_timeout)."""
    f = front(config={"server": {"keepalive_timeout": "1s"}}, workers=1)
    with f.addr.socket(10) as s:
        s.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        closed, data = closed_by_peer(s, time.monotonic() + 8)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert closed, "an idle keep-alive connection is still open after 8s"
    assert time.monotonic() - t0 < 8


def test_head_slower_than_timeout_but_each_byte_quick_still_dropped(front):
    """The timeout bounds the whole head, not the gap between bytes: 0.1 s per byte is
    well under 1 s, yet the head takes far longer than 1 s."""
    f = front(config={"server": {"client_header_timeout": "1s"}}, workers=1)
    lo = Loris(f.addr, "steady", interval=0.1)
    lo.thread.join(20)
    assert lo.sent < len(lo.head), "the head was accepted after %.1fs" % lo.lasted
    assert lo.lasted < 3.5, lo.lasted
    assert "steady" not in f.tags()

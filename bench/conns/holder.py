"""Holds many idle client connections open against one server, for bench/conns/run.sh.

    python3 holder.py HOST PORT KEEPALIVE SLOWLORIS STATUS_FILE [HOLD_S]

KEEPALIVE connections each send one `GET /hello` (HTTP/1.1, keep-alive), read its whole
answer, then stay open and idle. SLOWLORIS connections each send a partial request head
(`GET /hello HTTP/1.1`, `Host`, one header line cut in the middle, no blank line) and send
nothing more: they stay open until the server's header timeout drops them. Connections are
opened at most CONCURRENCY (env, default 256) at a time, so the listen backlog is never the
limit; the opening phase is bounded by OPEN_TIMEOUT (env, default 90 s).

When all are open (or have failed), one line goes to STATUS_FILE:
    READY keepalive_ok=N slowloris_ok=N failed=N open_s=S [answers=STATUS:N,...]
(`answers`: the keep-alive connections that failed because their answer was not a 200,
by status: a server's refusals, 503 say, as against errors.)
Then it watches every connection: one the server closes is counted. It ends on SIGTERM or
SIGINT, or after HOLD_S seconds (default 300), appending
    END open=N closed_by_server=N
and closing every socket with SO_LINGER 0 (a reset: no TIME_WAIT left to use up the ports
of the next server's run). One process, one thread, selectors (epoll); the soft
RLIMIT_NOFILE is raised to the hard limit.
"""

import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

HOST, PORT = sys.argv[1], int(sys.argv[2])
N_KA, N_SLOW = int(sys.argv[3]), int(sys.argv[4])
STATUS = sys.argv[5]
HOLD_S = float(sys.argv[6]) if len(sys.argv) > 6 else 300.0
CONCURRENCY = int(os.environ.get("CONCURRENCY", "256"))
OPEN_TIMEOUT = float(os.environ.get("OPEN_TIMEOUT", "90"))

KA_REQ = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: weir-bench-holder\r\n\r\n"
SLOW_REQ = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: weir-bench-holder\r\nX-Slow: a"
LINGER0 = struct.pack("ii", 1, 0)
# statuses other than 200, and how many answers had each
NOT_OK: dict = {}

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
need = N_KA + N_SLOW + 64
if need > resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
    sys.exit("holder: RLIMIT_NOFILE %d is below the %d descriptors needed" % (
        resource.getrlimit(resource.RLIMIT_NOFILE)[0], need))

stop = False


def on_signal(_sig, _frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

sel = selectors.DefaultSelector()


class Conn:
    __slots__ = ("sock", "kind", "state", "buf", "sent")

    def __init__(self, kind):
        self.kind = kind  # "ka" or "slow"
        self.state = "connecting"
        self.buf = b""
        self.sent = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        err = self.sock.connect_ex((HOST, PORT))
        if err not in (0, 115):  # EINPROGRESS
            raise OSError(err, os.strerror(err))
        sel.register(self.sock, selectors.EVENT_WRITE, self)


def answer_complete(buf: bytes) -> bool:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].decode("latin-1").lower()
    length = 0
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip() == "content-length":
            length = int(v.strip())
    return len(buf) - end - 4 >= length


def close(c: Conn):
    try:
        sel.unregister(c.sock)
    except (KeyError, ValueError):
        pass
    c.sock.close()


def step(c: Conn, events: int) -> str:
    """Advances one connection; returns its state ("held" once idle, "failed", or busy)."""
    try:
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return "failed"
            c.state = "sending"
        if c.state == "sending":
            req = KA_REQ if c.kind == "ka" else SLOW_REQ
            c.sent += c.sock.send(req[c.sent:])
            if c.sent < len(req):
                return "sending"
            if c.kind == "slow":
                c.state = "held"
                sel.modify(c.sock, selectors.EVENT_READ, c)
                return "held"
            c.state = "reading"
            sel.modify(c.sock, selectors.EVENT_READ, c)
            return "reading"
        if c.state == "reading" and events & selectors.EVENT_READ:
            data = c.sock.recv(65536)
            if not data:
                return "failed"
            c.buf += data
            if answer_complete(c.buf):
                if not c.buf.startswith(b"HTTP/1.1 200"):
                    status = c.buf[9:12].decode("ascii", "replace")
                    NOT_OK[status] = NOT_OK.get(status, 0) + 1
                    return "failed"
                c.buf = b""
                c.state = "held"
                return "held"
            return "reading"
    except (BlockingIOError, InterruptedError):
        return c.state
    except OSError:
        return "failed"
    return c.state


def main() -> int:
    t0 = time.monotonic()
    todo = ["ka"] * N_KA + ["slow"] * N_SLOW
    todo.reverse()
    busy, held, failed = 0, [], 0
    ok = {"ka": 0, "slow": 0}
    deadline = t0 + OPEN_TIMEOUT
    while (todo or busy) and not stop and time.monotonic() < deadline:
        while todo and busy < CONCURRENCY:
            kind = todo.pop()
            try:
                Conn(kind)
                busy += 1
            except OSError:
                failed += 1
        for key, ev in sel.select(timeout=0.5):
            c = key.data
            if c.state == "held":
                continue
            st = step(c, ev)
            if st == "held":
                busy -= 1
                held.append(c)
                ok[c.kind] += 1
            elif st == "failed":
                busy -= 1
                failed += 1
                close(c)
    # whatever is still opening at the deadline counts as failed
    for key in list(sel.get_map().values()):
        c = key.data
        if c.state != "held":
            failed += 1
            close(c)
    open_s = time.monotonic() - t0
    with open(STATUS, "a") as f:
        answers = ",".join("%s:%d" % kv for kv in sorted(NOT_OK.items()))
        f.write("READY keepalive_ok=%d slowloris_ok=%d failed=%d open_s=%.1f%s\n"
                % (ok["ka"], ok["slow"], failed + len(todo), open_s,
                   (" answers=" + answers) if answers else ""))
    # hold: count what the server closes (EOF or reset); a keep-alive answer never comes
    closed = 0
    end = t0 + HOLD_S
    while not stop and time.monotonic() < end:
        for key, _ev in sel.select(timeout=0.5):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                closed += 1
                close(c)
    still = len(sel.get_map())
    with open(STATUS, "a") as f:
        f.write("END open=%d closed_by_server=%d\n" % (still, closed))
    for key in list(sel.get_map().values()):
        close(key.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The access log: one JSON line per request (`[server] access_log`: a file, stdout,
stderr or off) with time, id, client, method, path, status, error (weir's class or null),
bytes, queue_ms, worker_ms, send_ms, total_ms, and aborted when the body was cut.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from e2e_lib import get, parse_response, request
from front_lib import Background, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(60)

FIELDS = {"time": str, "id": str, "client": (str, type(None)), "method": str, "path": str, "status": int,
          "error": (str, type(None)), "bytes": int, "queue_ms": (int, float), "worker_ms": (int, float),
          "send_ms": (int, float), "total_ms": (int, float)}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def read_log(path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise AssertionError("access log line %d is not JSON (%s): %r" % (n, e, line))
    return out


def lines_for(path, ids, timeout=10.0):
    """Waits for the lines of these request ids; returns {id: line}."""
    ids = list(ids)

    def have():
        by_id = {x["id"]: x for x in read_log(path)}
        return by_id if all(i in by_id for i in ids) else None
    return wait_for(have, timeout, what="access log lines for %r" % ids)


def check_line(x, r, t0, t1, method, path, error=None, client="127.0.0.1"):
    for k, ty in FIELDS.items():
        assert k in x, "field %r missing: %r" % (k, x)
        assert isinstance(x[k], ty) and not isinstance(x[k], bool), "field %r is %r: %r" % (k, type(x[k]), x)
    assert RFC3339.match(x["time"]), x["time"]
    when = datetime.fromisoformat(x["time"].replace("Z", "+00:00")).timestamp()
    assert t0 - 1 <= when <= t1 + 1, "time %s is not when the request arrived" % x["time"]
    assert x["id"] == r.header("x-request-id"), (x, r.headers)
    assert x["client"] == client, x
    assert x["method"] == method and x["path"] == path, x
    assert x["status"] == r.status, (x, r)
    assert x["error"] == error, x
    assert x["bytes"] == len(r.body), (x, len(r.body))
    for k in ("queue_ms", "worker_ms", "send_ms", "total_ms"):
        assert x[k] >= 0, x
    assert x["total_ms"] + 0.01 >= x["queue_ms"] + x["worker_ms"], x
    assert x["total_ms"] <= (t1 - t0) * 1000 + 50, "total_ms %.1f but the client waited %.1f ms" % (
        x["total_ms"], (t1 - t0) * 1000)
    assert not x.get("aborted"), x


def timed(fn, *a, **kw):
    t0 = time.time()
    r = fn(*a, **kw)
    return r, t0, time.time()


def test_lines_are_json_with_every_field(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log), "max_body_size": "1KiB"}, "app": {"harakiri": 1}},
              workers=2)
    cases = []
    cases.append((timed(get, f.addr, "/env?x=1&y=2", timeout=10), "GET", "/env", None))
    cases.append((timed(get, f.addr, "/no/such/thing", timeout=10), "GET", "/no/such/thing", None))
    cases.append((timed(request, f.addr, "POST", "/echo", body=b"z" * 100, timeout=10), "POST", "/echo", None))
    cases.append((timed(request, f.addr, "PUT", "/echo", body=b"z" * 4096, timeout=10), "PUT", "/echo",
                  "body-too-large"))
    cases.append((timed(get, f.addr, "/sleep?s=10", timeout=15), "GET", "/sleep", "harakiri"))
    cases.append((timed(request, f.addr, "HEAD", "/env", timeout=10), "HEAD", "/env", None))
    statuses = [c[0][0].status for c in cases]
    assert statuses == [200, 404, 200, 413, 504, 200], statuses
    by_id = lines_for(log, [c[0][0].header("x-request-id") for c in cases])
    for (r, t0, t1), method, path, error in cases:
        check_line(by_id[r.header("x-request-id")], r, t0, t1, method, path, error)
    hk = by_id[cases[4][0][0].header("x-request-id")]
    assert 900 <= hk["worker_ms"] < 3000, "the harakiri'd request spent about 1 s in the worker: %r" % hk


def test_queue_ms_and_worker_ms_are_where_the_time_went(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    a = Background(f.addr, "/sleep?s=1&tag=a")
    wait_tag_started(f.state, "a")
    b = get(f.addr, "/env?tag=b", timeout=10)
    ra = a.join()
    by_id = lines_for(log, [ra.header("x-request-id"), b.header("x-request-id")])
    la, lb = by_id[ra.header("x-request-id")], by_id[b.header("x-request-id")]
    assert la["queue_ms"] < 100 and 900 <= la["worker_ms"] < 2000, la
    assert 500 <= lb["queue_ms"] < 2000 and lb["worker_ms"] < 200, lb


def test_streamed_body_send_ms_and_bytes(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    r = get(f.addr, "/stream?n=8&size=1000&delay=0.1", timeout=15)
    assert r.status == 200 and len(r.body) == 8000, r
    x = lines_for(log, [r.header("x-request-id")])[r.header("x-request-id")]
    assert x["bytes"] == 8000, x
    assert x["send_ms"] >= 600, "the body took about 0.8 s to stream: %r" % x
    assert not x.get("aborted"), x


def test_streamed_body_with_content_length_is_complete(front, tmp_path):
    # hyper stops polling a body once its Content-Length is written, so the worker's end
    # marker may never be read: all the bytes out is a complete answer, not an aborted one.
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    rids = []
    for _ in range(3):
        r = get(f.addr, "/stream?n=4&size=5000&delay=0.05&length=1", timeout=15)
        assert r.status == 200 and len(r.body) == 20000 and r.header("content-length") == "20000", r
        rids.append(r.header("x-request-id"))
    by_id = lines_for(log, rids, timeout=15)
    for rid in rids:
        x = by_id[rid]
        assert x["bytes"] == 20000 and x["status"] == 200, x
        assert not x.get("aborted"), x


def test_cut_body_is_logged_as_aborted(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    with f.addr.socket(10) as s:
        s.sendall(b"GET /stream?n=50&size=1000&delay=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        rid = re.search(rb"x-request-id: (\S+)", got, re.I).group(1).decode()
    x = lines_for(log, [rid], timeout=15)[rid]
    assert x.get("aborted") is True, x
    assert x["bytes"] < 50000 and x["status"] == 200, x


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_gate_refusals_log_the_body_bytes_sent(front, tmp_path, method):
    """The framing gate's own answers have a body (none for HEAD): the line's bytes is
    what was sent, as for every other answer."""
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    cases = [
        (b"%s /env HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Length: 1\r\n"
         b"Content-Length: 2\r\n\r\nab" % method.encode(), 400, "bad-request"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "method-not-allowed"),
        (b"%s /env HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
         % method.encode(), 501, "not-implemented"),
    ]
    for payload, status, cls in cases:
        with f.addr.socket(10) as s:
            s.sendall(payload)
            data = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
        r = parse_response(data, head_request=payload.startswith(b"HEAD"))
        assert r.status == status, r
        rid = r.header("x-request-id")
        x = lines_for(log, [rid])[rid]
        assert x["status"] == status and x["error"] == cls, x
        assert x["bytes"] == len(r.body), (x, r)
        if not payload.startswith(b"HEAD"):
            assert x["bytes"] > 0, x
        assert not x.get("aborted"), x


def test_app_exception_class_is_logged(front, tmp_path):
    """The error contract (docs/errors.md): weir's error class is in the access log as in x-weir-error."""
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    r = get(f.addr, "/boom", timeout=10)
    assert r.status == 500 and r.header("x-weir-error") == "app-exception", r
    x = lines_for(log, [r.header("x-request-id")])[r.header("x-request-id")]
    assert x["error"] == "app-exception", x


def test_odd_paths_stay_valid_json(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, workers=1)
    for raw in (b'/a"b/env', b"/a\\b/env", b"/%22%5C%00/env", b"/caf\xc3\xa9/env", b"/a\x7fb/env", b"/{x}|^`/env"):
        with f.addr.socket(10) as s:
            s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
    assert get(f.addr, "/env?tag=last", timeout=10).status == 200
    wait_for(lambda: any(x["path"] == "/env" for x in read_log(log)), 10, what="the last line")
    lines = read_log(log)  # every line parses, or read_log fails
    assert len(lines) >= 2, lines


def test_unix_listener_client_is_null(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"access_log": str(log)}}, listen="unix")
    r = get(f.addr, "/env", timeout=10)
    x = lines_for(log, [r.header("x-request-id")])[r.header("x-request-id")]
    assert x["client"] is None, x


@pytest.mark.parametrize("where", ["default", "stdout", "stderr", "off"])
def test_access_log_destinations(front, where):
    config = {} if where == "default" else {"server": {"access_log": where}}
    f = front(config=config, workers=1, admin=True)
    rid = get(f.addr, "/env?tag=dest", timeout=10).header("x-request-id")

    def stream(path):
        return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    out, err = f.proc.stdout_path, f.proc.stderr_path
    if where == "off":
        # weir counts a request in its metrics at the moment it would write its line (the
        # readiness GET / and ours: two 200s), and a later request (a 202 sentinel) is
        # counted after that: by then a line for ours would be there.
        f.wait_metric("weir_requests_total", lambda v: v >= 2, status="200", **{"class": ""})
        assert get(f.addr, "/status?code=202&tag=sentinel", timeout=10).status == 202
        f.wait_metric("weir_requests_total", 1, status="202", **{"class": ""})
        assert not any(rid in x for x in (out.read_text(), err.read_text())), "access_log = off still logs"
        return
    target = err if where == "stderr" else out
    wait_for(lambda: any(x.get("id") == rid for x in stream(target)), 10, what="the line on %s" % where)
    other = out if target is err else err
    assert rid not in other.read_text()


def test_a_buffered_log_writes_on_its_flush_timer(front, tmp_path):
    """`access_log_buffer` (NGINX's `access_log ... buffer=`): lines wait in memory and
    are written together, at the latest `access_log_flush` after they came."""
    log = tmp_path / "access.log"
    f = front(config={"server": {"access_log": str(log), "access_log_buffer": "64KiB",
                                 "access_log_flush": "200ms"}}, workers=1)
    ids = [get(f.addr, "/env?tag=b%d" % i, timeout=10).header("x-request-id") for i in range(20)]
    lines_for(log, ids, timeout=10)
    assert [x["id"] for x in read_log(log) if x["id"] in ids] == ids, "lines out of order"


def test_a_buffered_log_loses_no_line_when_weir_stops(front, tmp_path):
    """With a flush interval longer than the test, nothing is written while weir runs
    (the buffer holds it), and every line is written when weir stops on SIGTERM."""
    log = tmp_path / "access.log"
    f = front(config={"server": {"access_log": str(log), "access_log_buffer": "64KiB",
                                 "access_log_flush": "10m"}}, workers=1)
    ids = [get(f.addr, "/env?tag=s%d" % i, timeout=10).header("x-request-id") for i in range(30)]
    assert not any(x["id"] in ids for x in read_log(log)), "written before the buffer filled or its flush"
    assert f.proc.stop() == 0
    assert [x["id"] for x in read_log(log) if x["id"] in ids] == ids


def test_logrotate_then_sigusr1_moves_the_log_to_a_new_file(front, tmp_path):
    """A real logrotate (Debian's) rotates the access log and, in its postrotate, sends
    the master SIGUSR1 (NGINX's reopen): the lines before are in the rotated file, the
    lines after in a new file at the path, none lost (a buffered log writes what it holds
    first). A path that cannot be opened (a directory put there) leaves the log on the
    file it had, weir serving on."""
    log = tmp_path / "access.log"
    f = front(config={"server": {"access_log": str(log), "access_log_buffer": "64KiB",
                                 "access_log_flush": "10m"}}, workers=1)
    before = [get(f.addr, "/env?tag=r%d" % i, timeout=10).header("x-request-id") for i in range(5)]
    conf = tmp_path / "logrotate.conf"
    conf.write_text("%s {\n  rotate 3\n  missingok\n  postrotate\n    kill -USR1 %d\n  endscript\n}\n"
                    % (log, f.proc.pid))
    subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
                   check=True, timeout=30)
    rotated = tmp_path / "access.log.1"
    wait_for(lambda: all(i in {x["id"] for x in read_log(rotated)} for i in before), 10,
             what="the buffered lines written to the rotated file")
    wait_for(lambda: log.exists(), 10, what="the log reopened at its path")
    after = [get(f.addr, "/env?tag=a%d" % i, timeout=10).header("x-request-id") for i in range(5)]
    # Now a directory where the log was: the reopen fails, the lines go on in the file.
    log.rename(tmp_path / "access.log.2")
    log.mkdir()
    f.proc.signal(signal.SIGUSR1)
    wait_for(lambda: "cannot reopen the access log" in f.proc.stderr_path.read_text(), 10,
             what="weir to say it cannot reopen")
    last = get(f.addr, "/env?tag=last", timeout=10).header("x-request-id")
    assert f.proc.stop() == 0
    want = after + [last]
    assert [x["id"] for x in read_log(tmp_path / "access.log.2") if x["id"] in want] == want
    assert not any(x["id"] in after for x in read_log(rotated))


def test_the_shipped_logrotate_config_is_valid():
    """contrib/logrotate/weir, as logrotate itself reads it (debug mode: nothing rotated)."""
    conf = Path(__file__).resolve().parents[2] / "contrib" / "logrotate" / "weir"
    r = subprocess.run(["logrotate", "-d", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "error" not in r.stderr.lower(), r.stderr
    assert "kill --kill-who=main --signal=SIGUSR1" in conf.read_text()

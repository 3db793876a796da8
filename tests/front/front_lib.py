"""Helpers for the front-door tests (issue 3) that tests/e2e does not already have:
TOML with [[route]] tables, a Prometheus text parser, the app's hit log, background
requests, and raw-socket helpers for requests http.client cannot send.

Processes, ports, HTTP clients and polling come from tests/e2e/e2e_lib.py.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from e2e_lib import Addr, Resp, get, request, wait_for  # noqa: F401  (re-exported for the tests)

FRONT_APPS = Path(__file__).resolve().parent / "apps"


# ---------------------------------------------------------------------------------------
# TOML


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table: [route] cache = { valid = { "200" = "1s" } }
        return "{" + ", ".join("%s = %s" % (json.dumps(str(k)), _toml_value(x)) for k, x in v.items()) + "}"
    raise TypeError("no TOML for %r" % (v,))


def to_toml(cfg: dict) -> str:
    """{section: {key: value}}, where a list of dicts is an array of tables ([[route]])."""
    out = []
    for sec, body in cfg.items():
        tables = body if isinstance(body, list) else [body]
        for t in tables:
            out.append(("[[%s]]" if isinstance(body, list) else "[%s]") % sec)
            for k, v in t.items():
                out.append("%s = %s" % (k, _toml_value(v)))
            out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Prometheus text exposition format 0.0.4

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$" % _NAME)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)')
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromError(AssertionError):
    pass


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: Optional[str] = None
    samples: list = field(default_factory=list)  # (name, {labels}, value)


def _labels(text: str, line: str) -> dict:
    out, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise PromError("bad label set in %r" % line)
        k = m.group(1)
        if k in out:
            raise PromError("label %s twice in %r" % (k, line))
        out[k] = m.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        pos = m.end()
    return out


def _value(s: str, line: str) -> float:
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    try:
        return float(s)
    except ValueError:
        raise PromError("bad value %r in %r" % (s, line))


def _family_of(name: str, families: dict) -> Optional[Family]:
    if name in families:
        return families[name]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            f = families.get(name[: -len(suffix)])
            if f is not None and f.type in ("histogram", "summary"):
                return f
    return None


def parse_prometheus(text: str) -> dict:
    """Parses and checks Prometheus text; returns {family name: Family}.

    Checks: every line is a comment or `name{labels} value`; HELP and TYPE are well
    formed, at most once per family and before its samples; a family's samples are
    contiguous; no series appears twice; counters are >= 0; histograms have cumulative
    buckets ending in le="+Inf" that equals _count, and a _sum.
    """
    if text and not text.endswith("\n"):
        raise PromError("the text does not end with a newline")
    families: dict[str, Family] = {}
    seen_series = set()
    closed = set()  # families whose samples ended (another family's came after)
    current = None
    for line in text.split("\n")[:-1] if text else []:
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                if len(parts) < 3 or not re.fullmatch(_NAME, parts[2]):
                    raise PromError("malformed %s line %r" % (parts[1], line))
                name = parts[2]
                f = families.setdefault(name, Family(name))
                if f.samples:
                    raise PromError("%s for %s after its samples: %r" % (parts[1], name, line))
                if parts[1] == "HELP":
                    if f.help is not None:
                        raise PromError("two HELP lines for %s" % name)
                    f.help = parts[3] if len(parts) > 3 else ""
                else:
                    if len(parts) != 4 or parts[3] not in _TYPES:
                        raise PromError("malformed TYPE line %r" % line)
                    if getattr(f, "_typed", False):
                        raise PromError("two TYPE lines for %s" % name)
                    f.type = parts[3]
                    f._typed = True
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise PromError("not `name{labels} value`: %r" % line)
        name, labels, value = m.group(1), _labels(m.group(3) or "", line), _value(m.group(4), line)
        f = _family_of(name, families)
        if f is None:
            f = families.setdefault(name, Family(name))
        if f.name in closed and current is not f:
            raise PromError("samples of %s are not contiguous (%r)" % (f.name, line))
        if current is not None and current is not f:
            closed.add(current.name)
        current = f
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise PromError("series twice: %r" % line)
        seen_series.add(key)
        if f.type == "counter" and not value >= 0:
            raise PromError("negative counter: %r" % line)
        f.samples.append((name, labels, value))
    for f in families.values():
        if f.type == "histogram":
            _check_histogram(f)
    return families


def _check_histogram(f: Family):
    groups: dict = {}
    for name, labels, value in f.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == f.name + "_bucket":
            if "le" not in labels:
                raise PromError("%s bucket without le" % f.name)
            g["buckets"].append((_value(labels["le"], labels["le"]), value))
        elif name == f.name + "_sum":
            g["sum"] = value
        elif name == f.name + "_count":
            g["count"] = value
        else:
            raise PromError("unexpected sample %s in histogram %s" % (name, f.name))
    if not groups:
        raise PromError("histogram %s has no samples" % f.name)
    for rest, g in groups.items():
        b = g["buckets"]
        if not b or b[-1][0] != math.inf:
            raise PromError("histogram %s%r does not end with le=\"+Inf\"" % (f.name, rest))
        les = [x[0] for x in b]
        if les != sorted(les) or len(set(les)) != len(les):
            raise PromError("histogram %s buckets not in increasing le order: %r" % (f.name, les))
        counts = [x[1] for x in b]
        if any(c2 < c1 for c1, c2 in zip(counts, counts[1:])):
            raise PromError("histogram %s buckets not cumulative: %r" % (f.name, b))
        if g["count"] is None or g["sum"] is None:
            raise PromError("histogram %s lacks _count or _sum" % f.name)
        if g["count"] != counts[-1]:
            raise PromError("histogram %s: _count %s != +Inf bucket %s" % (f.name, g["count"], counts[-1]))


def sample(families: dict, name: str, **labels) -> Optional[float]:
    """The value of one series (labels must match exactly, le aside), None if absent."""
    fam = _family_of(name, families)
    if fam is None:
        return None
    for n, ls, v in fam.samples:
        if n == name and ls == labels:
            return v
    return None


def bucket(families: dict, name: str, le: float) -> float:
    for n, ls, v in families[name].samples:
        if n == name + "_bucket" and _value(ls["le"], "") == le:
            return v
    raise KeyError("%s has no bucket le=%s" % (name, le))


# ---------------------------------------------------------------------------------------
# The app's hit log


def read_hits(state: Path) -> list:
    p = state / "hits.jsonl"
    try:
        text = p.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tags_seen(state: Path) -> set:
    return {h.get("tag") for h in read_hits(state) if h.get("tag")}


# ---------------------------------------------------------------------------------------
# Requests in the background


class Background:
    """GET path (or any request) in a thread; .join() returns the Resp or raises its error."""

    def __init__(self, addr: Addr, path: str, method: str = "GET", timeout: float = 60.0, **kw):
        self.path = path
        self.resp: Optional[Resp] = None
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()
        self.ended: Optional[float] = None

        def run():
            try:
                self.resp = request(addr, method, path, timeout=timeout, **kw)
            except BaseException as e:  # reported by join()
                self.error = e
            finally:
                self.ended = time.monotonic()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def join(self, timeout: float = 60.0) -> Resp:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("GET %s still running after %.0fs" % (self.path, timeout))
        if self.error is not None:
            raise self.error
        return self.resp


def wait_tag_started(state: Path, tag: str, timeout: float = 30.0):
    """Waits until the app has logged the start of the request tagged `tag`."""
    return wait_for(lambda: any(h.get("tag") == tag and h.get("event") == "start" for h in read_hits(state)),
                    timeout, what="request %r to reach the app" % tag)


# ---------------------------------------------------------------------------------------
# Raw sockets


def read_response_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """Reads until the end of a response head: (head, bytes after it). b"" head on EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no response head before the deadline; got %r" % buf[:300])
        sock.settimeout(remaining)
        try:
            c = sock.recv(65536)
        except ConnectionResetError:
            c = b""
        if not c:
            return b"", buf
        buf += c
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def closed_by_peer(sock: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Reads until the peer closes (True, data) or the deadline passes (False, data)."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, data
        sock.settimeout(remaining)
        try:
            c = sock.recv(65536)
        except socket.timeout:
            return False, data
        except (ConnectionResetError, BrokenPipeError):
            return True, data
        if not c:
            return True, data
        data += c


# ---------------------------------------------------------------------------------------
# The error contract

ACCEPTS = {"json": "application/json", "text": "text/html,application/xhtml+xml,*/*;q=0.8"}


def assert_weir_error(r, status: int, cls: str, accept: str = "text", retry_after: Optional[int] = None):
    """r (a Resp or RawResp) is weir's own answer: status, x-weir-error, x-request-id,
    Retry-After exactly when promised, and a JSON body when the client asked for JSON, a
    short text naming the class otherwise."""
    assert r.status == status, "status %s, wanted %s: %r" % (r.status, status, r)
    assert r.header("x-weir-error") == cls, "x-weir-error %r, wanted %r: %r" % (r.header("x-weir-error"), cls, r)
    rid = r.header("x-request-id")
    assert rid, "no x-request-id: %r" % (r,)
    if retry_after is None:
        assert r.header("retry-after") is None, "unexpected Retry-After on %s: %r" % (cls, r)
    else:
        assert r.header("retry-after") == str(retry_after), "Retry-After %r, wanted %r: %r" % (
            r.header("retry-after"), retry_after, r)
    ctype = (r.header("content-type") or "").lower()
    if accept == "json":
        assert ctype.startswith("application/json"), "content-type %r for a JSON client: %r" % (ctype, r)
        try:
            doc = json.loads(r.body)
        except ValueError as e:
            raise AssertionError("body is not JSON (%s): %r" % (e, r.body[:300]))
        assert doc.get("error") == cls, doc
        assert doc.get("status") == status, doc
        assert doc.get("request_id") == rid, (doc, rid)
        assert isinstance(doc.get("message"), str) and doc["message"], doc
    else:
        assert ctype.startswith("text/plain"), "content-type %r for a text client: %r" % (ctype, r)
        text = r.body.decode("utf-8", "replace")
        assert cls in text and rid in text, "the text body names neither %r nor the id %r: %r" % (cls, rid, text)
        assert len(r.body) < 1024, "a short text, not a page: %r" % r.body[:300]
        assert not text.lstrip().startswith("{"), "JSON sent to a client that did not ask for it: %r" % text
    return rid


# ---------------------------------------------------------------------------------------
# A private redis-server (Debian's package, installed by scripts/install-deps.sh)

class RedisServer:
    """redis-server on 127.0.0.1:port, no persistence; start() waits for PONG."""

    def __init__(self, port: int):
        self.port = port
        self.url = "redis://127.0.0.1:%d/0" % port
        self.proc = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 10, what="redis-server to answer PING on %d" % self.port)
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

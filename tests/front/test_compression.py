"""Response compression (issue 16 section 4): `[compression]`, NGINX's gzip module with
brotli and zstd, end to end with the real weir binary and a real app on real workers
(tests/front/apps/compress_app.py).

Decoded with Python's gzip, the `brotli` and `zstandard` packages (scripts/install-deps.sh
installs both) and curl --compressed as a real client.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
import zlib
from urllib.parse import quote

import pytest

from e2e_lib import free_port, get, request, wait_for
from front_lib import FRONT_APPS
from weir_e2e_conftest import toml_text

brotli = pytest.importorskip("brotli", reason="pip install brotli (scripts/install-deps.sh)")
zstandard = pytest.importorskip("zstandard", reason="pip install zstandard (scripts/install-deps.sh)")

pytestmark = pytest.mark.e2e_timeout(120)

WORDS = b"weir compresses what the app sends, not what the cache stores. "


def text(n):
    return (WORDS * (n // len(WORDS) + 1))[:n]


def decode(coding, body):
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return brotli.decompress(body)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert coding is None, coding
    return body


@pytest.fixture
def server(weir, tmp_path):
    """server(compression={...}, cache=False) -> (weir server, access log path, admin addr)."""

    def start(compression=None, cache=False):
        log = tmp_path / "access.log"
        admin = free_port()
        cfg = {
            "server": {"access_log": str(log)},
            "admin": {"listen": "127.0.0.1:%d" % admin},
            "compression": compression if compression is not None else {},
        }
        if cache:
            cfg["cache"] = {"memory": "16MiB"}
        text = toml_text(cfg)
        if cache:
            text += '\n[[route]]\npath = "/items"\n[route.cache]\nvalid = { "200" = "60s" }\n'
        srv = weir(app="compress_app:application", chdir=FRONT_APPS, workers=2, config=text)
        return srv, log

    return start


def ae(value):
    return [("Accept-Encoding", value)]


def log_lines(log, path):
    if not log.exists():
        return []
    return [j for j in (json.loads(line) for line in log.read_text().splitlines() if line.strip()) if j["path"] == path]


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_each_coding_round_trips_with_vary_weak_etag_and_length(server, coding):
    srv, _ = server()
    r = get(srv.addr, "/text?n=20000&etag=v7", headers=ae(coding))
    assert r.status == 200
    assert r.header("content-encoding") == coding
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("etag") == 'W/"v7"'
    # A whole body is compressed in one call and sent with its length; one the worker
    # streams (20 KB may come in more than one read) goes chunked.
    if r.header("transfer-encoding") is None:
        assert int(r.header("content-length")) == len(r.body)
    else:
        assert r.header("content-length") is None
    assert len(r.body) < 2000
    assert decode(coding, r.body) == text(20000)


def test_negotiation_prefers_the_server_order_and_honours_q(server):
    srv, _ = server()
    cases = [
        ("gzip, deflate, br, zstd", "br"),  # a browser's: the server's order
        ("gzip, zstd", "zstd"),
        ("br;q=0.2, gzip", "gzip"),  # the client's q first
        ("br;q=0, *", "zstd"),
        ("identity", None),
        ("gzip;q=0", None),
        ("deflate", None),
    ]
    for header, want in cases:
        r = get(srv.addr, "/text?n=5000", headers=ae(header))
        assert r.header("content-encoding") == want, (header, r)
        assert r.header("vary") == "Accept-Encoding", header
        assert decode(want, r.body) == text(5000)
    # No Accept-Encoding at all: identity, still Vary (the answer depends on it).
    r = get(srv.addr, "/text?n=5000")
    assert r.header("content-encoding") is None
    assert r.header("vary") == "Accept-Encoding"
    assert r.body == text(5000)


def test_configured_algorithms_and_level(server):
    srv, _ = server({"algorithms": ["gzip"], "gzip_level": 9, "min_length": "2KiB"})
    r = get(srv.addr, "/text?n=5000", headers=ae("br, zstd, gzip"))
    assert r.header("content-encoding") == "gzip"
    r = get(srv.addr, "/text?n=5000", headers=ae("br, zstd"))
    assert r.header("content-encoding") is None
    r = get(srv.addr, "/text?n=2000", headers=ae("gzip"))
    assert r.header("content-encoding") is None
    assert r.header("vary") is None


def test_what_is_never_compressed(server):
    srv, _ = server()
    gz = ae("gzip, br, zstd")
    # Under min_length: as is, and no Vary (no client would get anything else).
    r = get(srv.addr, "/text?n=1000", headers=gz)
    assert (r.header("content-encoding"), r.header("vary"), r.body) == (None, None, text(1000))
    # A type not listed.
    r = get(srv.addr, "/text?n=5000&type=image/png", headers=gz)
    assert (r.header("content-encoding"), r.header("vary"), r.body) == (None, None, text(5000))
    # Types listed: text/* with parameters, application/json, image/svg+xml.
    for t in ["text/html; charset=utf-8", "application/json", "image/svg+xml", "application/javascript"]:
        r = get(srv.addr, "/text?n=5000&type=" + quote(t), headers=gz)
        assert r.header("content-encoding") == "br", t
    # Cache-Control: no-transform.
    r = get(srv.addr, "/text?n=5000&cc=public,%20no-transform", headers=gz)
    assert (r.header("content-encoding"), r.body) == (None, text(5000))
    # Already encoded by the app: passed through, not encoded twice.
    r = get(srv.addr, "/encoded", headers=gz)
    assert r.header("content-encoding") == "gzip"
    assert gzip.decompress(r.body) == text(5000)
    # 206.
    r = get(srv.addr, "/partial", headers=gz)
    assert (r.status, r.header("content-encoding")) == (206, None)
    assert r.body == text(4000)


def test_head_gets_the_get_headers_and_no_body(server):
    srv, _ = server()
    r = request(srv.addr, "HEAD", "/text?n=5000&etag=h", headers=ae("gzip"))
    assert r.status == 200
    assert r.header("content-encoding") == "gzip"
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("etag") == 'W/"h"'
    assert r.body == b""
    r = request(srv.addr, "HEAD", "/text?n=5000")
    assert r.header("content-encoding") is None
    assert r.header("content-length") == "5000"


def test_access_log_counts_the_compressed_bytes(server):
    srv, log = server()
    r = get(srv.addr, "/text?n=50000", headers=ae("gzip"))
    assert r.header("content-encoding") == "gzip"
    wait_for(lambda: log_lines(log, "/text"), 10, what="the access log line")
    assert log_lines(log, "/text")[0]["bytes"] == len(r.body) < 50000 // 10


def test_a_stream_is_compressed_and_arrives_incrementally(server):
    """Three server-sent events 1.5 s apart: the first decodes long before the last is
    produced (the stage flushes whenever the app has nothing more ready)."""
    srv, _ = server()
    conn = srv.addr.connection(timeout=30)
    t0 = time.monotonic()
    conn.putrequest("GET", "/stream?n=3&gap=1.5", skip_accept_encoding=True)
    conn.putheader("Accept-Encoding", "gzip")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("content-encoding") == "gzip"
    assert r.getheader("transfer-encoding") == "chunked"
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = b""
    first_at = None
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        out += d.decompress(chunk)
        if first_at is None and b"event 0" in out:
            first_at = time.monotonic() - t0
    total = time.monotonic() - t0
    conn.close()
    out += d.flush()
    assert d.eof, "the gzip stream was finished"
    assert out == b"".join(b"data: event %d %s\n\n" % (i, b"x" * 40) for i in range(3))
    assert first_at is not None and first_at < 1.0, first_at
    assert total >= 3.0, total


def test_cached_entry_served_per_client(server):
    """The cache keeps one identity copy; each hit is compressed for its own client."""
    srv, log = server(cache=True)
    r1 = get(srv.addr, "/items", headers=ae("gzip"))
    assert r1.header("content-encoding") == "gzip"
    assert "stored" in r1.header("cache-status"), r1
    identity = gzip.decompress(r1.body)
    assert len(identity) > 15000

    r2 = get(srv.addr, "/items", headers=ae("gzip"))
    r3 = get(srv.addr, "/items")
    r4 = get(srv.addr, "/items", headers=ae("br"))
    for r in (r2, r3, r4):
        assert r.header("cache-status").startswith("weir; hit"), r
        assert r.header("vary") == "Accept-Encoding"
    assert r2.header("content-encoding") == "gzip" and gzip.decompress(r2.body) == identity
    assert r3.header("content-encoding") is None and r3.body == identity
    assert r3.header("etag") == '"items-1"'
    assert r4.header("content-encoding") == "br" and brotli.decompress(r4.body) == identity
    assert r2.header("etag") == r4.header("etag") == 'W/"items-1"'
    # The weak ETag the compressed answer carried revalidates against the entry.
    r5 = get(srv.addr, "/items", headers=ae("gzip") + [("If-None-Match", 'W/"items-1"')])
    assert r5.status == 304, r5
    wait_for(lambda: len(log_lines(log, "/items")) == 5, 10, what="five log lines")
    lines = log_lines(log, "/items")
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit", "hit", "hit"]
    assert [line["bytes"] for line in lines[:4]] == [len(r.body) for r in (r1, r2, r3, r4)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_compressed(server):
    srv, _ = server()
    url = "http://%s:%d/text?n=30000" % (srv.addr.host, srv.addr.port)
    out = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", "-o", "/dev/null", "-w", "%{size_download}", url],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    head, _, size = out.rpartition("\r\n\r\n")
    assert "content-encoding:" in head.lower(), head
    assert int(size) < 3000, size
    body = subprocess.run(["curl", "-sS", "--compressed", url], capture_output=True, timeout=30, check=True).stdout
    assert body == text(30000)

"""Static files (issue 16 section 3): `[[static]]` served by the front door from a directory,
without a worker: MIME types, ETag / Last-Modified and 304, Range (206, 416), If-Range,
HEAD, `expires`, precompressed `.br` / `.gz`, and every way out of the root refused with the
error contract. Real files in a temp dir, the real weir binary, and curl's own range and
conditional requests.

front_app logs every request that reaches it to the hits file: a static request must never
appear there (checked after a sentinel request that does reach the app).
"""

from __future__ import annotations

import email.utils
import gzip
import json
import os
import subprocess
import time

import pytest

from e2e_lib import free_port, get, raw_exchange, request, wait_for
from front_lib import FRONT_APPS, assert_weir_error, to_toml
from test_cli_config import run_weir

pytestmark = pytest.mark.e2e_timeout(120)

CSS = b"body { color: #333; }\n" * 40
JS = b"console.log('weir static');\n" * 200
SMALL = bytes(range(256)) * 16  # 4 KiB
BIG = os.urandom(1024 * 1024 + 12345)  # over the 1 MiB kept whole: streamed
SECRET = b"the secret outside the root\n"


@pytest.fixture
def site(tmp_path):
    """A root with files, precompressed variants, a directory, symlinks in and out; and a
    secret file beside the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    (root / "css").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "css" / "site.css").write_bytes(CSS)
    (root / "app.js").write_bytes(JS)
    (root / "app.js.gz").write_bytes(gzip.compress(JS))
    (root / "app.js.br").write_bytes(b"not really brotli, but the .br variant")
    (root / "only-gz.txt").write_bytes(b"plain text\n" * 50)
    (root / "only-gz.txt.gz").write_bytes(gzip.compress(b"plain text\n" * 50))
    (root / "small.bin").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BIG)
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "out").symlink_to(outside)
    (root / "inside-link.css").symlink_to(root / "css" / "site.css")
    return root


def static_config(root, log=None, **extra):
    s = {"prefix": "/static", "root": str(root), "expires": "7d", "precompressed": True}
    s.update(extra)
    cfg = {"static": [s]}
    if log is not None:
        cfg["server"] = {"access_log": str(log)}
    return cfg


def no_static_hits(f):
    """Nothing but the sentinel reached the app (checked after the sentinel got there)."""
    r = get(f.addr, "/?tag=sentinel", timeout=10)
    assert r.status == 200 and r.body == b"ok", r
    hits = f.hits()
    assert "sentinel" in {h.get("tag") for h in hits}, hits
    assert not [h for h in hits if h["path"].startswith("/static") or "outside" in h["path"]], hits


def httpdate_secs(v):
    return email.utils.parsedate_to_datetime(v).timestamp()


# ---------------------------------------------------------------------------------------
# 200, MIME, validators, expires


def test_files_with_mime_types_validators_and_expires_never_reach_a_worker(front, site, tmp_path):
    log = tmp_path / "access.log"
    f = front(config=static_config(site, log=log), workers=1, admin=True)
    backend = f.metric("weir_backend_requests_total")
    for path, body, ctype in [("/static/css/site.css", CSS, "text/css"),
                              ("/static/app.js", JS, "text/javascript"),
                              ("/static/small.bin", SMALL, "application/octet-stream"),
                              ("/static/big.bin", BIG, "application/octet-stream"),
                              ("/static//css///site.css", CSS, "text/css"),
                              ("/static/inside-link.css", CSS, "text/css")]:
        r = get(f.addr, path, timeout=30)
        assert r.status == 200 and r.body == body, (path, r)
        assert r.header("content-type") == ctype, (path, r.headers)
        assert r.header("content-length") == str(len(body)), (path, r.headers)
        assert r.header("accept-ranges") == "bytes"
        assert r.header("x-weir-error") is None and r.header("x-request-id")
        st = os.stat(site / path.split("/static/")[1].lstrip("/").replace("///", "/").replace("//", "/"))
        assert r.header("etag") == '"%x-%x"' % (int(st.st_mtime), st.st_size), r.headers
        assert httpdate_secs(r.header("last-modified")) == int(st.st_mtime)
        assert r.header("cache-control") == "max-age=604800"
        expires = httpdate_secs(r.header("expires"))
        assert abs(expires - (time.time() + 604800)) < 60, r.header("expires")
        assert r.header("vary") == "Accept-Encoding"  # precompressed = true on this mount
        assert r.header("content-encoding") is None
    # a second time: from the file cache, same answer
    assert get(f.addr, "/static/app.js", timeout=10).body == JS
    assert f.metric("weir_backend_requests_total") == backend, "a static file went to a worker"
    no_static_hits(f)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    css = [x for x in lines if x["path"] == "/static/css/site.css"]
    assert css and css[0]["status"] == 200 and css[0]["error"] is None and css[0]["bytes"] == len(CSS), css
    assert css[0].get("static") is True, css


def test_a_changed_file_is_served_new(front, site):
    f = front(config=static_config(site), workers=1)
    first = get(f.addr, "/static/css/site.css", timeout=10)
    new = b"body { color: red; }\n"
    (site / "css" / "site.css").write_bytes(new)
    os.utime(site / "css" / "site.css", (time.time() + 5, time.time() + 5))
    r = get(f.addr, "/static/css/site.css", timeout=10)
    assert r.body == new and r.header("etag") != first.header("etag"), r


def test_no_expires_no_cache_headers_and_no_vary_without_precompressed(front, site):
    f = front(config={"static": [{"prefix": "/assets/", "root": str(site)}]}, workers=1)
    r = get(f.addr, "/assets/app.js", headers={"Accept-Encoding": "gzip, br"}, timeout=10)
    assert r.status == 200 and r.body == JS, r
    for h in ("cache-control", "expires", "vary", "content-encoding"):
        assert r.header(h) is None, (h, r.headers)


# ---------------------------------------------------------------------------------------
# conditionals


def test_304_by_etag_and_by_date_and_200_otherwise(front, site):
    f = front(config=static_config(site), workers=1)
    r = get(f.addr, "/static/css/site.css", timeout=10)
    etag, lm = r.header("etag"), r.header("last-modified")
    for hdrs in ({"If-None-Match": etag}, {"If-None-Match": '"x", W/%s' % etag}, {"If-None-Match": "*"},
                 {"If-Modified-Since": lm},
                 {"If-Modified-Since": email.utils.formatdate(time.time() + 3600, usegmt=True)}):
        nm = get(f.addr, "/static/css/site.css", headers=hdrs, timeout=10)
        assert nm.status == 304 and nm.body == b"", (hdrs, nm)
        assert nm.header("etag") == etag and nm.header("last-modified") == lm, nm.headers
        assert nm.header("cache-control") == "max-age=604800" and nm.header("vary") == "Accept-Encoding"
        assert nm.header("x-weir-error") is None
    for hdrs in ({"If-None-Match": '"other"'},
                 {"If-Modified-Since": email.utils.formatdate(time.time() - 86400 * 365, usegmt=True)},
                 # If-None-Match decides when both are there
                 {"If-None-Match": '"other"', "If-Modified-Since": lm},
                 {"If-Modified-Since": "not a date"}):
        ok = get(f.addr, "/static/css/site.css", headers=hdrs, timeout=10)
        assert ok.status == 200 and ok.body == CSS, (hdrs, ok)
    # HEAD too
    nm = request(f.addr, "HEAD", "/static/css/site.css", headers={"If-None-Match": etag}, timeout=10)
    assert nm.status == 304


def test_open_file_cache_metrics(front, site):
    f = front(config=static_config(site), workers=1, admin=True)
    for _ in range(3):
        assert get(f.addr, "/static/css/site.css", timeout=10).status == 200
    assert f.metric("weir_static_cache_lookups_total", outcome="miss") == 1
    assert f.metric("weir_static_cache_lookups_total", outcome="hit") == 2
    assert f.metric("weir_static_cache_entries") == 1
    assert f.metric("weir_static_cache_bytes") >= len(CSS)


def test_412_by_if_match_and_if_unmodified_since(front, site):
    # The preconditions a resuming client sends: 412 when the file is not the one it had.
    f = front(config=static_config(site), workers=1)
    r = get(f.addr, "/static/css/site.css", timeout=10)
    etag, lm = r.header("etag"), r.header("last-modified")
    old = email.utils.formatdate(time.time() - 86400 * 365, usegmt=True)
    for hdrs in ({"If-Match": '"other"'}, {"If-Match": "W/%s" % etag},  # strong comparison
                 {"If-Unmodified-Since": old},
                 # If-Match fails first, before any 304
                 {"If-Match": '"other"', "If-None-Match": etag}):
        pf = get(f.addr, "/static/css/site.css", headers=hdrs, timeout=10)
        assert pf.status == 412 and pf.body == b"", (hdrs, pf)
        assert pf.header("etag") == etag and pf.header("x-weir-error") is None, pf.headers
    for hdrs in ({"If-Match": etag}, {"If-Match": '"x", %s' % etag}, {"If-Match": "*"},
                 {"If-Unmodified-Since": lm}, {"If-Unmodified-Since": "not a date"},
                 # If-Match decides when both are there
                 {"If-Match": etag, "If-Unmodified-Since": old}):
        ok = get(f.addr, "/static/css/site.css", headers=hdrs, timeout=10)
        assert ok.status == 200 and ok.body == CSS, (hdrs, ok)
    # a range guarded by If-Match: 206 while the file is the same
    part = get(f.addr, "/static/css/site.css", headers={"If-Match": etag, "Range": "bytes=0-3"}, timeout=10)
    assert part.status == 206 and part.body == CSS[:4], part


# ---------------------------------------------------------------------------------------
# Range, If-Range, HEAD


@pytest.mark.parametrize("name,data", [("small.bin", SMALL), ("big.bin", BIG)])
def test_ranges(front, site, name, data):
    f = front(config=static_config(site), workers=1)
    path = "/static/" + name
    n = len(data)
    for spec, start, end in [("bytes=0-99", 0, 99), ("bytes=100-", 100, n - 1), ("bytes=-10", n - 10, n - 1),
                             ("bytes=1000-1000000000", 1000, n - 1), ("bytes=%d-%d" % (n - 300000 if n > 300000 else 7, n - 2),
                                                                      n - 300000 if n > 300000 else 7, n - 2)]:
        r = get(f.addr, path, headers={"Range": spec}, timeout=30)
        assert r.status == 206, (spec, r)
        assert r.header("content-range") == "bytes %d-%d/%d" % (start, end, n), (spec, r.headers)
        assert r.header("content-length") == str(end - start + 1)
        assert r.body == data[start:end + 1], spec
    bad = get(f.addr, path, headers={"Range": "bytes=%d-" % n}, timeout=10)
    assert bad.status == 416 and bad.header("content-range") == "bytes */%d" % n, bad
    assert bad.body == b"" and bad.header("x-weir-error") is None
    # several ranges: the whole file; an unreadable field: ignored
    for spec in ("bytes=0-1,5-6", "bytes=5-1", "items=0-1"):
        r = get(f.addr, path, headers={"Range": spec}, timeout=30)
        assert r.status == 200 and r.body == data, spec
    # If-Range: the range while it names this file, the whole file once it does not
    etag = get(f.addr, path, timeout=30).header("etag")
    r = get(f.addr, path, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=10)
    assert r.status == 206 and r.body == data[:10]
    r = get(f.addr, path, headers={"Range": "bytes=0-9", "If-Range": '"stale-1"'}, timeout=30)
    assert r.status == 200 and r.body == data


@pytest.mark.parametrize("name,data", [("css/site.css", CSS), ("big.bin", BIG)])
def test_head_is_the_head_only(front, site, name, data):
    f = front(config=static_config(site), workers=1)
    target = f.addr.host_header
    raw = raw_exchange(f.addr, ("HEAD /static/%s HTTP/1.1\r\nHost: %s\r\nRange: bytes=0-1\r\n"
                                "Connection: close\r\n\r\n" % (name, target)).encode(), head_request=True)
    assert raw.status == 200, raw  # Range is for GET only
    assert raw.header("content-length") == str(len(data)), raw.headers
    assert raw.header("etag") and raw.header("last-modified")
    assert raw.body == b""


# ---------------------------------------------------------------------------------------
# precompressed


def test_precompressed_variant_by_accept_encoding(front, site):
    f = front(config=static_config(site), workers=1)
    plain = get(f.addr, "/static/app.js", timeout=10)
    br = get(f.addr, "/static/app.js", headers={"Accept-Encoding": "gzip, deflate, br"}, timeout=10)
    assert br.header("content-encoding") == "br" and br.body == (site / "app.js.br").read_bytes(), br
    assert br.header("content-type") == "text/javascript" and br.header("vary") == "Accept-Encoding"
    assert br.header("etag") != plain.header("etag")
    gz = get(f.addr, "/static/app.js", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert gz.header("content-encoding") == "gzip" and gzip.decompress(gz.body) == JS, gz
    pref = get(f.addr, "/static/app.js", headers={"Accept-Encoding": "br;q=0.5, gzip"}, timeout=10)
    assert pref.header("content-encoding") == "gzip"
    none = get(f.addr, "/static/app.js", headers={"Accept-Encoding": "br;q=0, gzip;q=0"}, timeout=10)
    assert none.header("content-encoding") is None and none.body == JS
    only_gz = get(f.addr, "/static/only-gz.txt", headers={"Accept-Encoding": "br, gzip"}, timeout=10)
    assert only_gz.header("content-encoding") == "gzip"
    assert only_gz.header("content-type").startswith("text/plain")
    css = get(f.addr, "/static/css/site.css", headers={"Accept-Encoding": "br, gzip"}, timeout=10)
    assert css.header("content-encoding") is None and css.body == CSS and css.header("vary") == "Accept-Encoding"
    # 304 on the variant's own tag
    nm = get(f.addr, "/static/app.js", headers={"Accept-Encoding": "gzip", "If-None-Match": gz.header("etag")},
             timeout=10)
    assert nm.status == 304 and nm.header("vary") == "Accept-Encoding"


# ---------------------------------------------------------------------------------------
# never outside the root


REFUSED = [
    ("/static/../outside/secret.txt", 400),
    ("/static/css/../../outside/secret.txt", 400),
    ("/static/%2e%2e/outside/secret.txt", 400),
    ("/static/%2E%2e/outside/secret.txt", 400),
    ("/static/.%2e/outside/secret.txt", 400),
    ("/static/..%2foutside%2fsecret.txt", 400),
    ("/static/css%2fsite.css", 400),
    ("/static/%2e%2e%5coutside%5csecret.txt", 400),
    ("/static/./css/site.css", 400),
    ("/static/site.css%00.txt", 400),
    ("/static/bad%zz", 400),
    ("/static/secret.txt", 404),  # a symlink to a file outside the root
    ("/static/out/secret.txt", 404),  # through a symlinked directory outside the root
    ("/static/sub", 404),  # a directory
    ("/static/sub/", 404),
    ("/static", 404),
    ("/static/", 404),
    ("/static/missing.css", 404),
    ("/static/css/site.css/", 404),
]


@pytest.mark.parametrize("accept", ["text", "json"])
def test_every_way_out_of_the_root_is_refused_and_never_reaches_the_app(front, site, tmp_path, accept):
    log = tmp_path / "access.log"
    f = front(config=static_config(site, log=log), workers=1)
    hdrs = {"Accept": "application/json"} if accept == "json" else {}
    ids = {}
    for path, status in REFUSED:
        r = get(f.addr, path, headers=hdrs, timeout=10)
        assert SECRET not in r.body, (path, r)
        ids[path] = assert_weir_error(r, status, "bad-request" if status == 400 else "not-found", accept=accept)
    post = request(f.addr, "POST", "/static/css/site.css", body=b"x", headers=hdrs, timeout=10)
    assert_weir_error(post, 405, "method-not-allowed", accept=accept)
    assert post.header("allow") == "GET, HEAD"
    no_static_hits(f)
    by_id = {}
    wait_for(lambda: len(log.read_text().splitlines()) >= len(REFUSED) + 2, 10, what="access log lines")
    for line in log.read_text().splitlines():
        x = json.loads(line)
        by_id[x["id"]] = x
    for path, status in REFUSED:
        x = by_id[ids[path]]
        assert x["status"] == status and x["error"] == ("bad-request" if status == 400 else "not-found"), x
    # the symlink escape is a warning in weir's log
    wait_for(lambda: "leads out of the root" in f.proc.output(), 10, what="the symlink warning")


def test_a_prefix_is_a_whole_segment_and_other_paths_go_to_the_app(front, site):
    f = front(config=static_config(site), workers=1)
    r = get(f.addr, "/staticfoo?tag=app", timeout=10)
    assert r.header("x-weir-error") is None
    assert "app" in {h.get("tag") for h in f.hits()}


def test_a_missing_root_exits_2_naming_the_key(weir_bin, tmp_path):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml({"static": [{"prefix": "/static", "root": str(tmp_path / "nope")}]}))
    code, out = run_weir(weir_bin, ["serve", "--config", p, "--app", "front_app:application", "--chdir",
                                    FRONT_APPS, "--listen", "127.0.0.1:%d" % free_port()])
    assert code == 2 and "static[0].root" in out and "not a directory" in out, (code, out)
    (tmp_path / "file").write_text("x")
    p.write_text(to_toml({"static": [{"prefix": "/static", "root": str(tmp_path / "file")}]}))
    code, out = run_weir(weir_bin, ["serve", "--config", p, "--app", "front_app:application", "--chdir",
                                    FRONT_APPS, "--listen", "127.0.0.1:%d" % free_port()])
    assert code == 2 and "static[0].root" in out, (code, out)


# ---------------------------------------------------------------------------------------
# curl's own range and conditional requests


def curl(*args, timeout=30):
    p = subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=timeout)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    return p.stdout


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True).returncode != 0, reason="no curl")
def test_curl_ranges_conditionals_resume_and_compressed(front, site, tmp_path):
    f = front(config=static_config(site), workers=1)
    base = "http://%s/static" % f.addr.host_header
    assert curl("-r", "0-99", base + "/big.bin") == BIG[:100]
    assert curl("-r", "-500", base + "/small.bin") == SMALL[-500:]
    # -z FILE: If-Modified-Since from the file's time; curl prints nothing on 304
    local = tmp_path / "copy.css"
    local.write_bytes(curl(base + "/css/site.css"))
    st = os.stat(site / "css" / "site.css")
    os.utime(local, (st.st_mtime, st.st_mtime))
    assert curl("-w", "%{http_code}", "-o", os.devnull, "-z", str(local), base + "/css/site.css") == b"304"
    os.utime(local, (st.st_mtime - 86400, st.st_mtime - 86400))
    assert curl("-w", "%{http_code}", "-o", os.devnull, "-z", str(local), base + "/css/site.css") == b"200"
    # -C -: resume a partial download (a Range from the local file's size)
    part = tmp_path / "big.part"
    part.write_bytes(BIG[:400000])
    curl("-C", "-", "-o", str(part), base + "/big.bin")
    assert part.read_bytes() == BIG
    # --compressed: curl asks for br/gzip and decodes; only-gz.txt has a real .gz
    assert curl("--compressed", base + "/only-gz.txt") == b"plain text\n" * 50
    head = curl("-I", base + "/css/site.css").decode()
    assert "HTTP/1.1 200" in head and ("content-length: %d" % len(CSS)) in head.lower()

"""The response cache (issue 15): `[cache]` and `[route.cache]`, NGINX's uwsgi_cache with
RFC 9111 through http-cache-semantics, with a real app on real workers.

The app's `cached` action (tests/front/apps/front_app.py) shapes its answer from the query
(cc=, etag=, vary=, skey=, cookie=1, ...) and logs every call to the hits file, so a test
proves a request never reached Python by counting those lines. `weir_backend_requests_total`
proves the same from weir's side (a hit costs no worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from e2e_lib import free_port, get, request, wait_for
from front_lib import FRONT_APPS, Background, RedisServer, to_toml, wait_tag_started
from test_cli_config import run_weir

pytestmark = pytest.mark.e2e_timeout(120)


def cached_route(path="/", **cache):
    cache.setdefault("valid", {"200": "30s"})
    return {"path": path, "cache": cache}


def config(*routes, log=None, **cache_section):
    cache_section.setdefault("memory", "16MiB")
    cfg = {"cache": cache_section, "route": list(routes) or [cached_route()]}
    if log is not None:
        cfg["server"] = {"access_log": str(log)}
    return cfg


def app_calls(f, qs_part=None) -> list:
    """The app's `cached` calls (optionally those whose query contains qs_part)."""
    return [h for h in f.hits() if h.get("event") == "cached" and (qs_part is None or qs_part in h["qs"])]


def status_of(r) -> str:
    return r.header("cache-status") or ""


def fail_app(state, how: str):
    (state / "CACHE_FAIL").write_text(how)


def heal_app(state):
    try:
        os.unlink(state / "CACHE_FAIL")
    except FileNotFoundError:
        pass


def purge(f, what: dict):
    return request(f.admin, "POST", "/cache/purge", body=json.dumps(what).encode(),
                   headers={"Content-Type": "application/json"}, timeout=10)


# ---------------------------------------------------------------------------------------
# hits, misses, HEAD, conditionals, metrics, log


def test_a_hit_never_reaches_a_worker_and_says_so(front, tmp_path):
    log = tmp_path / "access.log"
    f = front(config=config(cached_route("/a"), log=log), workers=2, admin=True)
    first = get(f.addr, "/a/cached?k=1&etag=v1", timeout=10)
    assert first.status == 200 and status_of(first) == "weir; fwd=miss; stored", first.headers
    backend = f.metric("weir_backend_requests_total")
    hits = [get(f.addr, "/a/cached?k=1&etag=v1", timeout=10) for _ in range(5)]
    for r in hits:
        assert r.status == 200 and r.body == first.body, r
        assert status_of(r).startswith("weir; hit; ttl="), r.headers
        assert r.header("age") is not None and r.header("etag") == '"v1"', r.headers
    assert len(app_calls(f, "k=1")) == 1
    assert f.metric("weir_backend_requests_total") == backend, "a hit went to a worker"
    f.wait_metric("weir_cache_requests_total", 5, route="/a", outcome="hit")
    assert f.metric("weir_cache_requests_total", route="/a", outcome="miss") == 1
    # HEAD is answered from the GET entry: the same head, no body
    h = request(f.addr, "HEAD", "/a/cached?k=1&etag=v1", timeout=10)
    assert h.status == 200 and h.body == b"" and status_of(h).startswith("weir; hit")
    assert h.header("content-length") == str(len(first.body)), h.headers
    # a cold HEAD is fetched as GET and stored whole: the next GET is a hit with the body
    h2 = request(f.addr, "HEAD", "/a/cached?k=2", timeout=10)
    assert h2.status == 200 and h2.body == b"" and "stored" in status_of(h2), h2.headers
    g2 = get(f.addr, "/a/cached?k=2", timeout=10)
    assert status_of(g2).startswith("weir; hit") and json.loads(g2.body)["qs"] == "k=2"
    assert [c["method"] for c in app_calls(f, "k=2")] == ["GET"]
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 9, 10, what="log lines")
    lines = [json.loads(l) for l in log.read_text().splitlines() if "cached" in l]
    assert [l["cache"] for l in lines[:3]] == ["miss", "hit", "hit"], lines[:3]


def test_conditional_requests_are_answered_304_from_the_cache(front):
    f = front(config=config(), workers=1, admin=True)
    lm = "Mon, 01 Jan 2024 00:00:00 GMT"
    q = "/c/cached?etag=e1&lm=" + lm.replace(" ", "%20").replace(",", "%2C")
    assert get(f.addr, q, timeout=10).status == 200
    r = get(f.addr, q, headers={"If-None-Match": 'W/"e1"'}, timeout=10)
    assert r.status == 304 and r.body == b"" and r.header("etag") == '"e1"', r
    assert status_of(r).startswith("weir; hit")
    r = get(f.addr, q, headers={"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"}, timeout=10)
    assert r.status == 304, r
    r = get(f.addr, q, headers={"If-None-Match": '"other"'}, timeout=10)
    assert r.status == 200 and r.body, r
    # the client's conditionals never reach the app for a cached route (weir answers them)
    assert all(c["inm"] == "" and c["ims"] == "" for c in app_calls(f)), app_calls(f)
    # a cold key with a matching conditional: the app answers in full, the client gets 304
    r = get(f.addr, "/c/cached?etag=e2", headers={"If-None-Match": '"e2"'}, timeout=10)
    assert r.status == 304 and "stored" in status_of(r), r
    assert get(f.addr, "/c/cached?etag=e2", timeout=10).status == 200


# ---------------------------------------------------------------------------------------
# what is stored and for how long


def test_valid_is_the_fallback_freshness_and_the_responses_own_wins(front):
    routes = [cached_route("/v", valid={"200": "1s", "404": "30s"}), cached_route("/none", valid={})]
    f = front(config=config(*routes), workers=1, admin=True)
    assert "stored" in status_of(get(f.addr, "/v/cached?a=1", timeout=10))
    assert status_of(get(f.addr, "/v/cached?a=1", timeout=10)).startswith("weir; hit")
    # max-age in the response wins over valid's 1 s
    assert "stored" in status_of(get(f.addr, "/v/cached?a=2&cc=max-age%3D60", timeout=10))
    # the app's own 404 is kept per valid's "404"
    assert "stored" in status_of(get(f.addr, "/v/cached?code=404", timeout=10))
    r = get(f.addr, "/v/cached?code=404", timeout=10)
    assert r.status == 404 and status_of(r).startswith("weir; hit")
    # expired, and nothing on this route uses stale entries: it is gone, a miss
    wait_for(lambda: "stored" in status_of(get(f.addr, "/v/cached?a=1", timeout=10)),
             10, what="the 1 s entry to expire")
    assert status_of(get(f.addr, "/v/cached?a=2&cc=max-age%3D60", timeout=10)).startswith("weir; hit")
    # no freshness of its own and none from valid: not stored (NGINX), said in Cache-Status
    r = get(f.addr, "/none/cached", timeout=10)
    assert status_of(r) == "weir; fwd=miss; detail=no-freshness", r.headers
    assert status_of(get(f.addr, "/none/cached", timeout=10)).startswith("weir; fwd=miss")


UNSAFE = [
    ("set-cookie", "cc=public%2C%20max-age%3D60&cookie=1", {}, "detail=set-cookie"),
    ("private", "cc=private%2C%20max-age%3D60", {}, "detail=not-storable"),
    ("no-store", "cc=no-store", {}, "detail=not-storable"),
    ("authorization", "cc=max-age%3D60", {"Authorization": "Bearer x"}, "detail=not-storable"),
    ("vary-star", "cc=max-age%3D60&vary=*", {}, "detail=vary-star"),
]


def test_unsafe_responses_are_never_stored(front):
    f = front(config=config(), workers=1, admin=True)
    for name, qs, headers, detail in UNSAFE:
        for _ in range(2):
            r = get(f.addr, "/u/cached?case=%s&%s" % (name, qs), headers=headers, timeout=10)
            assert r.status == 200 and detail in status_of(r), (name, r.headers)
        assert len(app_calls(f, "case=%s&" % name)) == 2, name
    # Authorization with `public` or `s-maxage` may be stored (RFC 9111 3.5)
    for cc in ("public%2C%20max-age%3D60", "s-maxage%3D60"):
        get(f.addr, "/u/cached?auth=%s&cc=%s" % (cc, cc), headers={"Authorization": "Bearer x"}, timeout=10)
        r = get(f.addr, "/u/cached?auth=%s&cc=%s" % (cc, cc), headers={"Authorization": "Bearer x"}, timeout=10)
        assert status_of(r).startswith("weir; hit"), (cc, r.headers)
    # only GET and HEAD: a POST goes to the app every time
    for _ in range(2):
        assert request(f.addr, "POST", "/u/cached?post=1", body=b"", timeout=10).status == 200
    assert len(app_calls(f, "post=1")) == 2


def test_vary_keeps_a_variant_per_value(front):
    f = front(config=config(), workers=1, admin=True)
    q = "/vary/cached?vary=Accept-Encoding"
    for ae in ("gzip", "br", "gzip", "br", None):
        h = {"Accept-Encoding": ae} if ae else {}
        r = get(f.addr, q, headers=h, timeout=10)
        assert json.loads(r.body)["ae"] == (ae or ""), (ae, r.body)
    assert [c for c in (x.get("qs") for x in app_calls(f)) if c] and len(app_calls(f)) == 3
    r = get(f.addr, q, headers={"Accept-Encoding": "zstd"}, timeout=10)
    assert status_of(r).startswith("weir; fwd=vary-miss"), r.headers


def test_min_uses_stores_from_the_nth_request(front):
    f = front(config=config(cached_route(min_uses=3)), workers=1, admin=True)
    got = [status_of(get(f.addr, "/m/cached", timeout=10)) for _ in range(4)]
    assert got[0] == got[1] == "weir; fwd=miss", got
    assert "stored" in got[2] and got[3].startswith("weir; hit"), got


def test_bypass_goes_to_the_app_and_no_cache_does_not_store(front):
    f = front(config=config(cached_route(bypass=["$cookie_nocache", "$arg_nocache"],
                                         no_cache=["$arg_nostore"])), workers=1, admin=True)
    get(f.addr, "/b/cached", timeout=10)
    r = get(f.addr, "/b/cached", headers={"Cookie": "nocache=1"}, timeout=10)
    assert status_of(r).startswith("weir; fwd=bypass"), r.headers
    # "0" and empty do not bypass (NGINX)
    assert status_of(get(f.addr, "/b/cached", headers={"Cookie": "nocache=0"}, timeout=10)).startswith("weir; hit")
    r = get(f.addr, "/b/cached?nostore=1", timeout=10)
    assert status_of(r) == "weir; fwd=miss", r.headers
    assert status_of(get(f.addr, "/b/cached?nostore=1", timeout=10)) == "weir; fwd=miss"
    f.wait_metric("weir_cache_requests_total", 1, route="/", outcome="bypass")


def test_a_streamed_answer_is_stored_when_whole(front):
    f = front(config=config(), workers=1, admin=True)
    r = get(f.addr, "/s/cached?chunks=8&size=20000", timeout=10)
    assert r.status == 200 and len(r.body) == 20000 and "stored" in status_of(r)
    wait_for(lambda: status_of(get(f.addr, "/s/cached?chunks=8&size=20000", timeout=10)).startswith("weir; hit"),
             10, what="the streamed entry")
    assert get(f.addr, "/s/cached?chunks=8&size=20000", timeout=10).body == r.body


def test_a_client_cache_control_does_not_skip_the_cache(front):
    f = front(config=config(), workers=1, admin=True)
    get(f.addr, "/cc/cached", timeout=10)
    for h in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cache-Control": "max-age=0"}):
        assert status_of(get(f.addr, "/cc/cached", headers=h, timeout=10)).startswith("weir; hit"), h
    assert len(app_calls(f)) == 1


# ---------------------------------------------------------------------------------------
# stampedes, updates, stale answers


def parallel_gets(addr, path, n, timeout=30):
    out, errors = [None] * n, []
    start = threading.Barrier(n)

    def one(i):
        try:
            start.wait(10)
            out[i] = get(addr, path, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    assert not errors, errors[:3]
    return out


def test_with_lock_a_stampede_on_a_cold_key_reaches_the_app_once(front):
    f = front(config=config(cached_route(lock=True, lock_timeout="20s")), workers=4, admin=True)
    got = parallel_gets(f.addr, "/stampede/cached?sleep=1", 200)
    assert all(r.status == 200 for r in got), {r.status for r in got}
    assert len({r.body for r in got}) == 1
    assert len(app_calls(f, "sleep=1")) == 1, len(app_calls(f, "sleep=1"))
    assert sum("collapsed" in status_of(r) for r in got) >= 150


def test_without_lock_a_stampede_reaches_the_app_many_times(front):
    f = front(config=config(), workers=4, admin=True)
    parallel_gets(f.addr, "/nolock/cached?sleep=0.5", 20)
    assert len(app_calls(f, "sleep=0.5")) > 1


def test_background_update_refreshes_once_while_everyone_gets_the_stale_copy(front):
    f = front(config=config(cached_route(valid={"200": "1s"}, background_update=True)), workers=2, admin=True)
    first = get(f.addr, "/bg/cached?sleep=0.6", timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.6, 5, what="expiry")
    t0 = time.monotonic()
    got = parallel_gets(f.addr, "/bg/cached?sleep=0.6", 20)
    took = time.monotonic() - t0
    assert all(r.status == 200 and r.body == first.body for r in got)
    assert all("detail=updating" in status_of(r) for r in got), {status_of(r) for r in got}
    assert took < 0.5, "stale answers waited for the app (%.2fs)" % took
    wait_for(lambda: len(app_calls(f, "sleep=0.6")) == 2, 10, what="one background update")
    wait_for(lambda: get(f.addr, "/bg/cached?sleep=0.6", timeout=10).body != first.body, 10,
             what="the refreshed entry")
    assert len(app_calls(f, "sleep=0.6")) == 2
    f.wait_metric("weir_cache_requests_total", 20, route="/", outcome="updating")


@pytest.mark.parametrize("how,code", [("boom", 500), ("crash", 502), ("status503", 503), ("sleep5", 504)])
def test_use_stale_answers_with_the_stale_entry_when_the_app_fails(front, state_dir, how, code):
    route = cached_route(valid={"200": "1s"}, use_stale=["error", "timeout", "http_500", "http_502",
                                                          "http_503", "http_504"])
    cfg = config(route)
    cfg["app"] = {"harakiri": "2s"}
    f = front(config=cfg, workers=1, admin=True)
    first = get(f.addr, "/st/cached", timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.2, 5, what="expiry")
    fail_app(state_dir, how)
    try:
        r = get(f.addr, "/st/cached", timeout=20)
    finally:
        heal_app(state_dir)
    assert r.status == 200 and r.body == first.body, (how, r)
    cs = status_of(r)
    assert "fwd=stale" in cs and ("fwd-status=%d" % code) in cs, cs
    assert r.header("x-weir-error") is None, r.headers
    f.wait_metric("weir_cache_requests_total", 1, route="/", outcome="stale")


def test_without_use_stale_the_failure_is_answered(front, state_dir):
    f = front(config=config(cached_route(valid={"200": "1s"})), workers=1, admin=True)
    first = get(f.addr, "/nst/cached", timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.2, 5, what="expiry")
    fail_app(state_dir, "boom")
    try:
        r = get(f.addr, "/nst/cached", timeout=10)
    finally:
        heal_app(state_dir)
    assert r.status == 500 and r.header("x-weir-error") == "app-exception", r
    assert "fwd-status=500" in status_of(r), r.headers


def test_stale_is_never_served_when_the_response_forbids_it(front, state_dir):
    f = front(config=config(cached_route(use_stale=["error", "http_500"])), workers=1, admin=True)
    q = "/mr/cached?cc=max-age%3D1%2C%20must-revalidate"
    first = get(f.addr, q, timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.2, 5, what="expiry")
    fail_app(state_dir, "boom")
    try:
        assert get(f.addr, q, timeout=10).status == 500
    finally:
        heal_app(state_dir)


def test_revalidate_refreshes_an_expired_entry_with_its_etag(front):
    f = front(config=config(cached_route(valid={"200": "1s"}, revalidate=True)), workers=1, admin=True)
    first = get(f.addr, "/rv/cached?etag=r1", timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.2, 5, what="expiry")
    r = get(f.addr, "/rv/cached?etag=r1", timeout=10)
    assert r.status == 200 and r.body == first.body, r
    assert "fwd-status=304" in status_of(r), r.headers
    assert app_calls(f)[-1]["inm"] == '"r1"', app_calls(f)[-1]
    assert status_of(get(f.addr, "/rv/cached?etag=r1", timeout=10)).startswith("weir; hit")
    f.wait_metric("weir_cache_requests_total", 1, route="/", outcome="revalidated")


# ---------------------------------------------------------------------------------------
# purge and invalidation


def test_purge_by_key_prefix_and_tag_on_the_admin_listener_only(front):
    f = front(config=config(), workers=1, admin=True)
    host = "127.0.0.1"
    for q in ("/items/cached?id=1&skey=product-1", "/items/cached?id=2&skey=product-2", "/users/cached?id=3"):
        get(f.addr, q, timeout=10)
    r = purge(f, {"key": "http%s/items/cached?id=1&skey=product-1" % host})
    assert r.status == 200 and r.json()["purged"] == 1, r
    assert status_of(get(f.addr, "/items/cached?id=1&skey=product-1", timeout=10)).startswith("weir; fwd=miss")
    assert purge(f, {"tag": "product-2"}).json()["purged"] == 1
    assert status_of(get(f.addr, "/items/cached?id=2&skey=product-2", timeout=10)).startswith("weir; fwd=miss")
    assert purge(f, {"prefix": "/items"}).json()["purged"] == 2
    assert status_of(get(f.addr, "/users/cached?id=3", timeout=10)).startswith("weir; hit")
    # bad requests get the error contract; the public listener never purges
    bad = request(f.admin, "POST", "/cache/purge", body=b"{nope", timeout=10)
    assert bad.status == 400 and bad.header("x-weir-error") == "bad-request" and "prefix" in bad.text, bad
    assert purge(f, {"everything": True}).status == 400
    assert get(f.admin, "/cache/purge", timeout=10).status == 405
    r = request(f.addr, "POST", "/cache/purge", body=b'{"prefix": "/"}', timeout=10)
    assert r.status == 404 and status_of(get(f.addr, "/users/cached?id=3", timeout=10)).startswith("weir; hit")


def test_purge_without_a_cache_is_404(front):
    f = front(config={}, workers=1, admin=True)
    r = purge(f, {"prefix": "/"})
    assert r.status == 404 and "[cache]" in r.text, r


def test_a_successful_unsafe_request_invalidates_the_uri(front):
    f = front(config=config(), workers=1, admin=True)
    get(f.addr, "/inv/cached", timeout=10)
    assert status_of(get(f.addr, "/inv/cached", timeout=10)).startswith("weir; hit")
    assert request(f.addr, "POST", "/inv/cached", body=b"x", timeout=10).status == 200
    assert status_of(get(f.addr, "/inv/cached", timeout=10)).startswith("weir; fwd=miss")


# ---------------------------------------------------------------------------------------
# the disk tier and the shared Redis tier


def test_the_disk_tier_survives_a_restart_and_drops_a_corrupt_entry(front, tmp_path):
    disk = tmp_path / "cache"
    cfg = config(disk=str(disk), disk_max_size="64MiB")
    f = front(config=cfg, workers=1, admin=True)
    body = get(f.addr, "/d/cached?x=1", timeout=10).body
    get(f.addr, "/d/cached?x=2", timeout=10)
    wait_for(lambda: len([p for p in disk.rglob("*") if p.is_file()]) >= 2, 10, what="entries on disk")
    f.srv.stop()
    f2 = front(config=cfg, workers=1, admin=True)
    r = get(f2.addr, "/d/cached?x=1", timeout=10)
    assert r.body == body and status_of(r).startswith("weir; hit"), r.headers
    # flip a byte in every entry file: x=2 must be refetched, never served damaged
    f2.srv.stop()
    for p in disk.rglob("*"):
        if p.is_file():
            raw = bytearray(p.read_bytes())
            raw[len(raw) // 2] ^= 0x55
            p.write_bytes(bytes(raw))
    f3 = front(config=cfg, workers=1, admin=True)
    r = get(f3.addr, "/d/cached?x=2", timeout=10)
    assert r.status == 200 and status_of(r).startswith("weir; fwd=miss"), r.headers
    json.loads(r.body)


def test_a_disk_path_that_cannot_be_written_exits_2(weir_bin, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = tmp_path / "weir.toml"
    p.write_text(to_toml(config(disk=str(blocker / "sub"))))
    code, out = run_weir(weir_bin, ["serve", "--config", str(p), "--app", "front_app:application",
                                    "--chdir", FRONT_APPS, "--listen", "127.0.0.1:%d" % free_port()])
    assert code == 2 and "cache.disk" in out and str(blocker) in out, (code, out)
    assert "panicked" not in out


BAD = [
    ("use-stale", {"cache": {}, "route": [{"path": "/", "cache": {"use_stale": ["sometimes"]}}]}, "use_stale"),
    ("memory-size", {"cache": {"memory": "lots"}}, 'memory = "lots"'),
    ("route-without-section", {"route": [{"path": "/", "cache": {"valid": {"200": "1s"}}}]}, "route[0].cache"),
    ("valid-key", {"cache": {}, "route": [{"path": "/", "cache": {"valid": {"2000": "1s"}}}]}, "route[0].cache.valid"),
    ("key-variable", {"cache": {}, "route": [{"path": "/", "cache": {"key": "$nope"}}]}, "route[0].cache.key"),
]


@pytest.mark.parametrize("case,cfg,key", BAD, ids=[b[0] for b in BAD])
def test_bad_cache_config_exits_2_naming_the_key(weir_bin, tmp_path, case, cfg, key):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml(cfg))
    code, out = run_weir(weir_bin, ["serve", "--check", "--config", str(p), "--app", "front_app:application",
                                    "--chdir", FRONT_APPS])
    assert code == 2 and key in out, (case, code, out)
    assert "panicked" not in out


@pytest.fixture
def redis_server():
    r = RedisServer(free_port()).start()
    yield r
    r.stop()


def test_instances_share_entries_and_purges_through_redis(front, redis_server, tmp_path):
    cfg = config(store=redis_server.url.replace("/0", "/1"))
    a = front(config=cfg, workers=1, admin=True)
    b = front(config=cfg, workers=1, admin=True)
    body = get(a.addr, "/shared/cached", timeout=10).body
    wait_for(lambda: status_of(get(b.addr, "/shared/cached", timeout=10)).startswith("weir; hit"), 10,
             what="instance b to find a's entry in Redis")
    assert get(b.addr, "/shared/cached", timeout=10).body == body
    assert len(app_calls(a)) == 1, "b went to the app"
    # a purge on a reaches b's local tiers (pub/sub) and Redis
    assert purge(a, {"prefix": "/shared"}).status == 200
    wait_for(lambda: status_of(get(b.addr, "/shared/cached", timeout=10)).startswith("weir; fwd=miss"), 10,
             what="the purge to reach b")
    # Redis down: the cache goes on from memory, nothing fails
    get(a.addr, "/down/cached", timeout=10)
    redis_server.stop()
    for _ in range(5):
        r = get(a.addr, "/down/cached", timeout=10)
        assert r.status == 200 and status_of(r).startswith("weir; hit"), r.headers
    r = get(a.addr, "/down/cached?new=1", timeout=10)
    assert r.status == 200 and "stored" in status_of(r)
    a.wait_metric("weir_cache_errors_total", lambda v: v > 0, timeout=15, kind="redis")


def test_use_stale_answers_when_the_queue_refuses(front):
    route = cached_route("/q", valid={"200": "1s"}, use_stale=["error", "timeout"])
    cfg = config(route)
    cfg["queue"] = {"timeout": "300ms"}
    f = front(config=cfg, workers=1, admin=True)
    first = get(f.addr, "/q/cached", timeout=10)
    wait_for(lambda: time.time() > json.loads(first.body)["t"] + 1.2, 5, what="expiry")
    hold = Background(f.addr, "/other/sleep?s=3&tag=hold")  # the only worker, busy
    wait_tag_started(f.state, "hold")
    r = get(f.addr, "/q/cached", timeout=10)
    assert r.status == 200 and r.body == first.body, r
    assert "fwd=stale" in status_of(r) and "fwd-status=503" in status_of(r), r.headers
    assert hold.join().status == 200


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True).returncode != 0, reason="no curl")
def test_curl_revalidates_against_the_cache(front, tmp_path):
    """curl, a client no one here wrote: --etag-save / --etag-compare and -z send the
    conditionals a browser would; the cache answers 304 itself, the app is asked once."""
    f = front(config=config(), workers=1, admin=True)
    url = "http://%s/curl/cached?etag=c1&lm=Mon%%2C%%2001%%20Jan%%202024%%2000%%3A00%%3A00%%20GMT" % f.addr.host_header
    etag = tmp_path / "etag"

    def curl(*args):
        p = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", os.devnull, "-w", "%{http_code}", *args],
                           capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout.decode()
    assert curl("--etag-save", str(etag), url) == "200"
    assert etag.read_text().strip() == '"c1"'
    assert curl("--etag-compare", str(etag), url) == "304"
    stamp = tmp_path / "stamp"
    stamp.write_text("x")
    os.utime(stamp, (1704153600, 1704153600))  # 2024-01-02: after the entry's Last-Modified
    assert curl("-z", str(stamp), url) == "304"
    assert len(app_calls(f)) == 1

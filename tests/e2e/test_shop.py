"""The reference app (examples/shop, Flask + SQLite) on weir, end to end: the routes a user
tries first, and the failure routes mapped to weir's attributed errors. DATABASE_URL is
cleared so the app uses a private SQLite file (SHOP_SQLITE_PATH in tmp).
"""

from __future__ import annotations

import threading
import time

import pytest

from e2e_lib import REPO, get

SHOP = REPO / "examples" / "shop"

pytestmark = pytest.mark.skipif(not (SHOP / "app.py").exists(), reason="examples/shop is not there yet")


@pytest.fixture
def shop(weir, tmp_path):
    def start(**kw):
        env = {"SHOP_SQLITE_PATH": str(tmp_path / "shop.db"), "DATABASE_URL": ""}
        env.update(kw.pop("env", {}))
        return weir(app="app:app", chdir=SHOP, env=env, ready_path="/hello", **kw)
    return start


def test_shop_routes(shop):
    srv = shop(workers=2)
    r = get(srv.addr, "/hello")
    assert r.status == 200 and r.body.startswith(b"Hello"), r
    r = get(srv.addr, "/items", timeout=60)
    assert r.status == 200, r
    d = r.json()
    assert len(d["items"]) == 80 and 10_000 < len(r.body) < 40_000, len(r.body)
    r = get(srv.addr, "/items?after=%d" % d["items"][-1]["id"])
    assert r.status == 200 and r.json()["items"][0]["id"] > d["items"][-1]["id"]
    r = get(srv.addr, "/big?kb=2048", timeout=60)
    assert r.status == 200 and len(r.body) == 2048 * 1024, (r.status, len(r.body))
    r = get(srv.addr, "/items?limit=nonsense")
    assert r.status == 400 and r.header("x-weir-error") is None, r


def test_shop_boom_is_attributed_500(shop):
    srv = shop(workers=1)
    r = get(srv.addr, "/boom")
    assert r.status == 500 and r.header("x-weir-error") == "app-exception", r
    assert b"boom" not in r.body and b"Traceback" not in r.body, r
    assert get(srv.addr, "/hello").status == 200


def test_shop_crash_is_502_and_others_unaffected(shop):
    srv = shop(workers=2)
    results = []

    def hello_loop():
        for _ in range(100):
            try:
                results.append(get(srv.addr, "/hello").status)
            except Exception as e:
                results.append(repr(e))

    t = threading.Thread(target=hello_loop)
    t.start()
    r = get(srv.addr, "/crash", timeout=30)
    t.join(60)
    assert r.status == 502 and r.header("x-weir-error") == "worker-died", r
    assert results == [200] * 100, [x for x in results if x != 200][:10]
    assert get(srv.addr, "/hello").status == 200


def test_shop_slow_with_harakiri(shop):
    srv = shop(workers=2, args=["--harakiri", "1"])
    t0 = time.monotonic()
    r = get(srv.addr, "/slow?s=5", timeout=30)
    assert r.status == 504 and r.header("x-weir-error") == "harakiri", r
    assert time.monotonic() - t0 < 4
    assert get(srv.addr, "/hello").status == 200

"""The shop's pagination and deadlines: keyset pages (/items) give exactly the rows that
offset pages (/items-offset) give, on SQLite and on MariaDB/MySQL; a request past its
deadline is answered 504 without touching the database; a statement is cut at the
deadline."""

import time

import pytest
import shopdb

import app as shop_app


@pytest.fixture(params=["sqlite", "mysql"])
def client(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        db = shopdb.Database(f"sqlite:///{tmp_path / 'shop.db'}")
    else:
        db = shopdb.Database(request.getfixturevalue("scratch_url"))
    db.ensure_schema()
    monkeypatch.setattr(shop_app, "db", db)
    shop_app.app.testing = True
    return shop_app.app.test_client(), db


def walk(c, first, key):
    url, rows, pages = first, [], 0
    while url:
        r = c.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        rows.extend(body["items"])
        url = body["next"]
        pages += 1
        assert pages < 10_000
    return rows


def test_keyset_pages_equal_offset_pages(client):
    c, db = client
    # Gaps in the ids (deleted rows) are where naive keyset code goes wrong.
    db.query("DELETE FROM items WHERE id %% 7 = 0 OR id BETWEEN 300 AND 340")
    everything = [shopdb.row_to_item(r) for r in
                  db.query("SELECT " + ", ".join(shopdb.ITEM_COLUMNS) + " FROM items ORDER BY id")]
    assert len(everything) > 1500
    for limit in (1, 37, 80, 1000):
        keyset = walk(c, f"/items?limit={limit}", "after")
        offset = walk(c, f"/items-offset?limit={limit}", "offset")
        assert keyset == offset == everything, f"limit {limit}"
    # A page in the middle: the same rows both ways.
    mid = everything[500]["id"]
    k = c.get(f"/items?after={mid}&limit=50").get_json()["items"]
    o = c.get("/items-offset?offset=501&limit=50").get_json()["items"]
    assert k == o


def test_default_page_is_about_17_kb(client):
    c, _ = client
    r = c.get("/items")
    assert r.status_code == 200
    assert 15_000 <= len(r.get_data()) <= 20_000, len(r.get_data())
    assert len(r.get_json()["items"]) == shop_app.DEFAULT_LIMIT


def test_bad_parameters_are_400(client):
    c, _ = client
    for url in ("/items?limit=0", "/items?after=x", "/items-offset?offset=-1", "/slow?s=abc", "/big?kb=-1"):
        assert c.get(url).status_code == 400, url


def test_past_deadline_is_504_without_a_query(monkeypatch):
    # A database that cannot be reached: a query would be a 503, not a 504.
    monkeypatch.setattr(shop_app, "db", shopdb.Database("mysql://nobody:x@127.0.0.1:1/nowhere"))
    c = shop_app.app.test_client()
    for url in ("/items", "/items-offset", "/slow?s=1", "/dbping"):
        r = c.get(url, environ_overrides={"weir.deadline": time.time() - 0.01})
        assert r.status_code == 504, (url, r.status_code)
        assert r.get_json()["error"] == "deadline"
    assert c.get("/dbping").status_code == 503  # and without a deadline it does try


def test_slow_statement_is_cut_at_the_deadline(client):
    c, db = client
    t = time.monotonic()
    r = c.get("/slow?s=5", environ_overrides={"weir.deadline": time.time() + 0.5})
    took = time.monotonic() - t
    assert r.status_code == 504, r.get_data(as_text=True)
    assert 0.4 <= took < 2.0, took
    if db.kind != "sqlite":
        # The statement itself was bounded on the server: nothing keeps running there.
        rows = db.query("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(5%%'")
        assert rows[0][0] == 0


def test_statement_bound_syntax():
    d = shopdb.Database("mysql://u:p@h:1/db")
    d.flavor = "mariadb"
    assert d.bound("SELECT 1", 1.5) == "SET STATEMENT max_statement_time=1.500 FOR SELECT 1"
    d.flavor = "mysql"
    assert d.bound("SELECT 1", 1.5) == "SELECT /*+ MAX_EXECUTION_TIME(1500) */ 1"
    assert d.bound("SELECT 1", None) == "SELECT 1"

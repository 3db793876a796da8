"""The error map (`[[error_map]]`, `[errors] mysql`): an app exception raised before the
response started and matched by class (subclasses too) and code answers with the entry's
status, class and Retry-After in weir's error body, counted by class; the worker stays
(same pid) and logs the traceback with the request id as a warning; an exception nothing
matches stays 500 app-exception; a class path that cannot be imported is refused
(`weir serve --check` exits 2 naming the key). Against a real MariaDB
(WEIR_TEST_MYSQL_URL, scripts/mariadb.sh): a lock wait timeout between two transactions on
one row is 409 db-conflict, and a statement bounded by weir.deadline that runs out is 504
db-timeout.

The app is apps/errmap_app.py (Flask with PROPAGATE_EXCEPTIONS).
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import unquote, urlparse

import pytest

from e2e_lib import Addr, free_port, get, wait_for
from front_lib import FRONT_APPS, assert_weir_error, parse_prometheus, sample, to_toml
from test_cli_config import run_weir  # the e2e suite's "run weir to completion" helper

pytestmark = pytest.mark.e2e_timeout(90)

APP = "errmap_app:application"
ACCEPT = {"json": "application/json", "text": "text/plain"}
BOTH = pytest.mark.parametrize("accept", ["json", "text"])

CUSTOM_MAP = [
    {"exception": "errmap_app.Busy", "code": [7, 8], "status": 429, "retry_after": 3},
    {"exception": "errmap_app.Flaky", "code": 42, "class": "db-unavailable"},
]


class Server:
    def __init__(self, srv, admin: Addr, access_log):
        self.srv = srv
        self.addr = srv.addr
        self.admin = admin
        self.access_log = access_log

    def get(self, path, accept="text", **kw):
        return get(self.addr, path, headers={"Accept": ACCEPT[accept]}, timeout=kw.pop("timeout", 30), **kw)

    def pid(self) -> int:
        r = get(self.addr, "/pid", timeout=10)
        assert r.status == 200, r
        return int(r.text.strip())

    def requests_total(self, cls: str) -> float:
        fams = parse_prometheus(get(self.admin, "/metrics", timeout=10).text)
        fam = fams.get("weir_requests_total")
        if fam is None:
            return 0.0
        return sum(v for (_, labels, v) in fam.samples if labels.get("class") == cls)

    def log_lines(self) -> list:
        if not self.access_log.exists():
            return []
        return [json.loads(l) for l in self.access_log.read_text().splitlines() if l.strip()]

    def log_of(self, rid: str) -> dict:
        found = []

        def cond():
            found[:] = [l for l in self.log_lines() if l.get("id") == rid]
            return found
        wait_for(cond, 10, what="access log line of %s" % rid)
        return found[0]

    def worker_log(self) -> str:
        return self.srv.output()


@pytest.fixture
def errmap(weir, tmp_path):
    """Factory: errmap(config={...}, workers=1, env=None) -> Server on apps/errmap_app.py."""

    def start(config=None, workers=1, env=None) -> Server:
        cfg = dict(config or {})
        port = free_port()
        cfg["admin"] = {"listen": "127.0.0.1:%d" % port}
        log = tmp_path / ("access-%d.log" % port)
        cfg.setdefault("server", {})
        cfg["server"] = dict(cfg["server"], access_log=str(log))
        srv = weir(app=APP, chdir=FRONT_APPS, workers=workers, config=to_toml(cfg), env=env, ready_path="/pid")
        return Server(srv, Addr("127.0.0.1", port), log)

    return start


def wait_in_output(s: Server, needle: str, timeout: float = 10.0) -> str:
    wait_for(lambda: needle in s.worker_log(), timeout, what="%r in weir's output" % needle)
    return s.worker_log()


@BOTH
def test_custom_entry_answers_its_status_and_class_and_the_worker_stays(errmap, accept):
    s = errmap(config={"error_map": CUSTOM_MAP})
    pid = s.pid()

    r = s.get("/custom?code=7", accept)
    rid = assert_weir_error(r, 429, "app-mapped", accept, retry_after=3)
    # a subclass matches, with the other code of the list
    assert_weir_error(s.get("/custom-sub?code=8", accept), 429, "app-mapped", accept, retry_after=3)
    # matched by .errno; db-unavailable's defaults: 503 with Retry-After 1
    assert_weir_error(s.get("/errno?errno=42", accept), 503, "db-unavailable", accept, retry_after=1)
    # the right class with another code, and an exception no entry names: 500 app-exception
    assert_weir_error(s.get("/custom?code=9", accept), 500, "app-exception", accept)
    assert_weir_error(s.get("/errno?errno=41", accept), 500, "app-exception", accept)
    assert_weir_error(s.get("/boom", accept), 500, "app-exception", accept)

    # one worker, never replaced
    assert s.pid() == pid

    # the traceback, with the request id, as a warning that names the entry
    out = wait_in_output(s, "request %s: warning: exception in the app answered 429 app-mapped (error_map[0])" % rid)
    after = out.split("request %s: warning" % rid, 1)[1]
    assert "Traceback" in after and "errmap_app.Busy: (7, 'busy')" in after, after[:2000]
    assert "exiting" not in out and "respawn" not in out.lower(), out[-3000:]

    # the access log and the metrics carry the class
    line = s.log_of(rid)
    assert (line["status"], line["error"], line["origin"]) == (429, "app-mapped", "worker"), line
    assert s.requests_total("app-mapped") == 2
    assert s.requests_total("db-unavailable") == 1
    assert s.requests_total("app-exception") == 3


def test_head_request_gets_the_mapped_status(errmap):
    s = errmap(config={"error_map": CUSTOM_MAP})
    from e2e_lib import request
    r = request(s.addr, "HEAD", "/custom?code=7", timeout=10)
    assert r.status == 429 and r.header("x-weir-error") == "app-mapped", r
    assert r.header("retry-after") == "3"


def test_first_matching_entry_wins_and_entries_come_before_the_preset(errmap):
    s = errmap(config={
        "error_map": [
            {"exception": "errmap_app.VeryBusy", "status": 423, "class": "db-conflict", "retry_after": 0},
            {"exception": "errmap_app.Busy", "status": 418},
            {"exception": "pymysql.err.OperationalError", "code": 1213, "status": 503, "class": "db-unavailable",
             "retry_after": 7},
        ],
        "errors": {"mysql": True},
    })
    # retry_after = 0: no Retry-After even on db-conflict
    assert_weir_error(s.get("/custom-sub?code=1"), 423, "db-conflict", "text")
    assert_weir_error(s.get("/custom?code=1"), 418, "app-mapped", "text")
    # the entry before the preset's 409
    assert_weir_error(s.get("/pymysql?code=1213"), 503, "db-unavailable", "text", retry_after=7)
    assert_weir_error(s.get("/pymysql?code=1205"), 409, "db-conflict", "text", retry_after=1)


@BOTH
def test_mysql_preset(errmap, accept):
    s = errmap(config={"errors": {"mysql": True}})
    pid = s.pid()
    for code in (1969, 3024):
        rid = assert_weir_error(s.get("/pymysql?code=%d" % code, accept), 504, "db-timeout", accept)
    line = s.log_of(rid)
    assert (line["status"], line["error"], line["origin"]) == (504, "db-timeout", "database"), line
    for code in (1205, 1213):
        assert_weir_error(s.get("/pymysql?code=%d" % code, accept), 409, "db-conflict", accept, retry_after=1)
    for code in (1040, 1203, 2002, 2003, 2006, 2013):
        assert_weir_error(s.get("/pymysql?code=%d" % code, accept), 503, "db-unavailable", accept, retry_after=1)
    # a syntax error (1064) is the app's bug: 500
    assert_weir_error(s.get("/pymysql?code=1064", accept), 500, "app-exception", accept)
    # the preset does not touch other exceptions
    assert_weir_error(s.get("/custom?code=1205", accept), 500, "app-exception", accept)
    assert s.pid() == pid
    assert s.requests_total("db-timeout") == 2
    assert s.requests_total("db-conflict") == 2
    assert s.requests_total("db-unavailable") == 6


def test_preset_skips_drivers_that_are_not_installed(errmap):
    # mysqlclient and mysql-connector are not imported by the app (nor installed, maybe):
    # the worker starts and the PyMySQL entries work.
    s = errmap(config={"errors": {"mysql": True}}, workers=2)
    assert_weir_error(s.get("/pymysql?code=1969"), 504, "db-timeout", "text")


def check_args(cfg_path, *extra):
    return ["serve", "--config", cfg_path, "--app", APP, "--chdir", FRONT_APPS,
            "--listen", "127.0.0.1:%d" % free_port(), "--check"] + list(extra)


BAD_PATHS = [
    ("no-such-module", [{"exception": "no_such_module_xyz.Error"}], "error_map[0].exception", "no_such_module_xyz"),
    ("no-such-class", CUSTOM_MAP + [{"exception": "errmap_app.NoSuchError"}], "error_map[2].exception",
     "NoSuchError"),
    ("not-an-exception", [{"exception": "errmap_app.Flask"}], "error_map[0].exception", "not an exception class"),
    ("driver-not-installed", [{"exception": "MySQLdb_not_installed_here.OperationalError"}],
     "error_map[0].exception", "MySQLdb_not_installed_here"),
]


@pytest.mark.parametrize("case,entries,key,why", BAD_PATHS, ids=[c[0] for c in BAD_PATHS])
def test_check_refuses_a_class_that_cannot_be_imported(weir_bin, tmp_path, case, entries, key, why):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml({"error_map": entries}))
    code, out = run_weir(weir_bin, check_args(p))
    assert code == 2, "%s: exit %r\n%s" % (case, code, out)
    assert key in out and why in out, "%s: the message names neither %r nor %r:\n%s" % (case, key, why, out)
    assert "configuration is valid" not in out


def test_check_accepts_importable_classes_and_the_preset(weir_bin, tmp_path):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml({"error_map": CUSTOM_MAP + [{"exception": "TimeoutError", "class": "db-timeout"}],
                          "errors": {"mysql": True}}))
    code, out = run_weir(weir_bin, check_args(p))
    assert code == 0, out
    assert "configuration is valid" in out


@pytest.mark.parametrize("entry,key", [
    ({"exception": "errmap_app.Busy", "class": "my-own-class"}, "error_map[0].class"),
    ({"exception": "errmap_app.Busy", "status": 200}, "error_map[0].status"),
    ({"exception": "errmap_app Busy"}, "error_map[0].exception"),
])
def test_check_refuses_bad_entries(weir_bin, tmp_path, entry, key):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml({"error_map": [entry]}))
    code, out = run_weir(weir_bin, check_args(p))
    assert code == 2 and key in out, "exit %r\n%s" % (code, out)


def test_serve_refuses_to_start_with_a_class_that_cannot_be_imported(weir, tmp_path):
    srv = weir(app=APP, chdir=FRONT_APPS, workers=1, wait=False,
               config=to_toml({"error_map": [{"exception": "errmap_app.NoSuchError"}]}))
    wait_for(lambda: not srv.alive, 60, what="weir to exit")
    assert srv.proc.returncode == 2, srv.output()
    out = srv.output()
    assert "error_map[0].exception" in out and "NoSuchError" in out, out[-3000:]


# ---------------------------------------------------------------------------------------
# A real MariaDB


@pytest.fixture
def mysql_url():
    url = os.environ.get("WEIR_TEST_MYSQL_URL", "").strip()
    if not url:
        pytest.skip("WEIR_TEST_MYSQL_URL is unset: scripts/mariadb.sh start; "
                    "export WEIR_TEST_MYSQL_URL=$(scripts/mariadb.sh url)")
    return url


def _connect(url, database=None, **kw):
    import pymysql

    u = urlparse(url)
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or ""),
                           password=unquote(u.password or ""), database=database, connect_timeout=5, **kw)


@pytest.fixture
def scratch_db(mysql_url):
    """A fresh database with table `locked` (one row, id 1); yields its URL."""
    name = "weir_test_errmap_%d_%d" % (os.getpid(), int(time.time() * 1000) % 10**6)
    admin = _connect(mysql_url, autocommit=True)
    with admin.cursor() as c:
        c.execute("DROP DATABASE IF EXISTS `%s`" % name)
        c.execute("CREATE DATABASE `%s`" % name)
        c.execute("CREATE TABLE `%s`.locked (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB" % name)
        c.execute("INSERT INTO `%s`.locked VALUES (1, 0)" % name)
    u = urlparse(mysql_url)
    try:
        yield u._replace(path="/" + name).geturl()
    finally:
        with admin.cursor() as c:
            c.execute("DROP DATABASE IF EXISTS `%s`" % name)
        admin.close()


@BOTH
def test_lock_wait_timeout_is_409_db_conflict_and_the_worker_stays(errmap, scratch_db, accept):
    s = errmap(config={"errors": {"mysql": True}}, env={"ERRMAP_DB_URL": scratch_db})
    pid = s.pid()
    assert s.get("/lock").status == 200  # the app reaches the database

    # transaction 1 (here) holds row 1; transaction 2 (the app's UPDATE) waits for it
    holder = _connect(scratch_db, database=urlparse(scratch_db).path.lstrip("/"), autocommit=False)
    try:
        with holder.cursor() as c:
            c.execute("SELECT v FROM locked WHERE id = 1 FOR UPDATE")
        t0 = time.monotonic()
        r = s.get("/lock", accept)
        took = time.monotonic() - t0
        rid = assert_weir_error(r, 409, "db-conflict", accept, retry_after=1)
        assert 0.9 <= took < 10, "answered after %.2fs; innodb_lock_wait_timeout is 1s" % took
    finally:
        holder.rollback()
        holder.close()

    # same worker, serving, and the retry the client was told to make succeeds
    assert s.pid() == pid
    assert s.get("/lock").status == 200
    line = s.log_of(rid)
    assert (line["status"], line["error"], line["origin"]) == (409, "db-conflict", "database"), line
    assert s.requests_total("db-conflict") == 1
    out = wait_in_output(s, "request %s: warning: exception in the app answered 409 db-conflict (errors.mysql)" % rid)
    assert "1205" in out.split("request %s: warning" % rid, 1)[1], out[-3000:]


def test_statement_timeout_from_the_deadline_is_504_db_timeout(errmap, scratch_db):
    # request_timeout 3s: the app bounds its statement to what weir.deadline leaves minus
    # a second, so MariaDB stops it (1969) before weir's own deadline would.
    s = errmap(config={"errors": {"mysql": True}, "server": {"request_timeout": "3s"}},
               env={"ERRMAP_DB_URL": scratch_db})
    pid = s.pid()
    t0 = time.monotonic()
    r = s.get("/slow?s=20", "json")
    took = time.monotonic() - t0
    assert_weir_error(r, 504, "db-timeout", "json")
    assert took < 3.0, "answered after %.2fs: the statement should have stopped at about 2s" % took
    assert s.pid() == pid
    assert s.requests_total("db-timeout") == 1
    assert s.requests_total("deadline") == 0

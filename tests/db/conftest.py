"""Fixtures for the database tests: the MariaDB/MySQL server named by WEIR_TEST_MYSQL_URL
(tests that need it are skipped, with the reason, when it is unset), a scratch database
per test, and the weir binary ($WEIR_BIN, else debug/weir under $CARGO_TARGET_DIR or
target/) for the `weir db` tests."""

import itertools
import os
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHOP = os.path.join(ROOT, "examples", "shop")
if SHOP not in sys.path:
    sys.path.insert(0, SHOP)

_counter = itertools.count()


@pytest.fixture
def mysql_url():
    url = os.environ.get("WEIR_TEST_MYSQL_URL", "").strip()
    if not url:
        pytest.skip("WEIR_TEST_MYSQL_URL is unset: scripts/mariadb.sh start; "
                    "export WEIR_TEST_MYSQL_URL=$(scripts/mariadb.sh url)")
    return url


def url_with_db(url: str, db: str) -> str:
    u = urlparse(url)
    return urlunparse(u._replace(path="/" + db))


@pytest.fixture
def scratch_url(mysql_url):
    """A fresh database on the test server (dropped afterwards); yields its URL."""
    import pymysql
    import shopdb

    name = f"weir_test_py_{os.getpid()}_{next(_counter)}"
    p = shopdb.parse_mysql_url(mysql_url)
    kw = p.connect_kwargs()
    kw.pop("database")
    admin = pymysql.connect(**kw)
    with admin.cursor() as c:
        c.execute(f"DROP DATABASE IF EXISTS `{name}`")
        c.execute(f"CREATE DATABASE `{name}`")
    try:
        yield url_with_db(mysql_url, name)
    finally:
        with admin.cursor() as c:
            c.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture(scope="session")
def weir_bin() -> Path:
    """$WEIR_BIN, else debug/weir under $CARGO_TARGET_DIR (relative to the repository, where
    cargo runs) or target/; fails (not skips) when it is missing: never test nothing."""
    if os.environ.get("WEIR_BIN"):
        p = Path(os.environ["WEIR_BIN"])
    else:
        p = Path(ROOT) / os.environ.get("CARGO_TARGET_DIR", "target") / "debug" / "weir"
    if not p.exists():
        pytest.fail("weir binary not found at %s: run `cargo build -p weir` (scripts/test.sh does) "
                    "or set WEIR_BIN" % p, pytrace=False)
    return p

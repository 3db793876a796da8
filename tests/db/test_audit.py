"""`weir db audit` on a real server: the verdicts of issue 21 (descending key parts, indexes
the optimizer ignores, a unique twin of the primary key, foreign keys to tables whose names
differ only in case) and the output that explains them.

Each test builds a schema in a scratch database, runs the weir binary, applies every
statement weir suggests, and then asks the server whether anything the optimizer or the
application relied on is gone: EXPLAIN for plans, refused inserts for constraints, and a
second audit that must find nothing left to do.

MariaDB calls an index the optimizer does not use `IGNORED` (10.6+), MySQL 8 `INVISIBLE`;
the tests that use one run once per keyword and skip the one the server does not have.
"""

import json
import subprocess

import pymysql
import pytest
import shopdb


def connect(url):
    return pymysql.connect(**shopdb.parse_mysql_url(url).connect_kwargs())


class Db:
    """A connection to the scratch database, with the few things the tests ask of it."""

    def __init__(self, url):
        self.url = url
        self.conn = connect(url)
        version = self.one("SELECT VERSION()")
        self.mariadb = "mariadb" in version.lower()
        self.lower_case_table_names = int(self.one("SELECT @@lower_case_table_names"))

    def one(self, sql):
        with self.conn.cursor() as c:
            c.execute(sql)
            return c.fetchone()[0]

    def run(self, *statements):
        with self.conn.cursor() as c:
            for s in statements:
                c.execute(s)

    def fill(self, table, rows, a=lambda i: i % 50):
        """Adds rows (a = a(i), b = i % 7) and refreshes the statistics."""
        with self.conn.cursor() as c:
            c.executemany(f"INSERT INTO {table} (a, b) VALUES (%s, %s)",
                          [(a(i), i % 7) for i in range(rows)])
            c.execute(f"ANALYZE TABLE {table}")
            c.fetchall()

    def explain(self, sql):
        with self.conn.cursor(pymysql.cursors.DictCursor) as c:
            c.execute("EXPLAIN " + sql)
            row = c.fetchall()[0]
        return {"key": row["key"], "extra": row["Extra"] or ""}

    def indexes(self, table):
        with self.conn.cursor() as c:
            c.execute("SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS "
                      "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,))
            return {r[0] for r in c.fetchall()}

    def refused(self, sql):
        """The error number the server answers `sql` with (None when it runs)."""
        try:
            self.run(sql)
        except pymysql.err.MySQLError as e:
            return e.args[0]
        return None


@pytest.fixture
def db(scratch_url):
    d = Db(scratch_url)
    yield d
    d.conn.close()


@pytest.fixture(params=["IGNORED", "INVISIBLE"])
def hidden(request, db):
    """The keyword for an index the optimizer does not use, where this server has it."""
    word = request.param
    if word == "IGNORED" and not db.mariadb:
        pytest.skip("IGNORED indexes are MariaDB's (10.6+); this server is MySQL")
    if word == "INVISIBLE" and db.mariadb:
        pytest.skip("INVISIBLE indexes are MySQL 8's; MariaDB has IGNORED instead")
    return word


def audit(weir_bin, db, tmp_path):
    """Runs `weir db audit` on the scratch database: (report as JSON, text output)."""
    path = tmp_path / "audit.json"
    r = subprocess.run([str(weir_bin), "db", "audit", "--dsn", db.url, "--json", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(path.read_text()), r.stdout


def findings(report):
    return [(f["table"], f["kind"], f["index"] or f["constraint"], f["covered_by"])
            for f in report["findings"]]


def apply_all(db, report):
    """Runs every suggested statement, as a DBA following the audit would."""
    statements = [f["suggestion"] for f in report["findings"] if f["suggestion"]]
    db.run(*statements)
    return statements


def clean_after(weir_bin, db, tmp_path, report):
    """Applies the suggestions; a second audit then has nothing left to suggest."""
    apply_all(db, report)
    again, text = audit(weir_bin, db, tmp_path)
    assert [f for f in again["findings"] if f["suggestion"]] == [], text
    return again


RANGE_ORDER = "SELECT a, b FROM e WHERE a BETWEEN 3 AND 9 ORDER BY a, b"


def test_ascending_and_descending_indexes_are_not_twins(db, weir_bin, tmp_path):
    db.run("CREATE TABLE e (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, "
           "KEY k_ab (a, b), KEY k_a_bdesc (a, b DESC)) ENGINE=InnoDB")
    db.fill("e", 2000)
    before = db.explain(RANGE_ORDER)
    assert before["key"] == "k_ab" and "Using index" in before["extra"], before
    assert "filesort" not in before["extra"], before

    report, text = audit(weir_bin, db, tmp_path)
    assert report["findings"] == [], text
    clean_after(weir_bin, db, tmp_path, report)
    assert db.explain(RANGE_ORDER) == before
    assert db.indexes("e") == {"PRIMARY", "k_ab", "k_a_bdesc"}

    # What the old verdict (DROP INDEX k_ab) would have cost: the sort comes back.
    db.run("ALTER TABLE e DROP INDEX k_ab")
    after = db.explain(RANGE_ORDER)
    assert "Using filesort" in after["extra"], after


def test_twins_with_the_same_direction_are_twins_and_say_so(db, weir_bin, tmp_path, hidden):
    db.run("CREATE TABLE t (id INT PRIMARY KEY, b INT, c VARCHAR(40), "
           f"KEY k1 (c(10), b DESC), KEY k2 (c(10), b DESC) {hidden}) ENGINE=InnoDB")
    report, text = audit(weir_bin, db, tmp_path)
    assert findings(report) == [("t", "duplicate-index", "k2", "k1")], text
    f = report["findings"][0]
    # Column lists show prefix lengths and directions, in JSON and in text; the index the
    # optimizer ignores says so.
    assert f["columns"] == ["c(10)", "b DESC"] and f["covered_by_columns"] == ["c(10)", "b DESC"]
    assert f["visibility"] == hidden.lower() and f["covered_by_visibility"] == "visible"
    assert f"duplicate-index index `k2` (c(10), b DESC) {hidden}: same key parts as `k1`" in text
    clean_after(weir_bin, db, tmp_path, report)
    assert db.indexes("t") == {"PRIMARY", "k1"}


def test_among_twins_the_ignored_one_goes(db, weir_bin, tmp_path, hidden):
    db.run(f"CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, "
           f"KEY a1 (a) {hidden}, KEY a2 (a)) ENGINE=InnoDB")
    db.fill("t", 2000)
    lookup = "SELECT id FROM t WHERE a = 5"
    assert db.explain(lookup)["key"] == "a2"

    report, text = audit(weir_bin, db, tmp_path)
    assert findings(report) == [("t", "duplicate-index", "a1", "a2")], text
    assert report["findings"][0]["suggestion"] == f"ALTER TABLE `{db_name(db)}`.`t` DROP INDEX `a1`;"
    assert f"index `a1` (a) {hidden}:" in text
    clean_after(weir_bin, db, tmp_path, report)
    assert db.indexes("t") == {"PRIMARY", "a2"}
    assert db.explain(lookup)["key"] == "a2"


def test_a_left_prefix_of_an_ignored_index_is_kept(db, weir_bin, tmp_path, hidden):
    db.run("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, "
           f"KEY k_a (a), KEY k_ab (a, b) {hidden}) ENGINE=InnoDB")
    db.fill("t", 2000)
    lookup = "SELECT id FROM t WHERE a = 5"
    assert db.explain(lookup)["key"] == "k_a"

    report, text = audit(weir_bin, db, tmp_path)
    assert report["findings"] == [], text
    assert db.explain(lookup)["key"] == "k_a"
    # The other way round the ignored prefix is the one to go: the optimizer keeps k_ab.
    db.run(f"ALTER TABLE t ALTER INDEX k_ab {unhide(hidden)}, ALTER INDEX k_a {hidden}")
    report, text = audit(weir_bin, db, tmp_path)
    assert findings(report) == [("t", "left-prefix-index", "k_a", "k_ab")], text
    clean_after(weir_bin, db, tmp_path, report)
    assert db.indexes("t") == {"PRIMARY", "k_ab"}
    assert db.explain(lookup)["key"] == "k_ab"


def test_an_ignored_unique_twin_is_made_visible_not_dropped(db, weir_bin, tmp_path, hidden):
    db.run("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, "
           f"UNIQUE KEY u (a) {hidden}, KEY k (a)) ENGINE=InnoDB")
    db.fill("t", 2000, a=lambda i: i)  # unique values
    lookup = "SELECT id FROM t WHERE a = 5"
    assert db.explain(lookup)["key"] == "k"

    report, text = audit(weir_bin, db, tmp_path)
    assert findings(report) == [("t", "duplicate-index", "k", "u")], text
    assert report["findings"][0]["suggestion"] == (
        f"ALTER TABLE `{db_name(db)}`.`t` ALTER INDEX `u` {unhide(hidden)}, DROP INDEX `k`;")
    clean_after(weir_bin, db, tmp_path, report)
    assert db.indexes("t") == {"PRIMARY", "u"}
    assert db.explain(lookup)["key"] == "u"
    assert db.refused("INSERT INTO t (a) VALUES (5)") == 1062  # the constraint stays


def test_a_unique_twin_of_the_primary_key_is_dropped(db, weir_bin, tmp_path):
    db.run("CREATE TABLE t (id INT PRIMARY KEY, a INT, UNIQUE KEY u_id (id), "
           "UNIQUE KEY u_a1 (a), UNIQUE KEY u_a2 (a)) ENGINE=InnoDB")
    report, text = audit(weir_bin, db, tmp_path)
    assert sorted(findings(report)) == [
        ("t", "duplicate-index", "u_a2", "u_a1"),
        ("t", "duplicate-primary-key", "u_id", "PRIMARY"),
    ], text
    assert "duplicate-primary-key index `u_id` (id): same key parts as the primary key" in text
    clean_after(weir_bin, db, tmp_path, report)
    assert db.indexes("t") == {"PRIMARY", "u_a1"}
    # Both constraints are still enforced.
    db.run("INSERT INTO t VALUES (1, 1)")
    assert db.refused("INSERT INTO t VALUES (1, 2)") == 1062
    assert db.refused("INSERT INTO t VALUES (2, 1)") == 1062


def test_foreign_keys_to_tables_whose_names_differ_in_case(db, weir_bin, tmp_path):
    if db.lower_case_table_names != 0:
        pytest.skip("needs lower_case_table_names = 0 (two tables pcase and PCASE)")
    db.run("CREATE TABLE pcase (id INT PRIMARY KEY) ENGINE=InnoDB",
           "CREATE TABLE PCASE (id INT PRIMARY KEY) ENGINE=InnoDB",
           "CREATE TABLE child (id INT PRIMARY KEY, p INT, KEY k_p (p), "
           "CONSTRAINT fk_lower FOREIGN KEY (p) REFERENCES pcase (id), "
           "CONSTRAINT fk_upper FOREIGN KEY (p) REFERENCES PCASE (id)) ENGINE=InnoDB")
    report, text = audit(weir_bin, db, tmp_path)
    assert report["findings"] == [], text
    # Two parents, two checks: a row only one of them has is refused.
    db.run("INSERT INTO pcase VALUES (1)")
    assert db.refused("INSERT INTO child VALUES (1, 1)") == 1452
    db.run("INSERT INTO PCASE VALUES (1)", "INSERT INTO child VALUES (1, 1)")

    # A real duplicate (same parent, spelled the same) is still found, and can go.
    db.run("ALTER TABLE child ADD CONSTRAINT fk_lower2 FOREIGN KEY (p) REFERENCES pcase (id)")
    report, text = audit(weir_bin, db, tmp_path)
    assert findings(report) == [("child", "duplicate-foreign-key", "fk_lower2", "fk_lower")], text
    clean_after(weir_bin, db, tmp_path, report)
    db.run("INSERT INTO pcase VALUES (2)")
    assert db.refused("INSERT INTO child VALUES (2, 2)") == 1452


def test_one_kind_per_primary_key_situation_with_short_reasons(db, weir_bin, tmp_path):
    db.run("CREATE TABLE parent (id INT PRIMARY KEY, x INT NOT NULL, y INT NOT NULL, "
           "KEY k_xy (x, y)) ENGINE=InnoDB",
           "CREATE TABLE t_twin (id INT PRIMARY KEY, a INT, KEY k_id (id)) ENGINE=InnoDB",
           "CREATE TABLE t_dup (id INT PRIMARY KEY, a INT, KEY k_a (a), KEY k_a_id (a, id)) "
           "ENGINE=InnoDB",
           "CREATE TABLE t_sfx (id INT AUTO_INCREMENT PRIMARY KEY, b INT, KEY k_b_id (b, id)) "
           "ENGINE=InnoDB",
           "CREATE TABLE t_fk (id INT PRIMARY KEY, b INT NOT NULL, KEY k_b_id (b, id), "
           "CONSTRAINT fk_pair FOREIGN KEY (b, id) REFERENCES parent (x, y)) ENGINE=InnoDB")
    db.run("INSERT INTO t_sfx (b) VALUES " + ", ".join(f"({i % 50})" for i in range(2000)),
           "ANALYZE TABLE t_sfx")
    by_pk = "SELECT id FROM t_sfx WHERE b = 7 ORDER BY id"
    before = db.explain(by_pk)
    assert before["key"] == "k_b_id" and "filesort" not in before["extra"], before

    report, text = audit(weir_bin, db, tmp_path)
    assert sorted(findings(report)) == [
        ("t_dup", "primary-key-suffix-duplicate", "k_a_id", "k_a"),
        ("t_fk", "index-needed-by-foreign-key", "k_b_id", "PRIMARY"),
        ("t_sfx", "primary-key-suffix-explicit", "k_b_id", "PRIMARY"),
        ("t_twin", "duplicate-primary-key", "k_id", "PRIMARY"),
    ], text
    assert "repeats-primary-key" not in text
    for f in report["findings"]:
        assert len(f["reason"]) <= 120, f
    explicit = next(f for f in report["findings"] if f["kind"] == "primary-key-suffix-explicit")
    assert "same entries" in explicit["reason"], explicit
    needed = next(f for f in report["findings"] if f["kind"] == "index-needed-by-foreign-key")
    assert needed["suggestion"] is None and "1553" in needed["reason"], needed

    again = clean_after(weir_bin, db, tmp_path, report)
    assert findings(again) == [("t_fk", "index-needed-by-foreign-key", "k_b_id", "PRIMARY")]
    # (b) stores what (b, id) did: the same plan, still without a sort.
    after = db.explain(by_pk)
    assert after["key"] == "k_b_id" and "filesort" not in after["extra"], after


def db_name(db):
    return db.one("SELECT DATABASE()")


def unhide(word):
    return "NOT IGNORED" if word == "IGNORED" else "VISIBLE"

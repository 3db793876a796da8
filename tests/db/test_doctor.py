"""`weir doctor` against a real MariaDB (WEIR_TEST_MYSQL_URL) and a real app import: one
configuration per check that trips it, the exit statuses (0 warnings only, 1 an error, 2 bad
input or an unreachable database) and the JSON form.

The app is tests/apps/dbconns.py, which opens DOCTOR_APP_CONNS connections at import (as an
app that builds its pool at import does): the doctor imports it once, the way a worker does,
and counts them in the server's process list. The database's limits are not lowered for the
connection test (the server may be shared by a whole test run): the worker count is chosen
from the server's own max_connections instead. Where a test sets a global variable
(max_statement_time) it puts the old value back."""

import json
import os
import resource
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
TIMEOUT = 120  # one doctor run: an import and a few queries


def run_doctor(weir_bin, args, env_extra=None, preexec_fn=None):
    env = dict(os.environ)
    env.pop("WEIR_DB_DSN", None)
    env.update(env_extra or {})
    return subprocess.run(
        [str(weir_bin), "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        preexec_fn=preexec_fn,
    )


def write_config(tmp_path, text):
    p = tmp_path / "weir.toml"
    p.write_text(text)
    return p


def safe_config(**app):
    """A configuration with every safeguard set; `app` overrides [app] keys (None drops)."""
    keys = {
        "module": '"dbconns:app"',
        "chdir": json.dumps(str(APPS)),
        "workers": "4",
        "harakiri": "25",
        "max_requests": "5000",
        "max_requests_jitter": "500",
        "reload_on_rss": '"2GiB"',
        "ready_check": '"dbconns:ping"',
        "preload": "false",
    }
    for k, v in app.items():
        if v is None:
            keys.pop(k, None)
        else:
            keys[k] = v
    lines = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return f"""
[server]
listen = ["127.0.0.1:8000"]
request_timeout = "30s"
access_log = "stdout"

[app]
{lines}

[admin]
listen = "127.0.0.1:9901"
"""


@pytest.fixture
def doctor(weir_bin, mysql_url, tmp_path):
    """doctor(config_text, *flags, conns=N, json=True) -> (exit status, report or None, stderr)."""

    def go(config_text, *flags, conns=2, as_json=True, preexec_fn=None):
        cfg = write_config(tmp_path, config_text)
        args = ["--config", str(cfg), "--database-url", mysql_url, *flags]
        if as_json:
            args.append("--json")
        p = run_doctor(
            weir_bin,
            args,
            {"DOCTOR_APP_DSN": mysql_url, "DOCTOR_APP_CONNS": str(conns)},
            preexec_fn=preexec_fn,
        )
        report = json.loads(p.stdout) if as_json and p.returncode in (0, 1) else None
        return p.returncode, report, p.stderr

    return go


def by_check(report):
    out = {}
    for f in report["findings"]:
        out.setdefault(f["check"], []).append(f)
    return out


def severities(report, check):
    return [f["severity"] for f in by_check(report).get(check, [])]


@pytest.fixture
def admin_conn(mysql_url):
    import pymysql
    import shopdb

    c = pymysql.connect(**shopdb.parse_mysql_url(mysql_url).connect_kwargs())
    yield c
    c.close()


def global_var(conn, name):
    with conn.cursor() as c:
        c.execute(f"SELECT @@GLOBAL.{name}")
        return c.fetchone()[0]


@pytest.fixture
def set_global(admin_conn):
    """set_global(name, value): SET GLOBAL for the test, the old value put back after."""
    saved = []

    def go(name, value):
        saved.append((name, global_var(admin_conn, name)))
        with admin_conn.cursor() as c:
            c.execute(f"SET GLOBAL {name} = %s", (value,))

    yield go
    for name, old in reversed(saved):
        with admin_conn.cursor() as c:
            c.execute(f"SET GLOBAL {name} = %s", (old,))


# -- exit 0: warnings only, and the JSON form ------------------------------------------------


def test_a_safe_setup_exits_0_and_the_json_has_the_documented_form(doctor, set_global):
    set_global("max_statement_time", 20)  # below harakiri (25s): the chain holds
    rc, report, err = doctor(safe_config(), "--client-timeout", "60s")
    assert rc == 0, err
    for f in report["findings"]:
        assert set(f) == {"check", "severity", "message", "fix"}
        assert f["severity"] in ("error", "warning")
        assert f["message"] and f["fix"]
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    # Nothing about the chain, the connections or the safeguards; only machine-dependent
    # checks may warn on another machine.
    assert set(by_check(report)) <= {"backlog", "nofile", "memory"}, report["findings"]
    assert report["skipped"] == []
    app = report["facts"]["app"]
    assert app["db_connections"] == 2  # measured: the import's own two connections
    assert app["rss"] > 5 << 20
    assert report["facts"]["database"]["statement_limit"]["variable"] == "max_statement_time"


def test_text_output(weir_bin, mysql_url, tmp_path):
    cfg = write_config(tmp_path, safe_config(max_requests=None, max_requests_jitter=None))
    p = run_doctor(
        weir_bin,
        ["--config", str(cfg), "--database-url", mysql_url],
        {"DOCTOR_APP_DSN": mysql_url, "DOCTOR_APP_CONNS": "1"},
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("weir doctor: 0 errors, "), out
    assert "warning [max_requests] app.max_requests is 0" in out
    assert "  fix: set app.max_requests" in out
    assert "measured: the app dbconns:app imported in" in out
    assert "1 database connection(s) open after it" in out
    assert "skipped timeout_chain: no --client-timeout" in out


# -- exit 1: each error --------------------------------------------------------------------


def test_workers_times_measured_connections_over_max_connections_is_an_error(doctor, admin_conn):
    max_conn = int(global_var(admin_conn, "max_connections"))
    conns = 3
    workers = max_conn // conns + 1  # workers x 3 > max_connections, whatever the server's
    if workers > 1024:
        pytest.skip(f"max_connections {max_conn} needs more than 1024 workers of 3 connections")
    rc, report, err = doctor(
        safe_config(workers=str(workers), reload_on_rss=None), conns=conns
    )
    assert rc == 1, err
    [f] = by_check(report)["db_connections"]
    assert f["severity"] == "error"
    assert f"{workers} workers x 3 per worker (measured: the app's import opened 3)" in f["message"]
    assert f"max_connections = {max_conn}" in f["message"]
    assert "kept for other clients" in f["message"]
    assert "raise max_connections" in f["fix"]
    # --pool-size is the operator's word and wins over the count.
    rc, report, err = doctor(safe_config(), "--pool-size", "1", conns=conns)
    assert rc == 0, err
    assert "db_connections" not in by_check(report)


def test_a_reloads_second_generation_over_the_limit_is_a_warning(doctor, admin_conn):
    max_conn = int(global_var(admin_conn, "max_connections"))
    room = max_conn - max(10, -(-max_conn // 10))
    workers = room // 2 + 1  # one generation fits (x 1), two do not
    if workers > 1024:
        pytest.skip("max_connections too high for 1024 workers")
    # --no-import: the memory of that many workers is not this test's business.
    rc, report, err = doctor(safe_config(workers=str(workers)), "--pool-size", "1", "--no-import")
    assert rc == 0, err
    assert severities(report, "db_connections") == ["warning"]
    assert "during a reload (SIGHUP)" in by_check(report)["db_connections"][0]["message"]


def test_harakiri_longer_than_the_client_timeout_breaks_the_chain(doctor):
    # No request_timeout: queue.timeout (10s) + harakiri (90s) >= the client's 60s.
    text = safe_config(harakiri="90").replace('request_timeout = "30s"\n', "")
    rc, report, err = doctor(text, "--client-timeout", "60s")
    assert rc == 1, err
    [f] = by_check(report)["timeout_chain"]
    assert f["severity"] == "error"
    assert "app.harakiri = 90s" in f["message"] and "60s" in f["message"]
    assert "server.request_timeout below 60s" in f["fix"]
    # A request_timeout not below the client's: an error under its key.
    rc, report, err = doctor(
        safe_config().replace('"30s"', '"60s"'), "--client-timeout", "60s"
    )
    assert rc == 1, err
    assert "server.request_timeout = 60s" in by_check(report)["timeout_chain"][0]["message"]


def test_a_statement_limit_longer_than_harakiri_is_an_error(doctor, set_global):
    set_global("max_statement_time", 3600)
    rc, report, err = doctor(safe_config())
    assert rc == 1, err
    [f] = by_check(report)["statement_timeout"]
    assert f["severity"] == "error"
    assert "max_statement_time" in f["message"] and "app.harakiri = 25s" in f["message"]
    assert "SET GLOBAL max_statement_time = 22.5" in f["fix"]


def test_no_statement_limit_is_a_warning(doctor, set_global):
    set_global("max_statement_time", 0)
    rc, report, err = doctor(safe_config())
    assert rc == 0, err
    assert severities(report, "statement_timeout") == ["warning"]


def test_a_request_longer_than_wait_timeout_is_a_warning(doctor, admin_conn):
    wait = int(global_var(admin_conn, "wait_timeout"))
    text = safe_config().replace('request_timeout = "30s"', f'request_timeout = "{wait + 60}s"')
    rc, report, err = doctor(text)
    assert rc == 0, err
    [f] = by_check(report)["wait_timeout"]
    assert f["severity"] == "warning"
    assert "MySQL server has gone away" in f["message"]


def test_reload_on_rss_below_a_fresh_workers_rss_is_an_error(doctor):
    rc, report, err = doctor(safe_config(reload_on_rss='"1MiB"'))
    assert rc == 1, err
    [f] = by_check(report)["reload_on_rss"]
    assert f["severity"] == "error"
    assert "recycled after each request" in f["message"]


def test_memory_over_the_machine_is_an_error(doctor):
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # A fresh dbconns worker is tens of MiB; 1024 of them (the most weir runs) must be
    # over this machine's memory for the test to mean anything.
    rc, report, err = doctor(safe_config(workers="1024", reload_on_rss=None), "--pool-size", "0")
    assert rc in (0, 1), err
    rss = report["facts"]["app"]["rss"]
    limit = report["facts"]["machine"]["mem_total"]
    cg = report["facts"]["machine"]["cgroup_memory_max"]
    if cg is not None:
        limit = min(limit, cg)
    if 1024 * rss <= limit:
        pytest.skip(f"1024 workers x {rss} bytes fit in {limit} bytes (MemTotal {total})")
    assert rc == 1
    [f] = by_check(report)["memory"]
    assert f["severity"] == "error"
    assert "1024 processes (1024 workers) x" in f["message"] and "run at most" in f["fix"]


def test_preload_true_with_sockets_left_by_the_import_is_an_error(doctor):
    rc, report, err = doctor(safe_config(preload="true"), conns=1)
    assert rc == 1, err
    [f] = by_check(report)["preload"]
    assert f["severity"] == "error"
    assert "a socket connected to 127.0.0.1" in f["message"]
    # "auto" falls back: a warning, and the memory counted without a zygote.
    rc, report, err = doctor(safe_config(preload='"auto"'), conns=1)
    assert rc == 0, err
    assert severities(report, "preload") == ["warning"]


# -- warnings: the safeguards, the kernel's limits -------------------------------------------


def test_missing_safeguards_are_warnings(doctor):
    text = safe_config(harakiri=None, max_requests=None, max_requests_jitter=None,
                       ready_check=None, reload_on_rss=None)
    text = text.replace('access_log = "stdout"', 'access_log = "off"')
    text = text.replace('listen = "127.0.0.1:9901"', 'listen = "0.0.0.0:9901"')
    rc, report, err = doctor(text)
    assert rc == 0, err
    for check in ("harakiri", "max_requests", "ready_check", "access_log", "admin_listen",
                  "reload_on_rss"):
        assert severities(report, check) == ["warning"], (check, report["findings"])


def test_flags_override_the_file_as_for_weir_serve(doctor):
    rc, report, err = doctor(
        safe_config(), "--access-log", "off", "--admin-listen", "0.0.0.0:9901",
        "--max-requests", "0", "--preload", "on", conns=1,
    )
    assert rc == 1, err  # preload on with the import's socket
    for check in ("access_log", "admin_listen", "max_requests"):
        assert severities(report, check) == ["warning"], check
    assert severities(report, "preload") == ["error"]


def test_a_backlog_above_somaxconn_is_a_warning(doctor):
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    text = safe_config().replace("[server]\n", f"[server]\nbacklog = {somaxconn + 1}\n")
    rc, report, err = doctor(text)
    assert rc == 0, err
    [f] = by_check(report)["backlog"]
    assert f"net.core.somaxconn ({somaxconn})" in f["message"]
    assert f"sysctl -w net.core.somaxconn={somaxconn + 1}" in f["fix"]


def test_a_low_open_files_limit_is_a_warning(doctor):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    # 64 workers: 64 + 2 listeners + 4 x 64 + 2 x (64 x 64 + 64) descriptors.
    rc, report, err = doctor(safe_config(workers="64"), "--pool-size", "1", preexec_fn=low)
    assert rc == 0, err
    [f] = by_check(report)["nofile"]
    assert "ulimit -n is 256" in f["message"]
    assert report["facts"]["machine"]["nofile_soft"] == 256


# -- exit 2: bad input, no database, an app that does not import ------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_database_exits_2(weir_bin, tmp_path, mysql_url):
    cfg = write_config(tmp_path, safe_config())
    url = f"mysql://weir:weir@127.0.0.1:{free_port()}/weir_shop"
    p = run_doctor(weir_bin, ["--config", str(cfg), "--database-url", url, "--json"],
                   {"DOCTOR_APP_DSN": mysql_url})
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert "weir doctor: cannot connect to weir@127.0.0.1:" in p.stderr


def test_bad_input_exits_2(weir_bin, tmp_path, mysql_url):
    # An invalid configuration: the key is named, as by `weir serve --check`.
    bad = safe_config(harakiri="90")
    p = run_doctor(weir_bin, ["--config", str(write_config(tmp_path, bad))])
    assert p.returncode == 2
    assert "app.harakiri" in p.stderr
    # A bad flag value.
    p = run_doctor(weir_bin, ["--app", "x:app", "--client-timeout", "soon"])
    assert p.returncode == 2
    assert "soon" in p.stderr
    # A DSN that is not one.
    p = run_doctor(weir_bin, ["--app", "x:app", "--database-url", "pg://x/y"])
    assert p.returncode == 2
    # An app whose import fails: the traceback is shown.
    p = run_doctor(weir_bin, ["--app", "broken:app", "--chdir", str(APPS)])
    assert p.returncode == 2
    assert "failed to import" in p.stderr and "broken on purpose" in p.stderr


def test_an_import_past_startup_timeout_exits_2(weir_bin, tmp_path):
    (tmp_path / "slowimport.py").write_text("import time\ntime.sleep(30)\napp = None\n")
    cfg = write_config(tmp_path, f"""
[app]
module = "slowimport:app"
chdir = {json.dumps(str(tmp_path))}
startup_timeout = "1s"
""")
    p = run_doctor(weir_bin, ["--config", str(cfg)])
    assert p.returncode == 2, p.stderr
    assert "did not finish importing within app.startup_timeout (1s)" in p.stderr


def test_without_a_database_the_database_checks_are_skipped(weir_bin, tmp_path, mysql_url):
    cfg = write_config(tmp_path, safe_config())
    p = run_doctor(weir_bin, ["--config", str(cfg), "--json"], {"DOCTOR_APP_DSN": mysql_url})
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    skipped = {s["check"] for s in report["skipped"]}
    assert {"statement_timeout", "wait_timeout", "db_connections", "timeout_chain"} <= skipped
    assert report["facts"]["database"] is None
    assert report["facts"]["app"]["db_connections"] is None


def test_the_help_has_an_example(weir_bin):
    p = run_doctor(weir_bin, ["--help"])
    assert p.returncode == 0
    assert "Example:\n  weir doctor --config" in p.stdout
    assert "Exit status: 0 no error" in p.stdout

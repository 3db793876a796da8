"""`weir serve`'s command line and weir.toml, end to end: defaults, listeners (TCP, Unix,
several, uwsgi), --chdir, --virtualenv, flags over the file, and the errors for bad
configuration (exit status 2, naming the key).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e_lib import APPS, Addr, free_port, get, sock_path, wait_for


def run_weir(weir_bin, args, timeout=30, cwd=None):
    """Runs weir to completion (for commands that must exit at once)."""
    try:
        p = subprocess.run([str(weir_bin)] + [str(a) for a in args], capture_output=True, timeout=timeout,
                           cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail("weir %s did not exit within %ss (stdout %r, stderr %r)" % (
            " ".join(map(str, args)), timeout, e.stdout, e.stderr), pytrace=False)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def concurrent_pids(addr, n, seconds=1.0):
    out, errs = [], []

    def one():
        try:
            r = get(addr, "/sleep?s=%s" % seconds, timeout=60)
            out.append(r)
        except Exception as e:
            errs.append(e)
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errs, errs
    assert all(r.status == 200 for r in out), out
    return {int(r.body) for r in out}


# ---------------------------------------------------------------------------------------
# bad configuration: exit 2, the key named


BAD_CONFIGS = [
    ("unknown-app-key", "[app]\nmodule = 'sup_app:application'\nbogus_knob = 1\n", "bogus_knob"),
    ("unknown-server-key", "[app]\nmodule = 'sup_app:application'\n[server]\nlisne = ['127.0.0.1:1']\n", "lisne"),
    ("unknown-section", "[app]\nmodule = 'sup_app:application'\n[nonsense_section]\nx = 1\n", "nonsense_section"),
    ("workers-not-a-number", "[app]\nmodule = 'sup_app:application'\nworkers = 'many'\n", "workers"),
    ("workers-zero", "[app]\nmodule = 'sup_app:application'\nworkers = 0\n", "workers"),
    ("harakiri-garbage", "[app]\nmodule = 'sup_app:application'\nharakiri = 'soon'\n", "harakiri"),
    ("reload-on-rss-garbage", "[app]\nmodule = 'sup_app:application'\nreload_on_rss = '12 parsecs'\n", "reload_on_rss"),
    ("graceful-timeout-garbage", "[app]\nmodule = 'sup_app:application'\ngraceful_timeout = 'forever'\n",
     "graceful_timeout"),
    ("max-requests-negative", "[app]\nmodule = 'sup_app:application'\nmax_requests = -1\n", "max_requests"),
    ("preload-not-a-mode", "[app]\nmodule = 'sup_app:application'\npreload = 'yes'\n", "app.preload"),
    ("preload-a-number", "[app]\nmodule = 'sup_app:application'\npreload = 1\n", "app.preload"),
    ("listen-garbage", "[app]\nmodule = 'sup_app:application'\n[server]\nlisten = ['not an address']\n", "listen"),
    ("uwsgi-listen-garbage", "[app]\nmodule = 'sup_app:application'\n[server]\nuwsgi_listen = ['nowhere:port']\n",
     "uwsgi_listen"),
    ("toml-syntax", "[app\nmodule = \n", None),
    # issue 14's limits: each names its key
    ("limit-req-unknown-variable", "[app]\nmodule = 'sup_app:application'\n[limit_req.z]\nkey = '$remote_adr'\n"
     "rate = '10r/s'\n", "limit_req.z.key"),
    ("limit-req-bad-rate", "[app]\nmodule = 'sup_app:application'\n[limit_req.z]\nkey = '$remote_addr'\n"
     "rate = '10 per second'\n", "limit_req.z.rate"),
    ("limit-req-delay-and-nodelay", "[app]\nmodule = 'sup_app:application'\n[limit_req.z]\nkey = '$remote_addr'\n"
     "rate = '10r/s'\nnodelay = true\ndelay = 3\n", "limit_req.z"),
    ("route-names-undefined-zone", "[app]\nmodule = 'sup_app:application'\n[[route]]\npath = '/'\n"
     "limit_req = ['nope']\n", "nope"),
    ("limits-bad-redis-url", "[app]\nmodule = 'sup_app:application'\n[limits]\nstore = 'redis:/oops'\n",
     "limits.store"),
    ("limit-conn-zero", "[app]\nmodule = 'sup_app:application'\n[limit_conn.c]\nkey = '$remote_addr'\nmax = 0\n",
     "limit_conn.c.max"),
    ("fair-key-unknown-variable", "[app]\nmodule = 'sup_app:application'\n[queue]\nfair_key = '$client'\n",
     "queue.fair_key"),
]


@pytest.mark.parametrize("case,text,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_the_key(weir_bin, tmp_path, case, text, key):
    cfg = tmp_path / "weir.toml"
    cfg.write_text(text)
    code, out = run_weir(weir_bin, ["serve", "--config", cfg, "--chdir", APPS, "--listen", "127.0.0.1:%d" % free_port()])
    assert code == 2, "exit status %r for %s; output:\n%s" % (code, case, out)
    if key:
        assert key in out, "the error does not name %r:\n%s" % (key, out)
    assert "Traceback" not in out and "panicked" not in out, out


BAD_FLAGS = [
    ("workers-flag-garbage", ["--app", "sup_app:application", "--workers", "abc"], "workers"),
    ("harakiri-flag-garbage", ["--app", "sup_app:application", "--harakiri", "soon"], "harakiri"),
    ("listen-flag-garbage", ["--app", "sup_app:application", "--listen", "999.1.2.3:99999"], "listen"),
    ("unknown-flag", ["--app", "sup_app:application", "--frobnicate"], "frobnicate"),
    ("preload-flag-garbage", ["--app", "sup_app:application", "--preload", "maybe"], "--preload"),
    ("no-app", [], "app"),
    ("missing-config-file", ["--app", "sup_app:application", "--config", "/nonexistent/weir-e2e.toml"],
     "/nonexistent/weir-e2e.toml"),
]


@pytest.mark.parametrize("case,args,word", BAD_FLAGS, ids=[c[0] for c in BAD_FLAGS])
def test_bad_flags_exit_2(weir_bin, case, args, word):
    code, out = run_weir(weir_bin, ["serve", "--chdir", APPS] + args)
    assert code == 2, "exit status %r for %s; output:\n%s" % (code, case, out)
    assert word in out, "the error does not name %r:\n%s" % (word, out)


def test_help_documents_every_flag(weir_bin):
    code, out = run_weir(weir_bin, ["serve", "--help"])
    assert code == 0, out
    for flag in ("--app", "--chdir", "--virtualenv", "--workers", "--listen", "--uwsgi-listen", "--harakiri",
                 "--preload", "--config"):
        assert flag in out, "%s is not in `weir serve --help`:\n%s" % (flag, out)


# ---------------------------------------------------------------------------------------
# good configuration


def test_full_config_file_is_accepted(weir, tmp_path):
    port = free_port()
    sock = tmp_path / "u.sock"
    cfg = {
        "app": {"module": "sup_app:application", "chdir": str(APPS), "workers": 2, "harakiri": "30s",
                "max_requests": 1000, "max_requests_jitter": 50, "reload_on_rss": "200MiB",
                "graceful_timeout": "30s"},
        "server": {"listen": ["127.0.0.1:%d" % port], "uwsgi_listen": ["unix:%s" % sock]},
    }
    srv = weir(app=None, chdir=None, workers=None, listen=None, config=cfg, wait=False)
    srv.wait_ready(Addr("127.0.0.1", port))
    assert get(Addr("127.0.0.1", port), "/pid").status == 200
    assert sock.exists()


def test_harakiri_as_bare_number_in_file(weir):
    srv = weir(app="sup_app:application", config={"app": {"harakiri": 30}})
    assert get(srv.addr, "/pid").status == 200


def test_defaults_only_app(weir):
    """With only --app: HTTP on 127.0.0.1:8000, 2 workers."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("127.0.0.1:8000 is busy on this machine")
    srv = weir(app="sup_app:application", workers=None, listen=None, wait=False)
    addr = Addr("127.0.0.1", 8000)
    srv.wait_ready(addr)
    pids = concurrent_pids(addr, 2, 1.5)
    assert len(pids) == 2
    # ... and not more than 2: three concurrent sleepers need two rounds
    t0 = time.monotonic()
    pids = concurrent_pids(addr, 3, 1.5)
    assert len(pids) == 2, pids
    assert time.monotonic() - t0 >= 2.5


def test_workers_flag(weir):
    srv = weir(app="sup_app:application", workers=3)
    assert len(concurrent_pids(srv.addr, 3, 1.5)) == 3


def test_flags_override_file(weir, tmp_path):
    p_file, p_flag = free_port(), free_port()
    cfg = {"app": {"module": "sup_app:application", "chdir": str(APPS), "workers": 1},
           "server": {"listen": ["127.0.0.1:%d" % p_file]}}
    srv = weir(app=None, chdir=None, workers=3, listen=["127.0.0.1:%d" % p_flag], config=cfg)
    assert len(concurrent_pids(srv.addr, 3, 1.5)) == 3, "--workers 3 did not override workers = 1"
    with pytest.raises(OSError):
        with socket.create_connection(("127.0.0.1", p_file), timeout=2):
            pass


def test_app_flag_overrides_file(weir):
    cfg = {"app": {"module": "no_such_module_e2e:application"}}
    srv = weir(app="sup_app:application", config=cfg)
    assert get(srv.addr, "/pid").status == 200


def test_unix_listener(weir):
    srv = weir(app="sup_app:application", listen="unix")
    assert srv.addr.unix
    r = get(srv.addr, "/pid")
    assert r.status == 200 and r.body.isdigit()


def test_several_listeners_share_one_pool(weir, short_tmp):
    a, b = free_port(), free_port()
    u = sock_path(short_tmp, "multi")
    srv = weir(app="sup_app:application", workers=2, listen=["127.0.0.1:%d" % a, "127.0.0.1:%d" % b, "unix:" + u])
    pids = set()
    for addr in srv.addrs:
        for _ in range(5):
            r = get(addr, "/pid")
            assert r.status == 200, (addr, r)
            pids.add(int(r.body))
    assert len(pids) <= 2, pids


def test_uwsgi_listen_tcp_behind_nginx(weir, nginx):
    port = free_port()
    srv = weir(app="conformance_app:application", listen=None, uwsgi_listen=["127.0.0.1:%d" % port], wait=False)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 30,
             what="weir's uwsgi listener")
    n = nginx("127.0.0.1:%d" % port)
    srv.wait_ready(n.addr)
    r = get(n.addr, "/environ?x=1")
    assert r.status == 200 and r.json()["environ"]["QUERY_STRING"] == "x=1"


def test_http_and_uwsgi_listeners_together(weir, nginx, short_tmp):
    u = sock_path(short_tmp, "both")
    srv = weir(app="sup_app:application", workers=2, uwsgi_listen=["unix:" + u])
    n = nginx("unix:" + u)
    pids = set()
    for addr in (srv.addr, n.addr):
        for _ in range(5):
            r = get(addr, "/pid")
            assert r.status == 200, (addr, r)
            pids.add(int(r.body))
    assert len(pids) <= 2, "two listeners, one pool of 2 workers, but %d pids" % len(pids)


def test_chdir_and_relative_module(weir, tmp_path):
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "here_app.py").write_text(
        "import os\nDATA = open('data.txt').read()\n"
        "def application(environ, start_response):\n"
        "    b = (DATA + ' ' + os.getcwd()).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(b)))])\n"
        "    return [b]\n")
    (d / "data.txt").write_text("from-chdir")
    srv = weir(app="here_app:application", chdir=d, cwd=tmp_path)
    r = get(srv.addr, "/")
    assert r.status == 200 and r.text == "from-chdir %s" % d, r


def test_virtualenv(weir, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    assert site.is_dir(), site
    (site / "e2e_venv_dep.py").write_text("VALUE = 'from-the-venv'\n")
    srv = weir(app="venv_app:application", args=["--virtualenv", str(venv)])
    r = get(srv.addr, "/")
    assert r.status == 200, r
    value, prefix = r.text.split(" ", 1)
    assert value == "from-the-venv"
    assert Path(prefix).resolve() == venv.resolve(), "sys.prefix is %s, not the virtualenv" % prefix


def test_virtualenv_missing_dependency_fails_cleanly(weir):
    # without --virtualenv the dependency is not importable: weir must say so and exit
    srv = weir(app="venv_app:application", wait=False)
    code = srv.proc.wait(60)
    assert code not in (None, 0), "exit status %r" % code
    assert "e2e_venv_dep" in srv.output()

"""Fixtures for weir's end-to-end tests: real `weir serve` processes, a real nginx, real
reference servers (uWSGI, Gunicorn), real sockets.

- `weir_bin`: $WEIR_BIN, else target/debug/weir (or under $CARGO_TARGET_DIR; scripts/test.sh
  builds it).
- `weir`: a factory, `weir(app=..., args=[...], config="toml text", ...)`, that starts
  `weir serve` on a free 127.0.0.1 port (or a Unix socket), captures its output to files,
  polls until a GET answers (bounded deadline, no fixed sleep) and always stops it
  (SIGTERM, SIGKILL to its process group after a bound).
- `nginx`: a factory for a private nginx (`nginx -p DIR -c DIR/nginx.conf`) that
  `uwsgi_pass`es to a Unix socket.
- `target`: the conformance targets, parametrized: weir over HTTP, nginx -> weir's
  uwsgi listener, and (only with WEIR_E2E_REFERENCE=1) nginx -> uWSGI and Gunicorn, to
  check the tests themselves against servers known to be right.

On a failure the output of every process the test used is printed in the report.
Every test has a time limit (marker `e2e_timeout(seconds)`, default 120 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_lib import (  # noqa: E402
    ALL_PROCS,
    APPS,
    REPO,
    Addr,
    Proc,
    free_port,
    get,
    sock_path,
    wait_for,
)

DEFAULT_TEST_TIMEOUT = 120.0
READY_TIMEOUT = float(os.environ.get("WEIR_E2E_READY_TIMEOUT", "60"))
REFERENCE = os.environ.get("WEIR_E2E_REFERENCE", "") not in ("", "0")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e_timeout(seconds): time limit of one end-to-end test")
    config.addinivalue_line("markers", "weir_only: asserts weir-specific behaviour (skipped on references)")


# ---------------------------------------------------------------------------------------
# Time limits and failure reports


class E2ETimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    m = item.get_closest_marker("e2e_timeout")
    limit = float(m.args[0]) if m else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise E2ETimeout("test exceeded its %.0f s limit" % limit)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_FIRST_PROC] = len(ALL_PROCS)


_FIRST_PROC = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    procs = list(ALL_PROCS[item.stash.get(_FIRST_PROC, len(ALL_PROCS)):])
    funcargs = getattr(item, "funcargs", {})
    tgt = funcargs.get("target") or funcargs.get("wtarget")
    if tgt is not None:
        procs = list(tgt.procs) + [p for p in procs if p not in tgt.procs]
    for p in procs:
        rep.sections.append(("process %s" % p.name, p.describe()))


# ---------------------------------------------------------------------------------------
# weir


def default_weir_bin() -> Path:
    """$WEIR_BIN, else debug/weir under $CARGO_TARGET_DIR (relative to the repository, where
    cargo runs) or target/."""
    if os.environ.get("WEIR_BIN"):
        return Path(os.environ["WEIR_BIN"])
    return REPO / os.environ.get("CARGO_TARGET_DIR", "target") / "debug" / "weir"


@pytest.fixture(scope="session")
def weir_bin() -> Path:
    p = default_weir_bin()
    if not p.exists():
        pytest.fail("weir binary not found at %s: run `cargo build -p weir` (scripts/test.sh does) "
                    "or set WEIR_BIN" % p, pytrace=False)
    return p


@pytest.fixture(scope="session")
def short_tmp():
    """A short private directory for Unix sockets (sun_path is limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="weir-e2e-"))
    d.chmod(0o755)  # nginx's workers may run as another user
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class WeirServer:
    proc: Proc
    addr: Optional[Addr]  # the first HTTP listener, if any
    addrs: list  # every HTTP listener
    uwsgi_socks: list  # Unix paths / TCP addresses of --uwsgi-listen
    workdir: Path

    @property
    def alive(self):
        return self.proc.alive

    def output(self):
        return self.proc.output()

    def wait_ready(self, addr: Optional[Addr] = None, path: str = "/", timeout: float = READY_TIMEOUT):
        wait_ready(self.proc, addr or self.addr, path, timeout)

    def stop(self, timeout: float = 15.0):
        return self.proc.stop(timeout)


def wait_ready(proc: Proc, addr: Addr, path: str = "/", timeout: float = READY_TIMEOUT, procs=()):
    """Polls GET path until it answers with something other than 502/503/504.

    Fails at once (with the output) when the process exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        for p in (proc,) + tuple(procs):
            if not p.alive:
                pytest.fail("%s exited (status %s) before it answered on %s\n%s" % (
                    p.name, p.returncode, addr, p.describe()), pytrace=False)
        try:
            r = get(addr, path, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            if r.status not in (502, 503, 504):
                return r
            last = r
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            pytest.fail("%s did not answer GET %s on %s within %.0fs (last: %r)\n%s" % (
                proc.name, path, addr, timeout, last, proc.describe()), pytrace=False)
        time.sleep(0.05)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml_text(sections: dict) -> str:
    """A section whose value is a list of dicts is an array of tables ([[route]])."""
    out = []
    for sec, kv in sections.items():
        for table in kv if isinstance(kv, list) else [kv]:
            out.append(("[[%s]]" if isinstance(kv, list) else "[%s]") % sec)
            for k, v in table.items():
                out.append("%s = %s" % (k, toml_value(v)))
            out.append("")
    return "\n".join(out)


@pytest.fixture
def weir(weir_bin, tmp_path, short_tmp):
    """Factory: weir(app=..., chdir=..., workers=..., args=[...], config=..., ...) -> WeirServer.

    listen: "tcp" (default; a free 127.0.0.1 port), "unix", a list of ADDR strings, or None
    (no --listen flag at all). config: TOML text or a {section: {key: value}} dict, written
    to a file and passed with --config. wait: poll until ready (default True when there is
    an HTTP listener).
    """
    started: list[WeirServer] = []

    def start(app: Optional[str] = "conformance_app:application", chdir: Optional[Path] = APPS,
              workers: Optional[int] = 2, listen="tcp", uwsgi_listen=(), args=(), config=None,
              wait: Optional[bool] = None, ready_path: str = "/", env=None, cwd: Optional[Path] = None,
              name: str = "weir") -> WeirServer:
        argv = [str(weir_bin), "serve"]
        if app is not None:
            argv += ["--app", app]
        if chdir is not None:
            argv += ["--chdir", str(chdir)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        addrs = []
        if listen == "tcp":
            listen = ["127.0.0.1:%d" % free_port()]
        elif listen == "unix":
            listen = ["unix:" + sock_path(short_tmp, "weir-http")]
        for a in listen or ():
            argv += ["--listen", a]
            addrs.append(Addr(unix=a[5:]) if a.startswith("unix:") else Addr(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])))
        uw = []
        for u in uwsgi_listen:
            argv += ["--uwsgi-listen", u]
            uw.append(u[5:] if u.startswith("unix:") else u)
        if config is not None:
            text = toml_text(config) if isinstance(config, dict) else config
            cfg = tmp_path / ("weir-%d.toml" % len(started))
            cfg.write_text(text)
            argv += ["--config", str(cfg)]
        argv += list(args)
        proc = Proc(name, argv, tmp_path / "logs", cwd=cwd or tmp_path, env=env)
        srv = WeirServer(proc, addrs[0] if addrs else None, addrs, uw, tmp_path)
        started.append(srv)
        if wait is None:
            wait = bool(addrs)
        if wait:
            srv.wait_ready(path=ready_path)
        return srv

    yield start
    for s in started:
        s.stop()


# ---------------------------------------------------------------------------------------
# nginx


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    client_max_body_size 64m;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        server_name weir-e2e;
        location / {{
            include {uwsgi_params};
            uwsgi_pass {upstream};
            uwsgi_read_timeout 120s;
            uwsgi_send_timeout 120s;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: Proc
    addr: Addr
    dir: Path

    def stop(self):
        return self.proc.stop()


def start_nginx(dir: Path, upstream: str, name: str = "nginx") -> Nginx:
    """A private nginx on a free port, uwsgi_pass to upstream ("unix:/path" or "host:port")."""
    if not Path(NGINX).exists():
        pytest.fail("nginx not found: run scripts/install-deps.sh (Debian package nginx-light)", pytrace=False)
    dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=dir, port=port, upstream=upstream, uwsgi_params=UWSGI_PARAMS,
                                      user="user root;" if os.geteuid() == 0 else ""))
    proc = Proc(name, [NGINX, "-p", str(dir), "-c", str(conf), "-e", str(dir / "error.log")], dir / "logs")
    addr = Addr("127.0.0.1", port)
    # nginx binds before it forks its worker: wait for the port (no fixed sleep).
    def listening():
        if not proc.alive:
            pytest.fail("nginx exited (status %s)\n%s\n%s" % (proc.returncode, proc.describe(),
                        _read(dir / "error.log")), pytrace=False)
        with addr.socket(1.0):
            return True
    wait_for(listening, 20, what="nginx listening on %s" % addr)
    return Nginx(proc, addr, dir)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def nginx(tmp_path):
    started = []

    def start(upstream: str, name: str = "nginx") -> Nginx:
        n = start_nginx(tmp_path / ("nginx-%d" % len(started)), upstream, name)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


# ---------------------------------------------------------------------------------------
# Conformance targets


@dataclass
class Target:
    """One way to reach apps/conformance_app.py."""
    name: str
    addr: Addr
    is_weir: bool
    via_nginx: bool
    procs: list = field(default_factory=list)
    state_dir: Path = Path("/tmp")
    backend: Optional[Proc] = None  # the process that runs the app (its log holds wsgi.errors)

    @property
    def alive(self):
        return all(p.alive for p in self.procs)

    def __str__(self):
        return self.name


TARGETS = ["weir-http", "weir-nginx", "ref-nginx-uwsgi", "ref-gunicorn"]


def _start_target(kind: str, weir_bin: Path, base: Path, short: Path, app: str = "conformance_app:application",
                  chdir: Path = APPS, workers: int = 2) -> Target:
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    if kind == "weir-http":
        port = free_port()
        p = Proc("weir", [weir_bin, "serve", "--app", app, "--chdir", chdir, "--workers", str(workers),
                          "--listen", "127.0.0.1:%d" % port], logs, cwd=base)
        t = Target(kind, Addr("127.0.0.1", port), True, False, [p], state, p)
        wait_ready(p, t.addr)
        return t
    if kind == "weir-nginx":
        sock = sock_path(short, "weir-uwsgi")
        p = Proc("weir", [weir_bin, "serve", "--app", app, "--chdir", chdir, "--workers", str(workers),
                          "--uwsgi-listen", "unix:" + sock], logs, cwd=base)
        try:
            wait_for(lambda: os.path.exists(sock) or not p.alive, READY_TIMEOUT, what="weir's uwsgi socket")
            if not p.alive:
                pytest.fail("weir exited before binding %s\n%s" % (sock, p.describe()), pytrace=False)
            n = start_nginx(base / "nginx", "unix:" + sock)
        except BaseException:
            p.stop()
            raise
        t = Target(kind, n.addr, True, True, [p, n.proc], state, p)
        wait_ready(n.proc, t.addr, procs=(p,))
        return t
    if kind == "ref-nginx-uwsgi":
        uwsgi = shutil.which("uwsgi")
        if not uwsgi:
            pytest.skip("uwsgi not installed")
        sock = sock_path(short, "uwsgi")
        p = Proc("uwsgi", [uwsgi, "--socket", sock, "--chmod-socket=666", "--chdir", chdir,
                           "--module", app, "--master", "--processes", str(workers),
                           "--need-app", "--die-on-term", "--buffer-size", "32768", "--disable-logging"],
                 logs, cwd=base)
        wait_for(lambda: os.path.exists(sock) or not p.alive, READY_TIMEOUT, what="uwsgi's socket")
        n = start_nginx(base / "nginx", "unix:" + sock)
        t = Target(kind, n.addr, False, True, [p, n.proc], state, p)
        wait_ready(n.proc, t.addr, procs=(p,))
        return t
    if kind == "ref-gunicorn":
        gunicorn = shutil.which("gunicorn")
        if not gunicorn:
            pytest.skip("gunicorn not installed")
        port = free_port()
        p = Proc("gunicorn", [gunicorn, "-w", str(workers), "-b", "127.0.0.1:%d" % port, "--chdir", chdir,
                              "--timeout", "120", app], logs, cwd=base)
        t = Target(kind, Addr("127.0.0.1", port), False, False, [p], state, p)
        wait_ready(p, t.addr)
        return t
    raise ValueError(kind)


@pytest.fixture(scope="session", params=TARGETS)
def target(request, weir_bin_or_none, tmp_path_factory, short_tmp):
    kind = request.param
    if kind.startswith("ref-") and not REFERENCE:
        pytest.skip("reference servers run only with WEIR_E2E_REFERENCE=1")
    if kind.startswith("weir") and weir_bin_or_none is None:
        pytest.fail("weir binary not found: run `cargo build -p weir` or set WEIR_BIN", pytrace=False)
    if kind.startswith("weir") and os.environ.get("WEIR_E2E_ONLY_REFERENCE"):
        pytest.skip("WEIR_E2E_ONLY_REFERENCE is set")
    t = _start_target(kind, weir_bin_or_none, tmp_path_factory.mktemp(kind), short_tmp)
    yield t
    for p in reversed(t.procs):
        p.stop()


@pytest.fixture(scope="session")
def weir_bin_or_none() -> Optional[Path]:
    p = default_weir_bin()
    return p if p.exists() else None


@pytest.fixture
def tgt(target):
    """The session target, checked alive before each test (a dead one fails clearly)."""
    for p in target.procs:
        if not p.alive:
            pytest.fail("%s of target %s died in an earlier test\n%s" % (p.name, target.name, p.describe()),
                        pytrace=False)
    return target


WORKER_APPS = REPO / "tests" / "apps"


@pytest.fixture(scope="session", params=["weir-http", "weir-nginx"])
def wtarget(request, weir_bin_or_none, tmp_path_factory, short_tmp):
    """weir serving the worker engineer's tests/apps/conformance.py with ONE worker (its
    close() counter is per process), over HTTP and behind nginx."""
    if not (WORKER_APPS / "conformance.py").exists():
        pytest.skip("tests/apps/conformance.py does not exist (yet)")
    if weir_bin_or_none is None:
        pytest.fail("weir binary not found: run `cargo build -p weir` or set WEIR_BIN", pytrace=False)
    t = _start_target(request.param, weir_bin_or_none, tmp_path_factory.mktemp("w" + request.param), short_tmp,
                      app="conformance:application", chdir=WORKER_APPS, workers=1)
    yield t
    for p in reversed(t.procs):
        p.stop()


@pytest.fixture
def wtgt(wtarget):
    for p in wtarget.procs:
        if not p.alive:
            pytest.fail("%s of target %s died in an earlier test\n%s" % (p.name, wtarget.name, p.describe()),
                        pytrace=False)
    return wtarget

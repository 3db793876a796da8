"""Fixtures for the front-door tests (issue 3): weir's own listeners, queue, deadlines,
routes, error contract, identity, access log, metrics and admin endpoints, end to end.

The harness is tests/e2e's: its conftest (the `weir` factory, `weir_bin`, `short_tmp`, the
per-test time limit and the process output in failure reports) is loaded here under its
own module name and its fixtures and hooks re-exported, so nothing is duplicated.

Added here:
- `state_dir`: a directory the app (apps/front_app.py) logs every request it sees into
  (FRONT_STATE), and where tests put the ready-check flag files.
- `front`: a factory, `front(config={...}, workers=N, admin=True)`, that starts weir on
  front_app with that weir.toml (dict, [[route]] as a list of dicts) and returns a
  FrontServer with the public address, the admin address, the app's hits and /metrics.
  With admin=True it also waits until all N workers are idle.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def _load_e2e_conftest():
    name = "weir_e2e_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, E2E / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_e2e = _load_e2e_conftest()

# The e2e harness: fixtures and hooks (time limits, process output in failure reports).
weir_bin = _e2e.weir_bin
short_tmp = _e2e.short_tmp
weir = _e2e.weir
nginx = _e2e.nginx
pytest_configure = _e2e.pytest_configure
pytest_runtest_call = _e2e.pytest_runtest_call
pytest_runtest_setup = _e2e.pytest_runtest_setup
pytest_runtest_makereport = _e2e.pytest_runtest_makereport

from e2e_lib import Addr, free_port, get  # noqa: E402
from front_lib import FRONT_APPS, parse_prometheus, read_hits, sample, tags_seen, to_toml, wait_for  # noqa: E402


@dataclass
class FrontServer:
    srv: object  # the e2e WeirServer
    addr: Addr
    admin: Optional[Addr]
    state: Path
    config_text: str

    @property
    def proc(self):
        return self.srv.proc

    def hits(self) -> list:
        return read_hits(self.state)

    def tags(self) -> set:
        return tags_seen(self.state)

    def metrics_text(self) -> str:
        assert self.admin is not None, "start the server with admin=True"
        r = get(self.admin, "/metrics", timeout=10)
        assert r.status == 200, r
        return r.text

    def metrics(self) -> dict:
        return parse_prometheus(self.metrics_text())

    def metric(self, name: str, **labels) -> float:
        v = sample(self.metrics(), name, **labels)
        return 0.0 if v is None else v

    def wait_metric(self, name: str, want, timeout: float = 10.0, **labels) -> float:
        """Polls until metric(name, labels) == want (or want(value) is true)."""
        ok = want if callable(want) else (lambda v: v == want)
        last = []

        def cond():
            v = self.metric(name, **labels)
            last[:] = [v]
            return ok(v)
        try:
            wait_for(cond, timeout, what="%s%r" % (name, labels))
        except TimeoutError as e:
            raise AssertionError("%s%r is %r, wanted %r" % (name, labels, last, want)) from e
        return last[0]

    def wait_queued(self, n: int, timeout: float = 10.0):
        """Waits until weir_queue_depth is n (requests waiting for a worker)."""
        return self.wait_metric("weir_queue_depth", n, timeout)


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def front(weir, state_dir):
    """Factory: front(config=None, workers=2, admin=False, env=None, **weir_kwargs)."""

    def start(config: Optional[dict] = None, workers: int = 2, admin: bool = False, env: Optional[dict] = None,
              **kw) -> FrontServer:
        cfg = {k: (list(v) if isinstance(v, list) else dict(v)) for k, v in (config or {}).items()}
        admin_addr = None
        if admin:
            port = free_port()
            cfg.setdefault("admin", {})["listen"] = "127.0.0.1:%d" % port
            admin_addr = Addr("127.0.0.1", port)
        text = to_toml(cfg)
        full_env = {"FRONT_STATE": str(state_dir)}
        full_env.update(env or {})
        srv = weir(app="front_app:application", chdir=FRONT_APPS, workers=workers, config=text or None,
                   env=full_env, **kw)
        fs = FrontServer(srv, srv.addr, admin_addr, state_dir, text)
        if admin_addr is not None and kw.get("wait", True) is not False:
            wait_for(lambda: get(admin_addr, "/livez", timeout=2).status == 200, 30, what="admin /livez")
            # the listener answers once one worker is up; tests that count workers need all
            fs.wait_metric("weir_workers", workers, timeout=60, state="idle")
        return fs

    return start

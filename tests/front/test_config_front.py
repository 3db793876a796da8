"""Configuration of the front door: timeouts that contradict each other (harakiri longer
than the request's deadline) and other bad [server]/[queue]/[[route]]/[admin] values exit
2 naming the keys; a backlog above net.core.somaxconn is served with a warning.
"""

from __future__ import annotations

import pytest

from e2e_lib import free_port, get
from front_lib import FRONT_APPS, to_toml
from test_cli_config import run_weir  # the e2e suite's "run weir to completion" helper

pytestmark = pytest.mark.e2e_timeout(60)


def serve_args(cfg_path, *extra):
    return ["serve", "--config", cfg_path, "--app", "front_app:application", "--chdir", FRONT_APPS,
            "--listen", "127.0.0.1:%d" % free_port()] + list(extra)


CHAINS = [
    ("app-harakiri-over-server-timeout",
     {"server": {"request_timeout": "5s"}, "app": {"harakiri": 10}}, (), ("app.harakiri", "server.request_timeout")),
    ("route-harakiri-over-route-timeout",
     {"app": {"workers": 4}, "route": [{"path": "/slow", "harakiri": "3s", "request_timeout": "2s"}]}, (),
     ("route[0].harakiri", "route[0].request_timeout")),
    ("route-harakiri-over-server-timeout",
     {"server": {"request_timeout": "2s"}, "route": [{"path": "/slow", "harakiri": "3s"}]}, (),
     ("route[0].harakiri", "server.request_timeout")),
    ("app-harakiri-over-route-timeout",
     {"app": {"harakiri": "3s"}, "route": [{"path": "/a"}, {"path": "/fast", "request_timeout": "1s"}]}, (),
     ("app.harakiri", "route[1].request_timeout")),
    ("harakiri-flag-over-file-timeout",
     {"server": {"request_timeout": "5s"}}, ("--harakiri", "10"), ("app.harakiri", "server.request_timeout")),
    ("ms-units", {"server": {"request_timeout": "500ms"}, "app": {"harakiri": "501ms"}}, (),
     ("app.harakiri", "server.request_timeout")),
]


@pytest.mark.parametrize("case,cfg,flags,keys", CHAINS, ids=[c[0] for c in CHAINS])
def test_harakiri_longer_than_deadline_exits_2_naming_both_keys(weir_bin, tmp_path, case, cfg, flags, keys):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml(cfg))
    code, out = run_weir(weir_bin, serve_args(p, *flags))
    assert code == 2, "%s: exit %r\n%s" % (case, code, out)
    for k in keys:
        assert k in out, "%s: the error does not name %s:\n%s" % (case, k, out)
    assert "panicked" not in out, out


GOOD_CHAINS = [
    ("equal", {"server": {"request_timeout": "5s"}, "app": {"harakiri": 5}}),
    ("route-relaxes-deadline", {"server": {"request_timeout": "2s"}, "app": {"harakiri": "2s"},
                                "route": [{"path": "/r", "request_timeout": "30s", "harakiri": "20s"}]}),
    ("harakiri-without-deadline", {"app": {"harakiri": 30}}),
]


@pytest.mark.parametrize("case,cfg", GOOD_CHAINS, ids=[c[0] for c in GOOD_CHAINS])
def test_consistent_timeouts_are_accepted(weir_bin, tmp_path, case, cfg):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml(cfg))
    code, out = run_weir(weir_bin, serve_args(p, "--check"))
    assert code == 0, "%s: exit %r\n%s" % (case, code, out)


BAD = [
    ("max-concurrency-over-workers", {"app": {"workers": 2}, "route": [{"path": "/s", "max_concurrency": 3}]},
     "route[0].max_concurrency"),
    ("max-concurrency-zero", {"route": [{"path": "/s", "max_concurrency": 0}]}, "route[0].max_concurrency"),
    ("route-path-relative", {"route": [{"path": "slow"}]}, "route[0].path"),
    ("route-path-twice", {"route": [{"path": "/a"}, {"path": "/a"}]}, "route[1].path"),
    ("route-unknown-key", {"route": [{"path": "/a", "max_concurency": 1}]}, "max_concurency"),
    ("queue-max-size-zero", {"queue": {"max_size": 0}}, "queue.max_size"),
    ("queue-timeout-zero", {"queue": {"timeout": "0s"}}, "queue.timeout"),
    ("queue-unknown-key", {"queue": {"max_sise": 3}}, "max_sise"),
    ("request-timeout-zero", {"server": {"request_timeout": "0s"}}, "server.request_timeout"),
    ("request-timeout-garbage", {"server": {"request_timeout": "soon"}}, "request_timeout"),
    ("max-body-size-garbage", {"server": {"max_body_size": "10 parsecs"}}, "max_body_size"),
    ("max-header-size-tiny", {"server": {"max_header_size": "100"}}, "server.max_header_size"),
    ("trusted-proxy-garbage", {"server": {"trusted_proxies": ["10.0.0.0/8", "not-an-ip"]}}, "server.trusted_proxies"),
    ("trusted-proxy-bad-prefix", {"server": {"trusted_proxies": ["10.0.0.0/33"]}}, "server.trusted_proxies"),
    ("client-header-timeout-garbage", {"server": {"client_header_timeout": "a while"}}, "client_header_timeout"),
    ("ready-check-not-module-function", {"app": {"ready_check": "front_app"}}, "app.ready_check"),
    ("backlog-zero", {"server": {"backlog": 0}}, "server.backlog"),
    ("access-log-buffer-huge", {"server": {"access_log_buffer": "1GiB"}}, "server.access_log_buffer"),
    ("access-log-buffer-garbage", {"server": {"access_log_buffer": "lots"}}, "access_log_buffer"),
    ("access-log-flush-zero", {"server": {"access_log_buffer": "64KiB", "access_log_flush": "0s"}},
     "server.access_log_flush"),
]


@pytest.mark.parametrize("case,cfg,key", BAD, ids=[c[0] for c in BAD])
def test_bad_front_config_exits_2_naming_the_key(weir_bin, tmp_path, case, cfg, key):
    p = tmp_path / "weir.toml"
    p.write_text(to_toml(cfg))
    code, out = run_weir(weir_bin, serve_args(p))
    assert code == 2, "%s: exit %r\n%s" % (case, code, out)
    assert key in out, "%s: the error does not name %s:\n%s" % (case, key, out)


def test_admin_listen_on_a_public_listener_exits_2(weir_bin, tmp_path):
    port = free_port()
    p = tmp_path / "weir.toml"
    p.write_text(to_toml({"server": {"listen": ["127.0.0.1:%d" % port]}, "admin": {"listen": "127.0.0.1:%d" % port}}))
    code, out = run_weir(weir_bin, ["serve", "--config", p, "--app", "front_app:application", "--chdir", FRONT_APPS])
    assert code == 2 and "admin.listen" in out, (code, out)


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def test_backlog_above_somaxconn_warns_and_serves(front):
    n = _somaxconn()
    f = front(config={"server": {"backlog": n + 1}}, workers=1)
    assert get(f.addr, "/env", timeout=10).status == 200
    err = f.proc.stderr_path.read_text()
    assert "somaxconn" in err and str(n + 1) in err and str(n) in err, err


def test_backlog_within_somaxconn_does_not_warn(front):
    f = front(config={"server": {"backlog": min(128, _somaxconn())}}, workers=1)
    assert get(f.addr, "/env", timeout=10).status == 200
    assert "somaxconn" not in f.proc.stderr_path.read_text()

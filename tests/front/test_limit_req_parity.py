"""limit_req parity with a real NGINX (issue 14).

A real nginx (Debian's nginx-light) runs `limit_req` on a location served as a static file
(limit_req does not apply to `return`), keyed by a request header. A fixed trace of request
groups (ms offset, key, how many at once) is replayed against it; each answer is classified
admitted (200 at once), delayed (200 after about the expected delay) or refused (429). The
same trace goes through weir's pure limit_req state machine (the `limit_req_sim` binary of
crates/weir-limits) and through weir itself
(`[limit_req.z]`, `[[route]] path = "/" limit_req = ["z"]`; a refusal is the zone's status
with `x-weir-error: rate-limited`). The three must agree group by group.

Within a group the requests are sent at once, so which of them is refused or delayed is up
to arrival order; the multiset of outcomes is not. The offsets leave every bucket at least
500 (50 ms at 10r/s) from a threshold, so timing jitter cannot flip an outcome.

Scenarios: nodelay, plain burst (delayed), delay = N.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from e2e_lib import Addr, Proc, free_port, wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
IMMEDIATE_MS = 50  # an answer faster than this was not delayed
DELAY_TOLERANCE_MS = 80

SCENARIOS = {
    "nodelay": dict(rate="10r/s", burst=3, nodelay=True, delay=None,
                    groups=[(0, "a", 6), (0, "b", 2), (450, "a", 3), (1000, "a", 5), (1250, "b", 4)]),
    "burst": dict(rate="10r/s", burst=3, nodelay=False, delay=None,
                  groups=[(0, "a", 5), (0, "b", 1), (1500, "a", 3), (2050, "a", 2)]),
    "delay_n": dict(rate="10r/s", burst=5, nodelay=False, delay=2,
                    groups=[(0, "a", 8), (2000, "a", 4), (2650, "b", 3)]),
}


def sim_bin() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    p = Path(target) if os.path.isabs(target) else REPO / target
    return p / "debug" / "limit_req_sim"


def simulate(sc: dict) -> list[list]:
    """The state machine's verdicts, grouped like the trace."""
    b = sim_bin()
    if not b.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "weir-limits", "--bin", "limit_req_sim"], cwd=REPO,
                       check=True, timeout=600)
    trace = [[ms, key] for ms, key, n in sc["groups"] for _ in range(n)]
    spec = dict(rate=sc["rate"], burst=sc["burst"], nodelay=sc["nodelay"], delay=sc["delay"], trace=trace)
    out = json.loads(subprocess.run([str(b)], input=json.dumps(spec), capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
    grouped, i = [], 0
    for _, _, n in sc["groups"]:
        grouped.append(normalize(("delay", v) if kind == "delay" else (kind, 0) for kind, v in out[i:i + n]))
        i += n
    return grouped


def normalize(outcomes) -> list:
    """Sorted (kind, delay_ms) with kind admit / delay / refuse."""
    return sorted(outcomes, key=lambda o: ({"admit": 0, "delay": 1, "refuse": 2}[o[0]], o[1]))


def one_request(addr: Addr, path: str, key: str, results: list, i: int, refuse_status: int):
    t = time.monotonic()
    c = http.client.HTTPConnection(addr.host, addr.port, timeout=10)
    try:
        c.request("GET", path, headers={"X-Key": key, "Connection": "close"})
        r = c.getresponse()
        r.read()
        ms = (time.monotonic() - t) * 1000
        if r.status == refuse_status:
            results[i] = ("refuse", 0, dict(r.getheaders()))
        elif r.status == 200:
            results[i] = ("admit", 0, {}) if ms < IMMEDIATE_MS else ("delay", ms, {})
        else:
            results[i] = ("status-%d" % r.status, 0, {})
    finally:
        c.close()


def replay(addr: Addr, path: str, groups, refuse_status: int) -> list[list]:
    """Fires the groups at their offsets (groups at the same offset together), every
    request of a group at once; waits for them before the next offset."""
    out = [None] * len(groups)
    start = time.monotonic()
    offsets = sorted({ms for ms, _, _ in groups})
    for ms in offsets:
        wait = start + ms / 1000 - time.monotonic()
        assert wait > -0.02, "the previous groups ran past the next one's start (%d ms): timing is off" % ms
        if wait > 0:
            time.sleep(wait)
        threads = []
        for gi, (gms, key, n) in enumerate(groups):
            if gms != ms:
                continue
            out[gi] = [None] * n
            threads += [threading.Thread(target=one_request, args=(addr, path, key, out[gi], i, refuse_status))
                        for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    assert all(r is not None for g in out for r in g), out
    return out


def compare(name: str, got: list[list], want: list[list]):
    for gi, (g, w) in enumerate(zip(got, want)):
        kinds = normalize((k, 0) for k, _, _ in g)
        assert [k for k, _ in kinds] == [k for k, _ in w], "%s group %d: got %s, want %s" % (name, gi, kinds, w)
        measured = sorted(ms for k, ms, _ in g if k == "delay")
        expected = sorted(ms for k, ms in w if k == "delay")
        for m, e in zip(measured, expected):
            assert abs(m - e) <= DELAY_TOLERANCE_MS, "%s group %d: delays %s, want %s" % (name, gi, measured, expected)


def start_nginx_limit_req(dir: Path, sc: dict) -> tuple[Proc, Addr]:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/install-deps.sh installs nginx-light)")
    dir.mkdir(parents=True, exist_ok=True)
    www = dir / "www"
    www.mkdir(exist_ok=True)
    (www / "f.txt").write_text("ok\n")
    port = free_port()
    opts = "burst=%d" % sc["burst"]
    if sc["nodelay"]:
        opts += " nodelay"
    elif sc["delay"] is not None:
        opts += " delay=%d" % sc["delay"]
    conf = dir / "nginx.conf"
    conf.write_text("""\
%(user)s
worker_processes 1;
daemon off;
master_process on;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log info;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(dir)s/client_body_temp;
    proxy_temp_path %(dir)s/proxy_temp;
    fastcgi_temp_path %(dir)s/fastcgi_temp;
    uwsgi_temp_path %(dir)s/uwsgi_temp;
    scgi_temp_path %(dir)s/scgi_temp;
    limit_req_zone $http_x_key zone=z:1m rate=%(rate)s;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            root %(www)s;
            limit_req zone=z %(opts)s;
            limit_req_status 429;
        }
    }
}
""" % dict(user="user root;" if os.geteuid() == 0 else "", dir=dir, rate=sc["rate"], port=port, www=www,
           opts=opts))
    proc = Proc("nginx", [NGINX, "-p", str(dir), "-c", str(conf), "-e", str(dir / "error.log")], dir / "logs")
    addr = Addr("127.0.0.1", port)

    def listening():
        assert proc.alive, "nginx exited: %s" % (dir / "error.log").read_text(errors="replace")
        with addr.socket(1.0):
            return True

    wait_for(listening, 20, what="nginx listening on %s" % addr)
    return proc, addr


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_state_machine_matches_nginx(name, tmp_path):
    sc = SCENARIOS[name]
    want = simulate(sc)
    proc, addr = start_nginx_limit_req(tmp_path / "nginx", sc)
    try:
        got = replay(addr, "/f.txt", sc["groups"], 429)
    finally:
        proc.stop()
    print("%s: nginx %s" % (name, [[k for k, _, _ in g] for g in got]))
    compare("nginx/" + name, got, want)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_weir_matches_nginx(name, front):
    sc = SCENARIOS[name]
    want = simulate(sc)
    zone = {"key": "$http_x_key", "rate": sc["rate"], "burst": sc["burst"]}
    if sc["nodelay"]:
        zone["nodelay"] = True
    elif sc["delay"] is not None:
        zone["delay"] = sc["delay"]
    srv = front(config={"limit_req.z": zone, "route": [{"path": "/", "limit_req": ["z"]}]}, workers=2)
    got = replay(srv.addr, "/", sc["groups"], 429)
    for g in got:
        for kind, _, headers in g:
            if kind == "refuse":
                h = {k.lower(): v for k, v in headers.items()}
                assert h.get("x-weir-error") == "rate-limited", h
                assert int(h.get("retry-after", "0")) >= 1, h
                assert h.get("ratelimit-policy", "").startswith('"z";'), h
    compare("weir/" + name, got, want)

"""limit_conn shared through Redis (issue 14), end to end: two weir instances on one real
redis-server (Debian's package; scripts/install-deps.sh installs it) with `max = 1` per key:
a request in progress on one instance makes the other refuse the same key with
`conn-limited`, and the slot is free for either once it is done. A weir started while Redis
does not answer warns once, serves by `on_store_error`, and limits through Redis as soon as
it answers. The store's own behaviour (leases, renewal, outages) is tested in
crates/weir-limits/tests/redis_conn.rs and redis_store.rs.
"""

from __future__ import annotations

import shutil
import time

import pytest

from e2e_lib import free_port, get
from front_lib import Background, RedisServer, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(120)


@pytest.fixture
def redis_port():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/install-deps.sh installs it)")
    servers = []

    def start(port=None):
        r = RedisServer(port or free_port())
        servers.append(r)
        return r

    yield start
    for r in servers:
        r.stop()


def conn_config(url: str, on_store_error: str = "deny") -> dict:
    return {"limit_conn.per_key": {"key": "$http_x_key", "max": 1},
            "limits": {"store": url, "on_store_error": on_store_error},
            "route": [{"path": "/", "limit_conn": ["per_key"]}]}


def until_status(addr, path, key, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        r = get(addr, path, headers={"X-Key": key}, timeout=10)
        if r.status == want or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_limit_conn_is_shared_by_two_instances(front, redis_port):
    redis = redis_port().start()
    cfg = conn_config(redis.url)
    a = front(config=cfg, workers=2, admin=True)
    b = front(config=cfg, workers=2, admin=True)
    held = Background(a.addr, "/sleep?s=2&tag=held", headers={"X-Key": "k"})
    wait_tag_started(a.state, "held")
    r = get(b.addr, "/on-b/env", headers={"X-Key": "k"}, timeout=10)
    assert r.status == 429 and r.header("x-weir-error") == "conn-limited", r
    r = get(a.addr, "/on-a/env", headers={"X-Key": "k"}, timeout=10)
    assert r.status == 429 and r.header("x-weir-error") == "conn-limited", r
    assert get(b.addr, "/other/env", headers={"X-Key": "other"}, timeout=10).status == 200
    assert held.join().status == 200
    # given back in the background right after the response: poll
    assert until_status(b.addr, "/after/env", "k", 200).status == 200
    seen = {h["path"] for h in a.hits() + b.hits()}
    assert "/on-a/env" not in seen and "/on-b/env" not in seen
    b.wait_metric("weir_limit_conn_total", 1, zone="per_key", outcome="refused")
    for f in (a, b):
        assert "does not answer at start-up" not in f.proc.output()


def test_started_without_redis_warns_once_serves_and_shares_once_it_answers(front, redis_port):
    redis = redis_port()  # not started yet
    t0 = time.monotonic()
    a = front(config=conn_config(redis.url, on_store_error="allow"), workers=2, admin=True)
    started = time.monotonic() - t0
    # on_store_error = "allow": served, without a slot, while Redis is not there
    held = Background(a.addr, "/sleep?s=1&tag=early", headers={"X-Key": "k"})
    wait_tag_started(a.state, "early")
    assert get(a.addr, "/early2/env", headers={"X-Key": "k"}, timeout=10).status == 200
    assert held.join().status == 200
    out = a.proc.output()
    assert out.count("does not answer at start-up") == 1, out
    assert "limits store (Redis) is failing" not in out, "one warning per outage"
    redis.start()
    # reconnects in the background (backoff up to 5 s); then max = 1 holds again
    deadline = time.monotonic() + 20
    for i in range(100):
        held = Background(a.addr, "/sleep?s=1&tag=late%d" % i, headers={"X-Key": "k"})
        wait_tag_started(a.state, "late%d" % i)
        r = get(a.addr, "/late2/env", headers={"X-Key": "k"}, timeout=10)
        held.join()
        if r.status == 429:
            break
        assert time.monotonic() < deadline, "never limited through Redis once it answered"
        time.sleep(0.2)
    assert r.header("x-weir-error") == "conn-limited", r
    assert "answers again" in a.proc.output()
    print("started in %.2f s without Redis" % started)

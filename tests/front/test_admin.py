"""The admin listener's health endpoints: /livez (the process is up) and /readyz (a
worker is up and, with `[app] ready_check = "module:function"`, that check passes in a
worker; 503 otherwise).
"""

from __future__ import annotations

import time

import pytest

from e2e_lib import get
from front_lib import Background, wait_for, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(60)

CHECK = {"app": {"ready_check": "front_app:ready_check"}}


def test_readyz_follows_the_ready_check(front):
    f = front(config=CHECK, workers=2, admin=True)
    r = get(f.admin, "/readyz", timeout=10)
    assert r.status == 200, r
    (f.state / "NOT_READY").write_text("")
    r = get(f.admin, "/readyz", timeout=10)
    assert r.status == 503 and b"false" in r.body, r
    # The error contract, as on the public listeners.
    assert r.header("x-weir-error") == "not-ready", r.headers
    assert r.header("retry-after") and r.header("x-request-id"), r.headers
    assert get(f.admin, "/livez", timeout=10).status == 200
    assert get(f.addr, "/env", timeout=10).status == 200, "traffic is still served"
    (f.state / "NOT_READY").unlink()
    assert get(f.admin, "/readyz", timeout=10).status == 200
    (f.state / "RAISE").write_text("")
    r = get(f.admin, "/readyz", timeout=10)
    assert r.status == 503 and b"database unreachable" in r.body, r
    assert "RuntimeError" in f.proc.output() or "database unreachable" in f.proc.output(), \
        "the check's exception is logged"
    (f.state / "RAISE").unlink()
    assert get(f.admin, "/readyz", timeout=10).status == 200


def test_readyz_without_a_ready_check(front):
    f = front(workers=2, admin=True)
    r = get(f.admin, "/readyz", timeout=10)
    assert r.status == 200, r


def test_an_unknown_admin_path_is_404_not_found_with_the_error_contract(front):
    f = front(workers=1, admin=True)
    r = get(f.admin, "/nope", timeout=10)
    assert r.status == 404, r
    assert r.header("x-weir-error") == "not-found", r.headers
    assert b"/metrics /livez /readyz" in r.body, r
    r = get(f.admin, "/nope", timeout=10, headers={"Accept": "application/json"})
    assert r.status == 404 and b'"error":"not-found"' in r.body, r


def test_readyz_is_503_until_a_worker_is_up(front):
    """The app takes 3 s to import: /livez answers at once, /readyz is 503 until a worker
    is ready, then 200."""
    f = front(config=CHECK, workers=1, admin=True, wait=False, env={"FRONT_IMPORT_DELAY": "3"})
    wait_for(lambda: get(f.admin, "/livez", timeout=2).status == 200, 20, what="admin /livez")
    t0 = time.monotonic()
    r = get(f.admin, "/readyz", timeout=10)
    assert r.status == 503 and b"no worker" in r.body, r
    assert time.monotonic() - t0 < 1.0, "/readyz must not wait for a worker to come up"
    wait_for(lambda: get(f.admin, "/readyz", timeout=5).status == 200, 30, what="/readyz 200")


def test_readyz_after_the_only_worker_died_and_came_back(front):
    f = front(config=CHECK, workers=1, admin=True)
    assert get(f.addr, "/crash", timeout=10).status == 502
    wait_for(lambda: get(f.admin, "/readyz", timeout=5).status == 200, 30, what="/readyz 200 again")


def test_readyz_stays_ready_while_every_worker_is_busy(front):
    """A busy app is not an unready one: with a ready_check set and every worker busy
    with a slow request, /readyz must still answer 200 promptly (Kubernetes would
    otherwise take a loaded pod out of service, pushing its load onto the others)."""
    f = front(config=CHECK, workers=1, admin=True)
    slow = Background(f.addr, "/sleep?s=5&tag=slow")
    wait_tag_started(f.state, "slow")
    t0 = time.monotonic()
    r = get(f.admin, "/readyz", timeout=10)
    took = time.monotonic() - t0
    slow.join()
    assert r.status == 200, "a busy pool made /readyz answer %r after %.2fs" % (r, took)
    assert took < 1.0, took

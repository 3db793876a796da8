"""Request identity through `[server] trusted_proxies`: X-Forwarded-For (walked from the
right past trusted hops) gives REMOTE_ADDR, X-Forwarded-Proto gives wsgi.url_scheme, and
X-Request-ID is kept only from a trusted peer and when well formed; otherwise weir makes
one. Every response carries x-request-id; the app sees the same id.
"""

from __future__ import annotations

import json
import re

import pytest

from e2e_lib import get, request, wait_for

pytestmark = pytest.mark.e2e_timeout(60)

MADE_ID = re.compile(r"^[0-9a-f]{16}$")


def env(addr, headers=(), path="/env"):
    r = get(addr, path, headers=list(headers), timeout=10)
    assert r.status == 200, r
    return json.loads(r.body), r


TRUSTED = {"server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}}


@pytest.mark.parametrize("xff,client", [
    ("203.0.113.7", "203.0.113.7"),
    ("198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"),  # right to left past trusted 10.1.2.3
    ("198.51.100.1,203.0.113.7,10.1.2.3,10.9.9.9", "203.0.113.7"),
    ("10.0.0.5, 10.0.0.6", "10.0.0.5"),  # every hop trusted: the leftmost (NGINX real_ip_recursive)
    ("2001:db8::1, 10.1.2.3", "2001:db8::1"),
])
def test_trusted_peer_x_forwarded_for_gives_remote_addr(front, xff, client):
    f = front(config=TRUSTED)
    e, _ = env(f.addr, [("X-Forwarded-For", xff)])
    assert e["REMOTE_ADDR"] == client, (xff, e)


def test_trusted_peer_repeated_x_forwarded_for_headers_are_one_list(front):
    f = front(config=TRUSTED)
    e, _ = env(f.addr, [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7, 10.0.0.1")])
    assert e["REMOTE_ADDR"] == "203.0.113.7", e


def test_trusted_cidr_forms(front):
    f = front(config={"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    e, _ = env(f.addr, [("X-Forwarded-For", "203.0.113.8")])
    assert e["REMOTE_ADDR"] == "203.0.113.8", e


@pytest.mark.parametrize("proto,scheme", [("https", "https"), ("HTTPS", "https"), ("http", "http")])
def test_trusted_peer_x_forwarded_proto_gives_url_scheme(front, proto, scheme):
    f = front(config=TRUSTED)
    e, _ = env(f.addr, [("X-Forwarded-Proto", proto)])
    assert e["wsgi.url_scheme"] == scheme, e


def test_trusted_peer_well_formed_request_id_is_kept_everywhere(front):
    f = front(config=TRUSTED)
    rid = "req-42_a.b:c-" + "Z" * 50
    e, r = env(f.addr, [("X-Request-ID", rid)])
    assert r.header("x-request-id") == rid, r
    assert e["weir.request_id"] == rid, e
    assert e.get("HTTP_X_REQUEST_ID") == rid, e


@pytest.mark.parametrize("bad", ["has space", "a" * 129, 'quo"te', "semi;colon", "slash/x", "caf\u00e9"])
def test_trusted_peer_malformed_request_id_is_replaced(front, bad):
    f = front(config=TRUSTED)
    e, r = env(f.addr, [("X-Request-ID", bad.encode("utf-8").decode("latin-1"))])
    rid = r.header("x-request-id")
    assert rid != bad and MADE_ID.match(rid), r
    assert e["weir.request_id"] == rid, e


@pytest.mark.parametrize("config", [{}, {"server": {"trusted_proxies": ["10.0.0.0/8", "192.0.2.1"]}}],
                         ids=["no-trusted-proxies", "peer-not-trusted"])
def test_untrusted_peer_cannot_claim_address_scheme_or_id(front, config):
    f = front(config=config)
    e, r = env(f.addr, [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
                        ("X-Request-ID", "chosen-by-client")])
    assert e["REMOTE_ADDR"] == "127.0.0.1", e
    assert e["wsgi.url_scheme"] == "http", e
    rid = r.header("x-request-id")
    assert rid != "chosen-by-client" and MADE_ID.match(rid), r
    assert e["weir.request_id"] == rid, e


@pytest.mark.parametrize("config,sent", [({}, "chosen-by-client"), (TRUSTED, "bad id")],
                         ids=["untrusted", "trusted-malformed"])
def test_app_never_sees_a_refused_request_id_in_http_x_request_id(front, config, sent):
    """The app must not find, in HTTP_X_REQUEST_ID, an id weir refused (an untrusted
    client's own, or a malformed one): request-id middlewares read that header, and the id
    they log must be the one in the response and the access log. (NGINX setups do
    `uwsgi_param HTTP_X_REQUEST_ID $request_id` / `proxy_set_header X-Request-ID`.)"""
    f = front(config=config)
    e, r = env(f.addr, [("X-Request-ID", sent)])
    assert e.get("HTTP_X_REQUEST_ID") in (None, r.header("x-request-id")), \
        "the app sees the refused id %r; weir's id is %r" % (e.get("HTTP_X_REQUEST_ID"), r.header("x-request-id"))


def test_every_response_carries_a_unique_request_id(front):
    f = front(config={"server": {"max_body_size": "1KiB"}}, workers=1)
    ids = []
    for _ in range(20):
        for path in ("/", "/nothing", "/boom"):
            r = get(f.addr, path, timeout=10)
            ids.append(r.header("x-request-id"))
    r = request(f.addr, "POST", "/echo", body=b"x" * 2048, timeout=10)
    assert r.status == 413, r
    ids.append(r.header("x-request-id"))
    assert all(i and MADE_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "request ids repeat"


def test_unix_socket_peer_is_trusted_as_a_local_proxy(front):
    """Documented choice (identity.rs): a Unix-socket peer is a local proxy, trusted."""
    f = front(listen="unix")
    e, r = env(f.addr, [("X-Forwarded-For", "203.0.113.7"), ("X-Request-ID", "from-local-proxy")])
    assert e["REMOTE_ADDR"] == "203.0.113.7", e
    assert r.header("x-request-id") == "from-local-proxy", r


def test_access_log_shows_the_believed_client_and_the_kept_id(front, tmp_path):
    log = tmp_path / "access.jsonl"
    f = front(config={"server": {"trusted_proxies": ["127.0.0.1"], "access_log": str(log)}})
    get(f.addr, "/env", headers=[("X-Forwarded-For", "203.0.113.44"), ("X-Request-ID", "trace-me-1")], timeout=10)
    def mine():
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
        return [x for x in lines if x["id"] == "trace-me-1"]
    mine = wait_for(mine, 10, what="an access log line with the kept id")
    assert mine[0]["client"] == "203.0.113.44", mine[0]

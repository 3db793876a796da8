"""contrib/grafana/weir.json and contrib/prometheus/alerts.yml against a live weir: every
metric an expression of the dashboard or of the alert rules reads is one `/metrics`
exposes (a histogram's _bucket/_sum/_count included), with the labels it filters and
groups by, and the label values it matches on exist (an error class is one weir has).

The weir runs with an admin listener, a limit_req and a limit_conn zone and a cached
route, so every family appears, and serves a refused request of each zone, a cache miss
and hit, an app exception (500) and a worker crash (502) first. promtool (Debian's
prometheus package, scripts/install-deps.sh) lints the live exposition (`check metrics`),
checks the rules file's syntax, and runs
monitoring_alerts_test.yml: synthetic series on which each alert must fire, or not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e_lib import REPO, get
from front_lib import Background, parse_prometheus, wait_tag_started

pytestmark = pytest.mark.e2e_timeout(120)

DASHBOARD = REPO / "contrib" / "grafana" / "weir.json"
ALERTS = REPO / "contrib" / "prometheus" / "alerts.yml"
# Added by Prometheus at scrape time, not by weir.
TARGET_LABELS = {"instance", "job"}
METRIC = re.compile(r"\b(weir_[A-Za-z0-9_:]+)\b\s*(\{([^}]*)\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# A regex that is only alternatives of plain words ("crash|harakiri").
ALTERNATIVES = re.compile(r"[A-Za-z0-9_\-]+(\|[A-Za-z0-9_\-]+)*")


def error_classes() -> set:
    """Every x-weir-error class, from the enum's names in crates/weir-errors."""
    src = (REPO / "crates" / "weir-errors" / "src" / "lib.rs").read_text()
    classes = set(re.findall(r'ErrorClass::\w+ => "([a-z-]+)"', src))
    assert {"rate-limited", "conn-limited", "harakiri", "worker-died"} <= classes, classes
    return classes


def dashboard_exprs() -> list:
    d = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append(("panel %r" % p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(d["panels"])
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append(("variable $%s" % v["name"], q))
    return out


def alert_exprs() -> list:
    doc = yaml.safe_load(ALERTS.read_text())
    return [("alert %s" % (r.get("alert") or r.get("record")), r["expr"])
            for g in doc["groups"] for r in g["rules"]]


def live_metrics(front) -> dict:
    """A weir with every metric family, after requests that fill their labels."""
    cfg = {
        "limit_req.per_key": {"key": "$http_x_key", "rate": "1r/m", "nodelay": True},
        "limit_conn.per_conn": {"key": "$http_x_conn", "max": 1},
        "cache": {"memory": "16MiB"},
        "route": [{"path": "/", "limit_req": ["per_key"], "limit_conn": ["per_conn"]},
                  {"path": "/c", "cache": {"valid": {"200": "30s"}}}],
    }
    f = front(config=cfg, workers=2, admin=True)
    assert get(f.addr, "/a/env", headers={"X-Key": "k"}, timeout=10).status == 200
    r = get(f.addr, "/b/env", headers={"X-Key": "k"}, timeout=10)
    assert r.header("x-weir-error") == "rate-limited", r
    held = Background(f.addr, "/sleep?s=1.5&tag=held", headers={"X-Conn": "c"})
    wait_tag_started(f.state, "held")
    r = get(f.addr, "/second/env", headers={"X-Conn": "c"}, timeout=10)
    assert r.header("x-weir-error") == "conn-limited", r
    assert held.join().status == 200
    assert [get(f.addr, "/c/cached?k=1", timeout=10).status for _ in range(2)] == [200, 200]
    r = get(f.addr, "/boom", timeout=10)
    assert r.status == 500 and r.header("x-weir-error") == "app-exception", r
    r = get(f.addr, "/crash", timeout=10)
    assert r.status == 502 and r.header("x-weir-error") == "worker-died", r
    f.wait_metric("weir_worker_restarts_total", 1, reason="crash")
    r = get(f.admin, "/metrics", timeout=10)
    assert r.status == 200, r
    promtool = shutil.which("promtool")
    if promtool:  # Prometheus' own lint of the exposition (names, units, HELP)
        p = subprocess.run([promtool, "check", "metrics"], input=r.text, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr
    return parse_prometheus(r.text)


def family_of(name: str, fams: dict):
    """(family, extra labels its series may have), or (None, None)."""
    if name in fams:
        return fams[name], set()
    for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in fams and fams[base].type == "histogram":
            return fams[base], extra
    return None, None


def check_expr(where: str, expr: str, fams: dict, classes: set) -> list:
    """What is wrong with one expression against the live families (empty: nothing)."""
    problems = []
    used = list(METRIC.finditer(expr))
    if not used:
        problems.append("%s: no weir_ metric in %r" % (where, expr))
    labels_in_expr = set(TARGET_LABELS)
    for m in used:
        name, matchers = m.group(1), m.group(3) or ""
        fam, extra = family_of(name, fams)
        if fam is None:
            problems.append("%s: %s is not in the live /metrics" % (where, name))
            continue
        known = {k for _, ls, _ in fam.samples for k in ls} | extra
        labels_in_expr |= known | TARGET_LABELS
        for label, op, value in MATCHER.findall(matchers):
            if label not in known | TARGET_LABELS:
                problems.append("%s: %s has no label %r (it has %s)" % (where, name, label, sorted(known)))
                continue
            if op == "=":
                values = [value]
            elif op == "=~" and ALTERNATIVES.fullmatch(value):
                values = value.split("|")
            else:
                continue  # a real regex (status=~"5..") or a negative matcher
            if label in TARGET_LABELS:
                continue
            seen = {ls.get(label) for _, ls, _ in fam.samples}
            allowed = seen | (classes if label == "class" else set())
            for v in values:
                if v not in allowed:
                    problems.append("%s: %s{%s} never has the value %r (seen: %s)" % (
                        where, name, label, v, sorted(x for x in seen if x is not None)))
    for group in GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in labels_in_expr:
                problems.append("%s: groups by %r, which no metric of the expression has" % (where, label))
    return problems


def test_every_dashboard_and_alert_expression_reads_what_weir_exposes(front):
    fams = live_metrics(front)
    classes = error_classes()
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 20, exprs
    problems = [p for where, e in exprs for p in check_expr(where, e, fams, classes)]
    assert not problems, "\n".join(problems)
    # What the issue asks the two files to cover is there.
    text = " ".join(e for _, e in exprs)
    for name in ("weir_requests_total", "weir_request_duration_seconds_bucket", "weir_queue_wait_seconds_bucket",
                 "weir_workers", "weir_worker_restarts_total", "weir_cache_requests_total", "weir_limit_req_total"):
        assert name in text, name
    alerts = " ".join(e for _, e in alert_exprs())
    for needle in ('status=~"5.."', "weir_queue_wait_seconds_bucket", "weir_worker_restarts_total", "rate-limited"):
        assert needle in alerts, needle


def test_the_checker_catches_a_wrong_name_label_or_value():
    """check_expr does refuse what it must (against a small exposition)."""
    fams = parse_prometheus(
        "# TYPE weir_requests_total counter\nweir_requests_total{status=\"200\",class=\"\"} 1\n"
        "# TYPE weir_queue_wait_seconds histogram\nweir_queue_wait_seconds_bucket{le=\"+Inf\"} 1\n"
        "weir_queue_wait_seconds_sum 0.1\nweir_queue_wait_seconds_count 1\n")
    classes = {"rate-limited"}
    ok = ['sum by (instance, class) (rate(weir_requests_total{class=~"rate-limited", status=~"5.."}[5m]))',
          "histogram_quantile(0.9, sum by (le) (rate(weir_queue_wait_seconds_bucket[5m])))",
          "rate(weir_queue_wait_seconds_sum[5m]) / rate(weir_queue_wait_seconds_count[5m])"]
    for e in ok:
        assert check_expr("ok", e, fams, classes) == [], e
    bad = ["rate(weir_request_total[5m])",                           # misspelt name
           'rate(weir_requests_total{reason="crash"}[5m])',           # label it does not have
           'rate(weir_requests_total{class="rate-limitd"}[5m])',      # class weir does not have
           'rate(weir_requests_total{status="404"}[5m])',             # value never seen
           "sum by (zone) (rate(weir_requests_total[5m]))",          # grouping by a foreign label
           "rate(weir_queue_wait_seconds_total[5m])",                 # not a histogram suffix
           "up == 0"]                                                 # reads no weir metric
    for e in bad:
        assert check_expr("bad", e, fams, classes), e


def test_the_dashboard_is_a_grafana_dashboard():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = []
    for p in d["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and all(t["refId"] and t["expr"] for t in p["targets"]), p["title"]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names


def test_the_alert_rules_are_valid():
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules
    for r in rules:
        assert r["alert"] and r["expr"] and r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"], r
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install-deps.sh installs Debian's prometheus package)")
    p = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_alerts_fire_on_the_series_they_are_for(tmp_path):
    """promtool's rule unit tests (tests/front/monitoring_alerts_test.yml): each alert fires
    on the series it is written for, for the labels it names, and not on its neighbours."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install-deps.sh installs Debian's prometheus package)")
    doc = yaml.safe_load(ALERTS.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)  # promtool compares them too; the prose is not under test
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    cases = tmp_path / "alerts_test.yml"
    cases.write_text((Path(__file__).parent / "monitoring_alerts_test.yml").read_text())
    p = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_dashboard_queries_are_promql(tmp_path):
    """Every query of the dashboard, its Grafana variables given values, parses as PromQL:
    promtool checks them as the expressions of recording rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install-deps.sh installs Debian's prometheus package)")
    values = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        for k, v in values.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, "%s: a variable this test does not know: %s" % (where, expr)
        rules.append({"record": "weir_dashboard:query_%d" % i, "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    p = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr

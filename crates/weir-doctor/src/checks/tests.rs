//! Each check against made-up facts: no machine, no database, no app.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::facts::{AppFacts, DbFacts, Machine, StatementLimit};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A config from TOML, with the safeguards set unless the test's TOML says otherwise.
fn cfg(toml: &str) -> Facts {
    let base = r#"
[server]
request_timeout = "30s"
access_log = "stdout"
[app]
module = "app:app"
workers = 4
harakiri = 25
max_requests = 5000
reload_on_rss = "400MiB"
ready_check = "app:ping"
"#;
    // The test's sections replace the base's: parse both and merge by table.
    let mut a: toml::Table = toml::from_str(base).unwrap();
    let b: toml::Table = toml::from_str(toml).unwrap();
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(toml::Value::Table(at)), toml::Value::Table(bt)) => at.extend(bt),
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
    let mut c = weir_config::Config::parse(&toml::to_string(&a).unwrap(), Path::new("t.toml"))
        .expect("test config parses");
    c.apply_defaults();
    let mut f = Facts::new(c);
    f.machine = Some(machine());
    f
}

fn machine() -> Machine {
    Machine {
        mem_total: 16 * GIB,
        mem_available: 12 * GIB,
        cgroup_memory_max: None,
        somaxconn: Some(4096),
        nofile_soft: Some(65536),
        nofile_hard: Some(1 << 20),
    }
}

fn db() -> DbFacts {
    DbFacts {
        target: "weir@db:3306/shop".into(),
        version: "11.4.2-MariaDB".into(),
        max_connections: 151,
        max_user_connections: 0,
        connected: 3,
        wait_timeout: Duration::from_secs(28800),
        statement_limit: Some(StatementLimit {
            variable: "max_statement_time".into(),
            value: Duration::from_secs(20),
        }),
    }
}

fn app(rss_mib: u64, conns: u64) -> AppFacts {
    AppFacts {
        rss: rss_mib * MIB,
        import_ms: 100,
        db_connections: Some(conns),
        fork_findings: None,
    }
}

/// A fully measured, healthy setup.
fn healthy() -> Facts {
    let mut f = cfg("");
    f.client_timeout = Some(Duration::from_secs(60));
    f.db = Some(db());
    f.app = Some(app(60, 2));
    f
}

fn checks(r: &Report) -> Vec<(&'static str, Severity)> {
    r.findings.iter().map(|f| (f.check, f.severity)).collect()
}

fn only(r: &Report, check: &str) -> Vec<Finding> {
    r.findings
        .iter()
        .filter(|f| f.check == check)
        .cloned()
        .collect()
}

#[test]
fn a_healthy_setup_has_no_findings_and_skips_nothing() {
    let r = run(&healthy());
    assert_eq!(checks(&r), vec![]);
    assert_eq!(r.skipped, vec![]);
    assert!(!r.has_errors());
}

#[test]
fn request_timeout_not_below_the_client_timeout_is_an_error() {
    let mut f = healthy();
    f.client_timeout = Some(Duration::from_secs(30));
    let r = run(&f);
    let found = only(&r, "timeout_chain");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("server.request_timeout = 30s"),
        "{}",
        found[0].message
    );
    assert!(found[0].fix.contains("below 30s"));
}

#[test]
fn a_routes_own_request_timeout_is_checked_under_its_key() {
    let mut f = cfg(r#"
[[route]]
path = "/reports"
request_timeout = "90s"
harakiri = 80
"#);
    f.client_timeout = Some(Duration::from_secs(60));
    let r = run(&f);
    let found = only(&r, "timeout_chain");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("route[0].request_timeout = 90s"));
    assert!(found[0].message.contains("route \"/reports\""));
}

#[test]
fn no_request_timeout_counts_the_queue_wait_and_harakiri() {
    // queue.timeout 10s + harakiri 55s >= 60s: the client may give up first.
    let mut f = cfg("[server]\naccess_log = \"stdout\"\n[app]\nharakiri = 55\n");
    f.config.server.request_timeout = None;
    f.client_timeout = Some(Duration::from_secs(60));
    let r = run(&f);
    let found = only(&r, "timeout_chain");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("1m 5s") || found[0].message.contains("65s"),
        "{}",
        found[0].message
    );

    // harakiri 20s: 30s in all, shorter: only the missing deadline is warned about.
    f.config.app.harakiri = Some(weir_config::Seconds::from_secs(20));
    let r = run(&f);
    assert_eq!(
        only(&r, "timeout_chain")
            .iter()
            .map(|x| x.severity)
            .collect::<Vec<_>>(),
        vec![Severity::Warning]
    );
}

#[test]
fn nothing_bounding_a_request_is_an_error_when_the_client_has_a_timeout() {
    let mut f = healthy();
    f.config.server.request_timeout = None;
    f.config.app.harakiri = None;
    let r = run(&f);
    assert!(checks(&r).contains(&("timeout_chain", Severity::Error)));
    assert!(checks(&r).contains(&("harakiri", Severity::Warning)));
}

#[test]
fn without_a_client_timeout_the_chain_check_is_skipped() {
    let mut f = healthy();
    f.client_timeout = None;
    let r = run(&f);
    assert_eq!(checks(&r), vec![]);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].check, "timeout_chain");
    assert!(r.skipped[0].reason.contains("--client-timeout"));
}

#[test]
fn a_statement_limit_not_below_harakiri_is_an_error() {
    let mut f = healthy();
    f.db.as_mut().unwrap().statement_limit = Some(StatementLimit {
        variable: "max_statement_time".into(),
        value: Duration::from_secs(25),
    });
    let r = run(&f);
    let found = only(&r, "statement_timeout");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("app.harakiri = 25s"),
        "{}",
        found[0].message
    );
    assert!(
        found[0]
            .fix
            .contains("SET GLOBAL max_statement_time = 22.5"),
        "{}",
        found[0].fix
    );
}

#[test]
fn no_statement_limit_is_a_warning_with_the_servers_variable() {
    let mut f = healthy();
    let d = f.db.as_mut().unwrap();
    d.statement_limit = None;
    d.version = "8.0.36".into();
    let r = run(&f);
    let found = only(&r, "statement_timeout");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(
        found[0].fix.contains("max_execution_time = 22500"),
        "{}",
        found[0].fix
    );
}

#[test]
fn no_statement_limit_is_one_warning_against_the_shortest_bound() {
    let mut f = cfg(r#"
[[route]]
path = "/reports"
request_timeout = "60s"
harakiri = 55
[[route]]
path = "/fast"
harakiri = 5
"#);
    let mut d = db();
    d.statement_limit = None;
    f.db = Some(d);
    let r = run(&f);
    let found = only(&r, "statement_timeout");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .contains("route[1].harakiri = 5s (route \"/fast\")"),
        "{}",
        found[0].message
    );
    // A limit of 20s: too long for the server's 25s? No; for /reports' 55s? No; for
    // /fast's 5s: yes, one error naming that route.
    f.db.as_mut().unwrap().statement_limit = Some(StatementLimit {
        variable: "max_statement_time".into(),
        value: Duration::from_secs(20),
    });
    let r = run(&f);
    let found = only(&r, "statement_timeout");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0].message.contains("route[1].harakiri = 5s"));
}

#[test]
fn a_short_wait_timeout_is_a_warning() {
    let mut f = healthy();
    f.db.as_mut().unwrap().wait_timeout = Duration::from_secs(30);
    let r = run(&f);
    assert_eq!(checks(&r), vec![("wait_timeout", Severity::Warning)]);
}

#[test]
fn connections_over_max_connections_less_the_reserve_are_an_error() {
    let mut f = healthy();
    // 151 - 16 (10%, rounded up) = 135 for weir; 4 workers x 34 = 136.
    f.app.as_mut().unwrap().db_connections = Some(34);
    let r = run(&f);
    let found = only(&r, "db_connections");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0]
            .message
            .contains("4 workers x 34 per worker (measured"),
        "{}",
        found[0].message
    );
    assert!(
        found[0].message.contains("less 16 kept"),
        "{}",
        found[0].message
    );
    assert!(found[0].fix.contains("at most 135"));
    assert!(found[0].fix.contains("at least 152"));
    // 4 x 33 = 132 fits, but a reload's two generations (264) do not: a warning.
    f.app.as_mut().unwrap().db_connections = Some(33);
    let r = run(&f);
    assert_eq!(checks(&r), vec![("db_connections", Severity::Warning)]);
    // --pool-size wins over the measurement.
    f.pool_size = Some(2);
    assert_eq!(checks(&run(&f)), vec![]);
}

#[test]
fn the_reserve_is_at_least_ten_and_max_user_connections_counts() {
    let mut f = healthy();
    let d = f.db.as_mut().unwrap();
    d.max_connections = 1000;
    d.max_user_connections = 50; // the lower limit; reserve max(5, 10) = 10, room 40
    f.pool_size = Some(11); // 44
    let r = run(&f);
    let found = only(&r, "db_connections");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0]
            .message
            .contains("max_user_connections = 50, less 10"),
        "{}",
        found[0].message
    );
}

#[test]
fn an_import_without_connections_counts_one_per_worker() {
    let mut f = healthy();
    f.app.as_mut().unwrap().db_connections = Some(0);
    f.config.app.workers = 200;
    let r = run(&f);
    let found = only(&r, "db_connections");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0]
        .message
        .contains("200 workers x 1 per worker (none of the import's connections"));
}

#[test]
fn connections_are_skipped_without_a_count_or_a_database() {
    let mut f = healthy();
    f.app.as_mut().unwrap().db_connections = None;
    let r = run(&f);
    assert!(r
        .skipped
        .iter()
        .any(|s| s.check == "db_connections" && s.reason.contains("--pool-size")));
    f.db = None;
    let r = run(&f);
    let names: Vec<_> = r.skipped.iter().map(|s| s.check).collect();
    assert_eq!(
        names,
        vec!["statement_timeout", "wait_timeout", "db_connections"]
    );
}

#[test]
fn memory_over_the_machine_is_an_error_and_over_available_a_warning() {
    let mut f = healthy();
    f.config.app.reload_on_rss = Some(weir_config::Size::from_bytes(2 * GIB));
    f.app.as_mut().unwrap().rss = 3 * GIB; // 4 workers + the zygote = 15 GiB
    let r = run(&f);
    assert_eq!(
        checks(&r),
        vec![
            ("reload_on_rss", Severity::Error),
            ("memory", Severity::Warning)
        ]
    );
    f.app.as_mut().unwrap().rss = 4 * GIB; // 20 GiB > 16
    f.config.app.reload_on_rss = Some(weir_config::Size::from_bytes(5 * GIB));
    let r = run(&f);
    let found = only(&r, "memory");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0]
            .message
            .contains("5 processes (4 workers and the zygote they are forked from) x 4096.0 MiB"),
        "{}",
        found[0].message
    );
    assert!(
        found[0].fix.contains("at most 3 workers"),
        "{}",
        found[0].fix
    );
}

#[test]
fn a_cgroup_limit_below_the_machines_memory_is_the_limit() {
    let mut f = healthy();
    f.machine.as_mut().unwrap().cgroup_memory_max = Some(256 * MIB);
    f.config.app.preload = weir_config::Preload::Off; // 4 workers x 80 MiB = 320
    f.app.as_mut().unwrap().rss = 80 * MIB;
    f.config.app.reload_on_rss = Some(weir_config::Size::from_bytes(60 * MIB));
    let r = run(&f);
    let found = only(&r, "memory");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0]
        .message
        .contains("4 processes (4 workers) x 80.0 MiB"));
    assert!(
        found[0]
            .message
            .contains("the cgroup's memory.max (256.0 MiB)"),
        "{}",
        found[0].message
    );
    // reload_on_rss below a fresh worker's RSS: every request recycles.
    assert_eq!(only(&r, "reload_on_rss")[0].severity, Severity::Error);
}

#[test]
fn reload_on_rss_unset_is_a_warning_with_a_suggested_value() {
    let mut f = healthy();
    f.config.app.reload_on_rss = None;
    let r = run(&f);
    let found = only(&r, "reload_on_rss");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].fix.contains("\"120MiB\""), "{}", found[0].fix);
    // Too high for the machine: 4 x 8 GiB > 16 GiB.
    f.config.app.reload_on_rss = Some(weir_config::Size::from_bytes(8 * GIB));
    let r = run(&f);
    let found = only(&r, "reload_on_rss");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].fix.contains("at most 4096.0 MiB"));
}

#[test]
fn a_backlog_above_somaxconn_is_a_warning() {
    let mut f = healthy();
    f.machine.as_mut().unwrap().somaxconn = Some(128);
    let r = run(&f);
    let found = only(&r, "backlog");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].fix.contains("net.core.somaxconn=1024"));
}

#[test]
fn the_open_files_limit_covers_listeners_workers_and_clients() {
    let mut f = healthy();
    // 64 + 1 listener + 4 x 4 workers + 2 x (256 queue + 4) = 601
    assert_eq!(nofile_needed(&f), 601);
    let m = f.machine.as_mut().unwrap();
    m.nofile_soft = Some(600);
    m.nofile_hard = Some(4096);
    let r = run(&f);
    let found = only(&r, "nofile");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].fix.contains("ulimit -n 601"), "{}", found[0].fix);
    f.machine.as_mut().unwrap().nofile_soft = Some(601);
    assert_eq!(checks(&run(&f)), vec![]);
}

#[test]
fn fork_findings_warn_under_auto_and_are_an_error_under_preload_true() {
    let mut f = healthy();
    f.app.as_mut().unwrap().fork_findings =
        Some("a socket connected to 127.0.0.1:3306 (fd 7) open".into());
    let r = run(&f);
    let found = only(&r, "preload");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].message.contains("127.0.0.1:3306"));
    f.config.app.preload = weir_config::Preload::On;
    assert_eq!(only(&run(&f), "preload")[0].severity, Severity::Error);
    f.config.app.preload = weir_config::Preload::Off;
    assert_eq!(only(&run(&f), "preload"), vec![]);
}

#[test]
fn missing_safeguards_are_warnings() {
    let mut f = cfg("[server]\naccess_log = \"off\"\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    f.config.app.harakiri = None;
    f.config.app.max_requests = 0;
    f.config.app.ready_check = None;
    let r = run(&f);
    let mut names: Vec<_> = checks(&r);
    names.sort();
    assert_eq!(
        names,
        vec![
            ("access_log", Severity::Warning),
            ("admin_listen", Severity::Warning),
            ("harakiri", Severity::Warning),
            ("max_requests", Severity::Warning),
            ("ready_check", Severity::Warning),
        ]
    );
}

#[test]
fn loopback_admin_addresses_pass() {
    for a in [
        "127.0.0.1:9901",
        "localhost:9901",
        "[::1]:9901",
        "127.8.0.1:1",
    ] {
        assert!(is_loopback(a), "{a}");
    }
    for a in [
        "0.0.0.0:9901",
        "[::]:9901",
        "10.0.0.5:9901",
        "admin.example:9901",
    ] {
        assert!(!is_loopback(a), "{a}");
    }
}

#[test]
fn errors_come_before_warnings() {
    let mut f = healthy();
    f.config.app.max_requests = 0; // warning, found late
    f.client_timeout = Some(Duration::from_secs(10)); // error, found first
    f.config.server.access_log = "off".into();
    let r = run(&f);
    let sev: Vec<_> = r.findings.iter().map(|x| x.severity).collect();
    let mut sorted = sev.clone();
    sorted.sort();
    assert_eq!(sev, sorted);
    assert_eq!(sev[0], Severity::Error);
    assert!(r.has_errors());
}

#[test]
fn an_upstream_setup_skips_the_worker_checks() {
    let mut f = cfg("[upstream]\nservers = [\"127.0.0.1:9000\"]\n");
    f.config.app = weir_config::AppConfig::default();
    f.client_timeout = Some(Duration::from_secs(60));
    f.db = Some(db());
    let r = run(&f);
    assert!(checks(&r).iter().all(|(c, _)| !matches!(
        *c,
        "harakiri" | "max_requests" | "ready_check" | "reload_on_rss"
    )));
    assert!(r.skipped.iter().any(|s| s.check == "db_connections"));
    // The upstream's read timeout ends the run: no request_timeout, 10s of queue + the
    // default read_timeout of 60s is not shorter than the client's 60s.
    f.config.server.request_timeout = None;
    let found = only(&run(&f), "timeout_chain");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("upstream.read_timeout = 60s"),
        "{}",
        found[0].message
    );
}

//! `weir db slap` against a real server: exact counts, errors by MySQL error number,
//! duration mode, JSON.

mod common;

use std::time::Duration;

use weir_db::cli::SlapArgs;
use weir_db::dsn::Dsn;

fn args(url: &str, query: &str, concurrency: u32) -> SlapArgs {
    SlapArgs {
        dsn: Dsn::parse(url).unwrap(),
        query: query.into(),
        concurrency,
        iterations: None,
        duration: None,
        json: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterations_give_exact_counts() {
    let Some(url) = common::server_url("slap counts") else {
        return;
    };
    let mut a = args(&url, "SELECT 1", 4);
    a.iterations = Some(25);
    let mut out = Vec::new();
    let r = weir_db::slap::run(&a, &mut out, std::future::pending::<()>())
        .await
        .unwrap();
    assert_eq!((r.queries, r.ok, r.errors), (100, 100, 0));
    assert!(r.outcome().is_ok());
    assert!(r.qps > 0.0);
    let l = &r.latency_ms;
    assert!(
        0.0 < l.min && l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("100 ok, 0 errors"), "{text}");
    assert!(text.contains("p99"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_mysql_error_number() {
    let Some(url) = common::server_url("slap errors") else {
        return;
    };
    let mut a = args(&url, "SELECT * FROM weir_no_such_table_for_slap", 3);
    a.iterations = Some(7);
    let dir = std::env::temp_dir().join(format!("weir-slap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    a.json = Some(dir.join("slap.json"));
    let mut out = Vec::new();
    let r = weir_db::slap::run(&a, &mut out, std::future::pending::<()>())
        .await
        .unwrap();
    assert_eq!((r.queries, r.ok, r.errors), (21, 0, 21));
    assert_eq!(
        r.errors_by_code.get("1146"),
        Some(&21),
        "{:?}",
        r.errors_by_code
    );
    let e = r.outcome().unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("1146"), "{e}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("slap.json")).unwrap()).unwrap();
    assert_eq!(json["errors_by_code"]["1146"], 21);
    assert_eq!(json["queries"], 21);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_the_run() {
    let Some(url) = common::server_url("slap duration") else {
        return;
    };
    let mut a = args(&url, "SELECT SLEEP(0.01)", 3);
    a.duration = Some(Duration::from_millis(600));
    let r = weir_db::slap::run(&a, &mut Vec::new(), std::future::pending::<()>())
        .await
        .unwrap();
    assert!(r.elapsed_s >= 0.6 && r.elapsed_s < 2.0, "{r:?}");
    // 3 clients x ~0.6 s / ~10 ms each: well over 60 in all, never more than 3 x 60 + 3.
    assert!(r.ok > 60 && r.ok <= 183, "{r:?}");
    assert!(r.latency_ms.p50 >= 10.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_the_run_with_a_report() {
    let Some(url) = common::server_url("slap shutdown") else {
        return;
    };
    let mut a = args(&url, "SELECT SLEEP(0.05)", 2);
    a.duration = Some(Duration::from_secs(60));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        weir_db::slap::run(
            &a,
            &mut Vec::new(),
            tokio::time::sleep(Duration::from_millis(400)),
        ),
    )
    .await
    .expect("the run stops on the signal")
    .unwrap();
    assert!(r.interrupted);
    assert!(r.ok > 0 && r.elapsed_s < 5.0, "{r:?}");
}

//! `weir db guard` against a real server: it ends a long SLEEP after the busy time, leaves
//! short statements alone, kills nothing in a dry run, and never its own connection.

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use serde_json::Value;
use tokio::sync::oneshot;
use weir_db::cli::GuardArgs;
use weir_db::dsn::Dsn;
use weir_db::guard;

fn args(url: &str, busy_ms: u64, marker: &str) -> GuardArgs {
    GuardArgs {
        dsn: Dsn::parse(url).unwrap(),
        busy_time: Duration::from_millis(busy_ms),
        interval: Duration::from_millis(100),
        match_user: None,
        match_db: None,
        match_info: Some(regex::Regex::new(&regex::escape(marker)).unwrap()),
        ignore_user: None,
        ignore_info: None,
        kill_query: false,
        kill: false,
        dry_run: false,
        once: false,
        info_len: 256,
    }
}

async fn connect(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).unwrap()).await.unwrap()
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_a_long_sleep_after_the_busy_time_and_spares_short_queries() {
    let Some(url) = common::server_url("guard kill") else {
        return;
    };
    let marker = format!("guard-kill-{}", std::process::id());
    let a = args(&url, 1000, &marker);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let guard_task = tokio::spawn(async move {
        let mut out = Vec::new();
        let summary = guard::run(&a, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
        .expect("the guard runs");
        (summary, out)
    });

    // Short statements that match the rules but never reach the busy time.
    let short_url = url.clone();
    let short_marker = marker.clone();
    let short = tokio::spawn(async move {
        let mut c = connect(&short_url).await;
        let mut results = Vec::new();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let r: Result<Option<i64>, _> = c
                .query_first(format!("SELECT /* {short_marker}-short */ SLEEP(0.2)"))
                .await;
            results.push(r.map_err(|e| e.to_string()));
        }
        results
    });

    let mut long = connect(&url).await;
    let t = Instant::now();
    let r: Result<Option<i64>, _> = long
        .query_first(format!("SELECT /* {marker}-long */ SLEEP(30)"))
        .await;
    let took = t.elapsed();
    // MariaDB reports 1317 (interrupted); MySQL makes SLEEP return 1.
    match r {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "{e}"),
        Ok(Some(1)) => {}
        other => panic!("the SLEEP was not interrupted: {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(1000),
        "killed before the busy time: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "killed too late: {took:?}");

    let short = short.await.unwrap();
    assert!(short.len() >= 5, "{short:?}");
    assert!(
        short.iter().all(|r| matches!(r, Ok(Some(0)))),
        "a short statement was touched: {short:?}"
    );
    stop_tx.send(()).unwrap();
    let (summary, out) = tokio::time::timeout(Duration::from_secs(5), guard_task)
        .await
        .expect("the guard stops on its shutdown signal")
        .unwrap();
    let victims = lines(&out);
    assert_eq!(victims.len(), 1, "{victims:?}");
    let v = &victims[0];
    assert_eq!(v["result"], "killed");
    assert_eq!(v["action"], "kill-query");
    assert!(v["info"].as_str().unwrap().contains("-long"), "{v}");
    assert!(v["seconds"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(summary.killed, 1);
    assert!(summary.passes >= 10, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_the_connection() {
    let Some(url) = common::server_url("guard --kill") else {
        return;
    };
    let marker = format!("guard-conn-{}", std::process::id());
    let mut a = args(&url, 300, &marker);
    a.kill = true;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let guard_task = tokio::spawn(async move {
        let mut out = Vec::new();
        guard::run(&a, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        out
    });
    let mut c = connect(&url).await;
    let r: Result<Option<i64>, _> = c
        .query_first(format!("SELECT /* {marker} */ SLEEP(30)"))
        .await;
    let e = r.expect_err("the connection was killed");
    assert!(e.is_fatal(), "expected a lost connection, got {e}");
    stop_tx.send(()).unwrap();
    let out = guard_task.await.unwrap();
    let victims = lines(&out);
    assert_eq!(
        victims.len(),
        1,
        "the statement ended with {e} but the guard logged {victims:?}"
    );
    assert_eq!(victims[0]["action"], "kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_kills_nothing_and_logs_once() {
    let Some(url) = common::server_url("guard --dry-run") else {
        return;
    };
    let marker = format!("guard-dry-{}", std::process::id());
    let mut a = args(&url, 300, &marker);
    a.dry_run = true;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let guard_task = tokio::spawn(async move {
        let mut out = Vec::new();
        let s = guard::run(&a, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        (s, out)
    });
    let mut c = connect(&url).await;
    let r: Option<i64> = c
        .query_first(format!("SELECT /* {marker} */ SLEEP(1.5)"))
        .await
        .expect("a dry run ends nothing");
    assert_eq!(r, Some(0), "SLEEP was interrupted");
    stop_tx.send(()).unwrap();
    let (summary, out) = guard_task.await.unwrap();
    let victims = lines(&out);
    assert_eq!(
        victims.len(),
        1,
        "one line per statement, however many passes: {victims:?}"
    );
    assert_eq!(victims[0]["result"], "dry-run");
    assert_eq!(victims[0]["dry_run"], true);
    assert_eq!(summary.killed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_never_touches_its_own_connection() {
    let Some(server) = common::server_url("guard --once") else {
        return;
    };
    // busy-time 0 and rules that match the guard's own process list read; the scratch
    // database keeps the rules from matching anyone else's statements on a shared server.
    let db = common::Scratch::new(&server, "guard_self").await;
    let mut a = args(&db.url, 0, "PROCESSLIST");
    a.match_info = Some(regex::Regex::new("(?i)processlist|performance_schema").unwrap());
    a.match_db = Some(regex::Regex::new(&format!("^{}$", regex::escape(&db.name))).unwrap());
    a.once = true;
    let mut out = Vec::new();
    let s = guard::run(&a, &mut out, std::future::pending::<()>())
        .await
        .unwrap();
    assert_eq!(s.passes, 1);
    assert_eq!(s.victims, 0, "{}", String::from_utf8_lossy(&out));
    db.drop_db().await;
}

#[tokio::test]
async fn once_reports_a_refused_login() {
    let Some(url) = common::server_url("guard bad password") else {
        return;
    };
    let bad = url.replacen("://", "://nobody_weir_test:wrong@", 1);
    // Keep host/port/db: drop the original credentials (between the new @ and the old @).
    let bad = match (bad.find('@'), bad.rfind('@')) {
        (Some(first), Some(last)) if first != last => format!("{}{}", &bad[..first], &bad[last..]),
        _ => bad,
    };
    let mut a = args(&bad, 1000, "x");
    a.once = false; // even without --once, a refused login is fatal, not retried
    let mut out = Vec::new();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        guard::run(&a, &mut out, std::future::pending::<()>()),
    )
    .await
    .expect("a refused login is not retried forever")
    .unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("user and password"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_retried_and_the_guard_goes_on() {
    let Some(server) = common::server_url("guard reconnect") else {
        return;
    };
    // The guard's DSN names a scratch database: its connection is the only other one there.
    let mut db = common::Scratch::new(&server, "guard_reconnect").await;
    let marker = format!("guard-again-{}", std::process::id());
    let a = args(&db.url, 500, &marker);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let guard_task = tokio::spawn(async move {
        let mut out = Vec::new();
        let s = guard::run(&a, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        (s, out)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let own: u32 = db.conn.id();
    let ids: Vec<u64> = db
        .conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?",
            (db.name.clone(), own),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "the guard's connection: {ids:?}");
    db.exec(&format!("KILL CONNECTION {}", ids[0])).await;

    // The guard reconnects and still ends long statements.
    let mut c = connect(&db.url).await;
    let r: Result<Option<i64>, _> = c
        .query_first(format!("SELECT /* {marker} */ SLEEP(20)"))
        .await;
    assert!(
        matches!(&r, Err(mysql_async::Error::Server(e)) if e.code == 1317),
        "{r:?}"
    );
    stop_tx.send(()).unwrap();
    let (summary, out) = guard_task.await.unwrap();
    assert!(summary.reconnects >= 1, "{summary:?}");
    assert_eq!(lines(&out).len(), 1);
    c.disconnect().await.unwrap();
    db.drop_db().await;
}

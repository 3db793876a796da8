//! `weir db slap`: N clients, each on its own connection, run one statement in a loop, for
//! a number of iterations each or for a duration; the report has queries/s, latency
//! percentiles from an HdrHistogram (mysqlslap has only average, min and max) and the
//! errors counted by MySQL error number.
//!
//! All connections are opened before the clock starts, so connection set-up is reported
//! on its own and not mixed into query latency. A client whose connection breaks counts
//! the error and reconnects once; if that fails it stops and the report says so. Latency
//! is recorded for successful statements only, in microseconds, 3 significant digits.
//! SIGINT/SIGTERM stop the clients after their current statement and report what ran.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::cli::{SlapArgs, Stop};
use crate::dsn::Dsn;
use crate::error::DbError;
use crate::output::emit;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// What a slap run measured (also its JSON form).
#[derive(Debug, Clone, Serialize)]
pub struct SlapReport {
    /// The statement.
    pub query: String,
    /// Clients.
    pub concurrency: u32,
    /// Queries per client, when the run was bounded so.
    pub iterations: Option<u64>,
    /// Planned duration in seconds, when the run was bounded so.
    pub duration_s: Option<f64>,
    /// Statements completed (ok + errors).
    pub queries: u64,
    /// Statements that succeeded.
    pub ok: u64,
    /// Statements that failed.
    pub errors: u64,
    /// Failures by MySQL error number (`io`, `driver`, `other` for client-side failures).
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first message seen for each error key.
    pub error_messages: BTreeMap<String, String>,
    /// Seconds from the start until the last client finished.
    pub elapsed_s: f64,
    /// Successful statements per second.
    pub qps: f64,
    /// Latency of successful statements.
    pub latency_ms: Latency,
    /// Time to open all connections, before the clock started.
    pub connect_ms: f64,
    /// Clients that lost their connection and could not reconnect.
    pub clients_lost: u32,
    /// True when a signal stopped the run early.
    pub interrupted: bool,
}

struct ClientResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    messages: BTreeMap<String, String>,
    lost: bool,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds: 1 us to 1 h, 3 digits")
}

/// The key an error is counted under: the MySQL error number, or the client-side kind.
pub fn error_key(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => s.code.to_string(),
        mysql_async::Error::Io(_) => "io".into(),
        mysql_async::Error::Driver(_) => "driver".into(),
        mysql_async::Error::Other(_) | mysql_async::Error::Url(_) => "other".into(),
    }
}

async fn client(
    mut conn: Conn,
    dsn: Dsn,
    query: Arc<str>,
    stop: Stop,
    start: Instant,
    halt: Arc<AtomicBool>,
) -> ClientResult {
    let mut r = ClientResult {
        hist: new_hist(),
        ok: 0,
        errors: BTreeMap::new(),
        messages: BTreeMap::new(),
        lost: false,
    };
    let mut done = 0u64;
    loop {
        let more = match stop {
            Stop::Iterations(n) => done < n,
            Stop::Duration(d) => start.elapsed() < d,
        };
        if !more || halt.load(Ordering::Relaxed) {
            break;
        }
        let t = Instant::now();
        let res = conn.query_drop(&*query).await;
        let took = t.elapsed();
        done += 1;
        match res {
            Ok(()) => {
                r.ok += 1;
                r.hist.saturating_record(took.as_micros().max(1) as u64);
            }
            Err(e) => {
                let key = error_key(&e);
                *r.errors.entry(key.clone()).or_insert(0) += 1;
                r.messages.entry(key).or_insert_with(|| e.to_string());
                if e.is_fatal() {
                    match dsn.connect().await {
                        Ok(c) => conn = c,
                        Err(_) => {
                            r.lost = true;
                            return r;
                        }
                    }
                }
            }
        }
    }
    // Best effort: the numbers are taken; a failed goodbye changes nothing.
    let _ = conn.disconnect().await;
    r
}

/// Runs the load and writes the report (text, or JSON with `--json -`) to `out`. Failed
/// statements are counted, not returned: see [`SlapReport::outcome`].
pub async fn run(
    args: &SlapArgs,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<SlapReport, DbError> {
    let stop = args.stop();
    let n = args.concurrency;
    eprintln!(
        "weir db slap: {n} clients, {} of {:?} on {}",
        match stop {
            Stop::Iterations(i) => format!("{i} queries each"),
            Stop::Duration(d) => format!("{d:?}"),
        },
        args.query,
        args.dsn.shown()
    );

    let t_connect = Instant::now();
    let mut connecting = JoinSet::new();
    for _ in 0..n {
        let dsn = args.dsn.clone();
        connecting.spawn(async move { dsn.connect().await });
    }
    let mut conns = Vec::with_capacity(n as usize);
    let mut first_err = None;
    while let Some(joined) = connecting.join_next().await {
        match joined.expect("a connect task does not panic: it only awaits the driver") {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        let opened = conns.len();
        for c in conns {
            // Best effort: we are failing anyway; the server drops the sockets itself.
            let _ = c.disconnect().await;
        }
        eprintln!("weir db slap: only {opened} of {n} connections opened");
        return Err(e);
    }
    let connect_ms = t_connect.elapsed().as_secs_f64() * 1000.0;

    let query: Arc<str> = Arc::from(args.query.as_str());
    let halt = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut clients = JoinSet::new();
    for c in conns {
        clients.spawn(client(
            c,
            args.dsn.clone(),
            query.clone(),
            stop,
            start,
            halt.clone(),
        ));
    }
    tokio::pin!(shutdown);
    let mut interrupted = false;
    let mut results = Vec::with_capacity(n as usize);
    loop {
        tokio::select! {
            joined = clients.join_next() => match joined {
                Some(r) => results.push(r.expect("a client task does not panic: errors are counted, not raised")),
                None => break,
            },
            () = &mut shutdown, if !interrupted => {
                eprintln!("weir db slap: stopping: letting the running statements finish");
                interrupted = true;
                halt.store(true, Ordering::Relaxed);
            }
        }
    }
    let elapsed = start.elapsed();

    let report = summarize(args, stop, results, elapsed, connect_ms, interrupted);
    emit(&report, args.json.as_deref(), out, print_text)?;
    Ok(report)
}

impl SlapReport {
    /// The run as an exit status: an error when every statement failed (the report has
    /// been written either way).
    pub fn outcome(&self) -> Result<(), DbError> {
        if self.ok == 0 && self.errors > 0 {
            let (code, msg) = self
                .error_messages
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            return Err(DbError::AllFailed(
                self.errors,
                format!("error {code}: {msg}"),
            ));
        }
        Ok(())
    }
}

fn summarize(
    args: &SlapArgs,
    stop: Stop,
    results: Vec<ClientResult>,
    elapsed: Duration,
    connect_ms: f64,
    interrupted: bool,
) -> SlapReport {
    let mut hist = new_hist();
    let mut ok = 0;
    let mut errors_by_code = BTreeMap::new();
    let mut error_messages = BTreeMap::new();
    let mut clients_lost = 0;
    for r in results {
        hist.add(&r.hist)
            .expect("same bounds on every client histogram");
        ok += r.ok;
        for (k, v) in r.errors {
            *errors_by_code.entry(k).or_insert(0) += v;
        }
        for (k, v) in r.messages {
            error_messages.entry(k).or_insert(v);
        }
        clients_lost += u32::from(r.lost);
    }
    let errors: u64 = errors_by_code.values().sum();
    let ms = |us: u64| us as f64 / 1000.0;
    let latency_ms = if hist.is_empty() {
        Latency::default()
    } else {
        Latency {
            min: ms(hist.min()),
            mean: (hist.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        }
    };
    let secs = elapsed.as_secs_f64();
    SlapReport {
        query: args.query.clone(),
        concurrency: args.concurrency,
        iterations: match stop {
            Stop::Iterations(n) => Some(n),
            Stop::Duration(_) => None,
        },
        duration_s: match stop {
            Stop::Duration(d) => Some(d.as_secs_f64()),
            Stop::Iterations(_) => None,
        },
        queries: ok + errors,
        ok,
        errors,
        errors_by_code,
        error_messages,
        elapsed_s: (secs * 1000.0).round() / 1000.0,
        qps: if secs > 0.0 {
            (ok as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency_ms,
        connect_ms: (connect_ms * 10.0).round() / 10.0,
        clients_lost,
        interrupted,
    }
}

/// The report as text.
pub fn print_text(r: &SlapReport, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    writeln!(out, "query        {}", r.query)?;
    writeln!(
        out,
        "clients      {} ({} connections opened in {:.1} ms, before the clock started)",
        r.concurrency, r.concurrency, r.connect_ms
    )?;
    writeln!(
        out,
        "queries      {} ok, {} errors in {:.3} s: {:.1} q/s{}",
        r.ok,
        r.errors,
        r.elapsed_s,
        r.qps,
        if r.interrupted { " (interrupted)" } else { "" }
    )?;
    let l = &r.latency_ms;
    writeln!(
        out,
        "latency ms   min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
        l.min, l.p50, l.p90, l.p99, l.max, l.mean
    )?;
    for (code, count) in &r.errors_by_code {
        let msg = r.error_messages.get(code).map(String::as_str).unwrap_or("");
        writeln!(out, "error {code:<6} x {count}: {msg}")?;
    }
    if r.clients_lost > 0 {
        writeln!(
            out,
            "clients lost {} (connection broke and could not be reopened)",
            r.clients_lost
        )?;
    }
    Ok(())
}

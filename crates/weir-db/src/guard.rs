//! `weir db guard`: ends statements that run longer than a busy time (pt-kill's job).
//!
//! Every `--interval` the guard reads the process list, picks the victims with
//! [`select`] and sends `KILL QUERY id` (or `KILL CONNECTION id` with `--kill`), then writes
//! one JSON line per victim to its output. A statement is reported once, however many
//! passes see it (a killed statement can linger for a moment in state `Killed`).
//!
//! What it never touches: its own connection, anything that is not running a statement
//! (`COMMAND` other than `Query`/`Execute`: idle connections, `Binlog Dump`, replica and
//! daemon threads), threads of the server's own users (`system user`, `event_scheduler`,
//! `unauthenticated user`), and whatever `--ignore-*` names.
//!
//! Busy time comes from MariaDB's `information_schema.PROCESSLIST.TIME_MS` (milliseconds),
//! on MySQL from `performance_schema` statement timers (picoseconds), falling back to the
//! process list's whole seconds when `performance_schema` is off; sub-second busy times
//! need one of the first two.
//!
//! A lost or failed connection is logged and retried with exponential backoff (100 ms,
//! doubling, at most 10 s); only a refused login (wrong password, no such database) is
//! fatal. SIGTERM/SIGINT (the `shutdown` future) stop the loop between passes, or let a
//! pass in progress finish (at most 2 s more, so a KILL already sent is also logged), and
//! the connection is closed politely when it is still usable.
//!
//! Unlike pt-kill, there is no `--print` mode (the JSON line is the print) and the default
//! action is the milder `KILL QUERY`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use regex::Regex;
use serde::Serialize;

use crate::cli::GuardArgs;
use crate::dsn::Dsn;
use crate::error::{query_hint, DbError};
use crate::output::now_rfc3339;
use crate::row::{number, text};

/// One row of the process list.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// The connection id (what `KILL` takes).
    pub id: u64,
    /// The account's user name.
    pub user: String,
    /// The client's `host:port` (or `localhost` for a socket).
    pub host: String,
    /// The current database.
    pub db: Option<String>,
    /// `Query`, `Sleep`, `Binlog Dump`, ...
    pub command: String,
    /// How long the current command has been running.
    pub time: Duration,
    /// What the statement is doing (`User sleep`, `Sending data`, ...).
    pub state: Option<String>,
    /// The statement text.
    pub info: Option<String>,
}

/// The rules a statement must pass to be a victim.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Minimum running time.
    pub busy_time: Duration,
    /// Only these users.
    pub match_user: Option<Regex>,
    /// Only these databases.
    pub match_db: Option<Regex>,
    /// Only these statements.
    pub match_info: Option<Regex>,
    /// Never these users.
    pub ignore_user: Option<Regex>,
    /// Never these statements.
    pub ignore_info: Option<Regex>,
}

impl Rules {
    /// The rules of a `weir db guard` command line.
    pub fn from_args(a: &GuardArgs) -> Rules {
        Rules {
            busy_time: a.busy_time,
            match_user: a.match_user.clone(),
            match_db: a.match_db.clone(),
            match_info: a.match_info.clone(),
            ignore_user: a.ignore_user.clone(),
            ignore_info: a.ignore_info.clone(),
        }
    }
}

/// Users that belong to the server itself (replication, event scheduler, handshakes).
pub const SYSTEM_USERS: &[&str] = &["system user", "event_scheduler", "unauthenticated user"];
/// The commands that mean "running a statement".
pub const STATEMENT_COMMANDS: &[&str] = &["Query", "Execute"];

/// The victims among `procs`: running a statement for at least the busy time, matching
/// every `match_*` rule given and no `ignore_*` rule, and never `own_id`, idle, system or
/// replication threads.
pub fn select<'a>(procs: &'a [Process], own_id: u64, rules: &Rules) -> Vec<&'a Process> {
    let matches = |re: &Option<Regex>, s: Option<&str>| match re {
        None => true,
        Some(re) => s.is_some_and(|s| re.is_match(s)),
    };
    let ignored = |re: &Option<Regex>, s: Option<&str>| match re {
        None => false,
        Some(re) => s.is_some_and(|s| re.is_match(s)),
    };
    procs
        .iter()
        .filter(|p| p.id != own_id)
        .filter(|p| STATEMENT_COMMANDS.contains(&p.command.as_str()))
        .filter(|p| !SYSTEM_USERS.contains(&p.user.as_str()))
        .filter(|p| p.info.is_some())
        .filter(|p| p.time >= rules.busy_time)
        .filter(|p| matches(&rules.match_user, Some(&p.user)))
        .filter(|p| matches(&rules.match_db, p.db.as_deref()))
        .filter(|p| matches(&rules.match_info, p.info.as_deref()))
        .filter(|p| !ignored(&rules.ignore_user, Some(&p.user)))
        .filter(|p| !ignored(&rules.ignore_info, p.info.as_deref()))
        .collect()
}

/// One JSON log line: a victim and what was done to it.
#[derive(Debug, Serialize)]
pub struct VictimLine<'a> {
    /// When (UTC, RFC 3339).
    pub ts: String,
    /// `kill-query` or `kill`.
    pub action: &'static str,
    /// True when nothing was ended.
    pub dry_run: bool,
    /// Connection id.
    pub id: u64,
    /// User.
    pub user: &'a str,
    /// Client host.
    pub host: &'a str,
    /// Current database.
    pub db: Option<&'a str>,
    /// Command (`Query`, `Execute`).
    pub command: &'a str,
    /// Statement state.
    pub state: Option<&'a str>,
    /// Running time in seconds (millisecond precision).
    pub seconds: f64,
    /// The statement, cut to `--info-len` characters.
    pub info: String,
    /// Whether `info` was cut.
    pub info_truncated: bool,
    /// `killed`, `gone` (ended before the KILL), `dry-run`, or `error: ...`.
    pub result: String,
}

/// What a guard run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuardSummary {
    /// Passes over the process list.
    pub passes: u64,
    /// Victims logged.
    pub victims: u64,
    /// Victims actually ended.
    pub killed: u64,
    /// Connections lost (or failed) and retried.
    pub reconnects: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    MariaDb,
    MySqlPerfSchema,
    MySqlSeconds,
}

struct Session {
    conn: Conn,
    own_id: u64,
    source: Source,
}

const MARIADB_PROCESSLIST: &str = "SELECT ID, USER, HOST, DB, COMMAND, \
     CAST(TIME_MS * 1000 AS UNSIGNED) AS TIME_US, STATE, INFO \
     FROM information_schema.PROCESSLIST";
const MYSQL_PERF_PROCESSLIST: &str = "SELECT t.PROCESSLIST_ID, t.PROCESSLIST_USER, \
     t.PROCESSLIST_HOST, t.PROCESSLIST_DB, t.PROCESSLIST_COMMAND, \
     CAST(COALESCE(MAX(s.TIMER_WAIT) / 1000000, t.PROCESSLIST_TIME * 1000000) AS UNSIGNED), \
     t.PROCESSLIST_STATE, t.PROCESSLIST_INFO \
     FROM performance_schema.threads t \
     LEFT JOIN performance_schema.events_statements_current s \
       ON s.THREAD_ID = t.THREAD_ID AND s.END_EVENT_ID IS NULL \
     WHERE t.PROCESSLIST_ID IS NOT NULL \
     GROUP BY t.THREAD_ID";
const MYSQL_SECONDS_PROCESSLIST: &str = "SELECT ID, USER, HOST, DB, COMMAND, \
     TIME * 1000000, STATE, INFO FROM information_schema.PROCESSLIST";

/// A statement (process list read or KILL) that takes longer than this counts as a lost
/// connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pass in progress may go on after a stop signal.
const STOP_GRACE: Duration = Duration::from_secs(2);

enum PassError {
    /// The connection is unusable; reconnect.
    Lost(String),
    /// Stop the guard.
    Fatal(DbError),
}

impl Session {
    async fn open(dsn: &Dsn) -> Result<Session, DbError> {
        let mut conn = dsn.connect().await?;
        let own_id = u64::from(conn.id());
        let version: Option<String> =
            conn.query_first("SELECT VERSION()")
                .await
                .map_err(|source| DbError::Query {
                    what: "SELECT VERSION()",
                    target: dsn.shown().to_owned(),
                    hint: query_hint(&source),
                    source,
                })?;
        let mariadb = version
            .unwrap_or_default()
            .to_lowercase()
            .contains("mariadb");
        let source = if mariadb {
            Source::MariaDb
        } else if conn.query_drop(MYSQL_PERF_PROCESSLIST).await.is_ok() {
            Source::MySqlPerfSchema
        } else {
            eprintln!(
                "weir db guard: performance_schema is not readable on {}: busy times are \
                 measured in whole seconds (enable performance_schema and grant SELECT on it \
                 for sub-second ones)",
                dsn.shown()
            );
            Source::MySqlSeconds
        };
        Ok(Session {
            conn,
            own_id,
            source,
        })
    }

    async fn processlist(&mut self) -> Result<Vec<Process>, mysql_async::Error> {
        let sql = match self.source {
            Source::MariaDb => MARIADB_PROCESSLIST,
            Source::MySqlPerfSchema => MYSQL_PERF_PROCESSLIST,
            Source::MySqlSeconds => MYSQL_SECONDS_PROCESSLIST,
        };
        let rows: Vec<Row> = self.conn.query(sql).await?;
        Ok(rows.iter().map(process_from_row).collect())
    }
}

fn process_from_row(row: &Row) -> Process {
    Process {
        id: number(row, 0).unwrap_or(0),
        user: text(row, 1).unwrap_or_default(),
        host: text(row, 2).unwrap_or_default(),
        db: text(row, 3),
        command: text(row, 4).unwrap_or_default(),
        time: Duration::from_micros(number(row, 5).unwrap_or(0)),
        state: text(row, 6).filter(|s| !s.is_empty()),
        info: text(row, 7),
    }
}

/// Exponential backoff for reconnects: 100 ms, doubling, at most 10 s.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait before the next attempt (and counts the failure).
    pub fn next_delay(&mut self) -> Duration {
        let d = Duration::from_millis(100).saturating_mul(1u32 << self.failures.min(7));
        self.failures = self.failures.saturating_add(1);
        d.min(Duration::from_secs(10))
    }
    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A login the server refused: retrying cannot help.
fn is_fatal_connect(e: &DbError) -> bool {
    match e {
        DbError::Connect {
            source: mysql_async::Error::Server(s),
            ..
        } => matches!(s.code, 1044 | 1045 | 1049 | 1130 | 1251 | 1698),
        _ => false,
    }
}

/// Identifies one execution of a statement: the connection's statement start time (to a
/// tolerance) and its text.
struct Seen {
    started: Instant,
    info: Option<String>,
}

/// Runs the guard until `shutdown` resolves (or after one pass with `--once`), writing a
/// JSON line per victim to `out` and its diagnostics to stderr.
pub async fn run(
    args: &GuardArgs,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<GuardSummary, DbError> {
    let rules = Rules::from_args(args);
    let action = if args.kill { "kill" } else { "kill-query" };
    tokio::pin!(shutdown);
    eprintln!(
        "weir db guard: watching {} every {:?}: {} statements busy for {:?} or more{}",
        args.dsn.shown(),
        args.interval,
        action,
        args.busy_time,
        if args.dry_run {
            " (dry run: nothing is ended)"
        } else {
            ""
        }
    );
    let mut session: Option<Session> = None;
    let mut backoff = Backoff::default();
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut summary = GuardSummary::default();
    loop {
        if session.is_none() {
            let opened = tokio::select! {
                r = Session::open(&args.dsn) => r,
                () = &mut shutdown => break,
            };
            match opened {
                Ok(s) => {
                    if backoff.failures() > 0 {
                        eprintln!("weir db guard: connected again to {}", args.dsn.shown());
                    }
                    backoff.reset();
                    session = Some(s);
                }
                Err(e) if args.once || is_fatal_connect(&e) => return Err(e),
                Err(e) => {
                    let wait = backoff.next_delay();
                    summary.reconnects += 1;
                    eprintln!(
                        "weir db guard: {e}; retrying in {wait:?} (attempt {})",
                        backoff.failures()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = &mut shutdown => break,
                    }
                }
            }
        }
        let Some(s) = session.as_mut() else {
            continue;
        };
        let started = Instant::now();
        // A signal during a pass lets it finish for a moment, so that a KILL already sent
        // is also logged; a pass still stuck after that is dropped.
        let mut stopping = false;
        let result = {
            let fut = pass(s, &rules, args, action, out, &mut seen);
            tokio::pin!(fut);
            tokio::select! {
                r = &mut fut => Some(r),
                () = &mut shutdown => {
                    stopping = true;
                    tokio::time::timeout(STOP_GRACE, &mut fut).await.ok()
                }
            }
        };
        let Some(result) = result else {
            // Cut mid-statement: the connection's state is unknown, so it is not reused.
            session = None;
            break;
        };
        summary.passes += 1;
        match result {
            Ok((victims, killed)) => {
                summary.victims += victims;
                summary.killed += killed;
            }
            Err(PassError::Fatal(e)) => return Err(e),
            Err(PassError::Lost(why)) => {
                session = None;
                if stopping {
                    break;
                }
                if args.once {
                    return Err(DbError::Lost {
                        target: args.dsn.shown().to_owned(),
                        why,
                    });
                }
                let wait = backoff.next_delay();
                summary.reconnects += 1;
                eprintln!(
                    "weir db guard: lost the connection to {} ({why}); reconnecting in {wait:?}",
                    args.dsn.shown()
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = &mut shutdown => break,
                }
            }
        }
        if args.once || stopping {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until((started + args.interval).into()) => {}
            () = &mut shutdown => break,
        }
    }
    if let Some(s) = session {
        // Best effort: a failed COM_QUIT only means the server closes the socket itself.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.conn.disconnect()).await;
    }
    eprintln!(
        "weir db guard: stopped after {} passes: {} victims, {} ended",
        summary.passes, summary.victims, summary.killed
    );
    Ok(summary)
}

/// One pass: read the process list, log and end the victims. Returns (victims, killed).
async fn pass(
    s: &mut Session,
    rules: &Rules,
    args: &GuardArgs,
    action: &'static str,
    out: &mut (dyn Write + Send),
    seen: &mut HashMap<u64, Seen>,
) -> Result<(u64, u64), PassError> {
    let procs = match tokio::time::timeout(STATEMENT_TIMEOUT, s.processlist()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) if e.is_fatal() => return Err(PassError::Lost(e.to_string())),
        // Someone (another guard?) interrupted our read: transient, start over.
        Ok(Err(mysql_async::Error::Server(e))) if e.code == 1317 => {
            return Err(PassError::Lost(format!(
                "the process list read was interrupted: {e}"
            )))
        }
        Ok(Err(source)) => {
            return Err(PassError::Fatal(DbError::Query {
                what: "reading the process list",
                target: args.dsn.shown().to_owned(),
                hint: query_hint(&source),
                source,
            }))
        }
        Err(_) => {
            return Err(PassError::Lost(format!(
                "no answer within {STATEMENT_TIMEOUT:?}"
            )))
        }
    };
    let now = Instant::now();
    seen.retain(|id, _| procs.iter().any(|p| p.id == *id));
    // Whole-second sources jitter by up to a second between passes.
    let tolerance = match s.source {
        Source::MySqlSeconds => Duration::from_millis(1500),
        _ => Duration::from_millis(500),
    };
    let (mut victims, mut killed) = (0, 0);
    for p in select(&procs, s.own_id, rules) {
        let started = now.checked_sub(p.time).unwrap_or(now);
        if let Some(prev) = seen.get(&p.id) {
            let drift = if prev.started > started {
                prev.started - started
            } else {
                started - prev.started
            };
            if prev.info == p.info && drift <= tolerance {
                continue;
            }
        }
        let result = if args.dry_run {
            "dry-run".to_owned()
        } else {
            let sql = if args.kill {
                format!("KILL CONNECTION {}", p.id)
            } else {
                format!("KILL QUERY {}", p.id)
            };
            match tokio::time::timeout(STATEMENT_TIMEOUT, s.conn.query_drop(sql)).await {
                Ok(Ok(())) => {
                    killed += 1;
                    "killed".to_owned()
                }
                Ok(Err(mysql_async::Error::Server(e))) if e.code == 1094 => "gone".to_owned(),
                Ok(Err(e)) if e.is_fatal() => return Err(PassError::Lost(e.to_string())),
                Ok(Err(e)) => format!("error: {e}; {}", query_hint(&e)),
                Err(_) => {
                    return Err(PassError::Lost(format!(
                        "KILL got no answer within {STATEMENT_TIMEOUT:?}"
                    )))
                }
            }
        };
        victims += 1;
        seen.insert(
            p.id,
            Seen {
                started,
                info: p.info.clone(),
            },
        );
        let info = p.info.as_deref().unwrap_or("");
        let cut: String = info.chars().take(args.info_len).collect();
        let line = VictimLine {
            ts: now_rfc3339(),
            action,
            dry_run: args.dry_run,
            id: p.id,
            user: &p.user,
            host: &p.host,
            db: p.db.as_deref(),
            command: &p.command,
            state: p.state.as_deref(),
            seconds: (p.time.as_secs_f64() * 1000.0).round() / 1000.0,
            info_truncated: cut.len() < info.len(),
            info: cut,
            result,
        };
        let text =
            serde_json::to_string(&line).expect("a victim line serializes: strings and numbers");
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|source| {
                PassError::Fatal(DbError::Write {
                    path: "<output>".into(),
                    source,
                })
            })?;
    }
    Ok((victims, killed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64, user: &str, command: &str, ms: u64, info: Option<&str>) -> Process {
        Process {
            id,
            user: user.into(),
            host: "127.0.0.1:5000".into(),
            db: Some("shop".into()),
            command: command.into(),
            time: Duration::from_millis(ms),
            state: Some("User sleep".into()),
            info: info.map(Into::into),
        }
    }

    fn rules(ms: u64) -> Rules {
        Rules {
            busy_time: Duration::from_millis(ms),
            ..Rules::default()
        }
    }

    #[test]
    fn picks_long_statements_only() {
        let procs = [
            p(1, "app", "Query", 1500, Some("SELECT SLEEP(30)")),
            p(2, "app", "Query", 200, Some("SELECT 1")),
            p(3, "app", "Sleep", 99_000, None),
            p(4, "app", "Execute", 900, Some("SELECT * FROM t")),
        ];
        let ids: Vec<u64> = select(&procs, 99, &rules(800))
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, vec![1, 4]);
    }

    #[test]
    fn never_itself_replication_or_system_threads() {
        let procs = [
            p(7, "guard", "Query", 60_000, Some("SELECT ... PROCESSLIST")),
            p(8, "repl", "Binlog Dump", 600_000, Some("")),
            p(
                9,
                "system user",
                "Query",
                600_000,
                Some("INSERT INTO t VALUES (1)"),
            ),
            p(10, "event_scheduler", "Daemon", 600_000, None),
            p(
                11,
                "system user",
                "Slave_SQL",
                600_000,
                Some("UPDATE t SET a=1"),
            ),
        ];
        assert!(select(&procs, 7, &rules(0)).is_empty());
    }

    #[test]
    fn match_and_ignore_rules() {
        let procs = [
            p(1, "app", "Query", 5000, Some("SELECT SLEEP(30)")),
            p(2, "batch", "Query", 5000, Some("SELECT SLEEP(30)")),
            p(3, "app", "Query", 5000, Some("/* keep */ SELECT SLEEP(30)")),
        ];
        let mut r = rules(1000);
        r.match_user = Some(Regex::new("^app$").unwrap());
        r.ignore_info = Some(Regex::new("keep").unwrap());
        let ids: Vec<u64> = select(&procs, 0, &r).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![1]);
        // A match rule on a NULL column never matches.
        let mut r = rules(0);
        r.match_db = Some(Regex::new(".*").unwrap());
        let mut nodb = p(5, "app", "Query", 5000, Some("SELECT 1"));
        nodb.db = None;
        assert!(select(&[nodb], 0, &r).is_empty());
        // An ignore rule on a user.
        let mut r = rules(0);
        r.ignore_user = Some(Regex::new("^batch$").unwrap());
        let ids: Vec<u64> = select(&procs, 0, &r).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let v: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            v,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}

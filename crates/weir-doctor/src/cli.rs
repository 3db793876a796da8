//! `weir doctor`'s command line: gathers the facts (the configuration as `weir serve` would
//! run it, the machine, the database, one import of the app), runs the checks, prints the
//! report and returns the exit status: 0 no error, 1 at least one error, 2 bad input, an
//! unreachable database or an app that cannot be measured.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use weir_config::units::parse_duration;
use weir_config::{Config, ConfigError};
use weir_db::dsn::Dsn;
use weir_db::DbError;

use crate::checks::{self, bytes, dur};
use crate::facts::{AppFacts, Facts};
use crate::measure::{self, MeasureError};
use crate::{db, machine, Report, Severity};

/// Exit status with at least one `error` finding.
pub const EXIT_ERRORS: u8 = 1;
/// Exit status for bad input, an unreachable database, an app that cannot be imported.
pub const EXIT_INPUT: u8 = 2;

const AFTER_HELP: &str = "Example:
  weir doctor --config /etc/weir/weir.toml --database-url mysql://shop:secret@db1:3306/shop \\
              --client-timeout 60s

Checks the setup `weir serve --config weir.toml` would run against the production gotchas:
the timeouts chain (client > request_timeout > harakiri > the database's statement limit,
and wait_timeout), database connections (workers x connections per worker, measured by
importing the app once, against max_connections less a reserve for other clients), memory
(workers x a worker's RSS after import against the machine's), reload_on_rss, backlog vs
net.core.somaxconn, ulimit -n, preload's fork-safety findings, and missing safeguards
(harakiri, max_requests, ready_check, access log, admin listener on a public address).
Each finding says what is wrong, why it matters and the fix. docs/doctor.md lists them.

Exit status: 0 no error (warnings are printed), 1 at least one error, 2 bad input, an
unreachable database, or an app that cannot be imported.";

/// `weir doctor` arguments. The app and the pool are found as `weir serve` finds them:
/// `--config`, then the flags below (the same as `weir serve`'s) over it.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct DoctorArgs {
    /// The setup to check, given as to `weir serve` (every serve flag is accepted).
    #[command(flatten)]
    pub setup: weir_front::cli::SetupArgs,
    /// The database the app uses (mysql://USER:PASS@HOST:PORT/DB): its max_connections,
    /// statement limit and wait_timeout are read, and the app's connections counted in its
    /// process list (the user needs PROCESS to see another user's connections). Without it
    /// the database checks are skipped.
    #[arg(long, env = "WEIR_DB_DSN", hide_env_values = true, value_name = "DSN", value_parser = Dsn::parse)]
    pub database_url: Option<Dsn>,
    /// The client's or load balancer's timeout ("60s"): the top of the timeouts chain.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub client_timeout: Option<Duration>,
    /// Database connections one worker holds (its pool's size), instead of counting what
    /// the app's import opened.
    #[arg(long, value_name = "N")]
    pub pool_size: Option<u64>,
    /// Do not import the app: the memory, connection-count and fork-safety checks are
    /// skipped (for a machine the app cannot run on).
    #[arg(long)]
    pub no_import: bool,
    /// Print {"findings": [{"check", "severity", "message", "fix"}], "skipped": [...],
    /// "facts": {...}} instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why `weir doctor` could not check (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The configuration is invalid (what `weir serve --check` says).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The database could not be reached or read.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The app could not be imported or measured.
    #[error("{0}")]
    Measure(#[from] MeasureError),
    /// Anything else that stops the gathering.
    #[error("{0}")]
    Other(String),
}

/// The report and the facts it was made from.
#[derive(Debug)]
pub struct Outcome {
    /// What the checks found.
    pub report: Report,
    /// What they looked at.
    pub facts: Facts,
}

impl DoctorArgs {
    /// The configuration `weir serve` would run with these flags (validated).
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        self.setup.to_config()
    }
}

/// Gathers the facts and runs the checks.
pub fn run(args: &DoctorArgs) -> Result<Outcome, DoctorError> {
    let config = args.to_config()?;
    let mut facts = Facts::new(config);
    facts.client_timeout = args.client_timeout;
    facts.pool_size = args.pool_size;
    facts.machine = Some(machine::gather());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DoctorError::Other(format!("cannot start the async runtime: {e}")))?;
    let mut conn = match &args.database_url {
        Some(dsn) => {
            let mut c = rt.block_on(dsn.connect())?;
            facts.db = Some(rt.block_on(db::facts(&mut c, dsn))?);
            Some((c, dsn))
        }
        None => None,
    };
    let runs_app = facts.config.upstream.is_none() && facts.config.app.module.is_some();
    if runs_app && !args.no_import {
        let before = match &mut conn {
            Some((c, dsn)) => Some(rt.block_on(db::client_hosts(c, dsn))?),
            None => None,
        };
        let pool = weir_front::server::pool_config(&facts.config)
            .map_err(|e| DoctorError::Other(e.to_string()))?;
        let module = facts.config.app.module.clone().unwrap_or_default();
        let mut held =
            measure::import(&pool.exe, &pool.worker_args, &module, pool.startup_timeout)?;
        let rss = held.rss().map_err(|e| {
            DoctorError::Other(format!("cannot read the imported app's memory: {e}"))
        })?;
        let db_connections = match (&mut conn, before) {
            (Some((c, dsn)), Some(before)) => {
                let local = held.tcp_local_addrs().map_err(|e| {
                    DoctorError::Other(format!("cannot list the imported app's sockets: {e}"))
                })?;
                let after = rt.block_on(db::client_hosts(c, dsn))?;
                Some(db::count_app_connections(&before, &after, &local))
            }
            _ => None,
        };
        held.stop();
        facts.app = Some(AppFacts {
            rss,
            import_ms: held.import_ms,
            db_connections,
            fork_findings: held.fork_findings.clone(),
        });
    }
    if let Some((c, _)) = conn {
        // Only a polite goodbye: the facts are read.
        let _ = rt.block_on(c.disconnect());
    }
    Ok(Outcome {
        report: checks::run(&facts),
        facts,
    })
}

/// Runs `weir doctor`.
pub fn main(args: DoctorArgs) -> ExitCode {
    let outcome = match run(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weir doctor: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let text = if args.json {
        json(&outcome)
    } else {
        render(&outcome)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("weir doctor: cannot write the report: {e}");
        return ExitCode::from(EXIT_INPUT);
    }
    if outcome.report.has_errors() {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    }
}

/// The JSON report: `{"findings": [...], "skipped": [...], "facts": {...}}`.
pub fn json(o: &Outcome) -> String {
    let v = serde_json::json!({
        "findings": o.report.findings,
        "skipped": o.report.skipped,
        "facts": {
            "workers": o.facts.config.app.workers,
            "client_timeout": o.facts.client_timeout.map(|d| d.as_secs_f64()),
            "pool_size": o.facts.pool_size,
            "app": o.facts.app,
            "database": o.facts.db,
            "machine": o.facts.machine,
        },
    });
    let mut s = serde_json::to_string_pretty(&v).expect("the report serializes");
    s.push('\n');
    s
}

/// The text report: a summary line, each finding with its fix, what was measured, what
/// was skipped.
pub fn render(o: &Outcome) -> String {
    use std::fmt::Write as _;
    let r = &o.report;
    let f = &o.facts;
    let mut s = String::new();
    let errors = checks::count(r, Severity::Error);
    let warnings = checks::count(r, Severity::Warning);
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        s,
        "weir doctor: {}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    );
    for x in &r.findings {
        let _ = writeln!(s, "\n{} [{}] {}", x.severity.as_str(), x.check, x.message);
        let _ = writeln!(s, "  fix: {}", x.fix);
    }
    s.push('\n');
    if let Some(a) = &f.app {
        let conns = match a.db_connections {
            Some(0) if f.pool_size.is_none() => ", no database connection open after it (a pool that connects on first use: counted as 1 per worker; --pool-size gives its size)".to_owned(),
            Some(n) => format!(", {n} database connection(s) open after it"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "measured: the app {} imported in {} ms; a worker's RSS after import {}{conns}{}",
            f.config.app.module.as_deref().unwrap_or(""),
            a.import_ms,
            bytes(a.rss),
            match &a.fork_findings {
                Some(x) => format!("; fork-safety: left {x}"),
                None => "; fork-safe".into(),
            }
        );
    }
    if let Some(d) = &f.db {
        let _ = writeln!(
            s,
            "database: {} ({}), max_connections {} ({} connected now), wait_timeout {}, statement limit {}",
            d.target,
            d.version,
            d.max_connections,
            d.connected,
            dur(d.wait_timeout),
            match &d.statement_limit {
                Some(l) => format!("{} = {}", l.variable, dur(l.value)),
                None => "none".into(),
            }
        );
    }
    if let Some(m) = &f.machine {
        let (limit, name) = m.memory_limit();
        let opt = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
        let _ = writeln!(
            s,
            "machine: {name} {}, MemAvailable {}, net.core.somaxconn {}, ulimit -n {}",
            bytes(limit),
            bytes(m.mem_available),
            opt(m.somaxconn),
            opt(m.nofile_soft)
        );
    }
    for k in &r.skipped {
        let _ = writeln!(s, "skipped {}: {}", k.check, k.reason);
    }
    s
}

//! `weir db`: the database side of the stack, for MySQL 8 and MariaDB.
//!
//! - `weir db guard` ends statements (or connections) that run longer than a busy time,
//!   as pt-kill does, with sub-second resolution and a JSON line per victim.
//! - `weir db audit` reads `information_schema` and reports redundant indexes and foreign
//!   keys, as pt-duplicate-key-checker does, plus the foreign-key cases it misses; it
//!   suggests `ALTER TABLE ... DROP INDEX` statements and never runs them.
//! - `weir db slap` runs one query from many connections, as mysqlslap does, and reports
//!   queries/s, latency percentiles and errors by MySQL error number.
//!
//! # Layout
//! - [`cli`]: the command line (`DbCommand` and one `Args` struct per subcommand) and the
//!   value parsers that turn bad input into exit status 2 before anything connects.
//! - [`dsn`]: `mysql://USER:PASS@HOST:PORT/DB` to connection options, and the password-free
//!   form used in messages.
//! - [`guard`]: the watch loop (reconnects with backoff, signals) and [`guard::select`],
//!   the pure choice of victims from a process list snapshot.
//! - [`audit`]: loading the schema from `information_schema` and printing findings;
//!   [`redundancy`]: the pure analysis of one table's indexes and foreign keys.
//! - [`slap`]: the load runner and its report.
//! - [`output`]: JSON files (`--json FILE`, `-` for stdout) and timestamps; [`row`]:
//!   values out of result rows.
//! - [`error`]: [`DbError`], the one place that maps failures to exit statuses.
//!
//! Each subcommand's `run` takes its arguments, an output sink and a shutdown future, so
//! the integration tests drive them in-process against a real MariaDB.
//!
//! See `docs/db.md` for the user's side.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod cli;
pub mod dsn;
pub mod error;
pub mod guard;
pub mod output;
pub mod redundancy;
pub mod row;
pub mod slap;

use std::future::Future;
use std::process::ExitCode;

pub use cli::{AuditArgs, DbCommand, DbSubcommand, GuardArgs, SlapArgs};
pub use error::DbError;

/// Runs `weir db` and returns its exit status: 0 done, 1 the database failed us (with the
/// reason on stderr), 2 bad input.
pub fn main(cmd: DbCommand) -> ExitCode {
    let name = cmd.command.name();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir db {name}: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let mut stdout = std::io::stdout();
        match cmd.command {
            DbSubcommand::Guard(args) => guard::run(&args, &mut stdout, shutdown_signal())
                .await
                .map(|_| ()),
            DbSubcommand::Audit(args) => audit::run(&args, &mut stdout).await.map(|_| ()),
            DbSubcommand::Slap(args) => slap::run(&args, &mut stdout, shutdown_signal())
                .await
                .and_then(|r| r.outcome()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir db {name}: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// If a handler cannot be installed (no signal support), that signal is simply never seen:
/// the command still runs and stops on the other one, or by being killed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let int = async {
            match int {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = term => {}
            () = int => {}
        }
    }
}

//! `weir load`: an open-loop HTTP/1.1 load generator that measures latency from each
//! request's scheduled time (no coordinated omission, as in wrk2), with request mixes,
//! rate sweeps, HdrHistogram reports, JSON results, percentile plots and CI thresholds.
//!
//! # Layout
//! - [`cli`]: the command line (`LoadCommand`, `weir load plot`).
//! - [`run`]: turns a command into runs, prints reports, writes JSON and plots, applies
//!   `--fail-if`; the one place that maps errors to exit statuses.
//! - [`engine`]: the scheduler, the connection pool and request tasks, the closed loop.
//! - [`timer`]: the scheduler's microsecond sleep (a timerfd in the runtime's epoll).
//! - [`schedule`]: slot times (evenly spaced or seeded Poisson) and weighted mix picks.
//! - [`http`]: a minimal HTTP/1.1 client connection over TCP or a Unix socket.
//! - [`stats`]: what a run records (histograms, statuses, errors) and histogram encoding.
//! - [`report`]: the result as JSON and as text.
//! - [`failif`], [`mix`], [`target`], [`parse`]: parsers of the inputs.
//! - [`plot`]: SVG and PNG latency-by-percentile plots.
//! - [`sys`]: file-descriptor room and the process's CPU usage (for the self-check).
//! - [`error`]: the typed errors (all exit 2).
//!
//! See `docs/load.md` for the user's side.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod engine;
pub mod error;
pub mod failif;
pub mod http;
pub mod mix;
pub mod parse;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod sys;
pub mod target;
pub mod timer;

use std::process::ExitCode;

pub use cli::LoadCommand;
pub use error::LoadError;
pub use run::{run, Outcome};

/// Runs `weir load` and returns its exit status: 0 when done, 1 when a `--fail-if`
/// threshold was crossed, 2 on bad input (with a one-line message on stderr).
pub fn main(cmd: LoadCommand) -> ExitCode {
    match run(cmd) {
        Ok(o) => ExitCode::from(o.exit_code()),
        Err(e) => {
            eprintln!("weir load: error: {e}");
            ExitCode::from(2)
        }
    }
}

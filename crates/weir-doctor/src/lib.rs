//! `weir doctor`: checks a weir setup against the production gotchas (the timeouts chain,
//! database connections, memory, kernel limits, preload's fork safety, missing safeguards)
//! and says, for each finding, what is wrong, why it matters and the fix.
//!
//! The checks are pure functions over [`Facts`] (the configuration, the machine, the
//! database's settings, what importing the app once cost), so each is unit-tested with
//! made-up facts; gathering the facts is a separate, thin layer.
//!
//! # Layout
//! - [`facts`]: what the checks look at ([`Facts`] and its parts), as plain values.
//! - [`checks`]: one function per check, [`checks::run`] calls them all; each returns
//!   [`Finding`]s (severity `error`: will fail under load; `warning`: a missing safeguard)
//!   or a [`Skipped`] note when a fact it needs is missing.
//! - [`machine`]: the machine's facts from /proc and the cgroup (memory, somaxconn,
//!   `ulimit -n`).
//! - [`db`]: the database's facts (`max_connections`, statement limits, `wait_timeout`)
//!   and the process list the app's connections are counted in, over weir-db's client.
//! - [`measure`]: imports the app once, the way a worker does (a `weir worker --zygote`
//!   held at READY), and reads its RSS, its database connections and what preload's
//!   fork-safety check found.
//! - [`cli`]: `weir doctor`'s flags, the gather sequence, the text and JSON reports and
//!   the exit status (0 no error, 1 at least one error, 2 bad input or no database).
//!
//! See `docs/doctor.md` for the user's side.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checks;
pub mod cli;
pub mod db;
pub mod facts;
pub mod machine;
pub mod measure;

pub use cli::{main, DoctorArgs};
pub use facts::Facts;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Will fail under load (connections over `max_connections`, a broken timeout chain,
    /// memory over the machine's): `weir doctor` exits 1.
    Error,
    /// A missing safeguard (no harakiri, no max_requests, ...): printed, exit 0.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding: the check that made it, how bad it is, what is wrong and why it matters
/// (`message`), and what to do (`fix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name (`db_connections`, `timeout_chain`, ...; docs/doctor.md).
    pub check: &'static str,
    /// `error` or `warning`.
    pub severity: Severity,
    /// What is wrong and why it matters.
    pub message: String,
    /// What to change.
    pub fix: String,
}

impl Finding {
    /// An `error` finding.
    pub fn error(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            severity: Severity::Error,
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// A `warning` finding.
    pub fn warning(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            check,
            severity: Severity::Warning,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// A check that could not run, and why (a fact it needs was not gathered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The check's name.
    pub check: &'static str,
    /// Why it did not run, and how to make it run.
    pub reason: String,
}

/// What the checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Errors first, then warnings, each in the order the checks ran.
    pub findings: Vec<Finding>,
    /// Checks that did not run.
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// Whether any finding is an error (`weir doctor` exits 1).
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

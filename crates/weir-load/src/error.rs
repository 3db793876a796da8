//! The errors that stop `weir load` before or after a run. Every one is the user's input
//! or environment (a bad flag, a bad mix file, a target that does not answer, a file that
//! cannot be written) and exits with status 2 with a one-line message; a crossed
//! `--fail-if` threshold is not an error (it exits 1 after the report).

/// Why `weir load` could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// The mix file cannot be read or is wrong.
    #[error("--mix {path}: {reason}")]
    Mix {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--fail-if` expression is wrong.
    #[error("--fail-if: {0}")]
    FailIf(String),
    /// The target does not accept connections.
    #[error("cannot connect to {target}: {reason}")]
    Unreachable {
        /// The target as given.
        target: String,
        /// The connect error.
        reason: String,
    },
    /// A result file cannot be read back (for `weir load plot`).
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An output file cannot be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

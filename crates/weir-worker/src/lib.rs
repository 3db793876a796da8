//! A weir worker process (stub: the real one is being written).
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status of a worker whose app failed to import (the master stops respawning).
pub const EXIT_IMPORT_FAILED: u8 = 3;

/// How the master starts a worker: `weir worker --app M:C [--chdir D] [--virtualenv D] --id N`.
/// The master<->worker socket is the worker's standard input.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// The WSGI app as MODULE:CALLABLE (CALLABLE defaults to `application`).
    #[arg(long)]
    pub app: String,
    /// Directory to change into (and put first on sys.path) before importing the app.
    #[arg(long)]
    pub chdir: Option<PathBuf>,
    /// A virtualenv whose site-packages hold the app's dependencies.
    #[arg(long)]
    pub virtualenv: Option<PathBuf>,
    /// The worker's slot number (for logs).
    #[arg(long, default_value_t = 0)]
    pub id: u32,
    /// Optional `module:function` ready check, run on the master's READY_CHECK request.
    #[arg(long)]
    pub ready_check: Option<String>,
}

/// Runs the worker until the master closes the socket.
pub fn main(_opts: WorkerOptions) -> ExitCode {
    ExitCode::from(1)
}

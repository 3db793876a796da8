//! `weir db` (stub; see issue 5).
use std::process::ExitCode;
/// Arguments of `weir db`.
#[derive(Debug, clap::Args)]
pub struct DbCommand {
    /// Subcommand.
    pub what: Option<String>,
}
/// Runs `weir db`.
pub fn main(_cmd: DbCommand) -> ExitCode {
    eprintln!("weir db: not implemented yet");
    ExitCode::from(2)
}

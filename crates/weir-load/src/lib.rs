//! `weir load` (stub; see issue 4).
use std::process::ExitCode;
/// Arguments of `weir load`.
#[derive(Debug, clap::Args)]
pub struct LoadCommand {
    /// Target URL.
    pub target: Option<String>,
}
/// Runs `weir load`.
pub fn main(_cmd: LoadCommand) -> ExitCode {
    eprintln!("weir load: not implemented yet");
    ExitCode::from(2)
}

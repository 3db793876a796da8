//! stub
pub mod cli {
    use std::process::ExitCode;
    /// `weir serve` arguments.
    #[derive(Debug, clap::Args)]
    pub struct ServeArgs {
        /// The app.
        #[arg(long)]
        pub app: Option<String>,
    }
    /// Runs `weir serve`.
    pub fn main(_a: ServeArgs) -> ExitCode {
        ExitCode::from(1)
    }
}

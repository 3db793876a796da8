//! The command line of `weir load` and `weir load plot`.

use std::path::PathBuf;

use crate::engine::Reuse;
use crate::schedule::Arrivals;

/// Arguments of `weir load`: an open-loop HTTP/1.1 load generator.
///
/// `weir load --rate 200 --duration 10s http://127.0.0.1:8080/hello` sends 200 requests/s
/// on a fixed schedule and measures each latency from its scheduled time, so a stalled
/// server shows in every request it delays. `--connections C` without a rate runs a closed
/// loop instead. `weir load plot A.json B.json -o F.svg` (or `.png`) overlays saved runs.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadCommand {
    /// Overlay saved runs in one plot (`weir load plot A.json B.json -o F.svg`).
    #[command(subcommand)]
    pub sub: Option<LoadSub>,

    /// Target: http://HOST:PORT/PATH or unix:SOCKET_PATH:/PATH.
    pub target: Option<String>,

    /// Open loop at this rate (requests/s; `200`, `200r/s`, `600r/m`, `20k`).
    #[arg(long, short = 'r')]
    pub rate: Option<String>,

    /// A sweep: one run per rate, in order (`100,200,400`); reports the curve.
    #[arg(long, conflicts_with = "rate")]
    pub rates: Option<String>,

    /// Spacing of the open-loop schedule.
    #[arg(long, value_enum, default_value_t = Arrivals::Constant)]
    pub arrivals: Arrivals,

    /// Which idle connection a due request takes (open loop): the one freed last, as a
    /// client library's pool does, or the one idle longest, so each connection is a
    /// client of its own taking its turn.
    #[arg(long, value_enum, default_value_t = Reuse::Newest)]
    pub reuse: Reuse,

    /// Seed of the Poisson schedule and the mix picks (default: from the clock; the
    /// report and the JSON give the one used).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Closed loop with C connections when there is no rate; with a rate, connections
    /// opened before the start (more open as the schedule needs them).
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,

    /// The most connections open at once (open loop). A slot that finds them all busy waits
    /// for one and counts as missed (its latency still runs from the slot).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Measured duration (`10s`, `2m`); the default is 10s when --requests is not given.
    #[arg(long, short = 'd', conflicts_with = "requests")]
    pub duration: Option<String>,

    /// Number of measured requests, instead of a duration.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Warmup before the measured part, measured but reported apart (`2s`).
    #[arg(long, default_value = "0s")]
    pub warmup: String,

    /// Per-request timeout, from the scheduled time. A timed-out request is an error and
    /// counts as this value in the percentiles.
    #[arg(long, default_value = "30s")]
    pub timeout: String,

    /// Request mix: a TOML file of `[[request]]` entries (weight, method, path, headers,
    /// body); the report gives percentiles per entry.
    #[arg(long)]
    pub mix: Option<PathBuf>,

    /// Write the whole result as JSON (HdrHistograms included, so runs can be merged and
    /// re-plotted).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write a latency-by-percentile plot (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Exit 1 when a threshold is crossed, e.g. 'p99>50ms,5xx>0,rate<190' (an INVALID run
    /// fails too).
    #[arg(long)]
    pub fail_if: Option<String>,

    /// How long before each slot the scheduler stops sleeping and yields in a loop instead
    /// (open loop). A sleeping thread wakes tens of µs late (more in a VM); one that keeps
    /// running does not, but it holds a core while slots are closer than this. `0s` sleeps
    /// up to each slot: the load tool's CPU is then its requests' alone, which matters when
    /// it shares a few cores with the server under test.
    #[arg(long, default_value = "250us")]
    pub spin: String,

    /// Runtime threads: 1 runs everything on one thread (the most precise schedule on a
    /// small machine); more use a multi-thread runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// A run whose send lateness p99 is above this is marked INVALID. `auto`: 1ms, or, when
    /// both are more, the smaller of 5% of the latency p99 and 10 slot intervals.
    #[arg(long, default_value = "auto")]
    pub max_lateness: String,

    /// No progress bar (there is none anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Print only the report's verdict lines, not the full report.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Subcommands of `weir load`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadSub {
    /// Overlay saved runs (`--json` files) in one latency-by-percentile plot.
    Plot(PlotArgs),
}

/// Arguments of `weir load plot`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// Result files written by `weir load --json`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The plot to write (.svg or .png).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Title of the plot.
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(Debug, clap::Parser)]
#[command(name = "weir load")]
struct Wrapper {
    #[command(flatten)]
    cmd: LoadCommand,
}

impl LoadCommand {
    /// Parses `weir load` arguments (without the program name), as tests and embedders
    /// need them.
    pub fn try_parse_from<I, T>(args: I) -> Result<LoadCommand, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let all = std::iter::once(std::ffi::OsString::from("weir-load"))
            .chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(all).map(|w| w.cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_and_plot() {
        let c = LoadCommand::try_parse_from(["--rate", "200", "http://x:1/"]).unwrap();
        assert_eq!(c.target.as_deref(), Some("http://x:1/"));
        assert!(c.sub.is_none());
        let p = LoadCommand::try_parse_from(["plot", "a.json", "b.json", "-o", "x.svg"]).unwrap();
        match p.sub {
            Some(LoadSub::Plot(a)) => {
                assert_eq!(a.files.len(), 2);
                assert_eq!(a.output, PathBuf::from("x.svg"));
            }
            None => panic!("plot subcommand not parsed"),
        }
        assert!(
            LoadCommand::try_parse_from(["--rate", "1", "--rates", "1,2", "http://x:1/"]).is_err()
        );
        assert!(LoadCommand::try_parse_from([
            "--duration",
            "1s",
            "--requests",
            "3",
            "http://x:1/"
        ])
        .is_err());
    }
}

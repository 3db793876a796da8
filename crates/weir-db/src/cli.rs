//! The command line of `weir db`. Everything that can be checked without a database is
//! checked here, by clap's value parsers, so bad input exits with status 2 and a message
//! naming the flag before any connection is made.

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::dsn::Dsn;

/// Arguments of `weir db`.
#[derive(Debug, clap::Args)]
pub struct DbCommand {
    /// What to do.
    #[command(subcommand)]
    pub command: DbSubcommand,
}

/// The subcommands of `weir db`.
#[derive(Debug, clap::Subcommand)]
pub enum DbSubcommand {
    /// Watch the process list and end statements running longer than --busy-time (pt-kill).
    #[command(
        after_help = "Example:\n  weir db guard --dsn mysql://admin:secret@127.0.0.1:3306/shop --busy-time 10s --interval 1s\n\ndocs/db.md#weir-db-guard has every flag and what is logged."
    )]
    Guard(GuardArgs),
    /// Report redundant indexes and foreign keys and the DROPs that remove them.
    #[command(
        after_help = "Example:\n  weir db audit --dsn mysql://admin:secret@127.0.0.1:3306/shop --json audit.json\n\ndocs/db.md#weir-db-audit says what each finding means."
    )]
    Audit(AuditArgs),
    /// Run a query from many connections; report q/s, latency percentiles, errors.
    #[command(
        after_help = "Example:\n  weir db slap --dsn mysql://app:secret@127.0.0.1:3306/shop \\\n               --query 'SELECT * FROM items WHERE id > 100 ORDER BY id LIMIT 20' \\\n               --concurrency 100 --duration 10s\n\ndocs/db.md#weir-db-slap has every flag."
    )]
    Slap(SlapArgs),
}

impl DbSubcommand {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            DbSubcommand::Guard(_) => "guard",
            DbSubcommand::Audit(_) => "audit",
            DbSubcommand::Slap(_) => "slap",
        }
    }
}

/// `weir db guard`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["kill_query", "kill"])))]
pub struct GuardArgs {
    /// The server: mysql://USER:PASS@HOST:PORT/DB (the user needs PROCESS and
    /// CONNECTION ADMIN or SUPER to see and end other users' statements).
    #[arg(long, env = "WEIR_DB_DSN", hide_env_values = true, value_parser = Dsn::parse, value_name = "DSN")]
    pub dsn: Dsn,
    /// End statements that have run at least this long ("10s", "500ms").
    #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION")]
    pub busy_time: Duration,
    /// How often to read the process list ("1s", "200ms").
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Only statements whose user matches this regex.
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub match_user: Option<Regex>,
    /// Only statements whose current database matches this regex.
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub match_db: Option<Regex>,
    /// Only statements whose text matches this regex (use (?i) for any case).
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub match_info: Option<Regex>,
    /// Never statements whose user matches this regex.
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub ignore_user: Option<Regex>,
    /// Never statements whose text matches this regex.
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub ignore_info: Option<Regex>,
    /// End the statement and keep the connection: KILL QUERY (the default).
    #[arg(long)]
    pub kill_query: bool,
    /// End the whole connection: KILL CONNECTION.
    #[arg(long)]
    pub kill: bool,
    /// Log the victims, end nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Make one pass over the process list and exit.
    #[arg(long)]
    pub once: bool,
    /// Cut statements to this many characters in the log.
    #[arg(long, default_value_t = 256, value_name = "CHARS")]
    pub info_len: usize,
}

/// `weir db audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The server: mysql://USER:PASS@HOST:PORT/DB (SELECT on the tables is enough).
    #[arg(long, env = "WEIR_DB_DSN", hide_env_values = true, value_parser = Dsn::parse, value_name = "DSN")]
    pub dsn: Dsn,
    /// The database to check (default: the DSN's, or every non-system database).
    #[arg(long, value_name = "DB")]
    pub database: Option<String>,
    /// Also write the findings as JSON to this file (`-`: stdout, instead of the text).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `weir db slap`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("stop").args(["iterations", "duration"])))]
pub struct SlapArgs {
    /// The server: mysql://USER:PASS@HOST:PORT/DB.
    #[arg(long, env = "WEIR_DB_DSN", hide_env_values = true, value_parser = Dsn::parse, value_name = "DSN")]
    pub dsn: Dsn,
    /// The statement each client runs, again and again.
    #[arg(long, value_name = "SQL")]
    pub query: String,
    /// Clients, each with its own connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Queries per client (total = concurrency x iterations).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub iterations: Option<u64>,
    /// Run for this long instead ("10s"; the default when --iterations is not given).
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to this file (`-`: stdout, instead of the text).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// How a slap run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Each client runs this many queries.
    Iterations(u64),
    /// Clients start queries until this much time has passed.
    Duration(Duration),
}

impl SlapArgs {
    /// The stop condition: --iterations, else --duration, else 10 seconds.
    pub fn stop(&self) -> Stop {
        match (self.iterations, self.duration) {
            (Some(n), _) => Stop::Iterations(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        }
    }
}

/// A duration as weir.toml writes them ("250ms", "10s", "2m", bare seconds).
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    weir_config::units::parse_duration(s)
}

/// A duration that must be more than zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_arg(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is zero; give a positive duration such as \"500ms\""
        ));
    }
    Ok(d)
}

/// A regular expression (Rust `regex` syntax).
pub fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("bad regex {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: DbSubcommand,
    }

    fn parse(args: &[&str]) -> Result<DbSubcommand, clap::Error> {
        let mut v = vec!["db"];
        v.extend_from_slice(args);
        Top::try_parse_from(v).map(|t| t.cmd)
    }

    const DSN: &str = "--dsn=mysql://u:p@127.0.0.1:3307/db";

    #[test]
    fn guard_takes_sub_second_times() {
        let DbSubcommand::Guard(g) =
            parse(&["guard", DSN, "--busy-time", "250ms", "--interval", "100ms"]).unwrap()
        else {
            panic!("not guard")
        };
        assert_eq!(g.busy_time, Duration::from_millis(250));
        assert_eq!(g.interval, Duration::from_millis(100));
        assert!(!g.kill && !g.dry_run);
    }

    #[test]
    fn bad_input_is_exit_2() {
        for args in [
            vec!["guard", DSN, "--busy-time", "10x"],
            vec!["guard", DSN, "--busy-time", "1s", "--interval", "0s"],
            vec!["guard", DSN, "--busy-time", "1s", "--match-info", "("],
            vec!["guard", "--dsn", "pg://x/y", "--busy-time", "1s"],
            vec!["guard", DSN, "--busy-time", "1s", "--kill", "--kill-query"],
            vec![
                "slap",
                DSN,
                "--query",
                "SELECT 1",
                "--iterations",
                "5",
                "--duration",
                "1s",
            ],
            vec!["slap", DSN, "--query", "SELECT 1", "--concurrency", "0"],
        ] {
            let e = parse(&args).expect_err(&format!("{args:?} should fail"));
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn slap_defaults_to_ten_seconds() {
        let DbSubcommand::Slap(s) = parse(&["slap", DSN, "--query", "SELECT 1"]).unwrap() else {
            panic!("not slap")
        };
        assert_eq!(s.concurrency, 100);
        assert_eq!(s.stop(), Stop::Duration(Duration::from_secs(10)));
    }
}

//! `weir`: one binary, one subcommand per job. Each subcommand lives in its own crate; this
//! file only parses the command line and hands over (the `anyhow` edge of the program).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "The production serving stack for Python WSGI apps: front door + supervised worker pool",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a WSGI app on supervised workers (or front an external upstream).
    Serve(weir_front::cli::ServeArgs),
    /// Open-loop HTTP load generator with latency percentiles.
    Load(weir_load::LoadCommand),
    /// Database-side tools: guard (kill long queries), audit (indexes), slap (load).
    Db(weir_db::DbCommand),
    /// Write a weir.toml from an NGINX config plus a uWSGI ini or gunicorn.conf.py, listing
    /// what became of every directive.
    Import(weir_import::cli::ImportArgs),
    /// Check a setup (config, machine, database, the app's import) against the production
    /// gotchas: what is wrong, why it matters, the fix.
    Doctor(weir_doctor::DoctorArgs),
    /// One worker process (started by `weir serve`; not for direct use).
    #[command(hide = true)]
    Worker(weir_worker::WorkerOptions),
}

/// `weir worker ...` alone: what the master runs once per worker slot.
#[derive(Debug, Parser)]
#[command(
    name = "weir worker",
    about = "One worker process (started by `weir serve`)"
)]
struct WorkerCli {
    #[command(flatten)]
    opts: weir_worker::WorkerOptions,
}

fn main() -> ExitCode {
    // A worker parses only its own flags: building the whole command tree (every flag of
    // serve, load and db) would run, and keep resident in each long-lived worker, code and
    // heap it never needs again (about 0.7 MiB of text per worker for examples/shop).
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "worker") {
        let argv0 = std::ffi::OsString::from("weir worker");
        let cli = WorkerCli::parse_from(std::iter::once(argv0).chain(args));
        return weir_worker::main(cli.opts);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => weir_front::cli::main(args),
        Command::Load(cmd) => weir_load::main(cmd),
        Command::Db(cmd) => weir_db::main(cmd),
        Command::Import(args) => weir_import::cli::main(args),
        Command::Doctor(args) => weir_doctor::main(args),
        Command::Worker(opts) => weir_worker::main(opts),
    }
}

//! `weir`: one binary, one subcommand per job. Each subcommand lives in its own crate; this
//! file only parses the command line and hands over (the `anyhow` edge of the program).
#![deny(unsafe_code)]

mod alloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc for Rust's allocations (CPython in the workers keeps the C library's malloc:
/// the crate does not replace the `malloc` symbol). glibc's malloc keeps the pages that
/// short-lived per-connection buffers leave behind, fragmented, so the master's memory
/// would follow the most connections it ever served at once; jemalloc gives them back
/// (measured: 3,000 idle keep-alive connections cost 2.1 KiB each after parking with
/// jemalloc, 13.5 with glibc, 6.1 even after `malloc_trim`). `weir serve` starts one
/// thread that applies jemalloc's purge schedule while the master idles ([`alloc`]); the
/// workers and the zygote do not, so the zygote's fork-safety check still sees a
/// single-threaded process.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

const SERVE_EXAMPLES: &str = "Examples:
  weir serve --app app:app --workers 4 --listen 0.0.0.0:8000
  weir serve --config /etc/weir/weir.toml
  weir serve --config weir.toml --check          # validate only: exit 0, or 2 naming the key
  weir serve --app app:app --uwsgi-listen unix:/run/weir/uwsgi.sock   # behind NGINX's uwsgi_pass

Signals: SIGHUP reloads the workers (and TLS certificates), SIGUSR2 upgrades the binary,
SIGTERM drains. docs/config.md has every key of weir.toml.";

const LOAD_EXAMPLES: &str = "Examples:
  weir load --rate 200 --duration 30s --warmup 5s http://127.0.0.1:8080/hello
  weir load --rates 100,200,400,800 --duration 10s --json sweep.json http://127.0.0.1:8080/
  weir load --rate 200 --duration 20s --fail-if 'p99>50ms,5xx>0' http://127.0.0.1:8080/
  weir load plot nginx.json weir.json -o compare.png

docs/load.md has every flag and how to read the report.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a WSGI app on supervised workers (or front an external upstream).
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(weir_front::cli::ServeArgs),
    /// Open-loop HTTP load generator with latency percentiles.
    #[command(after_help = LOAD_EXAMPLES)]
    Load(weir_load::LoadCommand),
    /// Database-side tools: guard (kill long queries), audit (indexes), slap (load).
    #[command(
        after_help = "Examples: weir db guard --help, weir db audit --help, weir db slap --help (docs/db.md)."
    )]
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
        Command::Serve(args) => {
            alloc::purge_while_idle();
            weir_front::cli::main(args)
        }
        Command::Load(cmd) => weir_load::main(cmd),
        Command::Db(cmd) => weir_db::main(cmd),
        Command::Import(args) => weir_import::cli::main(args),
        Command::Doctor(args) => weir_doctor::main(args),
        Command::Worker(opts) => weir_worker::main(opts),
    }
}

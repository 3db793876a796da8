//! `weir serve`: flags, each with its key in `weir.toml`; flags win over the file.

use std::path::PathBuf;
use std::process::ExitCode;

use weir_config::units::{parse_duration, parse_size};
use weir_config::{Config, ConfigError, ListenAddr, Seconds, Size};

/// Exit status for bad configuration (docs/config.md: a bad key or value exits 2).
pub const EXIT_CONFIG: u8 = 2;

/// `weir serve` arguments: the setup, and `--check`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// What to serve and how (shared with `weir doctor`, which checks the same setup).
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Check the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    pub check: bool,
}

/// The setup `weir serve` runs: `--config` and the flags over it. Every flag has a
/// `weir.toml` key, named in its help.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SetupArgs {
    /// The WSGI app as MODULE:CALLABLE (CALLABLE defaults to `application`). [app] module
    #[arg(long, value_name = "MODULE:CALLABLE")]
    pub app: Option<String>,
    /// Change into DIR and import the app from it. [app] chdir
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// A virtualenv whose site-packages hold the app's dependencies. [app] virtualenv
    #[arg(long, value_name = "DIR")]
    pub virtualenv: Option<PathBuf>,
    /// Number of worker processes (default 2). [app] workers
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// HTTP/1.1 listener, HOST:PORT or unix:PATH; repeat for more (default 127.0.0.1:8000).
    /// [server] listen
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,
    /// uwsgi-protocol listener for a real NGINX's `uwsgi_pass`, HOST:PORT or unix:PATH;
    /// repeat for more. [server] uwsgi_listen
    #[arg(long, value_name = "ADDR")]
    pub uwsgi_listen: Vec<ListenAddr>,
    /// Kill a worker whose request runs longer (seconds, or "30s"); the client gets 504.
    /// [app] harakiri
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub harakiri: Option<Seconds>,
    /// Recycle a worker after N requests. [app] max_requests
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Up to N extra requests per worker before recycling. [app] max_requests_jitter
    #[arg(long, value_name = "N")]
    pub max_requests_jitter: Option<u64>,
    /// Recycle a worker, between requests, above this resident memory ("200MiB").
    /// [app] reload_on_rss
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub reload_on_rss: Option<Size>,
    /// Import the app once and fork the workers from that process (copy-on-write memory,
    /// respawn by fork): auto (the default) forks unless the import left sockets, files
    /// open for writing (an SQLite database) or threads behind, then each worker imports
    /// the app itself; on (also a bare --preload)
    /// always forks; off never does. See docs/config.md for the fork caveats.
    /// [app] preload = "auto" | true | false
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["auto", "on", "off"])]
    pub preload: Option<String>,
    /// Write the next waiting request behind a busy worker's current one (taken back and
    /// served elsewhere when another worker frees first while that one is on a slow
    /// request, or when it dies); off: only idle workers get requests.
    /// [app] prefetch = true | false
    #[arg(long, value_name = "WHEN", value_parser = ["on", "off"])]
    pub prefetch: Option<String>,
    /// How long in-flight requests may take to finish on stop or reload.
    /// [app] graceful_timeout
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub graceful_timeout: Option<Seconds>,
    /// Access log: stdout, stderr, off, or a file path (one JSON line per request).
    /// [server] access_log
    #[arg(long, value_name = "WHERE")]
    pub access_log: Option<String>,
    /// Admin listener for /metrics, /livez, /readyz (loopback or unix:PATH). [admin] listen
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<ListenAddr>,
    /// Event-loop threads of the master (default 2). [server] threads
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Read settings from this weir.toml; flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn parse_seconds(s: &str) -> Result<Seconds, String> {
    parse_duration(s).map(Seconds::from_duration)
}

fn parse_size_arg(s: &str) -> Result<Size, String> {
    parse_size(s).map(Size::from_bytes)
}

impl SetupArgs {
    /// The file (if any), flags merged over it, defaults filled in, validated.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        self.to_config_with(false)
    }

    /// As [`SetupArgs::to_config`]; with `inherited` (systemd passed listening sockets),
    /// the default listener is not added when none is configured.
    pub fn to_config_with(&self, inherited: bool) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let a = &mut c.app;
        set(&mut a.module, self.app.clone());
        set(&mut a.chdir, self.chdir.clone());
        set(&mut a.virtualenv, self.virtualenv.clone());
        set(&mut a.harakiri, self.harakiri);
        set(&mut a.reload_on_rss, self.reload_on_rss);
        if let Some(v) = self.workers {
            a.workers = v;
        }
        if let Some(v) = self.max_requests {
            a.max_requests = v;
        }
        if let Some(v) = self.max_requests_jitter {
            a.max_requests_jitter = v;
        }
        if let Some(v) = &self.prefetch {
            a.prefetch = v == "on";
        }
        if let Some(v) = &self.preload {
            // clap accepts only the values above.
            a.preload = v
                .parse()
                .map_err(|e: String| ConfigError::invalid("app.preload", e))?;
        }
        if let Some(v) = self.graceful_timeout {
            a.graceful_timeout = v;
        }
        if let Some(v) = self.threads {
            c.server.threads = v;
        }
        if let Some(v) = &self.access_log {
            c.server.access_log = v.clone();
        }
        set(&mut c.admin.listen, self.admin_listen.clone());
        if !self.listen.is_empty() {
            c.server.listen = self.listen.clone();
        }
        if !self.uwsgi_listen.is_empty() {
            c.server.uwsgi_listen = self.uwsgi_listen.clone();
        }
        if !inherited {
            c.apply_defaults();
        }
        if c.app.virtualenv.is_none() {
            c.app.virtualenv = installed_virtualenv();
        }
        c.validate()?;
        Ok(c)
    }
}

/// The virtualenv weir is installed in (`pip install weir` put it in `<venv>/bin/weir`):
/// the app runs in it when `[app] virtualenv` is not set, as Gunicorn installed in a
/// virtualenv runs that virtualenv's Python. The running executable (symbolic links
/// resolved) whose directory's parent holds a `pyvenv.cfg`, else None. `VIRTUAL_ENV` is
/// not read: a weir installed outside a virtualenv does not change with the shell it is
/// started from (docs/install.md).
pub fn installed_virtualenv() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    venv_of(&exe)
}

/// `<dir>` when `exe` is `<dir>/bin/<name>` and `<dir>/pyvenv.cfg` exists.
fn venv_of(exe: &std::path::Path) -> Option<PathBuf> {
    let dir = exe.parent()?.parent()?;
    dir.join("pyvenv.cfg").is_file().then(|| dir.to_path_buf())
}

fn set<T>(slot: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *slot = flag;
    }
}

/// Runs `weir serve`: exit 0 after a clean stop, 1 when serving failed, 2 for bad config.
pub fn main(args: ServeArgs) -> ExitCode {
    // Before any thread: it reads and removes systemd's environment variables.
    let systemd = match crate::systemd::Systemd::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match args.setup.to_config_with(!systemd.listeners.is_empty()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        if let Err(code) = check_error_map(&config) {
            return code;
        }
        if !config.server.tls_listen.is_empty() {
            if let Err(e) = crate::tls::load(&config.tls) {
                eprintln!("weir: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
        println!("weir: configuration is valid");
        return ExitCode::SUCCESS;
    }
    crate::server::init_logging();
    let runtime = if config.server.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the event loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(config, systemd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--check` with an `[[error_map]]`: its classes must import where the app runs. The
/// master never runs Python, so a worker process resolves them (`weir worker
/// --check-error-map`, with the app's `chdir` and `virtualenv`, without importing the app)
/// and prints the entry that fails (`error_map[N].exception: ...`). The presets' classes
/// are not checked: a driver that is not installed is skipped.
fn check_error_map(config: &Config) -> Result<(), ExitCode> {
    let (Some(module), true) = (&config.app.module, !config.error_map.is_empty()) else {
        return Ok(());
    };
    let Some(map) = crate::server::error_map_arg(config) else {
        return Ok(());
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("weir: cannot check error_map: no path to this executable: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker").arg("--app").arg(module);
    if let Some(d) = &config.app.chdir {
        cmd.arg("--chdir").arg(d);
    }
    if let Some(d) = &config.app.virtualenv {
        cmd.arg("--virtualenv").arg(d);
    }
    cmd.arg("--error-map").arg(map).arg("--check-error-map");
    cmd.stdin(std::process::Stdio::null());
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        // The worker printed what is wrong.
        Ok(s) if s.code() == Some(i32::from(EXIT_CONFIG)) => Err(ExitCode::from(EXIT_CONFIG)),
        Ok(s) => {
            eprintln!("weir: cannot check error_map: the checking worker {s}");
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("weir: cannot check error_map: cannot start a worker: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::venv_of;

    #[test]
    fn a_binary_in_a_virtualenvs_bin_runs_its_app_there() {
        let root = std::env::temp_dir().join(format!("weir-venv-of-{}", std::process::id()));
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("weir");
        // No pyvenv.cfg: a prefix like /usr/local, not a virtualenv.
        assert_eq!(venv_of(&exe), None);
        std::fs::write(root.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        assert_eq!(venv_of(&exe), Some(root.clone()));
        // Not in a bin/ one level down: target/debug/weir next to nothing.
        assert_eq!(venv_of(std::path::Path::new("/weir")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Start-up, signals and shutdown, in this order:
//! 1. bind every listener, or take the socket systemd (socket activation) or the old
//!    master of an upgrade passed for it ([`crate::systemd`]; a bind error stops weir
//!    before any worker starts);
//! 2. start the pool (requests queue until workers are ready); once the first
//!    generation's workers are all ready, tell systemd `READY=1`. A new master started
//!    by an upgrade accepts only from then on, and tells the old master instead;
//! 3. serve; SIGHUP reloads the workers (`RELOADING=1`, then `READY=1`); SIGUSR2 upgrades
//!    ([`crate::upgrade`]: the executable at this one's path starts on the same sockets;
//!    once its workers are ready this master sends systemd `MAINPID=` of the new one and
//!    drains as below, without `STOPPING=1` and leaving the Unix socket files; if it fails,
//!    it is stopped and this master serves on); SIGTERM/SIGINT/SIGQUIT drain (`STOPPING=1`):
//! 4. stop accepting, let each connection finish its current request, stop the pool
//!    (busy workers finish, up to `graceful_timeout`, or are killed at once on a second
//!    SIGTERM/SIGINT/SIGQUIT; every worker and zygote is reaped;
//!    after a handover, only once the connections are done, so a request read as the
//!    drain began is still served), remove the Unix socket files this master owns, exit 0.
//!
//! During an upgrade a second SIGUSR2 and SIGHUP are ignored (logged): the new master
//! reads the configuration and imports the app itself. SIGTERM/SIGINT/SIGQUIT stop the new
//! master and drain this one.
//!
//! One drain signal (a `watch`) reaches every accept loop and connection; a clone of an
//! `mpsc::Sender` held by each connection tells when the last one is gone (the
//! mini-redis shutdown pattern).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use weir_config::Config;
use weir_pool::{PoolConfig, Supervisor, SupervisorError};
use weir_upstream::Upstream;

use crate::access_log::{AccessLog, Sink};
use crate::conn_io::{ClientWatch, SharedIo};
use crate::environ::ConnInfo;
use crate::front::{Backend, Front};
use crate::identity::TrustedProxies;
use crate::listener::{BindError, Listener};
use crate::route::Routes;
use crate::systemd::{Inherited, Notifier, Systemd};
use crate::upgrade::{Handover, Upgrade, UpgradeError};

/// Why `weir serve` stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The app cannot be started.
    #[error(transparent)]
    Pool(#[from] SupervisorError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The access log file cannot be opened.
    #[error("cannot open access_log {0}: {1}")]
    AccessLog(String, std::io::Error),
    /// A limit zone cannot be built (only what `Config::validate` did not catch).
    #[error("invalid config: {0}")]
    Limits(#[from] weir_limits::LimitsError),
    /// The cache cannot start (its disk directory cannot be used).
    #[error(transparent)]
    Cache(#[from] weir_cache::CacheError),
    /// A `[[static]]` root cannot be used (it names `static[N].root`).
    #[error("invalid config: {0}")]
    Static(String),
    /// `[server] temp_path` cannot hold temp files.
    #[error("invalid config: server.temp_path: cannot make a temp file in {0}: {1}")]
    TempPath(String, std::io::Error),
    /// A socket inherited from systemd cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A TLS certificate or key cannot be used (it names the key and the file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// weir cannot find its own executable to start workers.
    #[error("cannot find weir's own executable to start workers: {0}")]
    Exe(std::io::Error),
}

impl ServeError {
    /// The exit status: 2 when the configuration names something that does not work (an
    /// app that cannot be imported is a wrong `--app`, `--chdir` or virtualenv), 1 for
    /// failures of the machine (a port in use, no signals).
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Pool(SupervisorError::AppImport(_)) => crate::cli::EXIT_CONFIG,
            ServeError::AccessLog(..)
            | ServeError::Limits(_)
            | ServeError::Cache(_)
            | ServeError::Static(_)
            | ServeError::TempPath(..)
            | ServeError::Tls(_) => crate::cli::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Logs go to stderr; `WEIR_LOG` (tracing's env-filter syntax) sets the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The pool settings from the config.
pub fn pool_config(config: &Config) -> Result<PoolConfig, ServeError> {
    let app = &config.app;
    let mut args: Vec<std::ffi::OsString> = vec![
        "--app".into(),
        app.module.clone().unwrap_or_default().into(),
    ];
    if let Some(d) = &app.chdir {
        args.push("--chdir".into());
        args.push(d.clone().into());
    }
    if let Some(d) = &app.virtualenv {
        args.push("--virtualenv".into());
        args.push(d.clone().into());
    }
    if let Some(c) = &app.ready_check {
        args.push("--ready-check".into());
        args.push(c.into());
    }
    if let Some(map) = error_map_arg(config) {
        args.push("--error-map".into());
        args.push(map.into());
    }
    Ok(PoolConfig {
        exe: std::env::current_exe().map_err(ServeError::Exe)?,
        exe_self: true,
        worker_args: args,
        preload: app.preload,
        prefetch: app.prefetch,
        workers: app.workers,
        max_requests: app.max_requests,
        max_requests_jitter: app.max_requests_jitter,
        reload_on_rss: app.reload_on_rss.map(|s| s.bytes()),
        graceful_timeout: app.graceful_timeout.as_duration(),
        startup_timeout: app.startup_timeout.as_duration(),
        queue: queue_policy(&config.queue, app.workers),
    })
}

/// `[[error_map]]` and `[errors]` as the workers' `--error-map` (JSON), or None when
/// there is no map.
pub fn error_map_arg(config: &Config) -> Option<String> {
    let spec = config.error_map_spec();
    if spec.is_empty() {
        return None;
    }
    Some(serde_json::to_string(&spec).expect("MappedError serializes"))
}

/// `[queue]` for a backend that serves `capacity` requests at once (workers, or upstream
/// connections): one policy for whichever backend (crate weir-queue).
fn queue_policy(queue: &weir_config::QueueConfig, capacity: usize) -> weir_queue::QueuePolicy {
    weir_queue::QueuePolicy {
        max_size: queue.effective_max_size(capacity),
        timeout: queue.timeout.as_duration(),
        codel: queue.codel.then(|| weir_queue::Codel {
            target: queue.target.map(|t| t.as_duration()),
            interval: queue.interval.as_duration(),
            lifo: queue.lifo,
            factor: queue.target_factor,
            min_target: queue.min_target.as_duration(),
            rate_overload: queue.rate_overload,
        }),
        fair: queue.fair_key.is_some(),
        per_key_max: queue.per_key_max,
        admission: queue.admission,
    }
}

/// `[server]`'s response buffering; checks that `temp_path` can hold temp files.
pub fn spooler(srv: &weir_config::ServerConfig) -> Result<weir_response::Spooler, ServeError> {
    let temp_path = srv
        .temp_path
        .clone()
        .unwrap_or_else(weir_response::spool::default_temp_path);
    weir_response::Spooler::new(weir_response::SpoolConfig {
        response_buffer: srv.response_buffer.bytes() as usize,
        buffers_total: srv.response_buffers_total.bytes() as usize,
        max_temp_file_size: srv.max_temp_file_size.bytes(),
        temp_path: temp_path.clone(),
    })
    .map_err(|e| ServeError::TempPath(temp_path.display().to_string(), e))
}

/// Longest wait at start-up for the limits store (Redis) before serving anyway.
const LIMITS_STORE_WARMUP: Duration = Duration::from_secs(1);

/// After a second stop signal, how long the connections have to send what they hold (the
/// answers of the killed workers' requests) before weir exits.
const STOP_NOW_SEND: Duration = Duration::from_secs(1);

/// Runs the server until SIGTERM/SIGINT/SIGQUIT and its drain (Ok) or a fatal error.
pub async fn run(config: Config, systemd: Systemd) -> Result<(), ServeError> {
    let backlog = config.server.backlog;
    let Systemd {
        notifier,
        listeners: mut inherited,
        upgrade_channel,
    } = systemd;
    let notifier = Arc::new(notifier);
    // The certificates first: a bad one stops weir before anything is bound or started.
    let tls = match config.server.tls_listen.is_empty() {
        true => None,
        false => Some(crate::tls::Tls::new(&config.tls)?),
    };
    // A new master started by an upgrade: it accepts once its workers are ready, then
    // tells the old master on this channel.
    let mut successor = upgrade_channel;
    let adopting = successor.is_some();
    let mut listeners = Listeners::default();
    for a in &config.server.tls_listen {
        let l = take_or_bind(a, Kind::Tls, &mut inherited, backlog, adopting)?;
        listeners.tls.push(l);
    }
    for a in &config.server.listen {
        let l = take_or_bind(a, Kind::Http, &mut inherited, backlog, adopting)?;
        listeners.http.push(l);
    }
    for a in &config.server.uwsgi_listen {
        let l = take_or_bind(a, Kind::Uwsgi, &mut inherited, backlog, adopting)?;
        listeners.uwsgi.push(l);
    }
    if let Some(a) = &config.admin.listen {
        let l = take_or_bind(a, Kind::Admin, &mut inherited, 128, adopting)?;
        listeners.admin.push(l);
    }
    // Inherited sockets no configured address stands for: added, by their names' kind.
    for i in inherited {
        let kind = kind_of(&i);
        let l = adopt(i, adopting)?;
        match kind {
            Kind::Http => listeners.http.push(l),
            Kind::Tls => listeners.tls.push(l),
            Kind::Uwsgi => listeners.uwsgi.push(l),
            Kind::Admin => listeners.admin.push(l),
        }
    }
    let handover = listeners.handover();
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(ServeError::Signals)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(ServeError::Signals)?;

    let sink = Sink::open(&config.server.access_log)
        .map_err(|e| ServeError::AccessLog(config.server.access_log.clone(), e))?;
    let spool = spooler(&config.server)?;
    let (supervisor, backend) = match &config.upstream {
        Some(u) => {
            let policy = queue_policy(&config.queue, u.max_conns * u.servers.len());
            let up = Upstream::new(u.clone(), policy);
            (None, Backend::Upstream(Arc::new(up)))
        }
        None => {
            let s = Arc::new(Supervisor::start(pool_config(&config)?));
            let pool = s.pool();
            (Some(s), Backend::Workers(pool))
        }
    };
    let zones = weir_limits::Limits::from_config(&config)?;
    let routes = Routes::new(&config, &zones)?;
    let fair_key = match &config.queue.fair_key {
        Some(k) => Some(k.parse().map_err(|e: weir_limits::key::KeyError| {
            weir_limits::LimitsError::Invalid {
                key: "queue.fair_key".into(),
                reason: e.to_string(),
            }
        })?),
        None => None,
    };
    // With `[limits] store = "redis://..."`, once the limits are known valid: connect
    // before accepting (at most a second), so the first requests are limited in Redis, not
    // given on_store_error. Not reachable: weir-limits warns once, serving starts anyway.
    zones.connect(LIMITS_STORE_WARMUP).await;
    let limits = crate::limit::FrontLimits::new(zones, fair_key);
    let cache = match &config.cache {
        Some(c) => Some(crate::cache::FrontCache::open(c).await?),
        None => None,
    };
    let statics =
        crate::static_files::FrontStatic::new(&config.statics).map_err(ServeError::Static)?;
    let srv = &config.server;
    let front = Arc::new(Front {
        backend,
        routes,
        limits,
        cache,
        compression: config
            .compression
            .as_ref()
            .map(crate::compression::Compression::new),
        statics,
        trusted: TrustedProxies::new(&srv.trusted_proxies),
        log: Arc::new(
            AccessLog::new(sink).buffered(config.server.access_log_buffer.bytes() as usize),
        ),
        retry_after: config.queue.retry_after,
        max_header_size: srv.max_header_size.bytes() as usize,
        max_body_size: srv.max_body_size.bytes(),
        header_timeout: srv.client_header_timeout.as_duration(),
        keepalive_timeout: srv.keepalive_timeout.as_duration(),
        body_timeout: srv.client_body_timeout.as_duration(),
        send_timeout: srv.send_timeout.as_duration(),
        spool,
        tls,
        h2c: srv.h2c,
        http2_max_concurrent_streams: srv.http2_max_concurrent_streams,
        has_ready_check: config.app.ready_check.is_some(),
        last_ready: std::sync::Mutex::new(None),
        client_refusals: config
            .queue
            .rate_overload
            .then(crate::environ::ClientRefusals::default),
        uwsgi_refusals: config
            .queue
            .rate_overload
            .then(crate::environ::ClientRefusals::default),
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let (conns_tx, mut conns_rx) = mpsc::channel::<()>(1);
    // Whether this master removes its Unix socket files when it stops: not once it handed
    // them over, and a new master not before the old one handed them over.
    let owns_files = Arc::new(AtomicBool::new(!adopting));
    let names = listeners.names();
    let accepting = Accepting {
        front: front.clone(),
        drain: drain_rx.clone(),
        conns: conns_tx.clone(),
        owns_files: owns_files.clone(),
    };
    let mut waiting_listeners = Some(listeners);
    if !adopting {
        if let Some(l) = waiting_listeners.take() {
            accepting.start(l);
        }
    }
    let role = if adopting {
        " (the new master of an upgrade: accepting once its workers are ready)"
    } else {
        ""
    };
    match &config.upstream {
        Some(u) => info!(
            servers = ?u.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            protocol = ?u.protocol,
            "weir serving on {}{role}",
            names.join(", ")
        ),
        None => info!(
            app = config.app.module.as_deref().unwrap_or(""),
            workers = config.app.workers,
            preload = %config.app.preload.as_toml(),
            prefetch = config.app.prefetch,
            virtualenv = config.app.virtualenv.as_deref().map(|p| tracing::field::display(p.display())),
            "weir serving on {}{role}",
            names.join(", ")
        ),
    }

    if notifier.enabled() {
        tokio::spawn(notify_ticks(notifier.clone(), front.clone()));
    }
    if front.log.is_buffered() {
        tokio::spawn(flush_ticks(
            front.log.clone(),
            config.server.access_log_flush.as_duration(),
        ));
    }
    let workers_ready = all_workers_ready(&supervisor, config.app.workers);
    tokio::pin!(workers_ready);
    let mut announced = false;
    let upgrade_timeout = config.server.upgrade_timeout.as_duration();
    let mut upgrade: Option<Upgrade> = None;
    // New masters being stopped after a failed upgrade; awaited before exit.
    let mut stopping = tokio::task::JoinSet::new();
    let mut handed_over = false;
    let outcome = loop {
        tokio::select! {
            () = &mut workers_ready, if !announced => {
                announced = true;
                if let Some(l) = waiting_listeners.take() {
                    accepting.start(l);
                }
                match successor.take() {
                    Some(channel) => {
                        info!("workers ready: accepting; telling the old master to hand over");
                        tokio::spawn(take_over(channel, notifier.clone(), front.clone(), owns_files.clone()));
                    }
                    None => notifier.ready(&status_line(&front)),
                }
            }
            _ = term.recv() => { info!("SIGTERM: draining"); break Ok(()) }
            _ = int.recv() => { info!("SIGINT: draining"); break Ok(()) }
            _ = quit.recv() => { info!("SIGQUIT: draining"); break Ok(()) }
            _ = hup.recv() => match (&upgrade, supervisor.clone()) {
                (Some(u), _) => warn!(
                    "SIGHUP ignored: an upgrade is in progress (the new master, pid {}, reads the configuration and imports the app itself); send SIGHUP again if it fails",
                    u.pid()
                ),
                (None, Some(s)) => {
                    reload_tls(&front);
                    info!("SIGHUP: reloading workers");
                    notifier.reloading("reloading: starting new workers");
                    let (n, f) = (notifier.clone(), front.clone());
                    tokio::spawn(async move {
                        match s.reload().await {
                            Ok(()) => n.ready(&status_line(&f)),
                            Err(e) => {
                                error!("{e}");
                                n.ready(&format!("{e}; {}", status_line(&f)));
                            }
                        }
                    });
                }
                (None, None) => {
                    reload_tls(&front);
                    info!("SIGHUP: nothing else to reload (the app runs on an external upstream)");
                    notifier.reloading("reloading: nothing to reload");
                    notifier.ready(&status_line(&front));
                }
            },
            _ = usr1.recv() => match front.log.reopen() {
                Ok(Some(path)) => info!("SIGUSR1: reopened the access log {}", path.display()),
                Ok(None) => info!("SIGUSR1: the access log is not a file: nothing to reopen"),
                Err(e) => error!("SIGUSR1: cannot reopen the access log ({e}): still writing to the file it had open; fix the path and send SIGUSR1 again"),
            },
            _ = usr2.recv() => {
                if let Some(u) = &upgrade {
                    warn!("SIGUSR2 ignored: an upgrade is already in progress (new master pid {})", u.pid());
                } else if !owns_files.load(Ordering::SeqCst) {
                    // A new master owns its files once the old one handed over.
                    warn!("SIGUSR2 ignored: this master is itself the new master of an upgrade and has not taken over yet");
                } else {
                    match handover.start(&notifier, upgrade_timeout) {
                        Ok(u) => {
                            info!(
                                "SIGUSR2: upgrading: started {} as the new master (pid {}); this master serves until its workers are ready (upgrade_timeout {upgrade_timeout:?})",
                                u.exe().display(),
                                u.pid()
                            );
                            notifier.status(&format!("upgrading: new master pid {} starting; {}", u.pid(), status_line(&front)));
                            upgrade = Some(u);
                        }
                        Err(e) => upgrade_failed(&e, &notifier, &front),
                    }
                }
            },
            r = upgrade_ready(&mut upgrade), if upgrade.is_some() => {
                let u = upgrade.take().expect("this branch runs only during an upgrade");
                match r {
                    Ok(()) => {
                        let pid = u.pid();
                        info!("upgrade: the new master (pid {pid}) is ready; handing over: this master stops accepting and drains");
                        // Before the drain ends the accept loops: the new master owns the
                        // socket files now.
                        owns_files.store(false, Ordering::SeqCst);
                        notifier.main_pid(pid, &format!("upgraded: new master pid {pid} serving; old master pid {} draining", std::process::id()));
                        notifier.silence();
                        u.commit();
                        handed_over = true;
                        break Ok(());
                    }
                    Err(e) => {
                        upgrade_failed(&e, &notifier, &front);
                        stopping.spawn(u.stop());
                    }
                }
            },
            e = fatal(&supervisor) => { error!("{e}"); break Err(ServeError::Pool(e)) }
        }
    };
    if let Some(u) = upgrade.take() {
        info!(
            "stopping the new master (pid {}): this master stops before the upgrade ended",
            u.pid()
        );
        stopping.spawn(u.stop());
    }
    if !handed_over {
        notifier.stopping(&match &outcome {
            Ok(()) => format!("draining; {}", status_line(&front)),
            Err(e) => format!("stopping: {e}"),
        });
    }

    // Drain: stop accepting, finish what is in flight.
    let _ = drain_tx.send(true);
    let grace = config.app.graceful_timeout.as_duration();
    let pool_done = async {
        if let Some(s) = &supervisor {
            s.shutdown().await;
        }
    };
    drop(conns_tx);
    drop(accepting);
    // A second stop signal during the drain ends it now (NGINX's fast shutdown, a second
    // Ctrl-C): the workers still busy are killed, their clients get the answer a killed
    // worker's request gets, and the connections have STOP_NOW_SEND to take it.
    let (hurried_tx, mut hurried) = tokio::sync::watch::channel(false);
    let stop_again = async {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        warn!("{name} during the drain: stopping now (the workers still busy are killed)");
        if let Some(s) = &supervisor {
            s.hurry();
        }
        let _ = hurried_tx.send(true);
        std::future::pending::<()>().await
    };
    let conns_done = async {
        let limit = async {
            tokio::select! {
                () = tokio::time::sleep(grace + Duration::from_secs(2)) => {}
                _ = async {
                    let _ = hurried.wait_for(|h| *h).await;
                    tokio::time::sleep(STOP_NOW_SEND).await;
                } => {}
            }
        };
        // recv() returns None once every connection's sender is dropped.
        tokio::select! {
            _ = conns_rx.recv() => {}
            () = limit => warn!("connections still open after the drain; closing them"),
        }
    };
    // The pool's stop is bounded by itself (graceful_timeout, or a second stop signal, then
    // it kills) and returns only once every worker and zygote has been reaped, so weir does
    // not exit before its children.
    let upgrades_done = async { while stopping.join_next().await.is_some() {} };
    let stopped = async {
        if handed_over {
            // A connection may have been reading a request when the drain came: the pool
            // serves it (no `shutting-down` answer during an upgrade), and stops only once
            // the connections are done. No service manager times this master's stop any
            // more.
            conns_done.await;
            tokio::join!(pool_done, upgrades_done);
        } else {
            tokio::join!(pool_done, conns_done, upgrades_done);
        }
    };
    tokio::select! {
        () = stopped => {}
        () = stop_again => unreachable!("stop_again never ends"),
    }
    front.log.flush();
    info!("weir stopped");
    outcome
}

/// A failed upgrade: logged, and said in systemd's status; this master serves on.
fn upgrade_failed(e: &UpgradeError, notifier: &Notifier, front: &Front) {
    error!("upgrade failed: {e}; this master keeps serving");
    notifier.status(&format!("upgrade failed: {e}; {}", status_line(front)));
}

/// The running upgrade's readiness (never resolves without one).
async fn upgrade_ready(u: &mut Option<Upgrade>) -> Result<(), UpgradeError> {
    match u {
        Some(u) => u.ready().await,
        None => std::future::pending().await,
    }
}

/// A new master whose workers are ready and who accepts: tells the old master and waits
/// for the handover; from then on it notifies systemd and owns the Unix socket files.
async fn take_over(
    channel: std::os::unix::net::UnixStream,
    notifier: Arc<Notifier>,
    front: Arc<Front>,
    owns_files: Arc<AtomicBool>,
) {
    match crate::upgrade::report_ready(channel).await {
        Ok(()) => info!("upgrade: the old master handed over; this master (pid {}) serves alone", std::process::id()),
        Err(e) => warn!("upgrade: the channel to the old master failed ({e}); it is gone, this master serves alone"),
    }
    owns_files.store(true, Ordering::SeqCst);
    notifier.resume();
    notifier.status(&status_line(&front));
}

/// The listeners by kind, before their accept loops start.
#[derive(Default)]
struct Listeners {
    http: Vec<Listener>,
    tls: Vec<Listener>,
    uwsgi: Vec<Listener>,
    admin: Vec<Listener>,
}

impl Listeners {
    fn all(&self) -> impl Iterator<Item = (Kind, &Listener)> {
        let tag = |k: Kind| move |l| (k, l);
        self.http
            .iter()
            .map(tag(Kind::Http))
            .chain(self.tls.iter().map(tag(Kind::Tls)))
            .chain(self.uwsgi.iter().map(tag(Kind::Uwsgi)))
            .chain(self.admin.iter().map(tag(Kind::Admin)))
    }

    /// For the log line.
    fn names(&self) -> Vec<String> {
        self.all()
            .map(|(k, l)| match k {
                Kind::Http => format!("http://{}", l.describe()),
                Kind::Tls => format!("https://{}", l.describe()),
                Kind::Uwsgi => format!("uwsgi://{}", l.describe()),
                Kind::Admin => format!("admin http://{}", l.describe()),
            })
            .collect()
    }

    /// A copy of each socket for an upgrade, named by kind (`+unlink`: a Unix socket file
    /// this master bound).
    fn handover(&self) -> Handover {
        let mut h = Handover::default();
        for (kind, l) in self.all() {
            let (fd, owned): (std::io::Result<OwnedFd>, bool) = match l {
                Listener::Tcp(t) => (t.as_fd().try_clone_to_owned(), false),
                Listener::Unix(u, _, owned) => (u.as_fd().try_clone_to_owned(), *owned),
            };
            let mut name = kind.name().to_owned();
            if owned {
                name.push_str(crate::systemd::UNLINK_SUFFIX);
            }
            match fd {
                Ok(fd) => h.add(fd, name),
                Err(e) => warn!(
                    "cannot keep a copy of {} for upgrades ({e}): a new master will have to bind it",
                    l.describe()
                ),
            }
        }
        h
    }
}

/// What every accept loop shares.
struct Accepting {
    front: Arc<Front>,
    drain: watch::Receiver<bool>,
    conns: mpsc::Sender<()>,
    owns_files: Arc<AtomicBool>,
}

impl Accepting {
    fn start(&self, listeners: Listeners) {
        let Listeners {
            http,
            tls,
            uwsgi,
            admin,
        } = listeners;
        let kinds = [
            (Kind::Http, http),
            (Kind::Tls, tls),
            (Kind::Uwsgi, uwsgi),
            (Kind::Admin, admin),
        ];
        for (kind, ls) in kinds {
            for l in ls {
                let conns = match kind {
                    // The admin listener does not hold up the drain: scrapers may keep
                    // connections.
                    Kind::Admin => mpsc::channel::<()>(1).0,
                    _ => self.conns.clone(),
                };
                tokio::spawn(accept_loop(
                    l,
                    kind,
                    self.front.clone(),
                    self.drain.clone(),
                    conns,
                    self.owns_files.clone(),
                ));
            }
        }
    }
}

/// An inherited socket for `addr` when systemd (or the old master) passed one of that
/// kind bound there, else a new bind.
fn take_or_bind(
    addr: &weir_config::ListenAddr,
    kind: Kind,
    inherited: &mut Vec<Inherited>,
    backlog: u32,
    adopting: bool,
) -> Result<Listener, ServeError> {
    let found = inherited
        .iter()
        .position(|i| kind_of(i) == kind && Listener::same_address(&i.socket, addr));
    match found {
        Some(at) => adopt(inherited.remove(at), adopting),
        None => Ok(Listener::bind(addr, backlog)?),
    }
}

/// The listener kind an inherited socket's name says.
fn kind_of(i: &Inherited) -> Kind {
    if i.is_admin() {
        Kind::Admin
    } else if i.is_tls() {
        Kind::Tls
    } else if i.is_uwsgi() {
        Kind::Uwsgi
    } else {
        Kind::Http
    }
}

/// A listener on an inherited socket. Its Unix socket file is systemd's (left in place)
/// unless the old master of an upgrade (`adopting`) named it `+unlink`: then it is weir's.
fn adopt(i: Inherited, adopting: bool) -> Result<Listener, ServeError> {
    let mut l = Listener::inherited(i.socket)
        .map_err(|e| ServeError::Activation(format!("descriptor {}: {e}", i.name)))?;
    if adopting && i.name.ends_with(crate::systemd::UNLINK_SUFFIX) {
        if let Listener::Unix(_, _, owned) = &mut l {
            *owned = true;
        }
    }
    Ok(l)
}

/// Resolves once every worker of the first generation is ready (at once for an external
/// upstream): when `READY=1` goes to systemd.
async fn all_workers_ready(s: &Option<Arc<Supervisor>>, workers: usize) {
    let Some(s) = s else { return };
    let pool = s.pool();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let st = pool.stats();
        let up = st.idle.load(Ordering::Relaxed) + st.busy.load(Ordering::Relaxed);
        if up >= workers {
            return;
        }
    }
}

/// The `STATUS=` line: the workers busy and idle and the queue's depth.
fn status_line(front: &Front) -> String {
    match &front.backend {
        Backend::Workers(pool) => {
            let st = pool.stats();
            format!(
                "workers: {} busy, {} idle; queue: {}",
                st.busy.load(Ordering::Relaxed),
                st.idle.load(Ordering::Relaxed),
                pool.queue_depth()
            )
        }
        Backend::Upstream(_) => "serving (external upstream)".to_owned(),
    }
}

/// Longest time between two `STATUS=` lines.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Writes a buffered access log's lines every `every` (`[server] access_log_flush`), so
/// that none waits longer (the last ones are written when weir stops).
async fn flush_ticks(log: Arc<AccessLog>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        log.flush();
    }
}

/// `STATUS=` every few seconds, and `WATCHDOG=1` every half of `WATCHDOG_USEC` when set.
async fn notify_ticks(notifier: Arc<Notifier>, front: Arc<Front>) {
    let every = notifier.watchdog().map_or(STATUS_EVERY, |w| {
        (w / 2).clamp(Duration::from_millis(1), STATUS_EVERY)
    });
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if notifier.watchdog().is_some() {
            notifier.send(&format!("WATCHDOG=1\nSTATUS={}\n", status_line(&front)));
        } else {
            notifier.status(&status_line(&front));
        }
    }
}

async fn fatal(s: &Option<Arc<Supervisor>>) -> SupervisorError {
    match s {
        Some(s) => s.fatal().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP, first part: the TLS certificates are read again (a set that does not load
/// keeps the old); the workers' reload follows.
fn reload_tls(front: &Front) {
    if let Some(tls) = &front.tls {
        match tls.reload() {
            Ok(()) => info!("SIGHUP: TLS certificates reloaded"),
            Err(e) => error!("SIGHUP: TLS certificates not reloaded, the old ones stay: {e}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Tls,
    Uwsgi,
    Admin,
}

impl Kind {
    /// Its `LISTEN_FDNAMES` name in an upgrade.
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tls => "https",
            Kind::Uwsgi => "uwsgi",
            Kind::Admin => "admin",
        }
    }
}

async fn accept_loop(
    listener: Listener,
    kind: Kind,
    front: Arc<Front>,
    mut drain: watch::Receiver<bool>,
    conns: mpsc::Sender<()>,
    owns_files: Arc<AtomicBool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = drain.wait_for(|d| *d) => None,
            a = accept(&listener) => Some(a),
        };
        let Some(accepted) = accepted else { break };
        let (io, info) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!("accept on {} failed: {e}", listener.describe());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (front, drain) = (front.clone(), drain.clone());
        // One task per connection, of its own kind's size: a single `async` block over
        // every kind would make each connection's task as large as the largest (a TLS
        // connection's), several KiB for every idle HTTP client.
        let guard = conns.clone();
        // The task holds the connection's future and the guard, nothing else: an `async`
        // block around the call would also keep the call's arguments (or the future
        // twice), for as long as the connection lives.
        macro_rules! serve {
            ($fut:expr) => {{
                tokio::spawn(Counted {
                    fut: $fut,
                    _guard: guard,
                });
            }};
        }
        match (kind, io) {
            (Kind::Http, Io::Tcp(s)) if front.h2c => {
                serve!(crate::http2::serve_plain(s, info, front, drain))
            }
            (Kind::Http, Io::Unix(s)) if front.h2c => {
                serve!(crate::http2::serve_plain(s, info, front, drain))
            }
            (Kind::Http, Io::Tcp(s)) => {
                serve!(crate::http::serve_connection(s, info, front, drain))
            }
            (Kind::Http, Io::Unix(s)) => {
                serve!(crate::http::serve_connection(s, info, front, drain))
            }
            (Kind::Tls, Io::Tcp(s)) => serve!(crate::tls::serve_connection(s, info, front, drain)),
            (Kind::Tls, Io::Unix(s)) => serve!(crate::tls::serve_connection(s, info, front, drain)),
            (Kind::Uwsgi, Io::Tcp(s)) => {
                serve!(crate::uwsgi_listener::serve_connection(
                    s, info.watch, front
                ))
            }
            (Kind::Uwsgi, Io::Unix(s)) => {
                serve!(crate::uwsgi_listener::serve_connection(
                    s, info.watch, front
                ))
            }
            (Kind::Admin, Io::Tcp(s)) => serve!(crate::admin::serve_connection(s, front)),
            (Kind::Admin, Io::Unix(s)) => serve!(crate::admin::serve_connection(s, front)),
        }
    }
    if owns_files.load(Ordering::SeqCst) {
        listener.cleanup();
    }
}

pin_project_lite::pin_project! {
    /// A connection's future with the guard that counts it among the open connections
    /// (the drain waits for them): the guard goes when the future ends or is dropped.
    struct Counted<F> {
        #[pin]
        fut: F,
        _guard: mpsc::Sender<()>,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Counted<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().fut.poll(cx)
    }
}

enum Io {
    Tcp(SharedIo<tokio::net::TcpStream>),
    Unix(SharedIo<tokio::net::UnixStream>),
}

async fn accept(l: &Listener) -> std::io::Result<(Io, ConnInfo)> {
    match l {
        Listener::Tcp(t) => {
            let (s, peer) = t.accept().await?;
            // Small responses go out at once rather than waiting for Nagle.
            let _ = s.set_nodelay(true);
            let local = s.local_addr().ok();
            let io = SharedIo::new(s);
            let watch = ClientWatch::Tcp(io.handle());
            Ok((
                Io::Tcp(io),
                ConnInfo {
                    peer: Some(peer),
                    local,
                    watch,
                    tls: false,
                    refused: Default::default(),
                },
            ))
        }
        Listener::Unix(u, _, _) => {
            let (s, _) = u.accept().await?;
            let io = SharedIo::new(s);
            let watch = ClientWatch::Unix(io.handle());
            Ok((
                Io::Unix(io),
                ConnInfo {
                    peer: None,
                    local: None,
                    watch,
                    tls: false,
                    refused: Default::default(),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the task a connection's future `f` makes, without making one.
    fn task_size<S, F: std::future::Future>(
        _: fn(S, ConnInfo, Arc<Front>, watch::Receiver<bool>) -> F,
    ) -> usize {
        std::mem::size_of::<Counted<F>>()
    }

    /// An idle HTTP/1 connection keeps its task for as long as it lives (10,000 of them
    /// are 10,000 tasks): what the task holds is checked here, so that a change which makes
    /// every idle connection larger is seen (issue: memory per connection). It was 1,560
    /// bytes before its arguments and hyper's builder left it; a parked connection's other
    /// allocations are the socket's registration and the client's address.
    #[test]
    fn an_http1_connection_s_task_stays_small() {
        let size = task_size(crate::http::serve_connection::<SharedIo<tokio::net::TcpStream>>);
        assert!(size <= 900, "an HTTP/1 connection's task is {size} bytes");
    }

    /// The same for a TLS connection (6,256 bytes before HTTP/2's future was boxed and the
    /// stream no longer borrowed in the task): the TLS session itself is most of it.
    #[test]
    fn a_tls_connection_s_task_stays_small() {
        let size = task_size(crate::tls::serve_connection::<SharedIo<tokio::net::TcpStream>>);
        assert!(size <= 2300, "a TLS connection's task is {size} bytes");
    }
}

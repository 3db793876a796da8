//! `[app] preload`: the master's side of the zygote, the process (`weir worker --zygote`)
//! that imports the app once per generation and forks the workers.
//!
//! The zygote reports what its import left open (NOT_FORK_SAFE: sockets, threads) before
//! READY. With `preload = "auto"` (the zygote runs with `--if-fork-safe` and exits after
//! that report), or when the system cannot fork workers at all, [`ZygoteCell::fall_back`]
//! logs it once and the generation's slots exec their workers instead; with `true` the
//! report is a warning and the zygote forks anyway.
//!
//! - [`ZygoteCell`]: one per generation, shared by its slots. The first slot that needs a
//!   worker starts the zygote (so it is started lazily, and again, after a backoff when
//!   the last one died young, when it has died); slots that waited on that start share
//!   its result, so a failing import runs once per attempt, not once per slot. When the
//!   generation is over its slots end, the cell and the handle drop, the control socket
//!   is shut down and the zygote exits (its workers have left by then or leave on their own).
//! - [`Zygote`]: the handle. [`Zygote::fork`] makes a socketpair, sends FORK with the
//!   worker's end (`SCM_RIGHTS`) and waits for FORKED, which brings the worker's pid and a
//!   pidfd. A reader task owns the zygote's [`Child`] and demultiplexes the control socket:
//!   FORKED/FAILED answer the forks in request order, EXITED {pid, wait status} goes to
//!   that worker's [`Forked`]. When the socket ends the zygote is marked dead, pending
//!   forks fail, and the reader logs how the zygote ended.
//! - [`Forked`]: a forked worker as its slot sees it. Its exit status comes from the
//!   zygote's EXITED notice; when the zygote is gone, the pidfd still says when the worker
//!   exited (status unknown: the zygote's successor is not its parent). It is killed with
//!   `pidfd_send_signal`, which cannot hit a reused pid.
//!
//! Workers are the zygote's children, not the master's, and have no parent-death signal:
//! a zygote that dies or leaves does not end serving workers (they end when the master
//! closes their socket, or dies). The zygote itself has PR_SET_PDEATHSIG: it dies with
//! the master. Not `PR_SET_CHILD_SUBREAPER` + double fork: the master would then also
//! inherit every orphaned grandchild the app leaves behind and would have to reap them
//! beside tokio's own child handling.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::Child;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinSet;
use tracing::{info, warn};
use weir_fdpass::Mode;
use weir_uwsgi::zygote::{Msg, MAX_LEN};

use crate::supervisor::{PoolConfig, Preload};
use crate::sys;

/// Exit status of a zygote (or worker) whose app failed to import (weir-worker's contract).
pub(crate) const EXIT_IMPORT_FAILED: i32 = 3;

/// How long a worker's exit may wait for the zygote's EXITED notice once its pidfd says
/// it has exited (the zygote reaps it at once; this only covers a zygote that is dying).
const NOTICE_GRACE: Duration = Duration::from_secs(2);

/// How long a stopping master waits for its zygotes to exit on their own (they exit at
/// once when their control socket closes) before it kills them.
const ZYGOTE_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Every zygote's reader task, which owns the zygote process and ends once it has reaped
/// it: the supervisor's stop waits for them, so the master never exits before its zygotes.
#[derive(Debug)]
pub(crate) struct Zygotes {
    tasks: StdMutex<JoinSet<()>>,
    /// Set when the stop has waited long enough: the reader tasks kill their zygotes.
    kill: watch::Sender<bool>,
}

impl Zygotes {
    pub(crate) fn new() -> Self {
        Zygotes {
            tasks: StdMutex::new(JoinSet::new()),
            kill: watch::Sender::new(false),
        }
    }

    /// Runs a zygote's reader task (forgetting those of zygotes already reaped: reloads
    /// and restarts do not pile them up).
    fn track(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Waits until every zygote started so far has exited and been reaped (their handles
    /// must be gone: that closes their control sockets); kills those still running after
    /// [`ZYGOTE_EXIT_GRACE`].
    pub(crate) async fn reap_all(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(ZYGOTE_EXIT_GRACE, all).await.is_err() {
            warn!(
                "zygotes still running {ZYGOTE_EXIT_GRACE:?} after their control sockets closed; killing them"
            );
            self.kill.send_replace(true);
            while tasks.join_next().await.is_some() {}
        }
    }
}

const STOPPED_WAITING: &str = "the master stopped waiting for it";

/// Resolves once `flag` is true (never, if its sender is gone first).
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why no zygote could be had.
#[derive(Debug, Clone)]
pub(crate) enum ZygoteFailure {
    /// The zygote exited with [`EXIT_IMPORT_FAILED`]: the app cannot be imported.
    Import(ExitStatus),
    /// `preload = "auto"` fell back (the import was not fork-safe, or the system cannot
    /// fork workers): this generation's workers are exec'd. Logged once, by the cell.
    Exec,
    /// The system cannot run a zygote (socketpair, descriptor registration); with
    /// `"auto"` the cell turns this into [`ZygoteFailure::Exec`].
    System(String),
    /// The zygote reported what its import left (`"auto"`: it exits next).
    NotForkSafe(String),
    /// Anything else (cannot run weir, startup timeout).
    Other(String),
}

/// Why a fork failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ForkError {
    /// The system cannot fork workers from a zygote at all (no pidfd support, fork(2)
    /// not available): with `"auto"` the generation execs its workers.
    #[error("{0}")]
    System(String),
    /// This fork failed (the zygote died, resources ran out, a timeout).
    #[error("{0}")]
    Other(String),
}

/// The zygote of one generation, started on first use.
#[derive(Debug)]
pub(crate) struct ZygoteCell {
    generation: u64,
    zygotes: Arc<Zygotes>,
    attempts: AtomicU64,
    /// `preload = "auto"` gave up on forking for this generation: its workers are exec'd.
    exec: AtomicBool,
    inner: Mutex<CellState>,
}

#[derive(Debug, Default)]
struct CellState {
    current: Option<Arc<Zygote>>,
    last_failure: Option<ZygoteFailure>,
    quick_deaths: u32,
}

/// The advice of both fork-safety warnings.
const FORK_SAFETY_ADVICE: &str = "open connections lazily or in \
    os.register_at_fork(after_in_child=...) and start threads there too";

impl ZygoteCell {
    pub(crate) fn new(generation: u64, zygotes: Arc<Zygotes>) -> Self {
        ZygoteCell {
            generation,
            zygotes,
            attempts: AtomicU64::new(0),
            exec: AtomicBool::new(false),
            inner: Mutex::new(CellState::default()),
        }
    }

    /// Whether this generation's workers are exec'd (`"auto"` fell back).
    pub(crate) fn execs(&self) -> bool {
        self.exec.load(Ordering::Acquire)
    }

    /// `"auto"`: from now on this generation's workers are exec'd. Logs it (once), with
    /// `why` (what was found or what failed).
    pub(crate) fn fall_back(&self, why: &str) {
        if self.exec.swap(true, Ordering::AcqRel) {
            return;
        }
        let generation = self.generation;
        warn!(generation, "preload=auto: {why}");
        info!(
            generation,
            "generation {generation}: workers are exec'd, each imports the app itself (preload = \"auto\" fell back)"
        );
    }

    /// Lets the running zygote go (after [`ZygoteCell::fall_back`]: it will not fork).
    pub(crate) async fn let_go(&self) {
        self.inner.lock().await.current = None;
    }

    /// The running zygote, started (or restarted) if need be.
    pub(crate) async fn get(&self, config: &PoolConfig) -> Result<Arc<Zygote>, ZygoteFailure> {
        if self.execs() {
            return Err(ZygoteFailure::Exec);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut st = self.inner.lock().await;
        if self.execs() {
            return Err(ZygoteFailure::Exec);
        }
        if let Some(z) = &st.current {
            if !z.is_dead() {
                return Ok(z.clone());
            }
            // Its reader task has logged how it ended. One that died young (crashing at
            // fork, killed in a loop) is not restarted at full speed.
            let lived = z.started.elapsed();
            st.current = None;
            if lived < Duration::from_secs(1) {
                st.quick_deaths += 1;
                let ms = 100u64
                    .saturating_mul(1 << st.quick_deaths.min(6))
                    .min(5_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else {
                st.quick_deaths = 0;
            }
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // Another slot tried while this one waited for the lock: share its outcome.
            if let Some(f) = &st.last_failure {
                return Err(f.clone());
            }
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let auto = config.preload == Preload::Auto;
        match Zygote::start(config, self.generation, &self.zygotes).await {
            Ok(z) => {
                st.current = Some(z.clone());
                st.last_failure = None;
                Ok(z)
            }
            Err(ZygoteFailure::NotForkSafe(reason)) if auto => {
                self.fall_back(&format!(
                    "the app left {reason} after its import; forking would share sockets and \
                     files written at an offset between workers, and threads do not survive \
                     fork, so each worker imports the app itself ({FORK_SAFETY_ADVICE}, or set [app] preload = false to \
                     skip this check)"
                ));
                st.last_failure = Some(ZygoteFailure::Exec);
                Err(ZygoteFailure::Exec)
            }
            Err(ZygoteFailure::System(msg)) if auto => {
                self.fall_back(&format!(
                    "cannot run a zygote ({msg}); each worker imports the app itself"
                ));
                st.last_failure = Some(ZygoteFailure::Exec);
                Err(ZygoteFailure::Exec)
            }
            Err(f) => {
                st.last_failure = Some(f.clone());
                Err(f)
            }
        }
    }
}

/// What the reader task and the handle share.
#[derive(Debug, Default)]
struct State {
    dead: bool,
    forks: VecDeque<oneshot::Sender<Result<Forked, ForkError>>>,
    exits: HashMap<i32, oneshot::Sender<i32>>,
}

/// A running zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    pub(crate) pid: u32,
    started: Instant,
    ctl: Arc<AsyncFd<StdUnixStream>>,
    state: Arc<StdMutex<State>>,
    /// Set when the handle is dropped (the zygote is let go, not dying).
    leaving: Arc<AtomicBool>,
    /// FORK requests go out one at a time, in the order their replies are matched.
    send: Mutex<()>,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.leaving.store(true, Ordering::Release);
        // EOF on its control socket: the zygote exits (its workers stay). The reader task
        // holds the socket open for reading, so closing our reference would not do.
        let _ = self.ctl.get_ref().shutdown(std::net::Shutdown::Write);
    }
}

impl Zygote {
    pub(crate) fn is_dead(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).dead
    }

    /// Starts `weir worker --zygote ...` and waits for its READY.
    async fn start(
        config: &PoolConfig,
        generation: u64,
        zygotes: &Zygotes,
    ) -> Result<Arc<Zygote>, ZygoteFailure> {
        let started = Instant::now();
        let other = |what: &str, e: std::io::Error| ZygoteFailure::Other(format!("{what}: {e}"));
        let system = |what: &str, e: std::io::Error| {
            ZygoteFailure::System(format!("its control socket: {what}: {e}"))
        };
        let (ours, theirs) = weir_fdpass::seqpacket_pair().map_err(|e| system("socketpair", e))?;
        let ours = StdUnixStream::from(ours);
        ours.set_nonblocking(true)
            .map_err(|e| system("socket setup", e))?;
        let ctl = Arc::new(
            sys::async_fd(ours, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| system("socket setup", e))?,
        );
        let mut cmd = config.worker_command();
        cmd.arg("worker").arg("--zygote");
        if config.preload == Preload::Auto {
            cmd.arg("--if-fork-safe");
        }
        cmd.args(&config.worker_args)
            .stdin(Stdio::from(theirs))
            // print() from the app reaches the log at once (the workers inherit it).
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            ZygoteFailure::Other(format!(
                "cannot run {} worker --zygote: {e}",
                config.exe.display()
            ))
        })?;
        drop(cmd);
        let pid = child.id().unwrap_or(0);
        info!(
            pid,
            generation, "zygote started: importing the app once for this generation's workers"
        );
        let mut buf = [0u8; MAX_LEN + 1];
        let mut findings = None;
        let ready = tokio::time::timeout(config.startup_timeout, async {
            loop {
                let r = tokio::select! {
                    r = recv(&ctl, &mut buf) => r,
                    s = child.wait() => return Err(s),
                };
                // NOT_FORK_SAFE comes before READY (and, with "auto", instead of it).
                if let Ok((n, _)) = r {
                    if let Ok(Msg::NotForkSafe { reason }) = Msg::decode(&buf[..n]) {
                        if config.preload == Preload::Auto {
                            // It exits 0 now; a moment for that, then kill_on_drop.
                            let _ =
                                tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                            return Ok(Err(reason));
                        }
                        warn!(
                            pid,
                            generation,
                            "preload=true: the app left {reason} after its import; forking \
                             anyway, as preload = true asks: every worker shares those sockets, \
                             and threads do not survive fork ({FORK_SAFETY_ADVICE}, or set \
                             [app] preload = \"auto\" to have each worker import the app then)"
                        );
                        findings = Some(reason);
                        continue;
                    }
                }
                return Ok(Ok(r));
            }
        })
        .await;
        let ready = match ready {
            Ok(Ok(Err(reason))) => return Err(ZygoteFailure::NotForkSafe(reason)),
            Ok(Ok(Ok(r))) => Ok(Ok(r)),
            Ok(Err(s)) => Ok(Err(s)),
            Err(t) => Err(t),
        };
        let fail_status = |s: ExitStatus| {
            if s.code() == Some(EXIT_IMPORT_FAILED) {
                ZygoteFailure::Import(s)
            } else {
                ZygoteFailure::Other(format!("the zygote exited before it was ready ({s})"))
            }
        };
        match ready {
            Ok(Ok(Ok((n, _)))) if n > 0 && Msg::decode(&buf[..n]) == Ok(Msg::Ready) => {}
            Ok(Ok(Ok((0, _)))) | Ok(Ok(Err(_))) => {
                // The socket closed: the zygote is exiting; its status says why.
                return Err(match child.wait().await {
                    Ok(s) => fail_status(s),
                    Err(e) => other("waiting for the zygote", e),
                });
            }
            Ok(Ok(Ok((n, _)))) => {
                let _ = child.start_kill();
                return Err(ZygoteFailure::Other(format!(
                    "the zygote sent {:?} instead of READY",
                    &buf[..n]
                )));
            }
            Ok(Err(status)) => {
                return Err(match status {
                    Ok(s) => fail_status(s),
                    Err(e) => other("waiting for the zygote", e),
                })
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(ZygoteFailure::Other(format!(
                    "the zygote did not import the app within startup_timeout ({:?})",
                    config.startup_timeout
                )));
            }
        }
        let mode = config.preload.as_toml();
        let despite = if findings.is_some() {
            ", despite the findings above"
        } else {
            ""
        };
        info!(
            pid,
            generation,
            ms = started.elapsed().as_millis() as u64,
            "zygote ready: generation {generation}'s workers are forked from it (preload = {mode}{despite})"
        );
        let state = Arc::new(StdMutex::new(State::default()));
        let leaving = Arc::new(AtomicBool::new(false));
        zygotes.track(read_loop(
            ctl.clone(),
            state.clone(),
            leaving.clone(),
            child,
            pid,
            generation,
            zygotes.kill.subscribe(),
        ));
        Ok(Arc::new(Zygote {
            pid,
            started,
            ctl,
            state,
            leaving,
            send: Mutex::new(()),
        }))
    }

    /// Forks a worker for `slot` whose master socket is `theirs` (the other end stays
    /// with the caller). Errors say what failed.
    pub(crate) async fn fork(
        &self,
        slot: usize,
        theirs: StdUnixStream,
    ) -> Result<Forked, ForkError> {
        let (tx, rx) = oneshot::channel();
        {
            let _one_at_a_time = self.send.lock().await;
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.dead {
                    return Err(ForkError::Other(format!(
                        "the zygote (pid {}) is gone",
                        self.pid
                    )));
                }
                st.forks.push_back(tx);
            }
            let msg = Msg::Fork { slot: slot as u32 }.encode();
            let sent = loop {
                let mut guard = match self.ctl.writable().await {
                    Ok(g) => g,
                    Err(e) => break Err(e),
                };
                match guard.try_io(|s| {
                    weir_fdpass::send_with_fd(
                        s.get_ref().as_fd(),
                        &msg,
                        Some(theirs.as_fd()),
                        Mode::NonBlocking,
                    )
                }) {
                    Ok(r) => break r,
                    Err(_would_block) => continue,
                }
            };
            if let Err(e) = sent {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                // Still ours: requests are sent under `send`, so ours is the last one.
                st.forks.pop_back();
                return Err(ForkError::Other(format!(
                    "cannot send FORK to the zygote (pid {}): {e}",
                    self.pid
                )));
            }
        }
        // The zygote has its own copy now (or will, once it reads the message).
        drop(theirs);
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(ForkError::Other(format!(
                "the zygote (pid {}) exited before it forked worker {slot}",
                self.pid
            ))),
        }
    }
}

/// One message (non-blocking socket, waits for readiness).
async fn recv(
    ctl: &AsyncFd<StdUnixStream>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    loop {
        let mut guard = ctl.readable().await?;
        match guard
            .try_io(|s| weir_fdpass::recv_with_fd(s.get_ref().as_fd(), buf, Mode::NonBlocking))
        {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Owns the zygote process and reads its control socket until it ends.
async fn read_loop(
    ctl: Arc<AsyncFd<StdUnixStream>>,
    state: Arc<StdMutex<State>>,
    leaving: Arc<AtomicBool>,
    mut child: Child,
    pid: u32,
    generation: u64,
    mut kill: watch::Receiver<bool>,
) {
    let mut buf = [0u8; MAX_LEN + 1];
    let why = loop {
        let received = tokio::select! {
            r = recv(&ctl, &mut buf) => r,
            () = raised(&mut kill) => break Some(STOPPED_WAITING.to_owned()),
        };
        let (n, fd) = match received {
            Ok((0, _)) => break None,
            Ok(x) => x,
            Err(e) => break Some(format!("control socket: {e}")),
        };
        let msg = match Msg::decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => break Some(e.to_string()),
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Msg::Forked { slot, pid: wpid } => {
                let reply = match fd {
                    Some(pidfd) => match sys::async_fd(pidfd, Interest::READABLE) {
                        Ok(pidfd) => {
                            let (etx, erx) = oneshot::channel();
                            st.exits.insert(wpid, etx);
                            Ok(Forked {
                                pid: wpid as u32,
                                zygote: pid,
                                pidfd,
                                exit: Some(erx),
                                done: None,
                            })
                        }
                        Err(e) => Err(ForkError::System(format!(
                            "cannot watch worker {slot}'s pidfd: {e}"
                        ))),
                    },
                    None => Err(ForkError::System(format!(
                        "the zygote forked worker {slot} (pid {wpid}) but could not open a pidfd for it (Linux 5.3 or later is needed)"
                    ))),
                };
                // A slot that gave up dropped its end of the worker's socket: the worker
                // reads EOF and exits; nothing to do here.
                if let Some(tx) = st.forks.pop_front() {
                    let _ = tx.send(reply);
                }
            }
            Msg::Failed { slot, errno } => {
                if let Some(tx) = st.forks.pop_front() {
                    let msg = format!(
                        "the zygote could not fork worker {slot}: {}",
                        std::io::Error::from_raw_os_error(errno)
                    );
                    // fork(2) or pidfd_open(2) missing or forbidden (seccomp): no fork
                    // will ever work here. Anything else (EAGAIN, ENOMEM) may pass.
                    let _ = tx.send(Err(match errno {
                        libc::ENOSYS | libc::EPERM | libc::EACCES => ForkError::System(msg),
                        _ => ForkError::Other(msg),
                    }));
                }
            }
            Msg::Exited { pid: wpid, status } => {
                if let Some(tx) = st.exits.remove(&wpid) {
                    // Its slot may have stopped waiting (server stopping): fine.
                    let _ = tx.send(status);
                }
            }
            other => break Some(format!("unexpected message {other:?}")),
        }
    };
    {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.dead = true;
        // Pending forks fail; the workers' exits are watched through their pidfds now.
        st.forks.clear();
        st.exits.clear();
    }
    if why.is_some() {
        let _ = child.start_kill();
    }
    let waited = tokio::select! {
        s = child.wait() => s,
        () = raised(&mut kill) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let status = match waited {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    if leaving.load(Ordering::Acquire) && why.is_none() {
        info!(pid, generation, "zygote left ({status})");
    } else if *kill.borrow() {
        warn!(
            pid,
            generation, "zygote (pid {pid}) did not exit when the server stopped; killed: {status}"
        );
    } else {
        let why = why.map(|w| format!(" after {w}")).unwrap_or_default();
        warn!(
            pid,
            generation,
            "zygote (pid {pid}) exited{why}: {status}; the workers it forked keep serving, \
             the next worker start imports the app in a new zygote"
        );
    }
}

/// A forked worker: its pid, a pidfd, and the zygote's notice of its exit.
#[derive(Debug)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
    zygote: u32,
    pidfd: AsyncFd<OwnedFd>,
    /// The zygote's EXITED notice (None once received, or once the zygote is known gone).
    exit: Option<oneshot::Receiver<i32>>,
    done: Option<Exit>,
}

/// How a process ended, as far as the master can tell.
#[derive(Debug, Clone)]
pub(crate) enum Exit {
    /// Its wait status.
    Known(ExitStatus),
    /// A forked worker whose zygote died before it could report.
    Unknown { zygote: u32 },
    /// Waiting failed.
    Error(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Known(s) => write!(f, "{s}"),
            Exit::Unknown { zygote } => write!(
                f,
                "exit status unknown (its zygote, pid {zygote}, is gone and cannot report it)"
            ),
            Exit::Error(e) => write!(f, "exit status unknown ({e})"),
        }
    }
}

/// As `kill_on_drop` for an exec'd worker: a slot that is dropped while its worker runs
/// (the shutdown grace ran out and the slot tasks were aborted) kills it, so no forked
/// worker outlives the master busy with a long request.
impl Drop for Forked {
    fn drop(&mut self) {
        if self.done.is_none() {
            // ESRCH (it has exited already) is fine; the pidfd cannot hit another process.
            let _ = sys::pidfd_kill(self.pidfd.as_fd());
        }
    }
}

impl Forked {
    /// Waits until the worker has exited. Cancel-safe; after it has returned once it
    /// returns the same at once.
    pub(crate) async fn wait(&mut self) -> Exit {
        if let Some(e) = &self.done {
            return e.clone();
        }
        let exit = self.wait_exit().await;
        self.done = Some(exit.clone());
        exit
    }

    async fn wait_exit(&mut self) -> Exit {
        enum First {
            Notice(Result<i32, oneshot::error::RecvError>),
            Exited,
            Failed(std::io::Error),
        }
        let unknown = Exit::Unknown {
            zygote: self.zygote,
        };
        if let Some(rx) = self.exit.as_mut() {
            let first = tokio::select! {
                r = rx => First::Notice(r),
                r = self.pidfd.readable() => match r {
                    Ok(_) => First::Exited,
                    Err(e) => First::Failed(e),
                },
            };
            match first {
                First::Notice(r) => {
                    // A completed receiver must not be polled again.
                    self.exit = None;
                    if let Ok(raw) = r {
                        return Exit::Known(ExitStatus::from_raw(raw));
                    }
                    // The zygote is gone: the pidfd still says when the worker ends.
                }
                First::Exited => {
                    let Some(rx) = self.exit.as_mut() else {
                        return unknown;
                    };
                    // It has exited; the zygote reaps it and reports at once (unless
                    // it is dying too).
                    if let Ok(r) = tokio::time::timeout(NOTICE_GRACE, rx).await {
                        self.exit = None;
                        if let Ok(raw) = r {
                            return Exit::Known(ExitStatus::from_raw(raw));
                        }
                    }
                    return unknown;
                }
                First::Failed(e) => return Exit::Error(format!("pidfd: {e}")),
            }
        }
        match self.pidfd.readable().await {
            Ok(_) => unknown,
            Err(e) => Exit::Error(format!("pidfd: {e}")),
        }
    }

    /// SIGKILL through the pidfd (never another process that reused the pid).
    pub(crate) fn kill(&self) {
        if self.done.is_some() {
            return;
        }
        if let Err(e) = sys::pidfd_kill(self.pidfd.as_fd()) {
            warn!(pid = self.pid, "cannot kill worker pid {}: {e}", self.pid);
        }
    }
}

impl fmt::Display for ZygoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZygoteFailure::Import(s) => write!(f, "the zygote could not import the app ({s})"),
            ZygoteFailure::Exec => write!(f, "this generation's workers are exec'd"),
            ZygoteFailure::System(m) | ZygoteFailure::Other(m) => write!(f, "{m}"),
            ZygoteFailure::NotForkSafe(r) => write!(f, "the app left {r} after its import"),
        }
    }
}

//! One task per worker slot: it starts a worker (spawns `weir worker` with the
//! master<->worker socket as its standard input, or, with `[app] preload`, asks its
//! generation's zygote to fork one with that socket: see `zygote`), waits for READY, hands
//! the worker to the pool, and then waits for the process to exit or for a retire/kill
//! command; then it starts the next one (after a backoff when the last one failed), unless
//! its generation is over. Both kinds of process ([`Proc`]) are waited for and killed the
//! same way, so READY, startup_timeout, retire, kill (harakiri), backoff and restart
//! reasons behave the same; with preload a respawn is a fork (milliseconds, no import).

use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::pool::Pool;
use crate::supervisor::{PoolConfig, Preload, SupervisorError};
use crate::zygote::{
    Exit, ForkError, Forked, ZygoteCell, ZygoteFailure, Zygotes, EXIT_IMPORT_FAILED,
};

/// Why a worker was replaced (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited or was killed by something other than weir.
    Crash,
    /// A request ran past harakiri.
    Harakiri,
    /// `max_requests` reached.
    MaxRequests,
    /// `reload_on_rss` exceeded.
    Rss,
    /// A reload (SIGHUP) replaced it.
    Reload,
    /// The server is stopping.
    Shutdown,
    /// Its request body could not be delivered (the client went away mid-upload).
    ClientAbort,
    /// It broke the worker protocol.
    Protocol,
    /// Its request ran past the request's deadline.
    Deadline,
}

impl RestartReason {
    /// Number of reasons.
    pub const COUNT: usize = 9;
    /// All reasons, in index order.
    pub const ALL: [RestartReason; Self::COUNT] = [
        RestartReason::Crash,
        RestartReason::Harakiri,
        RestartReason::MaxRequests,
        RestartReason::Rss,
        RestartReason::Reload,
        RestartReason::Shutdown,
        RestartReason::ClientAbort,
        RestartReason::Protocol,
        RestartReason::Deadline,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Harakiri => "harakiri",
            RestartReason::MaxRequests => "max-requests",
            RestartReason::Rss => "rss",
            RestartReason::Reload => "reload",
            RestartReason::Shutdown => "shutdown",
            RestartReason::ClientAbort => "client-abort",
            RestartReason::Protocol => "protocol",
            RestartReason::Deadline => "deadline",
        }
    }
}

/// What a lease holder tells the slot that owns the worker's process.
#[derive(Debug)]
pub(crate) enum SlotCommand {
    /// Let the worker leave cleanly: its socket is closed, it exits 0.
    Retire(WorkerHandle, RestartReason),
    /// Kill it now (harakiri, broken protocol).
    Kill(RestartReason),
}

/// A ready worker process, as the master sees it: its socket and its bookkeeping.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Slot number (shown in logs and by `weir worker --id`).
    pub slot: usize,
    /// Unique for the master's life (unlike a pid, never reused): what offers are held by.
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) stream: UnixStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) served: u64,
    pub(crate) recycle_after: u64,
    /// Its claim words (see weir-claim); `None`: nothing is offered to it.
    pub(crate) claim: Option<Arc<weir_claim::ClaimWords>>,
    /// Offers made to it so far (the last offer's claim sequence number).
    pub(crate) offers: u64,
    /// Its resident memory was over `reload_on_rss` when it last came back (read from
    /// /proc before the pool's lock is taken): nothing more is offered to it, and it
    /// retires once what it has is done.
    pub(crate) over_rss: bool,
    control: mpsc::UnboundedSender<SlotCommand>,
}

impl WorkerHandle {
    /// Hands the worker back to its slot to leave cleanly.
    pub(crate) fn retire(self, reason: RestartReason) {
        let control = self.control.clone();
        // The slot is gone only when the server stops; dropping the worker then closes
        // its socket, which ends it just the same.
        let _ = control.send(SlotCommand::Retire(self, reason));
    }

    /// Asks its slot to kill it.
    pub(crate) fn kill(self, reason: RestartReason) {
        // As in retire: a gone slot has already reaped the process.
        let _ = self.control.send(SlotCommand::Kill(reason));
    }

    /// Resident memory from /proc (Linux), for `reload_on_rss`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// The next [`WorkerHandle::id`].
static NEXT_WORKER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What every slot shares.
#[derive(Debug)]
pub(crate) struct SlotContext {
    pub(crate) pool: Pool,
    pub(crate) config: PoolConfig,
    /// Import failures that should stop weir (the app cannot start at all).
    pub(crate) fatal: mpsc::UnboundedSender<SupervisorError>,
    /// Every generation's zygotes, reaped before the master exits.
    pub(crate) zygotes: Arc<Zygotes>,
    /// Set when a stop has waited `graceful_timeout` for the workers: every slot kills its
    /// worker and reaps it now.
    pub(crate) kill_all: tokio::sync::watch::Sender<bool>,
}

/// A worker process: exec'd by the master, or forked by the zygote (`[app] preload`).
#[derive(Debug)]
enum Proc {
    Exec(Box<Child>),
    Forked(Forked),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Exec(c) => c.id().unwrap_or(0),
            Proc::Forked(f) => f.pid,
        }
    }

    /// Waits until it has exited (cancel-safe; may be called again after).
    async fn wait(&mut self) -> Exit {
        match self {
            Proc::Exec(c) => match c.wait().await {
                Ok(s) => Exit::Known(s),
                Err(e) => Exit::Error(e.to_string()),
            },
            Proc::Forked(f) => f.wait().await,
        }
    }

    /// SIGKILL; an exited process is not an error.
    fn kill(&mut self) {
        match self {
            // start_kill fails only if it has exited already: fine either way.
            Proc::Exec(c) => {
                let _ = c.start_kill();
            }
            Proc::Forked(f) => f.kill(),
        }
    }
}

/// How a started worker turned out.
enum Start {
    /// Ready; with its claim words when it passed them (prefetch).
    Ready(
        Proc,
        UnixStream,
        Option<Arc<weir_claim::ClaimWords>>,
        Duration,
    ),
    /// The app cannot be imported (what failed: a worker or the zygote, and its status).
    ImportFailed(String),
    Failed(String),
}

/// Consecutive import failures of one slot after which weir gives up.
const MAX_IMPORT_FAILURES: u32 = 3;

pub(crate) async fn run(
    ctx: Arc<SlotContext>,
    slot: usize,
    generation: u64,
    mut ready: Option<oneshot::Sender<Result<(), String>>>,
    zygote: Option<Arc<ZygoteCell>>,
) {
    let mut failures: u32 = 0;
    let mut import_failures: u32 = 0;
    let mut kill_all = ctx.kill_all.subscribe();
    loop {
        if over(&ctx, generation) {
            return;
        }
        let start = match &zygote {
            Some(cell) if !cell.execs() => fork(&ctx, slot, cell).await,
            _ => spawn(&ctx, slot).await,
        };
        let (mut child, stream, claim, took) = match start {
            Start::Ready(child, stream, claim, took) => (child, stream, claim, took),
            Start::ImportFailed(what) => {
                import_failures += 1;
                let msg = format!("{what}; its traceback is above");
                warn!(slot, attempt = import_failures, "{msg}");
                if let Some(tx) = ready.take() {
                    // A reload waits on this; if it stopped waiting there is no one to tell.
                    let _ = tx.send(Err(msg));
                    return;
                }
                if import_failures >= MAX_IMPORT_FAILURES {
                    // The supervisor ends weir with this; if it is already gone, so are we.
                    let _ = ctx.fatal.send(SupervisorError::AppImport(msg));
                    return;
                }
                backoff(failures + import_failures).await;
                continue;
            }
            Start::Failed(msg) => {
                failures += 1;
                warn!(slot, "worker {slot} failed to start: {msg}");
                if let Some(tx) = ready.take() {
                    // As above.
                    let _ = tx.send(Err(msg));
                    return;
                }
                backoff(failures).await;
                continue;
            }
        };
        import_failures = 0;
        let pid = child.id();
        info!(
            slot,
            pid,
            generation,
            forked = matches!(child, Proc::Forked(_)),
            ms = took.as_millis() as u64,
            "worker ready"
        );
        let (control, mut commands) = mpsc::unbounded_channel();
        let recycle_after = ctx.config.recycle_after();
        ctx.pool.put_idle(WorkerHandle {
            slot,
            id: NEXT_WORKER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            generation,
            pid,
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            served: 0,
            recycle_after,
            claim,
            offers: 0,
            over_rss: false,
            control,
        });
        if let Some(tx) = ready.take() {
            // The reload may have given up waiting (timeout): nothing to tell then.
            let _ = tx.send(Ok(()));
        }
        let lived = Instant::now();
        tokio::select! {
            status = child.wait() => {
                let removed = ctx.pool.remove_idle(pid);
                if over(&ctx, generation) {
                    return;
                }
                warn!(slot, pid, idle = removed, "worker {slot} (pid {pid}) exited on its own: {status}; starting a new one");
                ctx.pool.count_restart(RestartReason::Crash);
                if lived.elapsed() < Duration::from_secs(1) {
                    failures += 1;
                    backoff(failures).await;
                } else {
                    failures = 0;
                }
            }
            Some(cmd) = commands.recv() => {
                failures = 0;
                match cmd {
                    SlotCommand::Kill(reason) => {
                        child.kill();
                        let status = child.wait().await;
                        info!(slot, pid, reason = reason.as_str(), "worker killed ({status})");
                        ctx.pool.count_restart(reason);
                    }
                    SlotCommand::Retire(worker, reason) => {
                        drop(worker);
                        let grace = ctx.config.graceful_timeout;
                        if tokio::time::timeout(grace, child.wait()).await.is_err() {
                            warn!(slot, pid, "worker did not leave within {grace:?}; killing it");
                            child.kill();
                            let _ = child.wait().await;
                        }
                        info!(slot, pid, reason = reason.as_str(), "worker retired");
                        ctx.pool.count_restart(reason);
                    }
                }
            }
            () = crate::zygote::raised(&mut kill_all) => {
                // The stop ran out of patience with this busy worker.
                child.kill();
                let status = child.wait().await;
                warn!(slot, pid, "worker killed: the server is stopping ({status})");
                ctx.pool.count_restart(RestartReason::Shutdown);
                return;
            }
        }
    }
}

fn over(ctx: &SlotContext, generation: u64) -> bool {
    ctx.pool.is_shutting_down()
        || generation < ctx.pool.current_generation()
        || ctx.pool.is_cancelled(generation)
}

async fn backoff(failures: u32) {
    let ms = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A fresh master<->worker socketpair: (the master's end, ready for tokio; the worker's).
fn socketpair() -> Result<(UnixStream, std::os::unix::net::UnixStream), String> {
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let ours = ours
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(ours))
        .map_err(|e| format!("socket setup: {e}"))?;
    Ok((ours, theirs))
}

/// Execs `weir worker`, which imports the app itself.
async fn spawn(ctx: &SlotContext, slot: usize) -> Start {
    let started = Instant::now();
    let (ours, theirs) = match socketpair() {
        Ok(p) => p,
        Err(msg) => return Start::Failed(msg),
    };
    let mut cmd = ctx.config.worker_command();
    cmd.arg("worker")
        .args(&ctx.config.worker_args)
        .arg("--id")
        .arg(slot.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        // print() from the app reaches the log at once, not when a pipe buffer fills.
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Start::Failed(format!(
                "cannot run {} worker: {e}",
                ctx.config.exe.display()
            ))
        }
    };
    drop(cmd);
    await_ready(ctx, slot, Proc::Exec(Box::new(child)), ours, started).await
}

/// Asks the generation's zygote (started here if need be) to fork a worker; execs one
/// instead when `preload = "auto"` has fallen back for this generation.
async fn fork(ctx: &SlotContext, slot: usize, cell: &ZygoteCell) -> Start {
    let started = Instant::now();
    let mut retried = false;
    loop {
        let zygote = match cell.get(&ctx.config).await {
            Ok(z) => z,
            Err(ZygoteFailure::Import(s)) => {
                return Start::ImportFailed(format!("the zygote could not import the app ({s})"))
            }
            Err(ZygoteFailure::Exec) => return spawn(ctx, slot).await,
            Err(
                f @ (ZygoteFailure::Other(_)
                | ZygoteFailure::System(_)
                | ZygoteFailure::NotForkSafe(_)),
            ) => return Start::Failed(f.to_string()),
        };
        let (ours, theirs) = match socketpair() {
            Ok(p) => p,
            Err(msg) => return Start::Failed(msg),
        };
        let limit = ctx.config.startup_timeout;
        let forked = tokio::time::timeout(limit, zygote.fork(slot, theirs))
            .await
            .unwrap_or_else(|_| {
                Err(ForkError::Other(format!(
                    "the zygote (pid {}) did not fork worker {slot} within startup_timeout ({limit:?})",
                    zygote.pid
                )))
            });
        match forked {
            Ok(f) => return await_ready(ctx, slot, Proc::Forked(f), ours, started).await,
            // No fork will work on this system: "auto" execs the generation's workers.
            Err(ForkError::System(msg)) if ctx.config.preload == Preload::Auto => {
                cell.fall_back(&format!(
                    "workers cannot be forked here ({msg}); each worker imports the app itself"
                ));
                drop(zygote);
                cell.let_go().await;
                return spawn(ctx, slot).await;
            }
            // It died just now: the cell starts a new one.
            Err(_) if !retried && zygote.is_dead() => retried = true,
            Err(e) => return Start::Failed(e.to_string()),
        }
    }
}

/// Waits (up to startup_timeout) for the worker's READY on its socket.
async fn await_ready(
    ctx: &SlotContext,
    slot: usize,
    mut child: Proc,
    stream: UnixStream,
    started: Instant,
) -> Start {
    let mut hello = [0u8; weir_uwsgi::packet::HEADER_LEN];
    let mut claim_fd = None;
    let mut kill_all = ctx.kill_all.subscribe();
    let ready = tokio::time::timeout(ctx.config.startup_timeout, async {
        tokio::select! {
            r = read_ready(&stream, &mut hello, &mut claim_fd) => Some(Ok(r)),
            s = child.wait() => Some(Err(s)),
            () = crate::zygote::raised(&mut kill_all) => None,
        }
    })
    .await;
    let ready = match ready {
        Ok(None) => {
            // The server is stopping: this worker is not wanted.
            child.kill();
            let status = child.wait().await;
            return Start::Failed(format!("stopped before it was ready ({status})"));
        }
        Ok(Some(r)) => Ok(r),
        Err(t) => Err(t),
    };
    match ready {
        Ok(Ok(Ok(()))) if hello[0] == weir_uwsgi::packet::MODIFIER_READY => {
            let claim = claim_fd.and_then(|fd| match weir_claim::ClaimWords::open(fd) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    warn!(
                        slot,
                        "worker {slot}: its claim word cannot be mapped ({e}); no prefetch to it"
                    );
                    None
                }
            });
            Start::Ready(child, stream, claim, started.elapsed())
        }
        Ok(Ok(Ok(()))) => {
            child.kill();
            Start::Failed(format!("worker sent {hello:?} instead of READY"))
        }
        Ok(Ok(Err(e))) => {
            // The socket closed: the process is exiting; its status says why.
            match child.wait().await {
                Exit::Error(_) => Start::Failed(format!("worker socket: {e}")),
                s => exited_early(slot, s),
            }
        }
        Ok(Err(s)) => exited_early(slot, s),
        Err(_) => {
            child.kill();
            Start::Failed(format!(
                "worker was not ready within startup_timeout ({:?})",
                ctx.config.startup_timeout
            ))
        }
    }
}

/// Reads the READY packet and the claim word's descriptor the worker passes with it.
async fn read_ready(
    stream: &UnixStream,
    hello: &mut [u8],
    claim_fd: &mut Option<OwnedFd>,
) -> std::io::Result<()> {
    let mut got = 0;
    while got < hello.len() {
        stream.readable().await?;
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            weir_fdpass::recv_with_fd(
                stream.as_fd(),
                &mut hello[got..],
                weir_fdpass::Mode::NonBlocking,
            )
        });
        match r {
            Ok((0, _)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok((n, fd)) => {
                got += n;
                if fd.is_some() {
                    *claim_fd = fd;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn exited_early(slot: usize, status: Exit) -> Start {
    match status {
        Exit::Known(s) if s.code() == Some(EXIT_IMPORT_FAILED) => {
            Start::ImportFailed(format!("worker {slot} could not import the app ({s})"))
        }
        Exit::Error(e) => Start::Failed(format!("waiting for worker: {e}")),
        s => Start::Failed(format!("worker exited before it was ready ({s})")),
    }
}

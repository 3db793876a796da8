//! Starting, reloading and stopping the pool.
//!
//! A reload starts a whole new generation of workers while the old one keeps serving,
//! waits until every new worker has said READY, and only then lets the old ones go (idle
//! ones at once, busy ones when their request ends). A new generation that cannot import
//! the app is abandoned and the old one keeps serving: a bad deploy does not take the
//! site down.
//!
//! With `[app] preload` (`"auto"`, the default, or `true`) every generation has its own
//! zygote (a [`ZygoteCell`] shared by the generation's slots, started by the first slot
//! that needs a worker): a reload imports the new code once, in the new generation's
//! zygote, and checks again whether forking is safe; the old zygote leaves when the last
//! slot of its generation has ended; a stop ends them the same way.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::pool::Pool;
use crate::slot::{self, SlotContext};

/// How long after a reload's switch (or its failure) admission at arrival stays off.
pub const RELOAD_SETTLE: Duration = Duration::from_secs(2);
use crate::zygote::{ZygoteCell, Zygotes};

/// The `weir worker` command a slot runs.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The weir executable.
    pub exe: PathBuf,
    /// Arguments after `worker` (`--app ...`), without `--id`.
    pub args: Vec<OsString>,
}

/// `[app] preload`: how a generation's workers are started (the config's own type: the
/// pool acts on exactly the three values the file and the flag accept).
pub use weir_config::Preload;

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The executable (its path, as workers show it in `ps`).
    pub exe: PathBuf,
    /// Run the master's own binary (`/proc/self/exe`) rather than the file at `exe`, whose
    /// contents may have changed since the master started: a worker respawned while a new
    /// weir is installed (before SIGUSR2 hands over) is of the master's version, not the
    /// new file's.
    pub exe_self: bool,
    /// Worker arguments after `worker`.
    pub worker_args: Vec<OsString>,
    /// Import the app once per generation in a zygote and fork the workers from it.
    pub preload: Preload,
    /// Write the next waiting request behind a busy worker's current one (see `pool`).
    pub prefetch: bool,
    /// Number of workers.
    pub workers: usize,
    /// Recycle after this many requests (0: never).
    pub max_requests: u64,
    /// Random extra requests per worker.
    pub max_requests_jitter: u64,
    /// Recycle above this RSS.
    pub reload_on_rss: Option<u64>,
    /// How long a leaving worker may take.
    pub graceful_timeout: Duration,
    /// How long a new worker may take to be ready.
    pub startup_timeout: Duration,
    /// `[queue]`: the bound, the timeout, CoDel.
    pub queue: weir_queue::QueuePolicy,
}

impl PoolConfig {
    /// The command that starts `weir worker`: the master's own binary when `exe_self`,
    /// with `exe` as its argv[0].
    pub(crate) fn worker_command(&self) -> tokio::process::Command {
        use std::os::unix::process::CommandExt as _;
        if self.exe_self {
            let mut std_cmd = std::process::Command::new("/proc/self/exe");
            std_cmd.arg0(&self.exe);
            tokio::process::Command::from(std_cmd)
        } else {
            tokio::process::Command::new(&self.exe)
        }
    }

    /// `max_requests` plus this worker's share of jitter.
    pub(crate) fn recycle_after(&self) -> u64 {
        if self.max_requests == 0 {
            return 0;
        }
        if self.max_requests_jitter == 0 {
            return self.max_requests;
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
        self.max_requests + h.finish() % (self.max_requests_jitter + 1)
    }
}

/// Why the pool cannot go on.
#[derive(Debug, Error, Clone)]
pub enum SupervisorError {
    /// The app fails to import again and again.
    #[error("the app cannot be imported: {0}")]
    AppImport(String),
    /// A reload could not bring up the new workers; the old ones keep serving.
    #[error("reload failed, the running workers keep serving: {0}")]
    ReloadFailed(String),
}

/// The generation's zygote cell, or None (and one log line saying so) without preload.
fn new_cell(ctx: &SlotContext, generation: u64) -> Option<Arc<ZygoteCell>> {
    if ctx.config.preload == Preload::Off {
        info!(
            generation,
            "generation {generation}: workers are exec'd, each imports the app itself (preload = false)"
        );
        return None;
    }
    Some(Arc::new(ZygoteCell::new(generation, ctx.zygotes.clone())))
}

/// Owns the slot tasks.
#[derive(Debug)]
pub struct Supervisor {
    ctx: Arc<SlotContext>,
    slots: Mutex<JoinSet<()>>,
    fatal: Mutex<mpsc::UnboundedReceiver<SupervisorError>>,
    reloading: Mutex<()>,
    /// Raised by [`Supervisor::hurry`]: a stop under way kills its busy workers now.
    hurry: tokio::sync::watch::Sender<bool>,
}

impl Supervisor {
    /// Starts `config.workers` slots. Returns at once: requests wait in the queue until
    /// workers are ready.
    pub fn start(config: PoolConfig) -> Supervisor {
        let pool = Pool::new(config.queue, config.reload_on_rss, config.prefetch);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(SlotContext {
            pool,
            config,
            fatal: fatal_tx,
            zygotes: Arc::new(Zygotes::new()),
            kill_all: tokio::sync::watch::Sender::new(false),
        });
        let mut slots = JoinSet::new();
        let zygote = new_cell(&ctx, 0);
        for i in 0..ctx.config.workers {
            slots.spawn(slot::run(ctx.clone(), i, 0, None, zygote.clone()));
        }
        Supervisor {
            ctx,
            slots: Mutex::new(slots),
            fatal: Mutex::new(fatal_rx),
            reloading: Mutex::new(()),
            hurry: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The pool to dispatch to.
    pub fn pool(&self) -> Pool {
        self.ctx.pool.clone()
    }

    /// Resolves when the app cannot be started at all (weir should exit non-zero).
    pub async fn fatal(&self) -> SupervisorError {
        match self.fatal.lock().await.recv().await {
            Some(e) => e,
            // Never: the context holds a sender for as long as self lives.
            None => std::future::pending().await,
        }
    }

    /// Graceful reload: a new generation, ready before the old one leaves. Admission at
    /// arrival is suspended meanwhile and for [`RELOAD_SETTLE`] after.
    pub async fn reload(&self) -> Result<(), SupervisorError> {
        let _one_at_a_time = self.reloading.lock().await;
        let pool = &self.ctx.pool;
        let generation = pool.current_generation() + 1;
        let started = Instant::now();
        // No admission at arrival while the new generation imports and starts, and for
        // RELOAD_SETTLE after (the measured times are not the steady state's).
        pool.reload_settling(None);
        info!(
            generation,
            "reload: starting {} new workers", self.ctx.config.workers
        );
        let mut waits = Vec::new();
        {
            let mut slots = self.slots.lock().await;
            // A new zygote: the new code is imported there, once.
            let zygote = new_cell(&self.ctx, generation);
            for i in 0..self.ctx.config.workers {
                let (tx, rx) = oneshot::channel();
                slots.spawn(slot::run(
                    self.ctx.clone(),
                    i,
                    generation,
                    Some(tx),
                    zygote.clone(),
                ));
                waits.push(rx);
            }
        }
        let limit = self.ctx.config.startup_timeout;
        let all_ready = tokio::time::timeout(limit, async {
            for rx in waits {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(msg)) => return Err(msg),
                    Err(_) => return Err("a new worker's slot ended".to_owned()),
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(format!("new workers were not ready within {limit:?}")));
        match all_ready {
            Ok(()) => {
                pool.switch_generation(generation);
                pool.reload_settling(Some(Instant::now() + RELOAD_SETTLE));
                info!(
                    generation,
                    ms = started.elapsed().as_millis() as u64,
                    "reload: new workers ready, old ones leaving"
                );
                Ok(())
            }
            Err(msg) => {
                pool.cancel_generation(generation);
                pool.reload_settling(Some(Instant::now() + RELOAD_SETTLE));
                warn!(generation, "reload failed, old workers keep serving: {msg}");
                Err(SupervisorError::ReloadFailed(msg))
            }
        }
    }

    /// Cuts the grace of a stop short, before or during [`shutdown`](Self::shutdown): the
    /// workers still busy are killed at once, as when `graceful_timeout` runs out (a
    /// second stop signal during the drain, NGINX's fast shutdown).
    pub fn hurry(&self) {
        self.hurry.send_replace(true);
    }

    /// Stops: no new work, idle workers leave now, busy ones when done (each slot kills
    /// its worker after `graceful_timeout`, or at once after [`hurry`](Self::hurry)).
    /// Returns when every worker and every zygote has exited and been reaped (its zygote
    /// reaps a forked worker), so the master never exits before its children.
    pub async fn shutdown(&self) {
        self.ctx.pool.begin_shutdown();
        let mut slots = self.slots.lock().await;
        let grace = self.ctx.config.graceful_timeout + Duration::from_secs(1);
        let mut hurry = self.hurry.subscribe();
        let in_time = tokio::select! {
            done = join_all(&mut slots, grace) => done,
            () = crate::zygote::raised(&mut hurry) => false,
        };
        if !in_time {
            if *hurry.borrow() {
                warn!("stopping now: killing the workers still busy");
            } else {
                warn!("workers still running after {grace:?}; killing them");
            }
            // Each slot kills its worker and waits for it (reaps it, or hears from its
            // zygote); a slot that still has not ended is aborted (its worker is killed
            // as the slot is dropped).
            self.ctx.kill_all.send_replace(true);
            if !join_all(&mut slots, Duration::from_secs(2)).await {
                slots.abort_all();
                while slots.join_next().await.is_some() {}
            }
        }
        // The slots are gone, and with them the zygote handles: the zygotes' control
        // sockets are closed and they exit; wait for that.
        self.ctx.zygotes.reap_all().await;
    }
}

/// Waits up to `limit` for every task of `set` to end; whether they all did.
async fn join_all(set: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} })
        .await
        .is_ok()
}

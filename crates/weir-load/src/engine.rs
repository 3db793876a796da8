//! The engine: a scheduler that keeps the open-loop schedule, request tasks that borrow a
//! connection from a pool, and the closed loop.
//!
//! # Open loop
//! One scheduler task walks the [`Schedule`]. For each slot it sleeps until the slot is
//! due and spawns a request task. It sleeps on a microsecond timer (a timerfd in the
//! runtime's epoll, see [`crate::timer`]; tokio's own timer ticks in whole milliseconds)
//! until `--spin` (250 µs by default) before the slot, then yields to the runtime in a
//! loop, since a thread woken from sleep is some tens of µs late. So the generator spins
//! only when slots are closer than that, and a slow schedule leaves the CPU to the server
//! under test; `--spin 0s` never spins, trading that precision for the core it holds.
//!
//! The request task notes how late it started (the generator's own lateness, the
//! self-check), takes a connection permit (when all `--max-connections` are busy the
//! request waits for one and the slot counts as missed), takes an idle keep-alive
//! connection or opens a new one, sends, and records the latency from the slot's due time.
//! So a server that stalls delays every request due during the stall, and each of them
//! reports its full wait, as wrk2 does.
//!
//! A request past its deadline (due time + `--timeout`) is dropped with its connection
//! and recorded as a timeout at exactly the timeout value.
//!
//! # Closed loop
//! `--connections C` tasks, each with its own connection, send back to back; latency runs
//! from each send.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{Conn, Endpoint, HttpError, Response};
use crate::schedule::{Limit, Picker, Schedule};
use crate::stats::{Outcome, Recorder};
use crate::timer::Timer;

/// After this many slots dispatched back to back (the generator is late), the scheduler
/// yields once so request tasks can run.
const BURST: u32 = 32;

/// One run, ready to go.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Request bytes per mix entry.
    pub requests: Vec<Bytes>,
    /// Whether each entry is a HEAD request.
    pub heads: Vec<bool>,
    /// Mix weights.
    pub weights: Vec<f64>,
    /// Open loop at a rate, or closed loop.
    pub mode: Mode,
    /// When the measured part ends.
    pub limit: Limit,
    /// Warmup length.
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Connections to open before the start (open loop) or to run (closed loop).
    pub connections: usize,
    /// The most connections open at once (open loop).
    pub max_connections: usize,
    /// Seed of the schedule and the mix picks.
    pub seed: u64,
    /// Which idle connection a due request takes.
    pub reuse: Reuse,
    /// How long before a slot the scheduler stops sleeping and yields in a loop (`--spin`):
    /// a thread that sleeps wakes some tens of µs late (more in a VM, whose idle vCPU
    /// halts), one that keeps running does not.
    pub spin: Duration,
}

/// Which idle connection a due request takes (open loop, `--reuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reuse {
    /// The one freed last (a stack), as a client library's connection pool: a few
    /// connections carry the load, the rest stay idle.
    Newest,
    /// The one idle longest (a queue): each connection is a client of its own, and every
    /// one of them sends in turn (`--connections 2000` is 2,000 clients).
    Oldest,
}

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Requests at `rate` per second on a fixed schedule.
    Open {
        /// Requests per second.
        rate: f64,
        /// Spacing of the slots.
        arrivals: crate::schedule::Arrivals,
    },
    /// `connections` senders, each sending its next request when the last one ends.
    Closed,
}

/// What a run hands to the report.
#[derive(Debug)]
pub struct RunData {
    /// The recordings.
    pub rec: Recorder,
    /// Measured window start (after warmup).
    pub measured_start: Instant,
    /// Nominal measured window in seconds (open loop), when known.
    pub nominal_window: Option<f64>,
    /// Slots that found every connection busy.
    pub missed: u64,
    /// Connections opened.
    pub opened: u64,
    /// Requests retried once on a new connection because a kept-alive one had been
    /// closed by the server while idle.
    pub reconnects: u64,
    /// Wall time of the whole run, warmup and drain included.
    pub elapsed: Duration,
    /// CPU the process used during the run (filled in by the caller).
    pub cpu: crate::sys::CpuUsage,
}

struct Shared {
    endpoint: Endpoint,
    requests: Vec<Bytes>,
    heads: Vec<bool>,
    timeout: Duration,
    idle: Mutex<VecDeque<Conn>>,
    reuse: Reuse,
    spin: Duration,
    permits: Arc<Semaphore>,
    opened: AtomicU64,
    missed: AtomicU64,
    reconnects: AtomicU64,
    /// Requests ended so far, warmup included (the progress bar reads it).
    done: Arc<AtomicU64>,
    rec: Mutex<Recorder>,
}

impl Shared {
    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        // A poisoned lock means a request task panicked mid-record; the counts are still
        // usable for a report, and the panic itself surfaces through the JoinSet.
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Conn::connect(&self.endpoint).await
    }

    /// One request over a pooled connection (open loop).
    async fn exchange(&self, entry: usize) -> Result<Response, HttpError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.missed.fetch_add(1, Ordering::Relaxed);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the permit semaphore is never closed")
            }
        };
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            match self.reuse {
                Reuse::Newest => idle.pop_back(),
                Reuse::Oldest => idle.pop_front(),
            }
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let req = &self.requests[entry];
        let head = self.heads[entry];
        let r = match conn.request(req, head).await {
            Err(HttpError::Closed { early: true } | HttpError::Write(_)) if reused => {
                // The server closed this kept-alive connection while it sat idle; any
                // client retries that on a fresh connection.
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = self.connect().await?;
                conn.request(req, head).await
            }
            r => r,
        };
        let (resp, keep) = r?;
        if keep {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(conn);
        }
        drop(permit);
        Ok(resp)
    }
}

fn outcome(r: Result<Result<Response, HttpError>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(resp)) => Outcome::Response(resp),
        Ok(Err(e)) => Outcome::Error(e.kind()),
        Err(_) => Outcome::Timeout,
    }
}

/// Sleeps until `due`: on the precise timer until `spin` before it, then yielding to the
/// runtime in a loop (I/O still runs between yields).
async fn wait_until(timer: &Timer, due: Instant, spin: Duration) {
    if let Some(wake) = due.checked_sub(spin).filter(|w| Instant::now() < *w) {
        if let Err(e) = timer.sleep_until(wake).await {
            // A timerfd that failed once will fail again; tokio's timer ticks in whole
            // milliseconds, so wake that much earlier. The lateness in the report shows it.
            eprintln!("weir load: precise timer failed ({e}); using the millisecond timer");
            let early = wake.checked_sub(Duration::from_millis(1)).unwrap_or(wake);
            tokio::time::sleep_until(early).await;
        }
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

fn reap(set: &mut JoinSet<()>) {
    while let Some(r) = set.try_join_next() {
        if let Err(e) = r {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Runs one load to its end. `done` counts ended requests for a progress display.
pub async fn run(spec: RunSpec, first: Conn, done: Arc<AtomicU64>, timer: &Timer) -> RunData {
    let highest = spec.timeout + Duration::from_secs(1);
    let shared = Arc::new(Shared {
        endpoint: spec.endpoint.clone(),
        requests: spec.requests.clone(),
        heads: spec.heads.clone(),
        timeout: spec.timeout,
        idle: Mutex::new(VecDeque::new()),
        reuse: spec.reuse,
        spin: spec.spin,
        permits: Arc::new(Semaphore::new(spec.max_connections)),
        opened: AtomicU64::new(1),
        missed: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        done,
        rec: Mutex::new(Recorder::new(spec.requests.len(), highest)),
    });
    let t0 = Instant::now();
    let (measured_start, nominal_window) = match spec.mode {
        Mode::Open { rate, arrivals } => {
            // Warm pool: the preflight connection plus --connections - 1 more.
            let mut pool = vec![first];
            for _ in 1..spec.connections {
                if let Ok(c) = shared.connect().await {
                    pool.push(c);
                }
            }
            *shared.idle.lock().unwrap_or_else(|p| p.into_inner()) = pool.into();
            let schedule = Schedule::new(
                rate,
                arrivals,
                spec.seed,
                &spec.weights,
                spec.warmup.as_secs_f64(),
                spec.limit,
            );
            let window = schedule.measured_window();
            // Start a little ahead so the first slot is not already late.
            let start = Instant::now() + Duration::from_millis(5);
            open_loop(&shared, schedule, start, timer).await;
            (start + spec.warmup, Some(window))
        }
        Mode::Closed => {
            let start = Instant::now();
            closed_loop(&shared, &spec, first, start).await;
            (start + spec.warmup, None)
        }
    };
    let elapsed = t0.elapsed();
    let shared = Arc::into_inner(shared).expect("every request task has ended");
    RunData {
        rec: shared.rec.into_inner().unwrap_or_else(|p| p.into_inner()),
        measured_start,
        nominal_window,
        missed: shared.missed.into_inner(),
        opened: shared.opened.into_inner(),
        reconnects: shared.reconnects.into_inner(),
        elapsed,
        cpu: crate::sys::CpuUsage::default(),
    }
}

async fn open_loop(shared: &Arc<Shared>, schedule: Schedule, start: Instant, timer: &Timer) {
    let mut set = JoinSet::new();
    let mut burst = 0u32;
    for slot in schedule {
        let due = start + slot.at;
        if Instant::now() < due {
            burst = 0;
            wait_until(timer, due, shared.spin).await;
        } else {
            burst += 1;
            if burst >= BURST {
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        let sh = shared.clone();
        set.spawn(async move {
            let began = Instant::now();
            let late = began.saturating_duration_since(due);
            let deadline = due + sh.timeout;
            let r = tokio::time::timeout_at(deadline, sh.exchange(slot.entry)).await;
            let end = Instant::now();
            let (latency, out) = match outcome(r) {
                // A timeout counts as exactly the timeout, whatever the timer's slack.
                Outcome::Timeout => (sh.timeout, Outcome::Timeout),
                o => (end - due, o),
            };
            {
                let mut rec = sh.recorder();
                rec.record_lateness(late);
                rec.record(slot.entry, slot.warmup, latency, out, end.into_std());
            }
            sh.done.fetch_add(1, Ordering::Relaxed);
        });
        reap(&mut set);
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

async fn closed_loop(shared: &Arc<Shared>, spec: &RunSpec, first: Conn, start: Instant) {
    let warmup_end = start + spec.warmup;
    let (end, count) = match spec.limit {
        Limit::Duration(d) => (Some(warmup_end + Duration::from_secs_f64(d)), None),
        Limit::Count(n) => (None, Some(n)),
    };
    let claimed = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let mut first = Some(first);
    for w in 0..spec.connections {
        let sh = shared.clone();
        let claimed = claimed.clone();
        let mut picker = Picker::new(&spec.weights, spec.seed.wrapping_add(w as u64));
        let mut conn = first.take();
        set.spawn(async move {
            loop {
                let t = Instant::now();
                let warm = t < warmup_end;
                if end.is_some_and(|e| t >= e) {
                    break;
                }
                if let Some(n) = count {
                    if !warm && claimed.fetch_add(1, Ordering::Relaxed) >= n {
                        break;
                    }
                }
                let entry = picker.pick();
                let exchange = async {
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => sh.connect().await?,
                    };
                    let (resp, keep) = c.request(&sh.requests[entry], sh.heads[entry]).await?;
                    if keep {
                        conn = Some(c);
                    }
                    Ok(resp)
                };
                let r = tokio::time::timeout(sh.timeout, exchange).await;
                let done = Instant::now();
                let (latency, out) = match outcome(r) {
                    Outcome::Timeout => (sh.timeout, Outcome::Timeout),
                    o => (done - t, o),
                };
                if matches!(out, Outcome::Error(_)) {
                    // Do not spin on a refusing server.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sh.recorder()
                    .record(entry, warm, latency, out, done.into_std());
                sh.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

//! The idle workers and the queue of requests waiting for one.
//!
//! A request takes an idle worker at once if there is one; otherwise it joins a bounded
//! queue (full: [`DispatchError::QueueFull`] at once) and waits up to the queue timeout or
//! its own deadline, whichever is sooner.
//!
//! Overload is handled as CoDel does it for packets, and as Facebook's "Fail at Scale"
//! does it for requests (controlled delay with adaptive LIFO). The queue's delay is the age
//! of its oldest waiter, looked at whenever a worker frees. When it has stayed above the
//! delay target for a whole [`Codel::interval`], the queue is overloaded: a waiter older
//! than the target is refused ([`DispatchError::QueueShed`], 503) instead of being served,
//! new arrivals wait at most the target, and the newest waiter is served first. The state
//! ends when the delay falls under half the target or the queue empties. So a load far
//! above capacity turns into fast 503s for the excess and short waits for the rest,
//! instead of every admitted request waiting out a long FIFO; a busy but keeping-up queue
//! (a closed-loop benchmark: many waiters, each briefly) and a queue behind one slow
//! request (no worker frees, nothing is measured) stay plain FIFO with the full timeout.
//! The default target follows the app: 4 times the mean time a request holds a worker,
//! at least 500 ms (a wait people hardly notice; a lower floor would shed a saturated but
//! healthy closed-loop load, whose waits are long only because every client is waiting).
//!
//! Prefetch (`[app] prefetch`, on by default): when a worker frees and more than one
//! request waits, the worker's next requests (up to [`PREFETCH_DEPTH`]) are written right
//! behind the one it starts, and topped up each time it goes on to the next, so
//! under load the worker goes from one answer to the next request without sleeping in
//! `recv` and without waiting for the master to read its answer first (uWSGI's workers get
//! the same from their shared listen queue). A written request cannot be taken back from
//! the socket, so such an *offer* is settled by the worker's claim word (weir-claim): the
//! worker compare-and-swaps it before it starts the request; the master compare-and-swaps
//! it to take the request back.
//!
//! An offered request is still a waiting one. It is offered only where its expected wait
//! is short against what it may still wait (`offer_policy`: each route's typical service
//! time against the request's remaining queue budget), it counts in the queue's depth, and
//! its wait (the `queue_ms` of the access log, the queue-wait histogram) ends when its
//! worker starts it ([`crate::StartedAt`]). The master takes an offer back and serves it
//! elsewhere, or answers it:
//! - when its queue budget runs out (the queue timeout, its deadline, or the delay target
//!   it was admitted under, whichever is soonest) before its holder started it: answered
//!   `queue-timeout` (or `deadline`) by its submitter's timer ([`Started::response`]), as
//!   it would have been in the master's queue; never started late;
//! - when another worker frees, or starts its next request, while the offer's holder is
//!   overdue (its current request has run past twice its route's typical time: a slow
//!   request, or a worker the kernel is not running just now): the offer moves to that
//!   worker, as its current request or offered behind it, ahead of the queue (it has
//!   waited longest). A free worker with nothing else waiting takes any offer. So a
//!   request does not stay behind a slow one while other workers go on, which is what
//!   weir's dispatch to free workers exists for;
//! - when the holder is killed (harakiri, deadline) or dies: its offered requests go to
//!   the front of the queue, in order, and are served as if they had waited there. So
//!   does its current request when that was an offer the worker never started (it died
//!   between its last answer and this claim, say in the answer's `close()`): the master
//!   makes an offer current once it has read the answer before it, without knowing
//!   whether the worker has swapped the claim yet, so a death there is settled by
//!   taking the claim back;
//! - when the holder's client-side stream is cancelled (CANCEL must not sit behind it);
//! - when the offered request's own client goes away (it is never started).
//!
//! If the worker took the request first, it runs there; if that worker is then killed
//! while running it, that request fails as `worker-died` like any running request. A
//! worker is not offered more than it serves before max_requests retires it.
//!
//! A waiter whose client went away is
//! simply dropped: the worker handed to it comes back through [`Lease`]'s `Drop`, so a
//! cancelled request can never lose a worker. Written by hand rather than with a
//! semaphore because a worker is a value (its socket), not a count, and because the
//! queue's depth and each wait must be visible.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weir_uwsgi::packet;

use crate::error::DispatchError;
use crate::exchange::{self, ClaimPending, WorkerRequest};
use crate::offer_policy::{self, ServiceTime};
use crate::slot::{RestartReason, Worker};

mod codel;
mod lease;
use crate::ResponseBody;
use codel::CodelState;
pub use lease::{Lease, QueueSlot};

/// Counters and gauges of the pool, for metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Workers ready to take a request.
    pub idle: AtomicUsize,
    /// Workers serving a request.
    pub busy: AtomicUsize,
    /// Worker restarts, by [`RestartReason`] (index = `reason as usize`).
    pub restarts: [AtomicU64; RestartReason::COUNT],
    /// Requests written behind a busy worker's current one (prefetch).
    pub prefetch_offered: AtomicU64,
    /// Of those, taken back before the worker started them and served elsewhere (or
    /// dropped, when their client left).
    pub prefetch_revoked: AtomicU64,
}

/// Delay-based shedding of an overloaded queue (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Codel {
    /// The delay target; `None`: 4 x the mean worker time, at least [`Codel::MIN_TARGET`].
    pub target: Option<Duration>,
    /// How long the queue's delay must stay above the target before requests are shed.
    pub interval: Duration,
    /// Serve the newest waiter first while overloaded.
    pub lifo: bool,
}

impl Codel {
    /// The floor of the automatic target.
    pub const MIN_TARGET: Duration = Duration::from_millis(500);
}

/// What a waiter is told: its request was started on a worker (`Some`: offered to a busy
/// one, see the module doc), or it was refused by the shedding (the delay target).
type Handoff = Result<Option<u64>, Duration>;

/// A request a waiter brought along, started by whoever frees a worker for it.
#[derive(Debug)]
struct Submission {
    req: WorkerRequest,
    reply: exchange::HeadReply,
    /// When its wait ends, wherever it waits (in the queue, offered, taken back).
    expires: Expiry,
    /// It was offered behind a busy worker: its wait ends when a worker starts it.
    offered: bool,
}

/// When a request's wait ends, and how it is answered then: whichever of the queue
/// timeout, its deadline and (while the queue is overloaded) the delay target it was
/// admitted under comes first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expiry {
    at: Instant,
    why: ExpiryWhy,
}

#[derive(Debug, Clone, Copy)]
enum ExpiryWhy {
    /// `[queue] timeout` (this long).
    QueueTimeout(Duration),
    /// The request's deadline.
    Deadline,
    /// The delay target of an overloaded queue (this long).
    Shed(Duration),
}

impl Expiry {
    /// Not a real limit: for a request started at once (it never waits).
    fn never(now: Instant) -> Expiry {
        Expiry {
            at: now + Duration::from_secs(365 * 24 * 3600),
            why: ExpiryWhy::Deadline,
        }
    }

    /// What its wait has left at `now`.
    fn left(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }
}

/// A request waiting for a worker.
#[derive(Debug)]
struct Waiter {
    /// Its submitter, waiting to be told; `None` for an offered request taken back from a
    /// worker that died (its submitter already waits for the response head).
    tx: Option<oneshot::Sender<Handoff>>,
    since: Instant,
    job: Submission,
    /// The offer key its submitter holds, for such a taken back offer.
    key: Option<u64>,
}

impl Waiter {
    /// Nobody waits for this request any more (its client went away).
    fn gone(&self) -> bool {
        match &self.tx {
            Some(tx) => tx.is_closed(),
            None => self.job.reply.is_closed(),
        }
    }

    /// Refuses it: shed by the delay target.
    fn shed(self, target: Duration, err: DispatchError) {
        match self.tx {
            Some(tx) => drop(tx.send(Err(target))),
            None => drop(self.job.reply.send(Err(err))),
        }
    }
}

/// A request written to a busy worker behind its current one (see the module doc).
#[derive(Debug)]
struct Offer {
    /// Which offered request this is (what its [`Started`] withdraws), kept when it moves
    /// to another worker.
    key: u64,
    /// The holder ([`Worker::id`]).
    holder: u64,
    /// The claim sequence number on the holder.
    seq: u64,
    claim: Arc<weir_claim::ClaimWords>,
    job: Submission,
    /// When the request began waiting.
    since: Instant,
    /// When the holder started its current request.
    holder_since: Instant,
    /// The typical time of the holder's current request (see `offer_policy`).
    holder_typical: Option<Duration>,
    /// The typical time of this request, as judged when it was offered.
    typical: Option<Duration>,
    /// A revoke lost: the holder runs it (its release finds it here).
    taken: bool,
}

/// An offered request taken back, to be served as if it had waited at the queue's front.
#[derive(Debug)]
struct Requeued {
    key: u64,
    since: Instant,
    job: Submission,
}

impl From<Offer> for Requeued {
    fn from(o: Offer) -> Requeued {
        Requeued {
            key: o.key,
            since: o.since,
            job: o.job,
        }
    }
}

/// A request started on a worker by [`Pool::submit`]: its response head is on the way.
#[derive(Debug)]
pub struct Started {
    head: oneshot::Receiver<Result<http::Response<ResponseBody>, DispatchError>>,
    /// An offer not yet known to have started: dropping this takes it back, and its wait
    /// ends at `expires`.
    offer: Option<(Pool, u64, Expiry)>,
}

impl Started {
    /// Whether the request was written behind a busy worker's current one and may not have
    /// started yet: the caller should drop this when its client goes away, which takes the
    /// request back (it is then never started).
    pub fn is_offered(&self) -> bool {
        self.offer.is_some()
    }

    /// The response head (and body), or why there is none. An offered request still
    /// waiting for its worker when its queue budget runs out is taken back and answered
    /// `queue-timeout` (or `deadline`) here, as it would have been in the queue; if its
    /// worker took it first, it runs and this waits for its answer.
    pub async fn response(mut self) -> Result<http::Response<ResponseBody>, DispatchError> {
        let r = match &self.offer {
            None => (&mut self.head).await,
            Some((pool, key, expires)) => {
                let timer = tokio::time::sleep_until(expires.at.into());
                tokio::select! {
                    biased;
                    r = &mut self.head => r,
                    () = timer => {
                        if pool.expire(*key) {
                            let err = pool.expiry_error(expires);
                            self.offer = None;
                            return Err(err);
                        }
                        (&mut self.head).await
                    }
                }
            }
        };
        // Answered: nothing left to take back.
        self.offer = None;
        r.unwrap_or(Err(DispatchError::WorkerDied))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some((pool, id, _)) = self.offer.take() {
            pool.withdraw(id);
        }
    }
}

/// The shared pool handle (cheap to clone).
#[derive(Clone, Debug)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    state: Mutex<State>,
    max_queue: usize,
    queue_timeout: Duration,
    codel: Option<Codel>,
    /// The typical time a request holds a worker, over all routes.
    service: ServiceTime,
    reload_on_rss: Option<u64>,
    /// `[app] prefetch`.
    prefetch: bool,
    /// Workers of an older generation retire when they come back.
    generation: AtomicU64,
    /// Requests waiting in front of the pool (for a route slot): they count against
    /// `max_queue` and in the queue depth too.
    external: AtomicUsize,
    shutting_down: AtomicBool,
    pub(crate) stats: PoolStats,
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<Worker>,
    waiters: VecDeque<Waiter>,
    /// Requests offered to busy workers (at most `PREFETCH_DEPTH` per worker).
    offers: Vec<Offer>,
    /// The last offer key given out.
    offer_keys: u64,
    /// CoDel's state.
    codel: CodelState,
    /// Generations abandoned by a failed reload.
    cancelled: Vec<u64>,
}

impl Pool {
    pub(crate) fn new(
        max_queue: usize,
        queue_timeout: Duration,
        codel: Option<Codel>,
        reload_on_rss: Option<u64>,
        prefetch: bool,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                max_queue,
                queue_timeout,
                codel,
                service: ServiceTime::new(),
                reload_on_rss,
                prefetch,
                generation: AtomicU64::new(0),
                external: AtomicUsize::new(0),
                shutting_down: AtomicBool::new(false),
                stats: PoolStats::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in a few lines of list code;
        // the state stays consistent, so keep going rather than poison every request.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's counters.
    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }

    /// Requests waiting now: for a worker (not counting those whose client left), offered
    /// behind a busy worker and not yet started there, and for a route slot in front of
    /// the pool.
    pub fn queue_depth(&self) -> usize {
        let st = self.state();
        let live = st.waiters.iter().filter(|w| !w.gone()).count();
        let offered = offered_waiting(&st);
        drop(st);
        live + offered + self.inner.external.load(Ordering::Relaxed)
    }

    /// Joins the queue from outside the pool (a request waiting for a route slot): it
    /// counts against the queue's bound and depth until the returned guard drops.
    pub fn enter_queue(&self) -> Result<QueueSlot, DispatchError> {
        if self.queue_depth() >= self.inner.max_queue {
            return Err(DispatchError::QueueFull {
                max: self.inner.max_queue,
            });
        }
        self.inner.external.fetch_add(1, Ordering::Relaxed);
        Ok(QueueSlot { pool: self.clone() })
    }

    /// Asks one worker to run the app's ready check (`[app] ready_check`): Ok with the
    /// status line's code and body, or why it could not be asked.
    pub async fn ready_check(&self, wait: Duration) -> Result<(u16, String), DispatchError> {
        let queue_deadline = Instant::now() + wait;
        let mut packet = Vec::with_capacity(4);
        weir_uwsgi::packet::encode_control(&mut packet, weir_uwsgi::packet::MODIFIER_READY_CHECK);
        let req = WorkerRequest {
            packet,
            body: crate::RequestBody::Empty,
            harakiri: Some(wait),
            deadline: None,
            hold: None,
            body_timeout: wait,
            service: None,
        };
        let resp = self
            .submit_by(req, Some(queue_deadline))
            .await?
            .response()
            .await?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Starts `req` on a worker: at once on an idle one, else when one frees for it in the
    /// queue. The worker that frees writes the request to itself in the same step (no task
    /// wake-up in between), so under load a worker's next request follows its last answer
    /// as closely as the master can read that answer. Returns once the request is started.
    /// The exchange then goes on in its own task, so the worker is always brought back to a
    /// clean state even if the caller (the client's connection) goes away.
    pub async fn submit(&self, req: WorkerRequest) -> Result<Started, DispatchError> {
        let deadline = req.deadline;
        self.submit_by(req, deadline).await
    }

    /// [`Pool::submit`], waiting in the queue until `queue_deadline` at the latest (the
    /// request's own deadline, or a shorter wait for the ready check).
    async fn submit_by(
        &self,
        req: WorkerRequest,
        queue_deadline: Option<Instant>,
    ) -> Result<Started, DispatchError> {
        let (reply, head) = oneshot::channel();
        let job = Submission {
            req,
            reply,
            expires: Expiry::never(Instant::now()),
            offered: false,
        };
        let offer = self.wait(queue_deadline, job).await?;
        Ok(Started {
            head,
            offer: offer.map(|(id, expires)| (self.clone(), id, expires)),
        })
    }

    /// Runs a job on a worker: a small request is written at once (its first `sent` bytes
    /// were already, when it was offered: then `claim_pending` says which offer it was), with
    /// `behind` after it (a CLAIM and the next request, when one is offered); then the
    /// exchange goes on in its own task.
    fn start(
        mut lease: Lease,
        job: Submission,
        sent: usize,
        behind: Vec<u8>,
        claim_pending: Option<ClaimPending>,
    ) {
        let Submission {
            mut req,
            reply,
            offered,
            ..
        } = job;
        lease.service = req.service.clone();
        let started_at = offered.then_some(lease.started);
        inline_body(&mut req);
        let sent = match req.body {
            crate::RequestBody::Empty => {
                req.packet.extend_from_slice(&behind);
                let rest = &req.packet[sent.min(req.packet.len())..];
                sent + lease.worker().stream.try_write(rest).unwrap_or(0)
            }
            _ => {
                debug_assert!(
                    behind.is_empty(),
                    "nothing is offered behind a streamed body"
                );
                0
            }
        };
        tokio::spawn(exchange::run(
            lease,
            req,
            reply,
            sent,
            claim_pending,
            started_at,
        ));
    }

    /// Offers the next waiting request to `worker`, which is about to start a request
    /// whose whole packet is written at once (`current` is that request: an offer goes
    /// only behind one without a streamed body): pops it, registers the offer, tells its
    /// submitter, and returns the bytes to write behind the current request.
    fn offer_next(&self, st: &mut State, worker: &mut Worker, current: &WorkerRequest) -> Vec<u8> {
        // Room: PREFETCH_DEPTH, less what is already offered to it, and no more than it
        // serves before it retires (max_requests; the current request counts).
        let (offered, offered_bytes) = st
            .offers
            .iter()
            .filter(|o| o.holder == worker.id)
            .fold((0, 0), |(n, b), o| {
                (n + 1, b + packet::CLAIM_LEN + wire_len(&o.job.req))
            });
        let mut room = PREFETCH_DEPTH.saturating_sub(offered);
        if worker.recycle_after != 0 {
            let after = worker.served + 1 + offered as u64;
            let left = worker.recycle_after.saturating_sub(after);
            room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if room == 0
            || worker.claim.is_none()
            || !self.inner.prefetch
            || st.codel.overloaded()
            || !sendable_at_once(current)
            || self.retiring(st, worker.generation)
        {
            return Vec::new();
        }
        // A worker over reload_on_rss gets nothing more: it retires once what it has is done.
        if worker.over_rss {
            return Vec::new();
        }
        let mut budget = OFFER_BYTES.saturating_sub(wire_len(current) + offered_bytes);
        // What a request offered now would wait: the worker's current request (it starts
        // now) and each one offered to it already.
        let holder_typical = self.typical(current);
        let ahead = st
            .offers
            .iter()
            .filter(|o| o.holder == worker.id)
            .map(|o| o.typical);
        let mut expected = offer_policy::expected_wait(Duration::ZERO, holder_typical, ahead);
        let mut behind = Vec::new();
        while room > 0 {
            let Some((more, typical)) =
                self.offer_one(st, worker, budget, expected, holder_typical)
            else {
                break;
            };
            budget -= more.len();
            behind.extend_from_slice(&more);
            room -= 1;
            expected = expected.zip(typical).map(|(w, t)| w + t);
        }
        behind
    }

    /// One offer to `worker` (see [`Pool::offer_next`]), at most `budget` bytes, for a
    /// request that would wait `expected` there: the bytes to write and the request's
    /// typical time, or `None` when nothing can be offered.
    fn offer_one(
        &self,
        st: &mut State,
        worker: &mut Worker,
        budget: usize,
        expected: Option<Duration>,
        holder_typical: Option<Duration>,
    ) -> Option<(Vec<u8>, Option<Duration>)> {
        let now = Instant::now();
        let fits = |req: &WorkerRequest| packet::CLAIM_LEN + wire_len(req) <= budget;
        let worth =
            |job: &Submission| offer_policy::worth_offering(expected, job.expires.left(now));
        // First, a request offered to an overdue worker (a slow request, or a worker the
        // kernel is not running) moves here: it waited longest.
        if let Some(offer) =
            self.take_offer_from_slowest(st, worker.id, now, false, budget, |o| worth(&o.job))
        {
            let placed = (offer.key, offer.job, offer.since, offer.typical);
            return Some(self.place_offer(st, worker, placed, holder_typical));
        }
        loop {
            let front = st.waiters.front()?;
            if !offerable(&front.job.req) || !fits(&front.job.req) || !worth(&front.job) {
                return None;
            }
            let waiter = st.waiters.pop_front().expect("front checked");
            let since = waiter.since;
            let key = waiter.key.unwrap_or_else(|| {
                st.offer_keys += 1;
                st.offer_keys
            });
            let Some(job) = self.hand_off(waiter, Some(key), now) else {
                continue;
            };
            let typical = self.typical(&job.req);
            // The submitter cannot act on this (withdraw) before the offer is in place:
            // that needs the state lock, which is held until then.
            return Some(self.place_offer(st, worker, (key, job, since, typical), holder_typical));
        }
    }

    /// The typical time `req` will hold a worker: its route's, else the pool's (`None`
    /// before the first request ends).
    fn typical(&self, req: &WorkerRequest) -> Option<Duration> {
        req.service
            .as_deref()
            .and_then(ServiceTime::typical)
            .or_else(|| self.inner.service.typical())
    }

    /// Hands a waiter's job over to be started (`key`: as an offer); `None` when nobody
    /// waits for it any more, or when a taken back offer's time is up (answered here).
    fn hand_off(&self, waiter: Waiter, key: Option<u64>, now: Instant) -> Option<Submission> {
        match waiter.tx {
            Some(tx) => tx.send(Ok(key)).ok().map(|()| waiter.job),
            None => self.still_wanted(waiter.job, now),
        }
    }

    /// Registers a job (its key, the job, since when it waits, its typical time) as
    /// offered to `worker`, whose current request's typical time is `holder_typical`, and
    /// returns the bytes to write behind the worker's current request (the CLAIM and the
    /// request) with the job's typical time.
    fn place_offer(
        &self,
        st: &mut State,
        worker: &mut Worker,
        (key, mut job, since, typical): (u64, Submission, Instant, Option<Duration>),
        holder_typical: Option<Duration>,
    ) -> (Vec<u8>, Option<Duration>) {
        let claim = worker.claim.clone().expect("checked by offer_next");
        worker.offers += 1;
        let seq = worker.offers;
        // Before any byte of it is written.
        claim.offer(seq);
        inline_body(&mut job.req);
        let mut behind = Vec::with_capacity(packet::CLAIM_LEN + job.req.packet.len());
        packet::encode_claim(
            &mut behind,
            packet::Claim {
                seq,
                len: job.req.packet.len() as u32,
                start_by: job
                    .req
                    .deadline
                    .map_or(0, |d| weir_claim::monotonic_ns_at(d).max(1)),
            },
        );
        behind.extend_from_slice(&job.req.packet);
        job.offered = true;
        st.offers.push(Offer {
            key,
            holder: worker.id,
            seq,
            claim,
            job,
            since,
            holder_since: Instant::now(),
            holder_typical,
            typical,
            taken: false,
        });
        self.inner
            .stats
            .prefetch_offered
            .fetch_add(1, Ordering::Relaxed);
        (behind, typical)
    }

    /// Takes back the offer (not held by `skip`, at most `max_len` bytes on the wire,
    /// `accept`ed) whose holder has been on its current request longest, if that holder is
    /// overdue (see `offer_policy`; or `any`). An offer whose client has gone, or whose
    /// wait is over (answered), is dropped and the next one looked at.
    fn take_offer_from_slowest(
        &self,
        st: &mut State,
        skip: u64,
        now: Instant,
        any: bool,
        max_len: usize,
        accept: impl Fn(&Offer) -> bool,
    ) -> Option<Offer> {
        loop {
            // The holder busy longest; of its offers, the first (it has waited longest).
            let i = st
                .offers
                .iter()
                .enumerate()
                .filter(|(_, o)| {
                    !o.taken
                        && o.holder != skip
                        && packet::CLAIM_LEN + wire_len(&o.job.req) <= max_len
                        && (any
                            || offer_policy::overdue(
                                now.saturating_duration_since(o.holder_since),
                                o.holder_typical,
                            ))
                        && accept(o)
                })
                .min_by_key(|(_, o)| (o.holder_since, o.seq))
                .map(|(i, _)| i)?;
            let o = &mut st.offers[i];
            if !self.revoke(o) {
                // Its holder has started it; the next one may still be behind a slow one.
                o.taken = true;
                continue;
            }
            let offer = st.offers.swap_remove(i);
            if let Some(job) = self.still_wanted(offer.job, now) {
                return Some(Offer { job, ..offer });
            }
        }
    }

    /// Takes `offer` back (see weir-claim) and counts it; `false`: its holder started it.
    fn revoke(&self, offer: &Offer) -> bool {
        self.take_back(&offer.claim, offer.seq)
    }

    /// Takes offer `seq` back from the worker whose claim words are `claim`, and counts
    /// it; `false`: the worker started it.
    pub(crate) fn take_back(&self, claim: &weir_claim::ClaimWords, seq: u64) -> bool {
        let won = claim.revoke(seq);
        if won {
            self.inner
                .stats
                .prefetch_revoked
                .fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// Takes back the offers held by worker `holder`, whose current request ended badly
    /// (the worker was killed or died): each is served by an idle worker or goes to the
    /// front of the queue, in order, after `first` (its current request, when the worker
    /// had not started it: taken back already). One the worker had started failed with it.
    fn requeue_offer(&self, holder: u64, first: Option<Requeued>) {
        let mut st = self.state();
        let mut revoked: Vec<Requeued> = first.into_iter().collect();
        for offer in take_offers_of(&mut st, holder) {
            if self.revoke(&offer) {
                revoked.push(offer.into());
            } else {
                // It had started: it failed with the worker.
                let _ = offer.job.reply.send(Err(DispatchError::WorkerDied));
            }
        }
        self.requeue(st, revoked);
    }

    /// Before a CANCEL for worker `holder`'s current request: takes back what is offered
    /// behind it (to the front of the queue). `false` when the worker had already started
    /// one: it has ended the current response then (all of it is in the socket), a CANCEL
    /// would reach the offered request instead, and the one it started stays offered (its
    /// exchange starts when the current one has been read to its end).
    pub(crate) fn revoke_offers_for_cancel(&self, holder: u64) -> bool {
        let mut st = self.state();
        let mut all = true;
        let mut revoked = Vec::new();
        for mut offer in take_offers_of(&mut st, holder) {
            if self.revoke(&offer) {
                revoked.push(offer.into());
            } else {
                all = false;
                offer.taken = true;
                st.offers.push(offer);
            }
        }
        self.requeue(st, revoked);
        all
    }

    /// Serves offers just taken back (in offer order) as if they had waited at the front
    /// of the queue: on idle workers, else first in the queue. While shutting down they
    /// are answered `shutting-down` (nothing serves the queue then); past their deadline,
    /// `deadline`; with their client gone, dropped.
    fn requeue(&self, mut st: MutexGuard<'_, State>, revoked: Vec<Requeued>) {
        let now = Instant::now();
        let shutting_down = self.is_shutting_down();
        let mut starts = Vec::new();
        let mut queued = Vec::new();
        for offer in revoked {
            if shutting_down {
                let _ = offer.job.reply.send(Err(DispatchError::ShuttingDown));
                continue;
            }
            let Some(job) = self.still_wanted(offer.job, now) else {
                continue;
            };
            match st.idle.pop() {
                Some(worker) => {
                    self.inner.stats.idle.fetch_sub(1, Ordering::Relaxed);
                    self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
                    starts.push((worker, job));
                }
                None => queued.push(Waiter {
                    tx: None,
                    since: offer.since,
                    job,
                    key: Some(offer.key),
                }),
            }
        }
        for waiter in queued.into_iter().rev() {
            st.waiters.push_front(waiter);
        }
        drop(st);
        for (worker, job) in starts {
            Self::start(Lease::new(worker, self.clone()), job, 0, Vec::new(), None);
        }
    }

    /// An offer's wait is over (see [`Started::response`]): takes it back, wherever it
    /// is (offered, or at the queue's front after its holder died), and drops it; `false`
    /// when a worker has started it (it runs, and its answer is awaited).
    fn expire(&self, key: u64) -> bool {
        let mut st = self.state();
        if let Some(i) = st.offers.iter().position(|o| o.key == key) {
            if st.offers[i].taken || !self.revoke(&st.offers[i]) {
                st.offers[i].taken = true;
                return false;
            }
            st.offers.swap_remove(i);
            return true;
        }
        if let Some(i) = st.waiters.iter().position(|w| w.key == Some(key)) {
            st.waiters.remove(i);
            return true;
        }
        false
    }

    /// The answer of a request whose wait is over.
    fn expiry_error(&self, expires: &Expiry) -> DispatchError {
        match expires.why {
            ExpiryWhy::QueueTimeout(d) => DispatchError::QueueTimeout(d),
            ExpiryWhy::Deadline => DispatchError::DeadlineExceeded,
            ExpiryWhy::Shed(target) => self.shed(target),
        }
    }

    /// `job`, or `None` when nobody waits for it any more (dropped) or its wait is over
    /// (answered `queue-timeout` or `deadline` here): either way it is never started.
    fn still_wanted(&self, job: Submission, now: Instant) -> Option<Submission> {
        if job.reply.is_closed() {
            return None;
        }
        if job.expires.at <= now || job.req.deadline.is_some_and(|d| d <= now) {
            let err = if job.expires.at <= now {
                self.expiry_error(&job.expires)
            } else {
                DispatchError::DeadlineExceeded
            };
            let _ = job.reply.send(Err(err));
            return None;
        }
        Some(job)
    }

    /// The submitter of an offer went away: take it back unless it has started.
    fn withdraw(&self, key: u64) {
        let mut st = self.state();
        let Some(i) = st.offers.iter().position(|o| o.key == key) else {
            return;
        };
        if self.revoke(&st.offers[i]) {
            st.offers.swap_remove(i);
        } else {
            st.offers[i].taken = true;
        }
    }

    /// A worker with nothing offered to it is free: takes over the offer of the holder that
    /// has been busy longest, when that holder is overdue (see `offer_policy`) or nothing else
    /// waits. Returns the job to start on `worker` and what to write behind it.
    fn steal(
        &self,
        st: &mut State,
        worker: &mut Worker,
        now: Instant,
    ) -> Option<(Submission, Vec<u8>)> {
        let nothing_waits = st.waiters.iter().all(Waiter::gone);
        let offer =
            self.take_offer_from_slowest(st, worker.id, now, nothing_waits, usize::MAX, |_| true)?;
        self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
        let behind = self.offer_next(st, worker, &offer.job.req);
        Some((offer.job, behind))
    }

    /// Waits for a worker and starts `job` on it: `Some` with its offer key and when its
    /// wait ends, when it was offered behind a busy worker (it is still waiting then).
    async fn wait(
        &self,
        deadline: Option<Instant>,
        mut job: Submission,
    ) -> Result<Option<(u64, Expiry)>, DispatchError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(DispatchError::ShuttingDown);
        }
        let now = Instant::now();
        let (mut wait, by_deadline) = match deadline {
            Some(d) if d <= now => return Err(DispatchError::DeadlineExceeded),
            Some(d) if d - now < self.inner.queue_timeout => (d - now, true),
            _ => (self.inner.queue_timeout, false),
        };
        let mut by_target = None;
        let rx = {
            let mut st = self.state();
            if let Some(worker) = st.idle.pop() {
                self.inner.stats.idle.fetch_sub(1, Ordering::Relaxed);
                self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
                drop(st);
                Self::start(Lease::new(worker, self.clone()), job, 0, Vec::new(), None);
                return Ok(None);
            }
            // Offered requests not yet started wait too: they count against the bound
            // (not known to be started: the claim words, shared with the workers, are not
            // read here, on every queued request's path).
            let offered = st.offers.iter().filter(|o| !o.taken).count();
            let others = self.inner.external.load(Ordering::Relaxed) + offered;
            if st.waiters.len() + others >= self.inner.max_queue {
                st.waiters.retain(|w| !w.gone());
                if st.waiters.len() + others >= self.inner.max_queue {
                    return Err(DispatchError::QueueFull {
                        max: self.inner.max_queue,
                    });
                }
            }
            if st.codel.overloaded() {
                if let Some(codel) = &self.inner.codel {
                    let target = self.target(codel);
                    if target < wait {
                        wait = target;
                        by_target = Some(target);
                    }
                }
            }
            job.expires = Expiry {
                at: now + wait,
                why: match by_target {
                    Some(target) => ExpiryWhy::Shed(target),
                    None if by_deadline => ExpiryWhy::Deadline,
                    None => ExpiryWhy::QueueTimeout(wait),
                },
            };
            let expires = job.expires;
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter {
                tx: Some(tx),
                since: now,
                job,
                key: None,
            });
            (rx, expires)
        };
        let (rx, expires) = rx;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(offer))) => Ok(offer.map(|key| (key, expires))),
            Ok(Ok(Err(target))) => Err(self.shed(target)),
            Ok(Err(_)) => Err(DispatchError::ShuttingDown),
            Err(_) => Err(match by_target {
                Some(target) => self.shed(target),
                None if by_deadline => DispatchError::DeadlineExceeded,
                None => DispatchError::QueueTimeout(wait),
            }),
        }
    }

    fn shed(&self, target: Duration) -> DispatchError {
        DispatchError::QueueShed {
            target,
            interval: self.inner.codel.map_or(Duration::ZERO, |c| c.interval),
        }
    }

    /// The delay target now.
    fn target(&self, codel: &Codel) -> Duration {
        codel.target.unwrap_or_else(|| {
            let mean = self.inner.service.typical().unwrap_or_default();
            (mean * 4)
                .max(Codel::MIN_TARGET)
                .min(self.inner.queue_timeout)
        })
    }

    /// CoDel's control law, run when a worker frees: updates the overload state from the
    /// queue's delay (the oldest live waiter's age) and returns the target when shedding.
    fn control(&self, st: &mut State, now: Instant) -> Option<Duration> {
        let codel = self.inner.codel.as_ref()?;
        while st.waiters.front().is_some_and(Waiter::gone) {
            st.waiters.pop_front();
        }
        let oldest = st.waiters.front().map(|w| w.since);
        let target = self.target(codel);
        st.codel.on_worker_free(now, oldest, target, codel.interval)
    }

    /// Folds one request's time on a worker into the pool's typical time (and its
    /// route's): quick to rise (a slow phase raises the delay target within a few
    /// requests, before waiters behind it are shed), slow to fall.
    fn record_worker_time(&self, held: Duration, route: Option<&ServiceTime>) {
        self.inner.service.record(held);
        if let Some(route) = route {
            route.record(held);
        }
    }

    /// A worker is ready (new, or back from a request).
    pub(crate) fn put_idle(&self, mut worker: Worker) {
        let mut st = self.state();
        if self.retiring(&st, worker.generation) {
            drop(st);
            let reason = if self.is_shutting_down() {
                RestartReason::Shutdown
            } else {
                RestartReason::Reload
            };
            worker.retire(reason);
            return;
        }
        let now = Instant::now();
        let shedding = self.regulate(&mut st, now);
        if let Some((job, behind)) = self.steal(&mut st, &mut worker, now) {
            drop(st);
            Self::start(Lease::new(worker, self.clone()), job, 0, behind, None);
            return;
        }
        let lifo = shedding.is_some() && self.inner.codel.is_some_and(|c| c.lifo);
        loop {
            let next = if lifo {
                st.waiters.pop_back()
            } else {
                st.waiters.pop_front()
            };
            let Some(waiter) = next else { break };
            let Some(job) = self.hand_off(waiter, None, now) else {
                // That client went away while queued: its request is dropped; next.
                continue;
            };
            self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
            let behind = self.offer_next(&mut st, &mut worker, &job.req);
            drop(st);
            Self::start(Lease::new(worker, self.clone()), job, 0, behind, None);
            return;
        }
        st.codel.reset();
        st.idle.push(worker);
        self.inner.stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs when a worker frees: CoDel's control law on the queue, and, when overloaded,
    /// refuses whoever has waited past the target (so the rest are served fast: their
    /// clients would likely give up anyway). Returns the target while shedding.
    fn regulate(&self, st: &mut State, now: Instant) -> Option<Duration> {
        let shedding = self.control(st, now);
        if let Some(target) = shedding {
            while let Some(w) = st.waiters.front() {
                if !w.gone() && now.saturating_duration_since(w.since) <= target {
                    break;
                }
                if let Some(w) = st.waiters.pop_front() {
                    w.shed(target, self.shed(target));
                }
            }
        }
        shedding
    }

    fn retiring(&self, st: &State, generation: u64) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
            || generation < self.inner.generation.load(Ordering::Relaxed)
            || st.cancelled.contains(&generation)
    }

    /// A worker is back from a clean request: recycle it or make it idle again.
    fn release(&self, mut worker: Worker) {
        // Read /proc before the lock: every request of the pool takes that lock.
        if let Some(limit) = self.inner.reload_on_rss {
            worker.over_rss = worker.rss_bytes().is_some_and(|rss| rss > limit);
        }
        {
            let mut st = self.state();
            let now = Instant::now();
            loop {
                let first = st
                    .offers
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.holder == worker.id)
                    .min_by_key(|(_, o)| o.seq)
                    .map(|(i, _)| i);
                let Some(i) = first else { break };
                let offer = st.offers.swap_remove(i);
                if offer.job.expires.at <= now && self.revoke(&offer) {
                    // Its wait is over (the queue timeout, its deadline) and it has not
                    // started: answered here, the worker skips it (rather than start it
                    // late, or be killed for it at once).
                    let _ = offer
                        .job
                        .reply
                        .send(Err(self.expiry_error(&offer.job.expires)));
                    continue;
                }
                // The worker has started (or is starting) this request offered to it: it
                // runs there, already written; more may be offered behind it (not while
                // the queue is overloaded: then the next is chosen when the worker is
                // free, newest first).
                let holder_typical = offer.typical;
                for o in st.offers.iter_mut().filter(|o| o.holder == worker.id) {
                    o.holder_since = now;
                    o.holder_typical = holder_typical;
                }
                self.regulate(&mut st, now);
                let sent = offer.job.req.packet.len();
                let behind = self.offer_next(&mut st, &mut worker, &offer.job.req);
                drop(st);
                let claim_pending = ClaimPending {
                    key: offer.key,
                    seq: offer.seq,
                    claim: offer.claim,
                    since: offer.since,
                    own_len: sent,
                    expires: offer.job.expires,
                };
                let lease = Lease::new(worker, self.clone());
                Self::start(lease, offer.job, sent, behind, Some(claim_pending));
                return;
            }
        }
        self.inner.stats.busy.fetch_sub(1, Ordering::Relaxed);
        if worker.recycle_after != 0 && worker.served >= worker.recycle_after {
            worker.retire(RestartReason::MaxRequests);
            return;
        }
        if worker.over_rss {
            worker.retire(RestartReason::Rss);
            return;
        }
        self.put_idle(worker);
    }

    /// Removes an idle worker that died (its pid), so no request is sent to it.
    pub(crate) fn remove_idle(&self, pid: u32) -> bool {
        let mut st = self.state();
        if let Some(i) = st.idle.iter().position(|w| w.pid == pid) {
            st.idle.swap_remove(i);
            self.inner.stats.idle.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Makes `generation` the one that serves; idle workers of older ones retire now,
    /// busy ones when their request ends.
    pub(crate) fn switch_generation(&self, generation: u64) {
        self.inner.generation.store(generation, Ordering::Relaxed);
        self.retire_idle(|w| w.generation < generation, RestartReason::Reload);
    }

    /// Abandons a generation whose reload failed.
    pub(crate) fn cancel_generation(&self, generation: u64) {
        self.state().cancelled.push(generation);
        self.retire_idle(|w| w.generation == generation, RestartReason::Reload);
    }

    pub(crate) fn current_generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn is_cancelled(&self, generation: u64) -> bool {
        self.state().cancelled.contains(&generation)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// Stops taking work: queued requests get [`DispatchError::ShuttingDown`], idle
    /// workers retire, busy ones retire when done.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let waiters = std::mem::take(&mut self.state().waiters);
        for w in waiters {
            // Submitters still waiting hear ShuttingDown when their sender drops; a taken
            // back offer's submitter waits for a head instead.
            if w.tx.is_none() {
                let _ = w.job.reply.send(Err(DispatchError::ShuttingDown));
            }
        }
        self.retire_idle(|_| true, RestartReason::Shutdown);
    }

    fn retire_idle(&self, which: impl Fn(&Worker) -> bool, reason: RestartReason) {
        let leaving: Vec<Worker> = {
            let mut st = self.state();
            let (leaving, staying) = std::mem::take(&mut st.idle).into_iter().partition(&which);
            st.idle = staying;
            self.inner
                .stats
                .idle
                .store(st.idle.len(), Ordering::Relaxed);
            leaving
        };
        for w in leaving {
            w.retire(reason);
        }
    }

    pub(crate) fn count_restart(&self, reason: RestartReason) {
        self.inner.stats.restarts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests offered to one worker at most (behind its current one): the master has that
/// many requests' time to top up before the worker runs dry. Two left /hello's workers dry
/// 0.27 times a request, five 0.12, for 10-30% more requests a second (bench/RESULTS.md);
/// a slow request does not hold more back for it (offers are taken back past twice the
/// mean time). The claim words allow `weir_claim::WORDS - 1`.
const PREFETCH_DEPTH: usize = 5;
const _: () = assert!(PREFETCH_DEPTH < weir_claim::WORDS as usize);

/// Offered requests that their worker has not started (nor the master taken back): they
/// still wait.
fn offered_waiting(st: &State) -> usize {
    st.offers
        .iter()
        .filter(|o| !o.taken && o.claim.is_offered(o.seq))
        .count()
}

/// Removes and returns the offers held by worker `holder`, in offer order.
fn take_offers_of(st: &mut State, holder: u64) -> Vec<Offer> {
    let mut mine = Vec::new();
    let mut i = 0;
    while i < st.offers.len() {
        if st.offers[i].holder == holder {
            mine.push(st.offers.swap_remove(i));
        } else {
            i += 1;
        }
    }
    mine.sort_by_key(|o| o.seq);
    mine
}

/// Bytes written ahead of what a worker has read at most: its current request and what is
/// offered behind it. Under a Unix socket's send buffer, so the master never blocks writing
/// offers while the worker writes an answer without reading its request first.
const OFFER_BYTES: usize = 64 * 1024;

/// The bytes a request takes on the worker's socket when written at once.
fn wire_len(req: &WorkerRequest) -> usize {
    req.packet.len()
        + match &req.body {
            crate::RequestBody::Full(b) if b.len() <= exchange::INLINE_BODY => b.len(),
            _ => 0,
        }
}

/// Puts a small whole body into the packet (one write).
fn inline_body(req: &mut WorkerRequest) {
    if let crate::RequestBody::Full(b) = &req.body {
        if b.len() <= exchange::INLINE_BODY {
            req.packet.extend_from_slice(b);
            req.body = crate::RequestBody::Empty;
        }
    }
}

/// Whether a request can be offered: it goes to the worker in one write, and it is not the
/// ready check (whose short limit must not start behind another request).
fn offerable(req: &WorkerRequest) -> bool {
    sendable_at_once(req) && req.packet.first() != Some(&packet::MODIFIER_READY_CHECK)
}

/// Whether a request goes to the worker in one write (no streamed or large body): only
/// such a request can be offered, or have one offered behind it.
fn sendable_at_once(req: &WorkerRequest) -> bool {
    match &req.body {
        crate::RequestBody::Empty => true,
        crate::RequestBody::Full(b) => b.len() <= exchange::INLINE_BODY,
        crate::RequestBody::Stream { .. } => false,
    }
}

#[cfg(test)]
mod tests;

//! The idle workers and the queue of requests waiting for one.
//!
//! A request takes an idle worker at once if there is one; otherwise it joins a bounded
//! queue (full: [`DispatchError::QueueFull`] at once) and waits up to the queue timeout or
//! its own deadline, whichever is sooner.
//!
//! The queue's rules are the admission queue's (crate weir-queue), the same for every
//! backend: its bound, its timeout, and overload handled as CoDel does it for packets, and
//! as Facebook's "Fail at Scale" does it for requests (controlled delay with adaptive
//! LIFO; `weir_queue::codel`). The pool keeps its own `WaitQueue` rather than a
//! `weir_queue::Slots` because a worker is a value (its socket), and a worker that frees
//! starts the next request itself, in the same step. The queue's delay is the age
//! of its oldest waiter, looked at whenever a worker frees. When it has stayed above the
//! delay target for a whole [`Codel::interval`], the queue is overloaded: a waiter older
//! than the target is refused ([`DispatchError::QueueShed`], 503) instead of being served,
//! new arrivals wait at most the target, and the newest waiter is served first. The state
//! ends when the delay falls under half the target or the queue empties. So a load far
//! above capacity turns into fast 503s for the excess and short waits for the rest,
//! instead of every admitted request waiting out a long FIFO; a busy but keeping-up queue
//! (a closed-loop benchmark: many waiters, each briefly) and a queue behind one slow
//! request (no worker frees, nothing is measured) stay plain FIFO with the full timeout.
//! CoDel's (shedding) target is 4 times the mean time a request holds a worker, at least
//! 500 ms: a backstop for when admission's prediction (below) is wrong.
//!
//! Admission at arrival (`weir_queue::admission`, `[queue] admission`): a request that
//! finds no idle worker is refused at once (`queue-full`, Retry-After from the estimate)
//! when the work ahead of it (the mean time of each waiting or offered request, by its
//! route) over the workers is beyond its budget: its route's delay target
//! (`[queue] target_factor`, 2, times the route's own mean time, at least `min_target`,
//! 50 ms; a slow route does not inflate a fast one's), the queue timeout, or its deadline.
//! So the queue never holds more than the workers can clear within the target, an
//! overload is answered in milliseconds instead of after a wait, and the admitted wait
//! about a target at most.
//!
//! Prefetch (`[app] prefetch`, on by default; `pool/offers.rs`): when a worker frees and
//! more than one request waits, the worker's next requests (up to `PREFETCH_DEPTH`) are
//! written right behind the one it starts, and topped up each time it goes on to the next, so
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
//! cancelled request can never lose a worker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::DispatchError;
use crate::exchange;
use crate::offer_policy::ServiceTime;
use crate::request::{ClaimPending, HeadReply, WorkerRequest};
use crate::slot::{RestartReason, WorkerHandle};
use crate::ResponseBody;
pub use lease::Lease;
use offers::{inline_body, offered_waiting, Offer};
pub use weir_queue::Codel;
use weir_queue::{
    admission, Demand, DemandJudge, Expiry, OutsideWaits, QueuePlace, QueuePolicy, WaitQueue,
    Waiting,
};

mod generations;
mod lease;
mod offers;

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
    /// The queue's decisions: refused at arrival or after waiting, predicted vs actual
    /// waits.
    pub queue: weir_queue::QueueStats,
}

/// What a waiter is told: its request was started on a worker (`Some`: offered to a busy
/// one, see the module doc), or it was refused by the shedding (the delay target).
type Handoff = Result<Option<u64>, Duration>;

/// A request a waiter brought along, started by whoever frees a worker for it.
#[derive(Debug)]
struct Submission {
    req: WorkerRequest,
    reply: HeadReply,
    /// When its wait ends, wherever it waits (in the queue, offered, taken back).
    expires: Expiry,
    /// It was offered behind a busy worker: its wait ends when a worker starts it.
    offered: bool,
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
    /// Its wait as predicted at arrival (`weir_queue::admission`).
    predicted: Duration,
}

impl Waiting for Waiter {
    fn since(&self) -> Instant {
        self.since
    }

    fn fair_key(&self) -> u64 {
        self.job.req.fair_key
    }

    /// Nobody waits for this request any more (its client went away).
    fn gone(&self) -> bool {
        match &self.tx {
            Some(tx) => tx.is_closed(),
            None => self.job.reply.is_closed(),
        }
    }
}

impl Waiter {
    /// Refuses it: shed by the delay target.
    fn shed(self, target: Duration, err: DispatchError) {
        match self.tx {
            Some(tx) => drop(tx.send(Err(target))),
            None => drop(self.job.reply.send(Err(err))),
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
    /// `[queue]`: the bound, the timeout, CoDel.
    policy: QueuePolicy,
    /// The typical time a request holds a worker, over all routes.
    service: ServiceTime,
    reload_on_rss: Option<u64>,
    /// `[app] prefetch`.
    prefetch: bool,
    /// Workers of an older generation retire when they come back.
    generation: AtomicU64,
    /// Until when admission at arrival is suspended (see [`Pool::reload_settling`]):
    /// milliseconds after `epoch`, 0 for not suspended (read at every arrival: no lock).
    settle_until_ms: AtomicU64,
    epoch: Instant,
    /// Requests waiting in front of the pool (for a route slot): they count against
    /// the bound and in the queue depth too.
    outside: OutsideWaits,
    shutting_down: AtomicBool,
    pub(crate) stats: PoolStats,
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<WorkerHandle>,
    /// Requests waiting for a worker, with CoDel's state.
    queue: WaitQueue<Waiter>,
    /// Requests offered to busy workers (at most `PREFETCH_DEPTH` per worker).
    offers: Vec<Offer>,
    /// The last offer key given out.
    offer_keys: u64,
    /// Generations abandoned by a failed reload.
    cancelled: Vec<u64>,
    /// New demand against what the workers clear: rate overload (`weir_queue::demand`).
    demand: Demand,
}

impl Pool {
    pub(crate) fn new(policy: QueuePolicy, reload_on_rss: Option<u64>, prefetch: bool) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                policy,
                service: ServiceTime::new(),
                reload_on_rss,
                prefetch,
                generation: AtomicU64::new(0),
                settle_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                outside: OutsideWaits::default(),
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
        let live = st.queue.live();
        let offered = offered_waiting(&st);
        drop(st);
        live + offered + self.inner.outside.count()
    }

    /// Joins the queue from outside the pool (a request waiting for a route slot): it
    /// counts against the queue's bound and depth until the returned guard drops.
    pub fn enter_queue(&self) -> Result<QueuePlace, DispatchError> {
        Ok(self
            .inner
            .outside
            .enter(self.queue_depth(), self.inner.policy.max_size)?)
    }

    /// `[queue]` as the pool applies it.
    pub fn policy(&self) -> &QueuePolicy {
        &self.inner.policy
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
            fair_key: 0,
            spool: None,
            retry: false,
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
        let offer = self.wait(queue_deadline, req, reply).await?;
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

    /// Hands a waiter's job over to be started (`key`: as an offer); `None` when nobody
    /// waits for it any more, or when a taken back offer's time is up (answered here).
    fn hand_off(&self, waiter: Waiter, key: Option<u64>, now: Instant) -> Option<Submission> {
        match waiter.tx {
            Some(tx) => {
                tx.send(Ok(key)).ok()?;
                self.inner.stats.queue.served_after(
                    waiter.predicted,
                    now.saturating_duration_since(waiter.since),
                );
                Some(waiter.job)
            }
            None => self.still_wanted(waiter.job, now),
        }
    }

    /// Waits for a worker and starts `req` on it: `Some` with its offer key and when its
    /// wait ends, when it was offered behind a busy worker (it is still waiting then).
    async fn wait(
        &self,
        deadline: Option<Instant>,
        req: WorkerRequest,
        reply: HeadReply,
    ) -> Result<Option<(u64, Expiry)>, DispatchError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(DispatchError::ShuttingDown);
        }
        let now = Instant::now();
        // Its wait ends at the queue timeout or its deadline, whichever is sooner (and at
        // the delay target, below, while the queue is overloaded).
        let expires = self.inner.policy.expiry(now, deadline)?;
        let job = Submission {
            req,
            reply,
            expires,
            offered: false,
        };
        let (rx, expires) = {
            let mut st = self.state();
            let overloaded = self.arrive(&mut st, now, !job.req.retry);
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
            let others = self.inner.outside.count() + offered;
            let max = self.inner.policy.max_size;
            if !st.queue.has_room(others, max) {
                return Err(DispatchError::QueueFull { max });
            }
            if let Some(per_key) = self.inner.policy.per_key_max {
                if !st.queue.has_room_for_key(job.req.fair_key, per_key) {
                    return Err(weir_queue::QueueRefusal::KeyFull { max: per_key }.into());
                }
            }
            let target = if overloaded {
                self.inner.policy.overload_target(self.mean(&job.req))
            } else {
                self.target(&job.req)
            };
            // While a reload starts and settles, the measured times are the import's and
            // the new workers' first requests: no prediction is made from them (the
            // timeout and CoDel still bound the wait), so a reload refuses nobody.
            let ahead = if self.settling(now) {
                Duration::ZERO
            } else {
                self.work_ahead(&st, job.req.fair_key)
            };
            let predicted =
                match self
                    .inner
                    .policy
                    .admit(now, &expires, target, ahead, self.workers())
                {
                    Ok(p) => p,
                    Err(r) => {
                        self.inner.stats.queue.refused(&r);
                        return Err(r.into());
                    }
                };
            let shedding = st.queue.overloaded().then(|| self.shed_target()).flatten();
            let expires = self.inner.policy.capped(expires, now, shedding);
            let job = Submission { expires, ..job };
            let (tx, rx) = oneshot::channel();
            st.queue.push(Waiter {
                tx: Some(tx),
                since: now,
                job,
                key: None,
                predicted,
            });
            (rx, expires)
        };
        match tokio::time::timeout(expires.at.saturating_duration_since(now), rx).await {
            Ok(Ok(Ok(offer))) => Ok(offer.map(|key| (key, expires))),
            Ok(Ok(Err(target))) => {
                let r = self.inner.policy.shed(target);
                self.inner.stats.queue.refused(&r);
                Err(r.into())
            }
            Ok(Err(_)) => Err(DispatchError::ShuttingDown),
            Err(_) => Err(self.expiry_error(&expires)),
        }
    }

    fn shed(&self, target: Duration) -> DispatchError {
        self.inner.policy.shed(target).into()
    }

    /// The delay target of `req` (`None` without CoDel), which admission holds its wait
    /// to: from its route's mean service time (the pool's before its route has one).
    fn target(&self, req: &WorkerRequest) -> Option<Duration> {
        self.inner.policy.target(self.mean(req))
    }

    /// CoDel's shedding target now (`None` without CoDel): from the pool's typical time.
    fn shed_target(&self) -> Option<Duration> {
        self.inner.policy.shed_target(self.inner.service.typical())
    }

    /// `[queue] rate_overload`.
    fn rate_overload_on(&self) -> bool {
        self.inner.policy.codel.is_some_and(|c| c.rate_overload)
    }

    /// What rate overload is judged by (`weir_queue::demand`): the pool's delay target
    /// and the time its workers take to clear one request, both from its mean service
    /// time; `None` while nothing is measured yet. Callers check `rate_overload_on`.
    fn demand_judge(&self) -> Option<DemandJudge> {
        let mean = self.inner.service.mean()?;
        Some(DemandJudge {
            target: self.inner.policy.target(Some(mean))?,
            clear_one: admission::expected_wait(mean, self.workers()),
        })
    }

    /// `weir_queue_rate_overloaded` now.
    fn publish_demand(&self, overloaded: bool) {
        self.inner
            .stats
            .queue
            .rate_overloaded
            .store(u64::from(overloaded), Ordering::Relaxed);
    }

    /// A request arrived (`fresh`: not a retry of one just refused on its connection):
    /// whether the queue is rate-overloaded now.
    fn arrive(&self, st: &mut State, now: Instant, fresh: bool) -> bool {
        if !self.rate_overload_on() {
            return false;
        }
        let (overloaded, entered) = st.demand.arrive(now, fresh, self.demand_judge());
        if entered {
            self.inner
                .stats
                .queue
                .rate_overloads
                .fetch_add(1, Ordering::Relaxed);
        }
        self.publish_demand(overloaded);
        overloaded
    }

    /// Judges rate overload now, with no arrival or departure (for the metrics: a pool
    /// that has gone quiet has neither).
    pub fn judge_demand(&self) {
        if !self.rate_overload_on() {
            return;
        }
        let judge = self.demand_judge();
        let overloaded = self.state().demand.judge_at(Instant::now(), judge);
        self.publish_demand(overloaded);
    }

    /// A worker finished a request (cleanly, or killed in the middle of it).
    fn depart(&self, st: &mut State, now: Instant) {
        if !self.rate_overload_on() {
            return;
        }
        let overloaded = st.demand.depart(now, self.demand_judge());
        self.publish_demand(overloaded);
    }

    /// [`Self::depart`] for a request whose worker was killed (`Lease`'s dirty end):
    /// takes the lock itself.
    pub(super) fn depart_killed(&self) {
        if self.rate_overload_on() {
            let mut st = self.state();
            self.depart(&mut st, Instant::now());
        }
    }

    /// The mean time `req` will hold a worker: its route's, else the pool's.
    fn mean(&self, req: &WorkerRequest) -> Option<Duration> {
        req.service
            .as_deref()
            .and_then(ServiceTime::mean)
            .or_else(|| self.inner.service.mean())
    }

    /// The work ahead of a new arrival of fairness key `key`: the mean time of each live
    /// waiter it would be served after (round robin across keys: [`WaitQueue::ahead_of`])
    /// and of each request offered behind a busy worker and not yet started, each by its
    /// route.
    fn work_ahead(&self, st: &State, key: u64) -> Duration {
        let queued: Duration = st
            .queue
            .ahead_of(key)
            .filter(|w| !w.gone())
            .filter_map(|w| self.mean(&w.job.req))
            .sum();
        let offered: Duration = st
            .offers
            .iter()
            .filter(|o| !o.taken)
            .filter_map(|o| self.mean(&o.job.req))
            .sum();
        queued + offered
    }

    /// Suspends admission at arrival until `until` (`None`: until told again): a reload
    /// in progress, and a moment after it.
    pub(crate) fn reload_settling(&self, until: Option<Instant>) {
        let until = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let ms = until
            .saturating_duration_since(self.inner.epoch)
            .as_millis();
        self.inner.settle_until_ms.store(
            u64::try_from(ms).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }

    fn settling(&self, now: Instant) -> bool {
        let until = self.inner.settle_until_ms.load(Ordering::Relaxed);
        until != 0
            && now.saturating_duration_since(self.inner.epoch).as_millis() < u128::from(until)
    }

    /// The workers that can take a request: all of them, idle or busy (at least one).
    fn workers(&self) -> usize {
        let st = &self.inner.stats;
        (st.idle.load(Ordering::Relaxed) + st.busy.load(Ordering::Relaxed)).max(1)
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
    pub(crate) fn put_idle(&self, mut worker: WorkerHandle) {
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
        let lifo = shedding && self.inner.policy.codel.is_some_and(|c| c.lifo);
        while let Some(waiter) = st.queue.pop_next(lifo) {
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
        st.queue.reset();
        st.idle.push(worker);
        self.inner.stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs when a worker frees: CoDel's control law on the queue, and, when overloaded,
    /// refuses whoever has waited past the shedding target (so the rest are served fast:
    /// their clients would likely give up anyway). Returns whether it is shedding.
    fn regulate(&self, st: &mut State, now: Instant) -> bool {
        let Some(target) = self.shed_target() else {
            return false;
        };
        let (shedding, shed) = st
            .queue
            .regulate(now, self.inner.policy.codel.as_ref(), |_| target);
        for (w, target) in shed {
            if w.tx.is_none() {
                self.inner
                    .stats
                    .queue
                    .refused(&self.inner.policy.shed(target));
            }
            w.shed(target, self.shed(target));
        }
        shedding
    }

    /// A worker is back from a clean request: recycle it or make it idle again.
    fn release(&self, mut worker: WorkerHandle) {
        // Read /proc before the lock: every request of the pool takes that lock.
        if let Some(limit) = self.inner.reload_on_rss {
            worker.over_rss = worker.rss_bytes().is_some_and(|rss| rss > limit);
        }
        {
            let mut st = self.state();
            let now = Instant::now();
            self.depart(&mut st, now);
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

    pub(crate) fn count_restart(&self, reason: RestartReason) {
        self.inner.stats.restarts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

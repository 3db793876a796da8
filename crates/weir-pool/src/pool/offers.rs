//! Prefetch offers: a waiting request written behind a busy worker's current one, settled
//! by the worker's claim word (weir-claim), and taken back when its wait runs out, its
//! holder is overdue or dies, its client leaves, or the holder's response is cancelled.
//! When an offer is made at all is `offer_policy`'s; see the pool's module doc for the
//! whole picture.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::MutexGuard;

use weir_uwsgi::packet;

use super::{Lease, Pool, State, Submission, Waiter};
use crate::error::DispatchError;
use crate::offer_policy::{self, ServiceTime};
use crate::request::{WorkerRequest, INLINE_BODY};
use crate::slot::WorkerHandle;
use weir_queue::Expiry;

/// A request written to a busy worker behind its current one (see the module doc).
#[derive(Debug)]
pub(super) struct Offer {
    /// Which offered request this is (what its [`Started`] withdraws), kept when it moves
    /// to another worker.
    pub(super) key: u64,
    /// The holder ([`WorkerHandle::id`]).
    pub(super) holder: u64,
    /// The claim sequence number on the holder.
    pub(super) seq: u64,
    pub(super) claim: Arc<weir_claim::ClaimWords>,
    pub(super) job: Submission,
    /// When the request began waiting.
    pub(super) since: Instant,
    /// When the holder started its current request.
    pub(super) holder_since: Instant,
    /// The typical time of the holder's current request (see `offer_policy`).
    pub(super) holder_typical: Option<Duration>,
    /// The typical time of this request, as judged when it was offered.
    pub(super) typical: Option<Duration>,
    /// A revoke lost: the holder runs it (its release finds it here).
    pub(super) taken: bool,
}

/// An offered request taken back, to be served as if it had waited at the queue's front.
#[derive(Debug)]
pub(super) struct Requeued {
    pub(super) key: u64,
    pub(super) since: Instant,
    pub(super) job: Submission,
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

impl Pool {
    /// Offers the next waiting request to `worker`, which is about to start a request
    /// whose whole packet is written at once (`current` is that request: an offer goes
    /// only behind one without a streamed body): pops it, registers the offer, tells its
    /// submitter, and returns the bytes to write behind the current request.
    pub(super) fn offer_next(
        &self,
        st: &mut State,
        worker: &mut WorkerHandle,
        current: &WorkerRequest,
    ) -> Vec<u8> {
        // What is already offered to it: how many, their bytes on the wire, and the sum of
        // their typical times (`None` when one is unknown), in one look at the offers.
        let (offered, offered_bytes, ahead) = st
            .offers
            .iter()
            .filter(|o| o.holder == worker.id)
            .fold((0, 0, Some(Duration::ZERO)), |(n, b, t), o| {
                let bytes = b + packet::CLAIM_LEN + wire_len(&o.job.req);
                (n + 1, bytes, t.zip(o.typical).map(|(t, u)| t + u))
            });
        // Room: PREFETCH_DEPTH, less what is already offered to it, and no more than it
        // serves before it retires (max_requests; the current request counts).
        let mut room = PREFETCH_DEPTH.saturating_sub(offered);
        if worker.recycle_after != 0 {
            let after = worker.served + 1 + offered as u64;
            let left = worker.recycle_after.saturating_sub(after);
            room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if room == 0
            || worker.claim.is_none()
            || !self.inner.prefetch
            // Fair queueing: an offer commits a request to one worker's line, a FIFO
            // outside the queue's turns, so none is made (a polite client's request must
            // not wait behind a flood's offered ones).
            || self.inner.policy.fair
            || st.queue.overloaded()
            || !sendable_at_once(current)
            || self.retiring(st, worker.generation)
            // Over reload_on_rss: it retires once what it has is done.
            || worker.over_rss
        {
            return Vec::new();
        }
        let mut budget = OFFER_BYTES.saturating_sub(wire_len(current) + offered_bytes);
        // What a request offered now would wait: the worker's current request (it starts
        // now) and each one offered to it already.
        let holder_typical = self.typical(current);
        let mut expected = offer_policy::expected_wait(Duration::ZERO, holder_typical, [ahead]);
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
    pub(super) fn offer_one(
        &self,
        st: &mut State,
        worker: &mut WorkerHandle,
        budget: usize,
        expected: Option<Duration>,
        holder_typical: Option<Duration>,
    ) -> Option<(Vec<u8>, Option<Duration>)> {
        let now = Instant::now();
        let fits = |req: &WorkerRequest| packet::CLAIM_LEN + wire_len(req) <= budget;
        // What the request may still wait: its expiry, at most its delay target.
        let worth = |job: &Submission| {
            let left = offer_policy::budget_left(job.expires.left(now), self.target(&job.req));
            offer_policy::worth_offering(expected, left)
        };
        // First, a request offered to an overdue worker (a slow request, or a worker the
        // kernel is not running) moves here: it waited longest.
        if let Some(offer) =
            self.take_offer_from_slowest(st, worker.id, now, false, budget, |o| worth(&o.job))
        {
            let placed = (offer.key, offer.job, offer.since, offer.typical);
            return Some(self.place_offer(st, worker, placed, holder_typical));
        }
        loop {
            let front = st.queue.front()?;
            if !offerable(&front.job.req) || !fits(&front.job.req) || !worth(&front.job) {
                return None;
            }
            let waiter = st.queue.pop_front().expect("front checked");
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
    pub(super) fn typical(&self, req: &WorkerRequest) -> Option<Duration> {
        req.service
            .as_deref()
            .and_then(ServiceTime::typical)
            .or_else(|| self.inner.service.typical())
    }

    /// Registers a job (its key, the job, since when it waits, its typical time) as
    /// offered to `worker`, whose current request's typical time is `holder_typical`, and
    /// returns the bytes to write behind the worker's current request (the CLAIM and the
    /// request) with the job's typical time.
    pub(super) fn place_offer(
        &self,
        st: &mut State,
        worker: &mut WorkerHandle,
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
    pub(super) fn take_offer_from_slowest(
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
    pub(super) fn revoke(&self, offer: &Offer) -> bool {
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
    pub(super) fn requeue_offer(&self, holder: u64, first: Option<Requeued>) {
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
    pub(super) fn requeue(&self, mut st: MutexGuard<'_, State>, revoked: Vec<Requeued>) {
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
                    predicted: Duration::ZERO,
                }),
            }
        }
        for waiter in queued.into_iter().rev() {
            st.queue.push_front(waiter);
        }
        drop(st);
        for (worker, job) in starts {
            Self::start(Lease::new(worker, self.clone()), job, 0, Vec::new(), None);
        }
    }

    /// An offer's wait is over (see [`Started::response`]): takes it back, wherever it
    /// is (offered, or at the queue's front after its holder died), and drops it; `false`
    /// when a worker has started it (it runs, and its answer is awaited).
    pub(super) fn expire(&self, key: u64) -> bool {
        let mut st = self.state();
        if let Some(i) = st.offers.iter().position(|o| o.key == key) {
            if st.offers[i].taken || !self.revoke(&st.offers[i]) {
                st.offers[i].taken = true;
                return false;
            }
            st.offers.swap_remove(i);
            return true;
        }
        st.queue.remove_first(|w| w.key == Some(key)).is_some()
    }

    /// The answer of a request whose wait is over.
    pub(super) fn expiry_error(&self, expires: &Expiry) -> DispatchError {
        let r = self.inner.policy.refusal(expires);
        self.inner.stats.queue.refused(&r);
        r.into()
    }

    /// `job`, or `None` when nobody waits for it any more (dropped) or its wait is over
    /// (answered `queue-timeout` or `deadline` here: its expiry is never later than its
    /// deadline): either way it is never started.
    pub(super) fn still_wanted(&self, job: Submission, now: Instant) -> Option<Submission> {
        if job.reply.is_closed() {
            return None;
        }
        if job.expires.at <= now {
            let _ = job.reply.send(Err(self.expiry_error(&job.expires)));
            return None;
        }
        Some(job)
    }

    /// The submitter of an offer went away: take it back unless it has started.
    pub(super) fn withdraw(&self, key: u64) {
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
    pub(super) fn steal(
        &self,
        st: &mut State,
        worker: &mut WorkerHandle,
        now: Instant,
    ) -> Option<(Submission, Vec<u8>)> {
        let nothing_waits = st.queue.nobody_waits();
        let offer =
            self.take_offer_from_slowest(st, worker.id, now, nothing_waits, usize::MAX, |_| true)?;
        self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
        let behind = self.offer_next(st, worker, &offer.job.req);
        Some((offer.job, behind))
    }
}

/// Requests offered to one worker at most (behind its current one): the master has that
/// many requests' time to top up before the worker runs dry. Two left /hello's workers dry
/// 0.27 times a request, five 0.12, for 10-30% more requests a second (bench/RESULTS.md);
/// a slow request does not hold more back for it (offers are taken back past twice the
/// mean time). The claim words allow `weir_claim::WORDS - 1`.
pub(super) const PREFETCH_DEPTH: usize = 5;
const _: () = assert!(PREFETCH_DEPTH < weir_claim::WORDS as usize);

/// Offered requests that their worker has not started (nor the master taken back): they
/// still wait.
pub(super) fn offered_waiting(st: &State) -> usize {
    st.offers
        .iter()
        .filter(|o| !o.taken && o.claim.is_offered(o.seq))
        .count()
}

/// Removes and returns the offers held by worker `holder`, in offer order.
pub(super) fn take_offers_of(st: &mut State, holder: u64) -> Vec<Offer> {
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
pub(super) const OFFER_BYTES: usize = 64 * 1024;

/// The bytes a request takes on the worker's socket when written at once.
pub(super) fn wire_len(req: &WorkerRequest) -> usize {
    req.packet.len()
        + match &req.body {
            crate::RequestBody::Full(b) if b.len() <= INLINE_BODY => b.len(),
            _ => 0,
        }
}

/// Puts a small whole body into the packet (one write).
pub(super) fn inline_body(req: &mut WorkerRequest) {
    if let crate::RequestBody::Full(b) = &req.body {
        if b.len() <= INLINE_BODY {
            req.packet.extend_from_slice(b);
            req.body = crate::RequestBody::Empty;
        }
    }
}

/// Whether a request can be offered: it goes to the worker in one write, and it is not the
/// ready check (whose short limit must not start behind another request).
pub(super) fn offerable(req: &WorkerRequest) -> bool {
    sendable_at_once(req) && req.packet.first() != Some(&packet::MODIFIER_READY_CHECK)
}

/// Whether a request goes to the worker in one write (no streamed or large body): only
/// such a request can be offered, or have one offered behind it.
pub(super) fn sendable_at_once(req: &WorkerRequest) -> bool {
    match &req.body {
        crate::RequestBody::Empty => true,
        crate::RequestBody::Full(b) => b.len() <= INLINE_BODY,
        crate::RequestBody::Stream { .. } => false,
    }
}

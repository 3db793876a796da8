//! A counted resource whose waiters wait in the admission queue: an upstream's
//! connections (NGINX Plus's `max_conns` + `queue`), a route's `max_concurrency`.
//!
//! [`Slots::acquire`] takes a free slot at once, or waits in a [`WaitQueue`] under the
//! [`QueuePolicy`]: refused at once when the queue is at its bound or when the waiters
//! ahead would take longer to clear than it may wait (`crate::admission`: their number
//! times the typical time a slot is held, over the slots), answered at the queue
//! timeout or the request's deadline, shed by CoDel when overloaded (newest first with
//! adaptive LIFO). A [`SlotPermit`] gives its slot back when dropped, straight to the next
//! waiter, so a request that is cancelled anywhere can never lose a slot: a slot handed to
//! a waiter that has just given up travels inside the hand-off and comes back when that is
//! dropped.
//!
//! Written by hand rather than over a tokio `Semaphore` because the queue must be the
//! same as the pool's: its order (CoDel, LIFO), its bound and its depth are weir's, not
//! the semaphore's.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::wait_queue::{WaitQueue, Waiting};
use crate::{OutsideWaits, QueuePlace, QueuePolicy, QueueRefusal, QueueStats, ServiceTime};

/// A counted resource with its waiters (see the module doc).
#[derive(Debug)]
pub struct Slots {
    state: Mutex<SlotsState>,
    policy: QueuePolicy,
    /// How long a slot is typically held (the delay target's base).
    held: ServiceTime,
    outside: OutsideWaits,
    /// How many slots there are.
    n: usize,
    /// The queue's decisions, for metrics.
    stats: QueueStats,
}

#[derive(Debug)]
struct SlotsState {
    free: usize,
    queue: WaitQueue<SlotWaiter>,
}

/// What a waiter is told.
#[derive(Debug)]
enum Handed {
    /// A slot is its.
    Slot(SlotPermit),
    /// It was shed by the delay target.
    Shed(Duration),
}

#[derive(Debug)]
struct SlotWaiter {
    tx: oneshot::Sender<Handed>,
    since: Instant,
    key: u64,
    /// Its wait as predicted at arrival.
    predicted: Duration,
}

impl Waiting for SlotWaiter {
    fn since(&self) -> Instant {
        self.since
    }
    fn fair_key(&self) -> u64 {
        self.key
    }
    fn gone(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One slot, held until dropped.
#[derive(Debug)]
pub struct SlotPermit {
    slots: Option<Arc<Slots>>,
    since: Instant,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release(self.since.elapsed());
        }
    }
}

impl Slots {
    /// `n` slots, waited for under `policy`.
    pub fn new(n: usize, policy: QueuePolicy) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(SlotsState {
                free: n,
                queue: WaitQueue::default(),
            }),
            policy,
            held: ServiceTime::new(),
            outside: OutsideWaits::default(),
            n,
            stats: QueueStats::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, SlotsState> {
        // The state is a count and a list, consistent between statements: keep going
        // rather than poison every request after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy.
    pub fn policy(&self) -> &QueuePolicy {
        &self.policy
    }

    /// The queue's decisions: refusals at arrival and after waiting, predicted vs actual
    /// waits.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.state().free
    }

    /// Requests waiting now: for a slot (not counting those whose client left), and in
    /// front of the queue ([`Slots::enter_queue`]).
    pub fn waiting(&self) -> usize {
        self.state().queue.live() + self.outside.count()
    }

    /// Holds a place in this queue for a request waiting in front of it (for its route's
    /// slot): it counts against the bound and in [`Slots::waiting`] until dropped.
    pub fn enter_queue(&self) -> Result<QueuePlace, QueueRefusal> {
        self.outside.enter(self.waiting(), self.policy.max_size)
    }

    /// A free slot now, without waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotPermit> {
        let mut st = self.state();
        (st.free > 0).then(|| {
            st.free -= 1;
            self.permit(Instant::now())
        })
    }

    fn permit(self: &Arc<Self>, since: Instant) -> SlotPermit {
        SlotPermit {
            slots: Some(self.clone()),
            since,
        }
    }

    /// A slot: at once if one is free, else after waiting in the queue (see the module
    /// doc for how a wait ends), in the turn of its fairness `key` (0: fair queueing off).
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        key: u64,
    ) -> Result<SlotPermit, QueueRefusal> {
        let r = self.wait(deadline, key).await;
        if let Err(refusal) = &r {
            self.stats.refused(refusal);
        }
        r
    }

    async fn wait(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        key: u64,
    ) -> Result<SlotPermit, QueueRefusal> {
        let now = Instant::now();
        let (rx, expiry) = {
            let mut st = self.state();
            if st.free > 0 {
                st.free -= 1;
                return Ok(self.permit(now));
            }
            let expiry = self.policy.expiry(now, deadline)?;
            if !st
                .queue
                .has_room(self.outside.count(), self.policy.max_size)
            {
                return Err(QueueRefusal::Full {
                    max: self.policy.max_size,
                });
            }
            if let Some(per_key) = self.policy.per_key_max {
                if !st.queue.has_room_for_key(key, per_key) {
                    return Err(QueueRefusal::KeyFull { max: per_key });
                }
            }
            let mean = self.held.mean();
            // Those it would be served after (round robin across fairness keys), and
            // those waiting in front of it for their route's slot.
            let before = st.queue.ahead_of(key).filter(|w| !w.gone()).count();
            let ahead = mean.unwrap_or_default()
                * u32::try_from(before + self.outside.count()).unwrap_or(u32::MAX);
            let predicted =
                self.policy
                    .admit(now, &expiry, self.policy.target(mean), ahead, self.n)?;
            let shedding = st
                .queue
                .overloaded()
                .then(|| self.policy.shed_target(self.held.typical()))
                .flatten();
            let expiry = self.policy.capped(expiry, now, shedding);
            let (tx, rx) = oneshot::channel();
            st.queue.push(SlotWaiter {
                tx,
                since: now,
                key,
                predicted,
            });
            (rx, expiry)
        };
        match tokio::time::timeout(expiry.left(now), rx).await {
            Ok(Ok(Handed::Slot(p))) => Ok(p),
            Ok(Ok(Handed::Shed(target))) => Err(self.policy.shed(target)),
            // The sender is dropped unsent only with the whole `Slots`, which this holds.
            Ok(Err(_)) | Err(_) => Err(self.policy.refusal(&expiry)),
        }
    }

    /// A slot held for `held` comes back: to the next waiter (after CoDel has refused
    /// those past the target), else to the free count.
    fn release(self: &Arc<Self>, held: Duration) {
        self.held.record(held);
        let now = Instant::now();
        let target = self
            .policy
            .shed_target(self.held.typical())
            .unwrap_or(Duration::MAX);
        let mut st = self.state();
        let (shedding, shed) = st
            .queue
            .regulate(now, self.policy.codel.as_ref(), |_| target);
        let newest_first = shedding && self.policy.codel.is_some_and(|c| c.lifo);
        let mut unsent = Some(self.permit(now));
        while let Some(w) = st.queue.pop_next(newest_first) {
            let Some(permit) = unsent.take() else { break };
            match w.tx.send(Handed::Slot(permit)) {
                Ok(()) => {
                    self.stats
                        .served_after(w.predicted, now.saturating_duration_since(w.since));
                    break;
                }
                // That waiter gave up: the slot comes back, for the next one.
                Err(Handed::Slot(p)) => unsent = Some(p),
                Err(Handed::Shed(_)) => unreachable!("a slot was sent"),
            }
        }
        if let Some(mut permit) = unsent {
            st.queue.reset();
            st.free += 1;
            // Not a slot any more: dropping it must not release again.
            permit.slots = None;
        }
        drop(st);
        for (w, target) in shed {
            let _ = w.tx.send(Handed::Shed(target));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codel;

    const MS: Duration = Duration::from_millis(1);

    fn slots(n: usize, max_size: usize, codel: Option<Codel>) -> Arc<Slots> {
        Slots::new(
            n,
            QueuePolicy {
                max_size,
                timeout: 1000 * MS,
                codel,
                fair: false,
                per_key_max: None,
                admission: true,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_first_waiter() {
        let s = slots(1, 8, None);
        let held = s.acquire(None, 0).await.unwrap();
        assert_eq!(s.available(), 0);
        let (a, b) = (s.clone(), s.clone());
        let first = tokio::spawn(async move { a.acquire(None, 0).await.map(|_| "first") });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { b.acquire(None, 0).await.map(|_| "second") });
        tokio::task::yield_now().await;
        assert_eq!(s.waiting(), 2);
        drop(held);
        assert_eq!(first.await.unwrap(), Ok("first"));
        assert_eq!(second.await.unwrap(), Ok("second"));
        assert_eq!(s.available(), 1, "every slot came back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_counts_waiters_in_front_of_the_queue() {
        let s = slots(1, 2, None);
        let _held = s.acquire(None, 0).await.unwrap();
        let _outside = s.enter_queue().unwrap();
        let w = s.clone();
        let waiting = tokio::spawn(async move { w.acquire(None, 0).await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(s.waiting(), 2);
        assert_eq!(
            s.acquire(None, 0).await.unwrap_err(),
            QueueRefusal::Full { max: 2 }
        );
        assert_eq!(s.enter_queue().unwrap_err(), QueueRefusal::Full { max: 2 });
        waiting.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_timeout_or_the_deadline() {
        let s = slots(1, 8, None);
        let _held = s.acquire(None, 0).await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            s.acquire(None, 0).await.unwrap_err(),
            QueueRefusal::Timeout(1000 * MS)
        );
        assert!((1000 * MS..=1001 * MS).contains(&t0.elapsed()));
        let deadline = Instant::now() + 300 * MS;
        assert_eq!(
            s.acquire(Some(deadline), 0).await.unwrap_err(),
            QueueRefusal::Deadline
        );
        assert_eq!(s.waiting(), 0, "those who gave up are not counted");
        let expired = s
            .stats()
            .refused_expired
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(expired, 2, "both counted as refused after waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_to_a_waiter_that_gave_up_comes_back() {
        let s = slots(1, 8, None);
        let held = s.acquire(None, 0).await.unwrap();
        let w = s.clone();
        let gave_up = tokio::spawn(async move { w.acquire(None, 0).await.map(drop) });
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        assert_eq!(s.available(), 1);
        // Handed over, then the receiver dropped unread: the permit inside comes back.
        let held = s.acquire(None, 0).await.unwrap();
        let w = s.clone();
        let racing = tokio::spawn(async move { w.acquire(None, 0).await });
        tokio::task::yield_now().await;
        drop(held);
        drop(racing.await.unwrap().unwrap());
        assert_eq!(s.available(), 1);
    }

    /// On the real clock (the queue's instants are std's): CoDel's arithmetic itself is
    /// tested on synthetic time in `codel` and `wait_queue`; this checks that `Slots`
    /// applies it. The margins are wide (a 200 ms target against waits of 500 ms and
    /// 20 ms), so a slow machine cannot flip an outcome.
    #[tokio::test]
    async fn an_overloaded_queue_sheds_the_old_and_serves_the_newest_first() {
        let codel = Codel {
            target: Some(200 * MS),
            ..Codel::new(10 * MS, true)
        };
        let s = slots(1, 64, Some(codel));
        let held = s.acquire(None, 0).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = |name: &'static str| {
            let (s, tx) = (s.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send((name, s.acquire(None, 0).await));
            });
        };
        // Spawned one at a time, each in line before the next (a current-thread runtime:
        // the spawned task runs at the yield).
        for name in ["old-a", "old-b"] {
            waiter(name);
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(500 * MS).await;
        for name in ["young-e", "young-f"] {
            waiter(name);
            tokio::task::yield_now().await;
        }
        assert_eq!(s.waiting(), 4);
        // First release: the delay (500 ms) is above the target for the first time: FIFO.
        drop(held);
        let (name, a) = rx.recv().await.unwrap();
        assert_eq!(name, "old-a");
        let a = a.unwrap();
        // 20 ms later (over the interval) its slot comes back: overloaded now, so the
        // waiter older than the target is refused and the newest young one served first.
        tokio::time::sleep(20 * MS).await;
        drop(a);
        let (mut shed, mut served) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            match rx.recv().await.unwrap() {
                (name, Err(QueueRefusal::Shed { .. })) => shed.push(name),
                (name, Ok(p)) => served.push((name, p)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(shed, ["old-b"]);
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].0, "young-f");
        served.clear();
        let (name, e) = rx.recv().await.unwrap();
        assert_eq!(name, "young-e");
        drop(e.unwrap());
        assert_eq!(s.available(), 1);
    }
}

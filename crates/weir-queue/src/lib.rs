//! The admission queue: where a request waits for what it needs (a worker of the pool, a
//! connection to an upstream, a slot of its route's `max_concurrency`), one set of rules
//! for every backend, so the front door's answers to overload are the same whichever
//! backend serves:
//!
//! - [`QueuePolicy`]: `[queue]`'s bound (`max_size`, [`QueueRefusal::Full`] at once), its
//!   timeout, and the request's own deadline: a wait ends at whichever comes first
//!   ([`Expiry`]), answered [`QueueRefusal::Timeout`] or [`QueueRefusal::Deadline`];
//! - [`admission`]: a request whose expected wait (the work ahead of it over the workers)
//!   is beyond its budget (its route's delay target, [`Codel::target`]) is refused at
//!   arrival ([`QueueRefusal::Predicted`]);
//! - [`demand`]: rate overload, told apart from a closed loop's standing queue: while
//!   new demand outruns the workers, admission holds arrivals to a much shorter target
//!   ([`Codel::overload_target`]);
//! - [`codel`]: CoDel's control law with adaptive LIFO ([`QueueRefusal::Shed`]), the
//!   backstop when a prediction was wrong ([`Codel::shed_target`]);
//! - [`WaitQueue`]: the waiters in the order they are served, with CoDel's state;
//! - [`Slots`]: a counted resource (an upstream's connections, a route's concurrency)
//!   whose waiters wait in a [`WaitQueue`] under a [`QueuePolicy`]; the pool (weir-pool)
//!   keeps its own [`WaitQueue`] because a worker that frees starts the next request
//!   itself, in the same step;
//! - [`QueuePlace`]: a place held in a backend's queue by a request that waits in front
//!   of it (for its route's slot), so the bound and the depth count every waiter once;
//! - [`ServiceTime`]: the typical time a request holds what it waited for, which the
//!   delay target and prefetch offers are judged by.
//!
//! Time-dependent parts are pure functions of instants (CoDel, expiries) or run on tokio's
//! clock, so they are tested on synthetic or paused time. See docs/architecture.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod codel;
pub mod demand;
mod service_time;
mod slots;
mod wait_queue;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use weir_errors::ErrorClass;

pub use admission::Budget;
pub use codel::{Codel, CodelState};
pub use demand::{Demand, Judge as DemandJudge};
pub use service_time::ServiceTime;
pub use slots::{SlotPermit, Slots};
pub use wait_queue::{WaitQueue, Waiting};

/// Why a request's wait in the queue ended without what it waited for.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The queue is at its bound.
    #[error("{max} requests already wait")]
    Full {
        /// The bound.
        max: usize,
    },
    /// The request's fairness key (`[queue] fair_key`: its client, say) already has
    /// `per_key_max` requests waiting.
    #[error(
        "{max} requests of the same fair_key (per_key_max) already wait; others are served in turn"
    )]
    KeyFull {
        /// `per_key_max`.
        max: usize,
    },
    /// Nothing freed within the queue timeout.
    #[error("nothing became free within {0:?}")]
    Timeout(Duration),
    /// Shed: the queue's delay stayed above the target for the whole CoDel interval and
    /// the request waited longer than the target.
    #[error(
        "overload: the queue's delay has stayed above {target:?} for over {interval:?}, so \
         requests waiting longer than {target:?} are refused and the others served fast"
    )]
    Shed {
        /// The delay target.
        target: Duration,
        /// The interval.
        interval: Duration,
    },
    /// The request's deadline passed while it waited.
    #[error("the request's deadline passed while it waited")]
    Deadline,
    /// Refused at arrival: the work ahead of it would take longer than it may wait.
    #[error(
        "overload: the requests ahead would take about {expected:?} to clear, more than {} \
         ({:?}); refused at once rather than after waiting",
        budget.name(),
        budget.duration()
    )]
    Predicted {
        /// The expected wait.
        expected: Duration,
        /// What it was judged against.
        budget: Budget,
    },
}

impl QueueRefusal {
    /// The attribution class (`x-weir-error`, access log, metric label).
    pub fn class(&self) -> ErrorClass {
        match self {
            QueueRefusal::Full { .. }
            | QueueRefusal::KeyFull { .. }
            | QueueRefusal::Predicted { .. } => ErrorClass::QueueFull,
            QueueRefusal::Timeout(_) | QueueRefusal::Shed { .. } => ErrorClass::QueueTimeout,
            QueueRefusal::Deadline => ErrorClass::Deadline,
        }
    }

    /// The Retry-After (seconds) the refusal itself suggests: for one refused at arrival,
    /// when the queue ahead should have drained to its budget; else `None` (the
    /// configured `[queue] retry_after`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            QueueRefusal::Predicted { expected, budget } => {
                Some(admission::retry_after(*expected, budget.duration()))
            }
            _ => None,
        }
    }
}

/// When a request's wait ends, and how it is answered then: whichever of the queue
/// timeout, its deadline and (while the queue is overloaded) the delay target it was
/// admitted under comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// When.
    pub at: Instant,
    /// Which limit it is.
    pub why: ExpiryWhy,
}

/// Which limit ends a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryWhy {
    /// `[queue] timeout` (this long).
    QueueTimeout(Duration),
    /// The request's deadline.
    Deadline,
    /// The delay target of an overloaded queue (this long).
    Shed(Duration),
}

impl Expiry {
    /// What the wait has left at `now`.
    pub fn left(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }
}

/// `[queue]`: the bound, the timeout and CoDel, as every part of the queue applies them.
#[derive(Debug, Clone, Copy)]
pub struct QueuePolicy {
    /// Most requests waiting at once (`[queue] max_size`).
    pub max_size: usize,
    /// Longest wait (`[queue] timeout`).
    pub timeout: Duration,
    /// Delay-based shedding; `None`: plain FIFO with the timeout.
    pub codel: Option<Codel>,
    /// Fair queueing is on (`[queue] fair_key`): waiters are served round robin across
    /// their keys.
    pub fair: bool,
    /// Most requests of one fairness key waiting at once (`[queue] per_key_max`).
    pub per_key_max: Option<usize>,
    /// Refuse at arrival a request whose expected wait is beyond its budget
    /// (`[queue] admission`, see [`admission`]).
    pub admission: bool,
}

impl QueuePolicy {
    /// When a wait that starts at `now` ends: the queue timeout or the request's
    /// `deadline`, whichever is sooner; a deadline already past is refused at once.
    pub fn expiry(&self, now: Instant, deadline: Option<Instant>) -> Result<Expiry, QueueRefusal> {
        match deadline {
            Some(d) if d <= now => Err(QueueRefusal::Deadline),
            Some(d) if d - now < self.timeout => Ok(Expiry {
                at: d,
                why: ExpiryWhy::Deadline,
            }),
            _ => Ok(Expiry {
                at: now + self.timeout,
                why: ExpiryWhy::QueueTimeout(self.timeout),
            }),
        }
    }

    /// `expiry`, shortened to the delay target when the queue is overloaded.
    pub fn capped(&self, expiry: Expiry, now: Instant, shedding: Option<Duration>) -> Expiry {
        match shedding {
            Some(target) if now + target < expiry.at => Expiry {
                at: now + target,
                why: ExpiryWhy::Shed(target),
            },
            _ => expiry,
        }
    }

    /// The delay target of a request whose route's mean service time is `mean` (`None`
    /// without CoDel): what admission at arrival holds its wait to.
    pub fn target(&self, mean: Option<Duration>) -> Option<Duration> {
        self.codel.map(|c| c.target(mean, self.timeout))
    }

    /// The delay target while the queue is rate-overloaded ([`demand`]; `None` without
    /// CoDel), given the request's route's mean service time.
    pub fn overload_target(&self, mean: Option<Duration>) -> Option<Duration> {
        self.codel.map(|c| c.overload_target(mean, self.timeout))
    }

    /// CoDel's shedding target now (`None` without CoDel), given the typical service
    /// time over every route.
    pub fn shed_target(&self, typical: Option<Duration>) -> Option<Duration> {
        self.codel.map(|c| c.shed_target(typical, self.timeout))
    }

    /// Admission at arrival (see [`admission`]): a request arriving at `now` whose wait
    /// ends at `expiry`, with delay target `target` (`None` without CoDel), behind work
    /// whose typical times sum to `ahead`, served by `servers` at once. Ok with the
    /// expected wait; refused when that is beyond its budget (only with `admission` on).
    pub fn admit(
        &self,
        now: Instant,
        expiry: &Expiry,
        target: Option<Duration>,
        ahead: Duration,
        servers: usize,
    ) -> Result<Duration, QueueRefusal> {
        let expected = admission::expected_wait(ahead, servers);
        if !self.admission {
            return Ok(expected);
        }
        let by_deadline = expiry.why == ExpiryWhy::Deadline;
        let budget = Budget::least(expiry.left(now), by_deadline, target);
        if admission::fits(expected, &budget) {
            Ok(expected)
        } else {
            Err(QueueRefusal::Predicted { expected, budget })
        }
    }

    /// The refusal of a request shed at `target`.
    pub fn shed(&self, target: Duration) -> QueueRefusal {
        QueueRefusal::Shed {
            target,
            interval: self.codel.map_or(Duration::ZERO, |c| c.interval),
        }
    }

    /// How a wait that reached its expiry is answered.
    pub fn refusal(&self, expiry: &Expiry) -> QueueRefusal {
        match expiry.why {
            ExpiryWhy::QueueTimeout(d) => QueueRefusal::Timeout(d),
            ExpiryWhy::Deadline => QueueRefusal::Deadline,
            ExpiryWhy::Shed(target) => self.shed(target),
        }
    }
}

/// What the queue decided, for metrics: refusals at arrival and after waiting, and the
/// predicted against the actual wait of the requests that waited.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Refused at arrival by the prediction ([`QueueRefusal::Predicted`]).
    pub refused_at_arrival: AtomicU64,
    /// Refused after waiting: shed by CoDel.
    pub refused_shed: AtomicU64,
    /// Refused after waiting: the queue timeout or the request's deadline.
    pub refused_expired: AtomicU64,
    /// Requests that waited and were served (handed a worker or offered behind one).
    pub waited: AtomicU64,
    /// Their predicted waits, summed (microseconds).
    pub predicted_us: AtomicU64,
    /// Their actual waits, summed (microseconds).
    pub actual_us: AtomicU64,
    /// Of those, the ones that waited more than twice their prediction plus the target's
    /// floor (an estimate that was badly low).
    pub underestimated: AtomicU64,
    /// Times the queue became rate-overloaded ([`demand`]).
    pub rate_overloads: AtomicU64,
    /// Rate-overloaded now (0 or 1).
    pub rate_overloaded: AtomicU64,
}

impl QueueStats {
    /// One waiter served after `actual`, predicted `predicted`.
    pub fn served_after(&self, predicted: Duration, actual: Duration) {
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.predicted_us
            .fetch_add(micros(predicted), Ordering::Relaxed);
        self.actual_us.fetch_add(micros(actual), Ordering::Relaxed);
        if actual > predicted * 2 + UNDERESTIMATE_SLACK {
            self.underestimated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One refusal, counted by its kind.
    pub fn refused(&self, r: &QueueRefusal) {
        let c = match r {
            QueueRefusal::Predicted { .. } => &self.refused_at_arrival,
            QueueRefusal::Shed { .. } => &self.refused_shed,
            QueueRefusal::Timeout(_) | QueueRefusal::Deadline => &self.refused_expired,
            QueueRefusal::Full { .. } | QueueRefusal::KeyFull { .. } => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A wait counts as underestimated when it is more than twice its prediction plus this.
pub const UNDERESTIMATE_SLACK: Duration = Duration::from_millis(20);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Requests that wait in front of a backend's queue (for their route's slot): they count
/// against the backend queue's bound and in its depth, once each.
#[derive(Debug, Default, Clone)]
pub struct OutsideWaits(Arc<AtomicUsize>);

impl OutsideWaits {
    /// How many wait now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// One more waits, unless `depth` (the backend's whole queue, these included) is at
    /// `max` already.
    pub fn enter(&self, depth: usize, max: usize) -> Result<QueuePlace, QueueRefusal> {
        if depth >= max {
            return Err(QueueRefusal::Full { max });
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(QueuePlace(self.0.clone()))
    }
}

/// A place in a backend's queue held by a request waiting in front of it; given back when
/// dropped.
#[derive(Debug)]
pub struct QueuePlace(Arc<AtomicUsize>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> QueuePolicy {
        QueuePolicy {
            max_size: 4,
            timeout: 1000 * MS,
            codel: Some(Codel {
                target: None,
                interval: 100 * MS,
                lifo: true,
                factor: Codel::FACTOR,
                min_target: Codel::MIN_TARGET,
                rate_overload: true,
            }),
            fair: false,
            per_key_max: None,
            admission: true,
        }
    }

    #[test]
    fn a_wait_ends_at_the_timeout_or_the_deadline_whichever_is_sooner() {
        let p = policy();
        let now = Instant::now();
        let e = p.expiry(now, None).unwrap();
        assert_eq!(
            (e.at, e.why),
            (now + 1000 * MS, ExpiryWhy::QueueTimeout(1000 * MS))
        );
        assert_eq!(p.refusal(&e), QueueRefusal::Timeout(1000 * MS));
        let e = p.expiry(now, Some(now + 300 * MS)).unwrap();
        assert_eq!((e.at, e.why), (now + 300 * MS, ExpiryWhy::Deadline));
        assert_eq!(p.refusal(&e).class(), ErrorClass::Deadline);
        let e = p.expiry(now, Some(now + 3000 * MS)).unwrap();
        assert_eq!(e.why, ExpiryWhy::QueueTimeout(1000 * MS));
        assert_eq!(p.expiry(now, Some(now)), Err(QueueRefusal::Deadline));
    }

    #[test]
    fn an_overloaded_queue_caps_a_new_wait_at_the_target() {
        let p = policy();
        let now = Instant::now();
        let e = p.expiry(now, None).unwrap();
        let capped = p.capped(e, now, Some(500 * MS));
        assert_eq!(
            (capped.at, capped.why),
            (now + 500 * MS, ExpiryWhy::Shed(500 * MS))
        );
        assert_eq!(p.refusal(&capped).class(), ErrorClass::QueueTimeout);
        // A sooner deadline stays.
        let e = p.expiry(now, Some(now + 200 * MS)).unwrap();
        assert_eq!(p.capped(e, now, Some(500 * MS)), e);
        assert_eq!(p.capped(e, now, None), e);
    }

    #[test]
    fn the_shedding_target_follows_the_service_time_between_its_floor_and_the_timeout() {
        let p = policy();
        assert_eq!(p.shed_target(None), Some(Codel::SHED_MIN));
        assert_eq!(p.shed_target(Some(200 * MS)), Some(800 * MS));
        assert_eq!(p.shed_target(Some(2000 * MS)), Some(1000 * MS));
        assert_eq!(QueuePolicy { codel: None, ..p }.shed_target(Some(MS)), None);
    }

    #[test]
    fn the_default_target_is_a_few_times_the_routes_own_time() {
        let c = Codel::new(100 * MS, true);
        let timeout = 10_000 * MS;
        assert_eq!(c.target(Some(40 * MS), timeout), 80 * MS);
        assert_eq!(c.target(Some(20 * MS), timeout), Codel::MIN_TARGET);
        assert_eq!(c.target(Some(5000 * MS), timeout), timeout);
        assert_eq!(c.target(Some(MS), timeout), Codel::MIN_TARGET);
        assert_eq!(c.target(None, timeout), Codel::MIN_TARGET);
        let fixed = Codel {
            target: Some(5 * MS),
            ..c
        };
        assert_eq!(fixed.target(Some(5000 * MS), timeout), 5 * MS);
        assert_eq!(fixed.shed_target(Some(5000 * MS), timeout), 5 * MS);
    }

    #[test]
    fn a_request_whose_wait_ahead_exceeds_its_budget_is_refused_at_arrival() {
        let p = QueuePolicy {
            codel: Some(Codel::new(100 * MS, true)),
            ..policy()
        };
        let now = Instant::now();
        let e = p.expiry(now, None).unwrap();
        let target = p.target(Some(30 * MS));
        assert_eq!(target, Some(60 * MS));
        // 2 workers, 120 ms of work ahead: 60 ms, just within the target.
        assert_eq!(p.admit(now, &e, target, 120 * MS, 2), Ok(60 * MS));
        // More ahead: 70 ms, refused at once, queue-full with Retry-After 1.
        let r = p.admit(now, &e, target, 140 * MS, 2).unwrap_err();
        assert_eq!(
            r,
            QueueRefusal::Predicted {
                expected: 70 * MS,
                budget: Budget::Target(60 * MS)
            }
        );
        assert_eq!(r.class(), ErrorClass::QueueFull);
        assert_eq!(r.retry_after(), Some(1));
        // A short deadline is the budget when it is the least.
        let e = p.expiry(now, Some(now + 30 * MS)).unwrap();
        let r = p.admit(now, &e, target, 80 * MS, 2).unwrap_err();
        assert!(
            matches!(r, QueueRefusal::Predicted { budget: Budget::Deadline(d), .. } if d == 30 * MS)
        );
        // Without CoDel only the timeout and the deadline count.
        let e = p.expiry(now, None).unwrap();
        assert!(p.admit(now, &e, None, 1000 * MS, 2).is_ok());
        // Admission off: every arrival is admitted, its prediction still returned.
        let off = QueuePolicy {
            admission: false,
            ..p
        };
        assert_eq!(off.admit(now, &e, target, 10_000 * MS, 2), Ok(5000 * MS));
    }

    #[test]
    fn outside_waits_count_until_their_place_drops_and_respect_the_bound() {
        let w = OutsideWaits::default();
        let a = w.enter(0, 2).unwrap();
        let b = w.enter(w.count(), 2).unwrap();
        assert_eq!(w.count(), 2);
        assert_eq!(
            w.enter(w.count(), 2).unwrap_err(),
            QueueRefusal::Full { max: 2 }
        );
        drop((a, b));
        assert_eq!(w.count(), 0);
    }
}

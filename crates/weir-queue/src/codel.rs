//! CoDel's control law for the admission queue, as a pure state machine over instants (no
//! clock of its own, no locks), so it is tested on synthetic time.
//!
//! The queue's delay is the age of its oldest live waiter, looked at whenever what it
//! waits for (a worker, an upstream connection) frees. When it has stayed above the delay
//! target for a whole interval, the queue is overloaded: waiters older than the target are
//! refused, new arrivals wait at most the target, the newest is served first (adaptive
//! LIFO), and the pool offers nothing behind busy workers. The state ends when the delay
//! falls under half the target or the queue empties. This is CoDel as Facebook's "Fail at
//! Scale" applies it to requests: a load far above capacity turns into fast 503s for the
//! excess and short waits for the rest, instead of every admitted request waiting out a
//! long FIFO.

use std::time::{Duration, Instant};

/// `[queue]`'s CoDel settings, and the delay targets.
///
/// Two targets: each route's *delay target* ([`Codel::target`]: `factor` times the
/// route's own mean service time, at least `min_target`), which admission at arrival
/// (`crate::admission`) holds the queue to, so a 20 ms route's queue stands at tens of
/// milliseconds and a 5 s report route keeps its own; and CoDel's *shedding target*
/// ([`Codel::shed_target`]: 4 times the typical time over every route, at least 500 ms),
/// past which an admitted request that has waited is refused once the queue has been
/// overloaded for an interval. The second is a backstop for when the prediction is
/// wrong (a request stuck behind one far slower than its route's estimate, say): an
/// admitted request keeps its place unless its wait runs that long.
#[derive(Debug, Clone, Copy)]
pub struct Codel {
    /// Both targets, fixed for every route; `None`: automatic.
    pub target: Option<Duration>,
    /// How long the queue's delay must stay above the shedding target before requests
    /// are shed.
    pub interval: Duration,
    /// Serve the newest waiter first while overloaded.
    pub lifo: bool,
    /// The automatic delay target is this many times the route's mean service time
    /// (`[queue] target_factor`).
    pub factor: u32,
    /// ... and at least this (`[queue] min_target`).
    pub min_target: Duration,
    /// While new demand outruns the workers, hold arrivals to the overload target
    /// (`crate::demand`, `[queue] rate_overload`).
    pub rate_overload: bool,
}

impl Codel {
    /// The default `factor`: a standing queue of a couple of requests per worker.
    pub const FACTOR: u32 = 2;
    /// The default floor of the automatic delay target: under it, timer and scheduling
    /// noise on a loaded machine, and a single stall's effect on the mean, are as large
    /// as the waits judged.
    pub const MIN_TARGET: Duration = Duration::from_millis(50);
    /// The floor of the delay target while the queue is rate-overloaded: under it, the
    /// prediction is finer than the timers and scheduling it is made of.
    pub const OVERLOAD_MIN: Duration = Duration::from_millis(1);
    /// The automatic shedding target's multiple of the typical service time.
    pub const SHED_FACTOR: u32 = 4;
    /// The automatic shedding target's floor: a wait people hardly notice; a lower floor
    /// would shed a request admitted behind a briefly slow one.
    pub const SHED_MIN: Duration = Duration::from_millis(500);

    /// CoDel with the default automatic targets.
    pub fn new(interval: Duration, lifo: bool) -> Codel {
        Codel {
            target: None,
            interval,
            lifo,
            factor: Codel::FACTOR,
            min_target: Codel::MIN_TARGET,
            rate_overload: false,
        }
    }

    /// The delay target of a request whose route's mean service time is `mean` (`None`:
    /// nothing measured yet), given the queue timeout: the configured `target`, else
    /// `factor` times `mean`, at least `min_target`, at most the timeout.
    pub fn target(&self, mean: Option<Duration>, queue_timeout: Duration) -> Duration {
        self.target.unwrap_or_else(|| {
            (mean.unwrap_or_default() * self.factor)
                .max(self.min_target)
                .min(queue_timeout)
        })
    }

    /// The delay target of a request whose route's mean service time is `mean` while the
    /// queue is rate-overloaded (`crate::demand`): the configured `target`, else `mean`
    /// (about one request per worker ahead), at least [`Codel::OVERLOAD_MIN`], at most
    /// the usual target.
    pub fn overload_target(&self, mean: Option<Duration>, queue_timeout: Duration) -> Duration {
        self.target.unwrap_or_else(|| {
            mean.unwrap_or_default()
                .max(Codel::OVERLOAD_MIN)
                .min(self.target(mean, queue_timeout))
        })
    }

    /// CoDel's shedding target, given the typical service time over every route and the
    /// queue timeout: the configured `target`, else [`Codel::SHED_FACTOR`] times
    /// `typical`, at least [`Codel::SHED_MIN`], at most the timeout.
    pub fn shed_target(&self, typical: Option<Duration>, queue_timeout: Duration) -> Duration {
        self.target.unwrap_or_else(|| {
            (typical.unwrap_or_default() * Codel::SHED_FACTOR)
                .max(Codel::SHED_MIN)
                .min(queue_timeout)
        })
    }
}

/// The state of the control law.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodelState {
    /// Since when the delay has been above the target (CoDel's first-above time).
    above_since: Option<Instant>,
    /// Shedding (CoDel's dropping state).
    overloaded: bool,
}

impl CodelState {
    /// What the queue waits for freed at `now` with the oldest live waiter waiting since `oldest` (`None`:
    /// nobody waits). Returns the target while overloaded.
    pub fn on_release(
        &mut self,
        now: Instant,
        oldest: Option<Instant>,
        target: Duration,
        interval: Duration,
    ) -> Option<Duration> {
        let Some(oldest) = oldest else {
            self.reset();
            return None;
        };
        let delay = now.saturating_duration_since(oldest);
        if self.overloaded {
            if delay < target / 2 {
                self.reset();
            }
        } else if delay > target {
            let since = *self.above_since.get_or_insert(now);
            self.overloaded = now.saturating_duration_since(since) >= interval;
        } else {
            self.above_since = None;
        }
        self.overloaded.then_some(target)
    }

    /// The queue emptied (what it waits for went unused): not overloaded.
    pub fn reset(&mut self) {
        *self = CodelState::default();
    }

    /// Whether the queue is overloaded now.
    pub fn overloaded(&self) -> bool {
        self.overloaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const TARGET: Duration = Duration::from_millis(500);
    const INTERVAL: Duration = Duration::from_millis(100);

    #[test]
    fn the_overload_target_is_one_service_time_at_least_a_millisecond() {
        let c = Codel::new(INTERVAL, true);
        let timeout = 10_000 * MS;
        assert_eq!(c.overload_target(Some(3 * MS), timeout), 3 * MS);
        assert_eq!(c.overload_target(Some(MS / 4), timeout), MS);
        assert_eq!(c.overload_target(None, timeout), MS);
        // Never above the usual target: a slow route keeps its own.
        assert_eq!(c.overload_target(Some(800 * MS), timeout), 800 * MS);
        assert_eq!(c.overload_target(Some(800 * MS), 500 * MS), 500 * MS);
        // A configured target is kept whatever the demand.
        let fixed = Codel {
            target: Some(20 * MS),
            ..c
        };
        assert_eq!(fixed.overload_target(Some(3 * MS), timeout), 20 * MS);
    }

    #[test]
    fn a_delay_above_target_for_a_whole_interval_overloads() {
        let t0 = Instant::now();
        let mut c = CodelState::default();
        // The oldest waiter has waited 600 ms: above the target, first time.
        let oldest = Some(t0);
        assert_eq!(c.on_release(t0 + 600 * MS, oldest, TARGET, INTERVAL), None);
        // Still above 50 ms later: not yet a whole interval.
        assert_eq!(c.on_release(t0 + 650 * MS, oldest, TARGET, INTERVAL), None);
        assert!(!c.overloaded());
        // A whole interval above: overloaded, shedding at the target.
        assert_eq!(
            c.on_release(t0 + 700 * MS, oldest, TARGET, INTERVAL),
            Some(TARGET)
        );
        assert!(c.overloaded());
    }

    #[test]
    fn dipping_under_the_target_restarts_the_interval() {
        let t0 = Instant::now();
        let mut c = CodelState::default();
        c.on_release(t0 + 600 * MS, Some(t0), TARGET, INTERVAL);
        // The oldest now waited only 100 ms: under the target, the count restarts.
        c.on_release(t0 + 650 * MS, Some(t0 + 550 * MS), TARGET, INTERVAL);
        let later = t0 + 1300 * MS;
        assert_eq!(c.on_release(later, Some(t0), TARGET, INTERVAL), None);
        assert_eq!(
            c.on_release(later + INTERVAL, Some(t0), TARGET, INTERVAL),
            Some(TARGET)
        );
    }

    #[test]
    fn overload_ends_under_half_the_target_or_when_the_queue_empties() {
        let t0 = Instant::now();
        let mut c = CodelState::default();
        c.on_release(t0 + 600 * MS, Some(t0), TARGET, INTERVAL);
        c.on_release(t0 + 700 * MS, Some(t0), TARGET, INTERVAL);
        assert!(c.overloaded());
        // 300 ms: under the target but not under half of it: still overloaded.
        let now = t0 + 1000 * MS;
        assert_eq!(
            c.on_release(now, Some(now - 300 * MS), TARGET, INTERVAL),
            Some(TARGET)
        );
        // 200 ms: under half: the state ends.
        assert_eq!(
            c.on_release(now, Some(now - 200 * MS), TARGET, INTERVAL),
            None
        );
        assert!(!c.overloaded());
        // Overloaded again, then the queue empties.
        c.on_release(now + 600 * MS, Some(now), TARGET, INTERVAL);
        c.on_release(now + 700 * MS, Some(now), TARGET, INTERVAL);
        assert!(c.overloaded());
        assert_eq!(c.on_release(now + 800 * MS, None, TARGET, INTERVAL), None);
        assert_eq!(c, CodelState::default());
    }

    #[test]
    fn a_long_but_steady_queue_under_the_target_never_sheds() {
        // A saturated closed-loop benchmark: always many waiters, each briefly.
        let t0 = Instant::now();
        let mut c = CodelState::default();
        for i in 0..10_000u32 {
            let now = t0 + i * MS;
            assert_eq!(
                c.on_release(now, Some(now - 400 * MS), TARGET, INTERVAL),
                None
            );
        }
    }
}

//! The time a request holds what it waited for (a worker, an upstream connection, a
//! route's slot): its *typical* time (quick to rise, slow to fall: what CoDel's target and
//! prefetch offers judge waits by, erring on the long side) and its *mean* (a plain moving
//! mean: what admission at arrival predicts waits and sets each route's target from, so a
//! single stall does not refuse the arrivals behind it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most one sample counts for in the moving mean, in multiples of the mean: a route
/// whose requests vary (one in ten a hundred times the rest) is still measured right; a
/// single stall far beyond that is not taken for the route's time.
pub const MEAN_SAMPLE_CAP: u64 = 16;

/// The typical time a request of one route (or of the whole pool) holds a worker: an
/// exponentially weighted mean that rises half way to a longer sample at once (a slow
/// phase is seen within a request or two, before anything is offered behind it) and falls
/// an eighth of the way to a shorter one.
#[derive(Debug, Default)]
pub struct ServiceTime {
    /// Microseconds; 0: no sample yet.
    us: AtomicU64,
    /// The plain moving mean (an eighth of the way to each sample), microseconds; 0: no
    /// sample yet.
    mean_us: AtomicU64,
}

impl ServiceTime {
    /// No sample yet.
    pub fn new() -> ServiceTime {
        ServiceTime::default()
    }

    /// Folds in one request's time on a worker. Concurrent updates may lose one sample to
    /// another: it is an estimate, not a count.
    pub fn record(&self, held: Duration) {
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        let old = self.us.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else if us > old {
            old + (us - old) / 2
        } else {
            old - (old - us) / 8
        };
        self.us.store(new.max(1), Ordering::Relaxed);
        let old = self.mean_us.load(Ordering::Relaxed);
        let mean = if old == 0 {
            us
        } else if us > old {
            // One stall (a worker the kernel did not run, a GC pause) is counted as at
            // most MEAN_SAMPLE_CAP times the mean: a 50 ms stall on a 0.2 ms route would
            // otherwise raise the mean thirty-fold and refuse the arrivals behind it. A
            // route that really slowed down is followed within a few requests all the same.
            let us = us.min(old.saturating_mul(MEAN_SAMPLE_CAP));
            old + (us - old) / 8
        } else {
            old - (old - us) / 8
        };
        self.mean_us.store(mean.max(1), Ordering::Relaxed);
    }

    /// The moving mean, `None` before the first sample.
    pub fn mean(&self) -> Option<Duration> {
        match self.mean_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The typical time, `None` before the first sample.
    pub fn typical(&self) -> Option<Duration> {
        match self.us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn service_time_rises_fast_and_falls_slowly() {
        let t = ServiceTime::new();
        assert_eq!(t.typical(), None);
        t.record(100 * MS);
        assert_eq!(t.typical(), Some(100 * MS));
        t.record(300 * MS);
        assert_eq!(t.typical(), Some(200 * MS), "half way up at once");
        t.record(Duration::ZERO);
        assert_eq!(t.typical(), Some(175 * MS), "an eighth of the way down");
        for _ in 0..200 {
            t.record(Duration::ZERO);
        }
        let low = t.typical().expect("never back to 'no sample'");
        assert!(low <= Duration::from_micros(10), "{low:?}");
    }

    #[test]
    fn the_mean_moves_an_eighth_of_the_way_either_way() {
        let t = ServiceTime::new();
        assert_eq!(t.mean(), None);
        t.record(20 * MS);
        assert_eq!(t.mean(), Some(20 * MS));
        // One stall of 180 ms: the mean rises by a fifth of that, not half.
        t.record(180 * MS);
        assert_eq!(t.mean(), Some(40 * MS));
        t.record(40 * MS);
        assert_eq!(t.mean(), Some(40 * MS));
        t.record(Duration::ZERO);
        assert_eq!(t.mean(), Some(35 * MS));
    }

    #[test]
    fn one_stall_counts_for_at_most_sixteen_means() {
        let us = Duration::from_micros(1);
        let t = ServiceTime::new();
        t.record(200 * us);
        // A 50 ms stall on a 0.2 ms route: counted as 3.2 ms.
        t.record(50 * MS);
        assert_eq!(t.mean(), Some(575 * us));
        // The typical time (offers, CoDel) still rises half way at once.
        assert!(t.typical().unwrap() > 25 * MS);
        // A route that really slowed down (0.2 ms -> 20 ms) is followed within a few
        // requests all the same.
        let t = ServiceTime::new();
        t.record(200 * us);
        for _ in 0..30 {
            t.record(20 * MS);
        }
        assert!(t.mean().unwrap() > 15 * MS, "{:?}", t.mean());
        // One in ten a hundred times the rest: the mean is the true one (about 10.9 ms).
        let t = ServiceTime::new();
        for i in 0..2000 {
            t.record(if i % 10 == 0 { 100 * MS } else { MS });
        }
        let m = t.mean().unwrap();
        assert!(m > 5 * MS && m < 20 * MS, "{m:?}");
    }
}

//! Admission at arrival: a request that would wait longer than it may is refused at once
//! (503 `queue-full`, with a Retry-After from the estimate) instead of after waiting out
//! its budget. Pure functions of durations, so they are tested on synthetic time.
//!
//! The expected wait of a new arrival is the typical service time of each request ahead
//! of it for what it needs (each judged by its own route's time, [`crate::ServiceTime`]),
//! summed, over the workers (or connections, or slots) that can take them: with `n`
//! workers, `n` requests ahead are cleared in about one service time. Requests already
//! running are not counted: a worker that frees is the first thing a new arrival waits
//! for, and on average it is half way through.
//!
//! Its budget is the least of what it may wait: the queue timeout, its own deadline, and
//! (with CoDel on) its route's delay target ([`crate::Codel::target`]: a few times the
//! route's own service time). So the queue never holds more than the workers can clear
//! within the target, and a request admitted keeps its place: it is refused after waiting
//! only if the estimate was wrong (CoDel's shedding, the timeout, its deadline).
//!
//! An arrival with nothing measured yet (no service time on its route or the pool) is
//! admitted: there is nothing to predict from, and CoDel and the timeout still bound it.

use std::time::Duration;

/// What a wait is judged against at arrival: the least of what the request may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `[queue] timeout`.
    QueueTimeout(Duration),
    /// What is left of the request's deadline.
    Deadline(Duration),
    /// Its route's delay target.
    Target(Duration),
}

impl Budget {
    /// How long.
    pub fn duration(&self) -> Duration {
        match *self {
            Budget::QueueTimeout(d) | Budget::Deadline(d) | Budget::Target(d) => d,
        }
    }

    /// The name used in messages and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Budget::QueueTimeout(_) => "the queue timeout",
            Budget::Deadline(_) => "what is left of its deadline",
            Budget::Target(_) => "its route's delay target",
        }
    }

    /// The least of `left` (what its expiry leaves it: the queue timeout or its deadline,
    /// `by_deadline` telling which) and the delay `target`, if any.
    pub fn least(left: Duration, by_deadline: bool, target: Option<Duration>) -> Budget {
        let left = if by_deadline {
            Budget::Deadline(left)
        } else {
            Budget::QueueTimeout(left)
        };
        match target {
            Some(t) if t < left.duration() => Budget::Target(t),
            _ => left,
        }
    }
}

/// The expected wait of a request arriving behind requests whose typical times sum to
/// `ahead`, served by `servers` workers (or connections, or slots) at once.
pub fn expected_wait(ahead: Duration, servers: usize) -> Duration {
    match u32::try_from(servers.max(1)) {
        Ok(n) => ahead / n,
        Err(_) => Duration::ZERO,
    }
}

/// Whether a request expected to wait `expected` fits its `budget`.
pub fn fits(expected: Duration, budget: &Budget) -> bool {
    expected <= budget.duration()
}

/// The Retry-After (whole seconds, at least 1) for a request refused at arrival: when the
/// queue ahead of it should have drained to its budget.
pub fn retry_after(expected: Duration, budget: Duration) -> u64 {
    let over = expected.saturating_sub(budget);
    let secs = over.as_secs() + u64::from(over.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_is_the_work_ahead_over_the_workers() {
        // 2 workers, 6 requests of 20 ms ahead: 60 ms.
        assert_eq!(expected_wait(6 * 20 * MS, 2), 60 * MS);
        // Mixed routes: each counts its own time.
        assert_eq!(expected_wait(20 * MS + 5000 * MS, 4), 1255 * MS);
        assert_eq!(expected_wait(Duration::ZERO, 4), Duration::ZERO);
        // No worker known: judged as one.
        assert_eq!(expected_wait(40 * MS, 0), 40 * MS);
    }

    #[test]
    fn the_budget_is_the_least_of_timeout_deadline_and_target() {
        let b = Budget::least(10_000 * MS, false, Some(60 * MS));
        assert_eq!(b, Budget::Target(60 * MS));
        let b = Budget::least(30 * MS, true, Some(60 * MS));
        assert_eq!(b, Budget::Deadline(30 * MS));
        let b = Budget::least(10_000 * MS, false, None);
        assert_eq!(b, Budget::QueueTimeout(10_000 * MS));
        assert!(fits(60 * MS, &Budget::Target(60 * MS)));
        assert!(!fits(61 * MS, &Budget::Target(60 * MS)));
    }

    #[test]
    fn retry_after_is_the_excess_in_whole_seconds_at_least_one() {
        assert_eq!(retry_after(80 * MS, 60 * MS), 1);
        assert_eq!(retry_after(2500 * MS, 500 * MS), 2);
        assert_eq!(retry_after(2501 * MS, 500 * MS), 3);
        assert_eq!(retry_after(MS, 60 * MS), 1);
    }
}

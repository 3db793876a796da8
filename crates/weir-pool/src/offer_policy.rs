//! When a waiting request may be offered behind a busy worker (prefetch), and when an
//! offer's holder is overdue: the decisions of `pool`, kept here as pure functions of
//! durations so they are tested on synthetic time.
//!
//! An offer trades a few tens of microseconds (the worker goes from one answer to the next
//! request without waiting for the master) against the one thing weir's dispatch exists to
//! avoid: a request waiting behind a slow one while another worker frees. So an offer is
//! made only where the wait it stakes is short against what the request may still wait:
//! - each route keeps its own typical service time ([`ServiceTime`], the time a request
//!   holds its worker, quick to rise and slow to fall); a request with no sample on its
//!   route is judged by the pool's;
//! - the expected wait behind a holder is what its current request has left of its
//!   route's typical time plus the typical time of each request already offered to it;
//! - an offer is made only when that wait is at most [`BUDGET_SHARE`]'s share of the
//!   request's remaining queue budget (the queue timeout or its deadline, whichever is
//!   sooner, less what it has waited already; with CoDel, no more than its route's delay
//!   target, what admission at arrival holds its wait to: so a 20 ms route under a 50 ms
//!   target is not offered behind a busy worker, while a 0.2 ms one is), never behind a request that has already
//!   run past [`OVERDUE_FACTOR`] times its typical time, and never on no estimate at all.
//!
//! The offered request stays a waiting request: its submitter's timer takes it back at the
//! end of its queue budget (`pool::Started`), and a worker that frees takes it over from an
//! overdue holder. So an offer can cost a request at most the wait it would have had in the
//! master's queue, never more.

use std::time::Duration;

pub use weir_queue::ServiceTime;

/// An offer is made when its expected wait is at most 1/`BUDGET_SHARE` of the request's
/// remaining queue budget: the holder would have to run that many times longer than its
/// typical time before the offer costs the request its budget (and the timer still takes
/// it back then).
pub(crate) const BUDGET_SHARE: u32 = 4;

/// A holder whose current request has run longer than this many times its route's typical
/// time is overdue: nothing more is offered behind it, and a worker that frees takes over
/// what is offered to it.
pub(crate) const OVERDUE_FACTOR: u32 = 2;

/// However short the typical time, a holder is not overdue before this (timer and
/// scheduling noise on a loaded machine).
pub(crate) const MIN_OVERDUE: Duration = Duration::from_millis(1);

/// Whether a request that has run `ran` is overdue against its `typical` time (an unknown
/// typical time: as soon as [`MIN_OVERDUE`] has passed).
pub(crate) fn overdue(ran: Duration, typical: Option<Duration>) -> bool {
    let limit = typical.map_or(MIN_OVERDUE, |t| (t * OVERDUE_FACTOR).max(MIN_OVERDUE));
    ran > limit
}

/// The expected wait of a request offered behind a holder whose current request has run
/// `ran` (typical time `current`), with requests of typical times `ahead` already offered
/// to it; `None` (offer nothing) when the holder is overdue or a time is unknown.
pub(crate) fn expected_wait(
    ran: Duration,
    current: Option<Duration>,
    ahead: impl IntoIterator<Item = Option<Duration>>,
) -> Option<Duration> {
    let current = current?;
    if overdue(ran, Some(current)) {
        return None;
    }
    ahead
        .into_iter()
        .try_fold(current.saturating_sub(ran), |w, t| Some(w + t?))
}

/// What a request may stake on an offer: what its expiry leaves it (`expiry_left`: the
/// queue timeout or its deadline) and, with CoDel, no more than its route's delay
/// `target` (the wait admission at arrival holds a request to: an offer commits it to one
/// worker's line, so on a loaded route the tail would otherwise be the offers'). The
/// target is not reduced by what the request has waited already: that is the expiry's.
pub(crate) fn budget_left(expiry_left: Duration, target: Option<Duration>) -> Duration {
    match target {
        Some(t) => expiry_left.min(t),
        None => expiry_left,
    }
}

/// Whether a request with `budget_left` of its queue budget may wait `expected` behind a
/// busy worker.
pub(crate) fn worth_offering(expected: Option<Duration>, budget_left: Duration) -> bool {
    expected.is_some_and(|w| w * BUDGET_SHARE <= budget_left)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_delay_target_bounds_what_an_offer_may_stake() {
        // A 20 ms route under a 50 ms target: behind a holder that starts a 23 ms request
        // now, the wait is 23 ms, more than a quarter of the 50 ms: no offer (it waits in
        // the master's queue for whichever worker frees first).
        let left = budget_left(10 * S, Some(50 * MS));
        assert_eq!(left, 50 * MS);
        assert!(!worth_offering(Some(23 * MS), left));
        // A 0.2 ms route under the same target: offered.
        assert!(worth_offering(Some(MS / 5), left));
        // The expiry still bounds it; without CoDel the expiry alone.
        assert_eq!(budget_left(5 * MS, Some(50 * MS)), 5 * MS);
        assert_eq!(budget_left(10 * S, None), 10 * S);
    }

    #[test]
    fn every_request_slow_at_the_default_budget_is_never_offered() {
        // Figure 3 of the paper: every request a 5 s query, `[queue] timeout = 10s`. A
        // request offered behind one that just started would expect 5 s, half of its
        // budget: it waits in the master's queue for the first worker that frees instead.
        let w = expected_wait(Duration::ZERO, Some(5 * S), []);
        assert_eq!(w, Some(5 * S));
        assert!(!worth_offering(w, 10 * S));
        // One-second requests: waits of 1 s and 2 s are within a quarter of 10 s, 3 s is
        // not: two offers, not three.
        let one = expected_wait(Duration::ZERO, Some(S), []);
        assert!(worth_offering(one, 10 * S));
        let two = expected_wait(Duration::ZERO, Some(S), [Some(S)]);
        assert_eq!(two, Some(2 * S));
        assert!(worth_offering(two, 10 * S));
        let three = expected_wait(Duration::ZERO, Some(S), [Some(S), Some(S)]);
        assert!(!worth_offering(three, 10 * S));
    }

    #[test]
    fn fast_requests_are_offered_five_deep() {
        let hello = Some(Duration::from_micros(150));
        let ahead = [hello; 4];
        let w = expected_wait(Duration::ZERO, hello, ahead);
        assert_eq!(w, Some(Duration::from_micros(750)));
        assert!(worth_offering(w, 10 * S));
        // Even with 100 ms of a deadline left.
        assert!(worth_offering(w, 100 * MS));
        // But not with a millisecond left.
        assert!(!worth_offering(w, MS));
    }

    #[test]
    fn the_budget_left_is_what_counts() {
        let w = expected_wait(Duration::ZERO, Some(200 * MS), []);
        assert!(worth_offering(w, 800 * MS));
        assert!(!worth_offering(w, 799 * MS));
    }

    #[test]
    fn a_holder_past_twice_its_typical_time_is_overdue_and_gets_nothing() {
        let typical = Some(100 * MS);
        assert!(!overdue(200 * MS, typical));
        assert!(overdue(201 * MS, typical));
        assert_eq!(expected_wait(201 * MS, typical, []), None);
        assert!(!worth_offering(None, 3600 * S));
        // What is left of the current request counts, not all of it.
        assert_eq!(expected_wait(60 * MS, typical, []), Some(40 * MS));
        // Running past its typical time but not yet overdue: nothing left is expected.
        assert_eq!(expected_wait(150 * MS, typical, [typical]), Some(100 * MS));
    }

    #[test]
    fn unknown_times_offer_nothing_and_are_overdue_after_a_millisecond() {
        assert_eq!(expected_wait(Duration::ZERO, None, []), None);
        assert_eq!(expected_wait(Duration::ZERO, Some(MS), [None]), None);
        assert!(!overdue(MS, None));
        assert!(overdue(2 * MS, None));
        // A very fast route is not overdue before the floor either.
        assert!(!overdue(MS, Some(Duration::from_micros(10))));
    }
}

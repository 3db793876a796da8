//! Rate overload: telling a queue that is long because many clients each wait for their
//! answer from one that is long because requests arrive faster than the workers clear
//! them. A pure state machine over counts (no clock, no locks), tested on its own.
//!
//! Admission holds the queue to each route's delay target ([`crate::Codel::target`]),
//! whose floor (`[queue] min_target`, 50 ms) is set for the first case. N clients that
//! each send their next request when the last is answered (a closed loop: `wrk -c50`, a
//! page's assets over one connection) keep N requests in the server whatever it does;
//! refusing one only brings it back at once, so they are queued. In the second case (an
//! open stream of clients, a spike of new visitors at twice capacity) every request
//! admitted beyond what the workers clear at once only waits longer, and the excess is
//! refused either way: the best answer is a short queue, fast 503s for the excess, and
//! admitted requests served about as fast as on an idle server.
//!
//! The signal is a *virtual queue*: new demand minus departures over the last second
//! ([`Demand::WINDOW`]), never below zero. New demand is every arrival except a client's
//! retry of a request refused a moment ago on the same connection (the listener tells
//! which, see the front's `ConnInfo`); a departure is a request a worker finished. A
//! closed loop of N clients keeps it at most N: each arrival follows a departure, and a
//! refused request's retry is not counted again. Requests arriving faster than they
//! leave grow it by the excess, admitted or refused. When it passes what the workers
//! hold plus what they clear within the delay target ([`Demand::threshold`]), more demand
//! has arrived than the delay target was meant to absorb: the queue is
//! *rate-overloaded*, and admission judges arrivals by the overload target
//! ([`crate::Codel::overload_target`]: about one request per worker ahead). It ends when
//! the virtual queue falls under half the threshold. Counting over a window, not since
//! the start, is what lets the demand that never departs (requests refused, or whose
//! client left before a worker took them) age out: a burst of refusals lasts at most a
//! window, and a server up for weeks carries no residue of its past.

use std::time::{Duration, Instant};

/// Buckets of the window.
const BUCKETS: usize = 10;

/// The virtual queue and the rate-overload state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// New demand minus departures in each tenth of the window, the newest at `head`.
    buckets: [i64; BUCKETS],
    head: usize,
    /// When the newest bucket began.
    head_since: Option<Instant>,
    /// Rate-overloaded now.
    overloaded: bool,
}

impl Demand {
    /// How far back demand and departures count.
    pub const WINDOW: Duration = Duration::from_secs(1);
    /// The least threshold: an excess of a few requests over a second is a burst (a page
    /// whose assets come at once to one slow worker), not yet a rate.
    pub const MIN_THRESHOLD: u64 = 16;

    /// What the workers hold plus what they clear within the delay `target` at the
    /// typical service time `typical`, with `workers` workers: the most a closed loop
    /// the target was meant to queue keeps in the server. `None` with nothing measured
    /// yet: never overloaded then. At least [`Demand::MIN_THRESHOLD`].
    pub fn threshold(workers: usize, typical: Option<Duration>, target: Duration) -> Option<u64> {
        let typical = typical.filter(|t| !t.is_zero())?;
        let per_worker = 1 + target.as_nanos() / typical.as_nanos();
        let workers = u128::try_from(workers.max(1)).unwrap_or(u128::MAX);
        let held = u64::try_from(per_worker.saturating_mul(workers)).unwrap_or(u64::MAX);
        Some(held.max(Demand::MIN_THRESHOLD))
    }

    /// A request arrived at `now` (`fresh`: new demand, not a retry of one just refused),
    /// judged against `threshold` ([`Demand::threshold`]). Returns whether the queue is
    /// rate-overloaded now, and whether it just became so.
    pub fn arrive(&mut self, now: Instant, fresh: bool, threshold: Option<u64>) -> (bool, bool) {
        self.advance(now);
        if fresh {
            self.buckets[self.head] += 1;
        }
        let was = self.overloaded;
        self.judge(threshold);
        (self.overloaded, self.overloaded && !was)
    }

    /// A worker finished a request at `now`, with `threshold` as it stands. Returns
    /// whether the queue is rate-overloaded now.
    pub fn depart(&mut self, now: Instant, threshold: Option<u64>) -> bool {
        self.advance(now);
        self.buckets[self.head] -= 1;
        self.judge(threshold);
        self.overloaded
    }

    /// Judges the state at `now` with no arrival or departure (the window moves on):
    /// whether the queue is rate-overloaded.
    pub fn judge_at(&mut self, now: Instant, threshold: Option<u64>) -> bool {
        self.advance(now);
        self.judge(threshold);
        self.overloaded
    }

    /// Rate-overloaded now.
    pub fn overloaded(&self) -> bool {
        self.overloaded
    }

    /// The virtual queue's length: new demand minus departures over the window.
    pub fn backlog(&self) -> u64 {
        u64::try_from(self.buckets.iter().sum::<i64>()).unwrap_or(0)
    }

    /// Moves the window on to `now`: buckets older than the window are emptied.
    fn advance(&mut self, now: Instant) {
        let width = Self::WINDOW / BUCKETS as u32;
        let Some(since) = self.head_since else {
            self.head_since = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed < width {
            return;
        }
        let steps = (elapsed.as_nanos() / width.as_nanos()).min(BUCKETS as u128) as usize;
        for _ in 0..steps {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = 0;
        }
        self.head_since = Some(if steps == BUCKETS {
            now
        } else {
            since + width * steps as u32
        });
    }

    fn judge(&mut self, threshold: Option<u64>) {
        let Some(threshold) = threshold else {
            self.overloaded = false;
            return;
        };
        let backlog = self.backlog();
        if self.overloaded {
            self.overloaded = backlog >= threshold / 2;
        } else {
            self.overloaded = backlog > threshold;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_threshold_is_what_the_workers_hold_and_clear_within_the_target() {
        // 4 workers, 1 ms requests, a 50 ms target: 4 running + 200 queued.
        assert_eq!(Demand::threshold(4, Some(MS), 50 * MS), Some(204));
        // A slow route: 4 workers, 100 ms requests, 200 ms target: 4 + 8, but a burst of
        // that many is not yet a rate.
        assert_eq!(Demand::threshold(4, Some(100 * MS), 200 * MS), Some(16));
        assert_eq!(Demand::threshold(8, Some(100 * MS), 200 * MS), Some(24));
        assert_eq!(Demand::threshold(4, None, 50 * MS), None);
        assert_eq!(Demand::threshold(4, Some(Duration::ZERO), 50 * MS), None);
    }

    #[test]
    fn a_closed_loop_never_overloads_however_often_it_is_refused() {
        // 50 clients, each sending its next request when the last is answered, 4,000
        // answers a second; the threshold is 204. Half of their requests are refused and
        // retried at once, for 10 s.
        let t = Some(204);
        let t0 = Instant::now();
        let mut d = Demand::default();
        for _ in 0..50 {
            assert_eq!(d.arrive(t0, true, t), (false, false));
        }
        for i in 0..80_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 125);
            if i % 2 == 0 {
                // Answered: the client's next request is new demand.
                d.depart(now, t);
                d.arrive(now, true, t);
            } else {
                // Refused: its retry is not.
                d.arrive(now, false, t);
            }
            assert!(!d.overloaded());
            assert!(d.backlog() <= 50);
        }
    }

    #[test]
    fn arrivals_faster_than_departures_overload_until_demand_falls() {
        let t = Some(204);
        let t0 = Instant::now();
        let mut d = Demand::default();
        // Twice capacity: 8,000 new requests a second, 4,000 answered, for 2 s.
        let mut entered = 0;
        let mut entered_at = None;
        for i in 0..8_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 250);
            for _ in 0..2 {
                let (_, began) = d.arrive(now, true, t);
                if began {
                    entered += 1;
                    entered_at.get_or_insert(now - t0);
                }
            }
            d.depart(now, t);
        }
        assert!(d.overloaded());
        assert_eq!(entered, 1, "entered once, not flapping");
        // The excess is 4 a millisecond: past 204 within about 51 ms.
        assert_eq!(entered_at, Some(Duration::from_micros(50_750)));
        // Over the window: a second's excess.
        assert!((3_900..=4_000).contains(&d.backlog()), "{}", d.backlog());
        // Demand falls to half capacity: the state ends once the excess has aged out of
        // the window and departures outnumber the new demand.
        let end = t0 + 2_000 * MS;
        let mut i = 0u32;
        while d.overloaded() {
            let now = end + Duration::from_micros(u64::from(i) * 500);
            d.arrive(now, true, t);
            d.depart(now, t);
            d.depart(now, t);
            i += 1;
            assert!(i < 10_000, "still overloaded 5 s later");
        }
        let took = Duration::from_micros(u64::from(i) * 500);
        assert!(took <= Demand::WINDOW, "ended after {took:?}");
    }

    #[test]
    fn refused_demand_ages_out_of_the_window() {
        // A burst of 300 arrivals that never depart (refused, or their clients left).
        let t = Some(204);
        let t0 = Instant::now();
        let mut d = Demand::default();
        for _ in 0..300 {
            d.arrive(t0, true, t);
        }
        assert!(d.overloaded());
        // A quiet second later, it is gone.
        assert!(d.judge_at(t0 + 500 * MS, t));
        assert!(!d.judge_at(t0 + 1_100 * MS, t));
        assert!(!d.depart(t0 + 1_100 * MS, t));
        assert_eq!(d.backlog(), 0);
        // Nothing measured: never overloaded.
        for _ in 0..300 {
            assert_eq!(d.arrive(t0 + 1_200 * MS, true, None), (false, false));
        }
    }
}

//! Rate overload: telling a queue that is long because many clients each wait for their
//! answer from one that is long because requests arrive faster than the workers clear
//! them. A pure state machine over instants (no clock of its own, no locks), tested on
//! synthetic time.
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
//! leave grow it by the excess, admitted or refused.
//!
//! Its *wait* is the time the workers would take to clear it: at the rate they have been
//! finishing requests over the same window (Little's law), or at the rate their mean
//! service time gives, whichever is faster. For a closed loop that is the loop's own
//! queueing time, N over the throughput, which the delay target was set to accept; for
//! new demand at twice capacity it grows by the excess, a second for each second.
//! Each rate covers the other's blind spot: the measured one is low at the start of a
//! busy spell after a quiet one (the window holds the quiet), the modelled one after a
//! stall (the mean holds the stalled samples). When it passes the delay target (and the virtual queue holds at least
//! [`Demand::MIN_EXCESS`]), more demand has arrived than the target was meant to absorb:
//! the queue is *rate-overloaded*, and admission judges arrivals by the overload target
//! ([`crate::Codel::overload_target`]: about one request per worker ahead). It ends when
//! the wait falls under half the target. Counting over a window, not since the start, is what lets the demand
//! that never departs (requests refused, or whose client left before a worker took them)
//! age out: a burst of refusals lasts at most a window, and a server up for weeks carries
//! no residue of its past.

use std::time::{Duration, Instant};

/// Buckets of the window.
const BUCKETS: usize = 10;

/// What a virtual queue is judged by: the pool's delay target, and the time its workers
/// take to clear one request at their mean service time (the mean over the workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judge {
    /// The delay target.
    pub target: Duration,
    /// The mean service time over the number of workers.
    pub clear_one: Duration,
}

/// The virtual queue and the rate-overload state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// New demand minus departures in each tenth of the window, the newest at `head`.
    net: [i64; BUCKETS],
    /// Departures in each tenth of the window.
    departed: [u64; BUCKETS],
    head: usize,
    /// When the newest bucket began.
    head_since: Option<Instant>,
    /// The first event (the window is shorter until a whole one has passed).
    first: Option<Instant>,
    /// Rate-overloaded now.
    overloaded: bool,
}

impl Demand {
    /// How far back demand and departures count.
    pub const WINDOW: Duration = Duration::from_secs(1);
    /// The least virtual queue that is overload: an excess of a few requests is a burst
    /// (a page whose assets come at once to one slow worker), not yet a rate.
    pub const MIN_EXCESS: u64 = 16;

    /// A request arrived at `now` (`fresh`: new demand, not a retry of one just refused),
    /// judged by `judge` (`None`: rate overload off). Returns whether the
    /// queue is rate-overloaded now, and whether it just became so.
    pub fn arrive(&mut self, now: Instant, fresh: bool, judge: Option<Judge>) -> (bool, bool) {
        self.advance(now);
        if fresh {
            self.net[self.head] += 1;
        }
        let was = self.overloaded;
        self.judge(now, judge);
        (self.overloaded, self.overloaded && !was)
    }

    /// A worker finished a request at `now`. Returns whether the queue is
    /// rate-overloaded now.
    pub fn depart(&mut self, now: Instant, judge: Option<Judge>) -> bool {
        self.advance(now);
        self.net[self.head] -= 1;
        self.departed[self.head] += 1;
        self.judge(now, judge);
        self.overloaded
    }

    /// Judges the state at `now` with no arrival or departure (the window moves on):
    /// whether the queue is rate-overloaded.
    pub fn judge_at(&mut self, now: Instant, judge: Option<Judge>) -> bool {
        self.advance(now);
        self.judge(now, judge);
        self.overloaded
    }

    /// Rate-overloaded now.
    pub fn overloaded(&self) -> bool {
        self.overloaded
    }

    /// The virtual queue's length: new demand minus departures over the window.
    pub fn backlog(&self) -> u64 {
        u64::try_from(self.net.iter().sum::<i64>()).unwrap_or(0)
    }

    /// The time the workers would take to clear the virtual queue: at the rate they
    /// finished requests over the window, or at one request each `clear_one`, whichever
    /// is sooner.
    pub fn wait(&self, now: Instant, clear_one: Duration) -> Duration {
        let backlog = u128::from(self.backlog());
        let modelled = backlog * clear_one.as_nanos();
        let departed: u64 = self.departed.iter().sum();
        let nanos = if departed == 0 {
            modelled
        } else {
            let first = self.first.unwrap_or(now);
            let span = now.saturating_duration_since(first).min(Self::WINDOW);
            // backlog / (departed / span)
            modelled.min(backlog * span.as_nanos() / u128::from(departed))
        };
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Moves the window on to `now`: buckets older than the window are emptied.
    fn advance(&mut self, now: Instant) {
        self.first.get_or_insert(now);
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
            self.net[self.head] = 0;
            self.departed[self.head] = 0;
        }
        self.head_since = Some(if steps == BUCKETS {
            now
        } else {
            since + width * steps as u32
        });
    }

    fn judge(&mut self, now: Instant, judge: Option<Judge>) {
        let Some(Judge { target, clear_one }) = judge else {
            self.overloaded = false;
            return;
        };
        let wait = self.wait(now, clear_one);
        let backlog = self.backlog();
        if self.overloaded {
            self.overloaded = wait >= target / 2 && backlog >= Self::MIN_EXCESS / 2;
        } else {
            self.overloaded = wait > target && backlog >= Self::MIN_EXCESS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// 50 ms target; 4 workers of 1 ms requests: 4,000 a second.
    const TARGET: Option<Judge> = Some(Judge {
        target: Duration::from_millis(50),
        clear_one: Duration::from_micros(250),
    });
    /// The same, with the mean inflated forty-fold by a stall.
    const STALLED: Option<Judge> = Some(Judge {
        target: Duration::from_millis(50),
        clear_one: Duration::from_millis(10),
    });

    fn at(t0: Instant, us: u64) -> Instant {
        t0 + Duration::from_micros(us)
    }

    #[test]
    fn a_closed_loop_never_overloads_however_often_it_is_refused() {
        // 50 clients, each sending its next request when the last is answered, 4,000
        // answers a second (12.5 ms of queueing, under the 50 ms target). Half of their
        // requests are refused and retried at once, for 10 s.
        let t0 = Instant::now();
        let mut d = Demand::default();
        for _ in 0..50 {
            assert_eq!(d.arrive(t0, true, TARGET), (false, false));
        }
        for i in 0..80_000u64 {
            let now = at(t0, i * 125);
            if i % 2 == 0 {
                // Answered: the client's next request is new demand.
                d.depart(now, TARGET);
                d.arrive(now, true, TARGET);
            } else {
                // Refused: its retry is not.
                d.arrive(now, false, TARGET);
            }
            assert!(!d.overloaded(), "at {i}: backlog {}", d.backlog());
            assert!(d.backlog() <= 50);
        }
    }

    #[test]
    fn neither_a_stall_nor_a_quiet_spell_makes_a_closed_loop_overload() {
        // The same loop, but the machine runs nothing for 400 ms: no departures, no
        // arrivals, and the mean inflated by the stalled requests. The measured rate
        // holds.
        let t0 = Instant::now();
        let mut d = Demand::default();
        for _ in 0..50 {
            d.arrive(t0, true, TARGET);
        }
        for i in 0..20_000u64 {
            let now = at(t0, i * 250 + if i >= 4_000 { 400_000 } else { 0 });
            let judge = if i >= 4_000 { STALLED } else { TARGET };
            d.depart(now, judge);
            d.arrive(now, true, judge);
            assert!(!d.overloaded(), "at {i}: backlog {}", d.backlog());
        }
        // A quiet spell, then the loop again: the window holds the quiet, the modelled
        // rate does not.
        let later = at(t0, 20_000_000);
        for _ in 0..50 {
            d.arrive(later, true, TARGET);
        }
        for i in 0..4_000u64 {
            let now = later + Duration::from_micros(i * 250);
            d.depart(now, TARGET);
            d.arrive(now, true, TARGET);
            assert!(!d.overloaded(), "at {i}: backlog {}", d.backlog());
        }
    }

    #[test]
    fn arrivals_faster_than_departures_overload_until_demand_falls() {
        let t0 = Instant::now();
        let mut d = Demand::default();
        // Twice capacity: 8,000 new requests a second, 4,000 answered, for 2 s.
        let mut entered = 0;
        let mut entered_at = None;
        for i in 0..8_000u64 {
            let now = at(t0, i * 250);
            for _ in 0..2 {
                let (_, began) = d.arrive(now, true, TARGET);
                if began {
                    entered += 1;
                    entered_at.get_or_insert(now - t0);
                }
            }
            d.depart(now, TARGET);
        }
        assert!(d.overloaded());
        assert_eq!(entered, 1, "entered once, not flapping");
        // The virtual queue grows by 4 a millisecond and clears at 4 a millisecond: its
        // wait passes 50 ms after about 50 ms.
        let entered_at = entered_at.unwrap();
        assert!((45 * MS..=55 * MS).contains(&entered_at), "{entered_at:?}");
        // Over the window: a second's excess, a second's wait.
        assert!((3_900..=4_000).contains(&d.backlog()), "{}", d.backlog());
        // Demand falls to half capacity: the state ends once the excess has aged out of
        // the window.
        let end = 2_000_000;
        let mut i = 0u64;
        while d.overloaded() {
            let now = at(t0, end + i * 500);
            d.arrive(now, true, TARGET);
            d.depart(now, TARGET);
            d.depart(now, TARGET);
            i += 1;
            assert!(i < 10_000, "still overloaded 5 s later");
        }
        let took = Duration::from_micros(i * 500);
        assert!(took <= Demand::WINDOW + 100 * MS, "ended after {took:?}");
    }

    #[test]
    fn refused_demand_ages_out_and_small_bursts_are_not_a_rate() {
        let t0 = Instant::now();
        let mut d = Demand::default();
        // One slow worker (4 departures in the window) and 12 arrivals at once: a wait
        // of seconds at the measured rate, but a burst under the least excess.
        for i in 0..4u64 {
            d.arrive(at(t0, i), true, STALLED);
            d.depart(at(t0, i), STALLED);
        }
        for _ in 0..12 {
            d.arrive(at(t0, 300_000), true, STALLED);
        }
        assert!(!d.overloaded());
        // 300 arrivals that never depart (refused, or their clients left).
        for _ in 0..300 {
            d.arrive(at(t0, 300_000), true, STALLED);
        }
        assert!(d.overloaded());
        assert!(d.judge_at(at(t0, 800_000), TARGET));
        // A quiet second later, it is gone.
        assert!(!d.judge_at(at(t0, 1_400_000), TARGET));
        assert_eq!(d.backlog(), 0);
        // Rate overload off: never.
        for _ in 0..300 {
            assert_eq!(d.arrive(at(t0, 1_500_000), true, None), (false, false));
        }
    }
}

//! The waiters of a queue in the order they are served, and CoDel's state over them.
//!
//! First come, first served; while CoDel says the queue is overloaded, waiters older than
//! the delay target are taken out to be refused ([`WaitQueue::regulate`]) and, with
//! adaptive LIFO, the newest is served first ([`WaitQueue::pop_next`]). A waiter whose
//! client went away ([`Waiting::gone`]) is skipped and dropped wherever it is met; it
//! still counts against the bound until then, unless a full queue is pruned
//! ([`WaitQueue::has_room`]).
//!
//! The owner keeps a `WaitQueue` under its own lock (the pool's state, a [`Slots`]'s), so
//! that what frees and the waiter it goes to are decided in one step.
//!
//! [`Slots`]: crate::Slots

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::codel::{Codel, CodelState};

/// A waiter, as the queue needs to see it.
pub trait Waiting {
    /// When it began waiting (the queue's delay is its oldest live waiter's age).
    fn since(&self) -> Instant;
    /// Nobody waits for it any more (its client went away): skip and drop it.
    fn gone(&self) -> bool;
    /// Its fairness key (`[queue] fair_key`, hashed): waiters are served round robin
    /// across keys. All the same (0) when fair queueing is off.
    fn fair_key(&self) -> u64 {
        0
    }
}

/// Waiters in order, with CoDel's state.
///
/// Waiters live in one lane per fairness key; lanes take turns (round robin), and within
/// a lane the first in line goes first (or the newest, with adaptive LIFO). With fair
/// queueing off every waiter has key 0: one lane, a plain FIFO. So one client that floods
/// the queue makes its own requests wait, not everyone's: a polite client's request waits
/// behind at most one request of each other waiting client.
#[derive(Debug)]
pub struct WaitQueue<W> {
    /// Each key's waiters, in line order.
    lanes: HashMap<u64, VecDeque<W>>,
    /// Keys with waiters, in the order they are served next.
    turns: VecDeque<u64>,
    len: usize,
    codel: CodelState,
}

impl<W> Default for WaitQueue<W> {
    fn default() -> Self {
        WaitQueue {
            lanes: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            codel: CodelState::default(),
        }
    }
}

impl<W: Waiting> WaitQueue<W> {
    /// Waiters in the queue, gone ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nobody is in the queue.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiters whose client still waits.
    pub fn live(&self) -> usize {
        self.iter().filter(|w| !w.gone()).count()
    }

    /// Waiters of one fairness key, gone ones included.
    pub fn len_of(&self, key: u64) -> usize {
        self.lanes.get(&key).map_or(0, VecDeque::len)
    }

    /// Whether nobody alive waits.
    pub fn nobody_waits(&self) -> bool {
        self.iter().all(Waiting::gone)
    }

    /// Whether one more waiter fits when `others` wait elsewhere in the same queue (in
    /// front of it, or offered behind busy workers) and the bound is `max`: gone waiters
    /// are pruned first when it looks full.
    pub fn has_room(&mut self, others: usize, max: usize) -> bool {
        if self.len + others < max {
            return true;
        }
        self.prune_gone();
        self.len + others < max
    }

    /// Whether one more waiter of `key` fits under `per_key_max` (gone ones pruned first
    /// when it looks full).
    pub fn has_room_for_key(&mut self, key: u64, per_key_max: usize) -> bool {
        if self.len_of(key) < per_key_max {
            return true;
        }
        self.prune_gone();
        self.len_of(key) < per_key_max
    }

    fn prune_gone(&mut self) {
        let mut removed = 0;
        for lane in self.lanes.values_mut() {
            let before = lane.len();
            lane.retain(|w| !w.gone());
            removed += before - lane.len();
        }
        self.len -= removed;
        self.drop_empty_lanes();
    }

    fn drop_empty_lanes(&mut self) {
        let lanes = &mut self.lanes;
        self.turns.retain(|k| {
            let keep = lanes.get(k).is_some_and(|l| !l.is_empty());
            if !keep {
                lanes.remove(k);
            }
            keep
        });
    }

    /// A new waiter, served after those of its key already waiting, in its key's turn.
    pub fn push(&mut self, w: W) {
        let key = w.fair_key();
        let lane = self.lanes.entry(key).or_default();
        if lane.is_empty() {
            self.turns.push_back(key);
        }
        lane.push_back(w);
        self.len += 1;
    }

    /// A waiter that has waited longer than everyone here (a request taken back from a
    /// worker that died), served first.
    pub fn push_front(&mut self, w: W) {
        let key = w.fair_key();
        let lane = self.lanes.entry(key).or_default();
        if lane.is_empty() {
            self.turns.push_front(key);
        } else if let Some(i) = self.turns.iter().position(|k| *k == key) {
            self.turns.remove(i);
            self.turns.push_front(key);
        }
        lane.push_front(w);
        self.len += 1;
    }

    /// The waiter served next in first-in-line order (not skipping gone ones).
    pub fn front(&self) -> Option<&W> {
        let key = self.turns.front()?;
        self.lanes.get(key)?.front()
    }

    /// Takes the waiter [`WaitQueue::front`] shows.
    pub fn pop_front(&mut self) -> Option<W> {
        self.pop_next(false)
    }

    /// Takes the next waiter to serve: the next key's turn, and within its lane the newest
    /// when `newest_first` (adaptive LIFO while shedding), else the first in line.
    pub fn pop_next(&mut self, newest_first: bool) -> Option<W> {
        let key = self.turns.pop_front()?;
        let lane = self.lanes.get_mut(&key)?;
        let w = if newest_first {
            lane.pop_back()
        } else {
            lane.pop_front()
        };
        if lane.is_empty() {
            self.lanes.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        if w.is_some() {
            self.len -= 1;
        }
        w
    }

    /// Takes the first waiter that matches.
    pub fn remove_first(&mut self, mut f: impl FnMut(&W) -> bool) -> Option<W> {
        let mut found = None;
        for lane in self.lanes.values_mut() {
            if let Some(i) = lane.iter().position(&mut f) {
                found = lane.remove(i);
                break;
            }
        }
        if found.is_some() {
            self.len -= 1;
            self.drop_empty_lanes();
        }
        found
    }

    /// Takes every waiter (the queue is shutting down).
    pub fn take_all(&mut self) -> Vec<W> {
        self.codel.reset();
        self.len = 0;
        self.turns.clear();
        self.lanes.drain().flat_map(|(_, l)| l).collect()
    }

    /// Whether CoDel says the queue is overloaded now.
    pub fn overloaded(&self) -> bool {
        self.codel.overloaded()
    }

    /// What the queue waits for went unused (nobody was waiting): not overloaded.
    pub fn reset(&mut self) {
        self.codel.reset();
    }

    /// Runs when what the queue waits for frees, before it goes to a waiter: CoDel's
    /// control law on the queue's delay, and, while overloaded, the waiters that have
    /// waited past their target, taken out to be refused with it (gone waiters are dropped
    /// on the way). Each waiter is judged by its own target (`target_of`; the pool and
    /// [`crate::Slots`] give one target for all); the queue's delay is that of the waiter
    /// furthest past its target (relative to it), which with one target for all is simply
    /// the oldest. Returns whether it is shedding.
    pub fn regulate(
        &mut self,
        now: Instant,
        codel: Option<&Codel>,
        target_of: impl Fn(&W) -> Duration,
    ) -> (bool, Vec<(W, Duration)>) {
        let Some(codel) = codel else {
            return (false, Vec::new());
        };
        self.prune_gone();
        // The waiter with the greatest age over its target (compared as age_a * t_b >
        // age_b * t_a, in whole microseconds).
        let mut worst: Option<(Instant, Duration, u128)> = None;
        let mut worst_ratio = (0u128, 1u128);
        for w in self.iter() {
            let target = target_of(w);
            let age = now.saturating_duration_since(w.since()).as_micros();
            let t = target.as_micros().max(1);
            if worst.is_none() || age * worst_ratio.1 > worst_ratio.0 * t {
                worst = Some((w.since(), target, age));
                worst_ratio = (age, t);
            }
        }
        let shedding = match worst {
            Some((since, target, _)) => self
                .codel
                .on_release(now, Some(since), target, codel.interval)
                .is_some(),
            None => self
                .codel
                .on_release(now, None, Duration::ZERO, codel.interval)
                .is_some(),
        };
        let mut shed = Vec::new();
        if shedding {
            for lane in self.lanes.values_mut() {
                let mut kept = VecDeque::with_capacity(lane.len());
                for w in lane.drain(..) {
                    let target = target_of(&w);
                    if now.saturating_duration_since(w.since()) > target {
                        shed.push((w, target));
                    } else {
                        kept.push_back(w);
                    }
                }
                *lane = kept;
            }
        }
        self.len -= shed.len();
        self.drop_empty_lanes();
        (shedding, shed)
    }

    /// The waiters a new arrival of fairness key `key` would be served after (in line
    /// order, round robin across keys): all of its own lane, and of every other lane as
    /// many as its own lane holds, plus one. With fair queueing off (one lane) that is
    /// everyone; with it, a polite client's request is not judged by a flood's queue.
    pub fn ahead_of(&self, key: u64) -> impl Iterator<Item = &W> {
        let own = self.len_of(key);
        self.turns
            .iter()
            .filter_map(move |k| {
                let lane = self.lanes.get(k)?;
                let n = if *k == key { own } else { own + 1 };
                Some(lane.iter().take(n))
            })
            .flatten()
    }

    /// Every waiter (lane by lane, each in line order).
    pub fn iter(&self) -> impl Iterator<Item = &W> {
        self.turns
            .iter()
            .filter_map(|k| self.lanes.get(k))
            .flat_map(|l| l.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[derive(Debug)]
    struct W {
        id: u32,
        since: Instant,
        gone: bool,
        key: u64,
    }

    impl Waiting for W {
        fn since(&self) -> Instant {
            self.since
        }
        fn gone(&self) -> bool {
            self.gone
        }
        fn fair_key(&self) -> u64 {
            self.key
        }
    }

    fn w(id: u32, since: Instant) -> W {
        W {
            id,
            since,
            gone: false,
            key: 0,
        }
    }

    const CODEL: Codel = Codel {
        target: None,
        interval: Duration::from_millis(100),
        lifo: true,
        factor: Codel::FACTOR,
        min_target: Codel::MIN_TARGET,
        rate_overload: true,
    };

    #[test]
    fn first_come_first_served_and_newest_first_on_request() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        for id in 0..3 {
            q.push(w(id, t0));
        }
        q.push_front(w(9, t0));
        assert_eq!(q.pop_next(false).unwrap().id, 9);
        assert_eq!(q.pop_next(true).unwrap().id, 2);
        assert_eq!(q.pop_next(false).unwrap().id, 0);
        assert_eq!(q.remove_first(|w| w.id == 1).unwrap().id, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_makes_room_by_pruning_the_gone() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        q.push(W {
            gone: true,
            ..w(0, t0)
        });
        q.push(w(1, t0));
        assert!(!q.has_room(1, 2) || q.len() == 1);
        assert_eq!(q.len(), 1, "the gone one was pruned");
        assert!(q.has_room(0, 2));
        assert_eq!(q.live(), 1);
    }

    #[test]
    fn a_delay_over_target_for_an_interval_sheds_the_old_and_keeps_the_young() {
        let t0 = Instant::now();
        let target = 500 * MS;
        let mut q = WaitQueue::default();
        q.push(w(0, t0));
        q.push(w(1, t0 + 600 * MS));
        // 600 ms of delay: above the target, the first time: not yet overloaded.
        let (s, shed) = q.regulate(t0 + 600 * MS, Some(&CODEL), |_| target);
        assert_eq!((s, shed.len()), (false, 0));
        // A whole interval later, still above: the waiter older than the target goes.
        let (s, shed) = q.regulate(t0 + 700 * MS, Some(&CODEL), |_| target);
        assert!(s);
        assert_eq!(
            shed.iter().map(|(w, t)| (w.id, *t)).collect::<Vec<_>>(),
            [(0, target)]
        );
        assert!(q.overloaded());
        assert_eq!(q.front().unwrap().id, 1);
        // Without CoDel nothing is ever shed.
        let (s, shed) = q.regulate(t0 + 9000 * MS, None, |_| target);
        assert_eq!((s, shed.len()), (false, 0));
    }

    #[test]
    fn gone_waiters_at_the_front_do_not_count_as_delay() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        q.push(W {
            gone: true,
            ..w(0, t0)
        });
        let (s, _) = q.regulate(t0 + 900 * MS, Some(&CODEL), |_| 500 * MS);
        assert!(!s);
        assert!(q.is_empty());
        assert!(q.nobody_waits());
    }

    #[test]
    fn keys_take_turns_so_a_flood_from_one_does_not_delay_another() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        // Client 1 floods: ten requests first. Client 2 then sends two.
        for id in 0..10 {
            q.push(W {
                key: 1,
                ..w(id, t0)
            });
        }
        q.push(W {
            key: 2,
            ..w(100, t0)
        });
        q.push(W {
            key: 2,
            ..w(101, t0)
        });
        assert_eq!(q.len_of(1), 10);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_next(false))
            .map(|w| w.id)
            .collect();
        assert_eq!(order, [0, 100, 1, 101, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_key_is_bounded_by_per_key_max_and_its_gone_waiters_make_room() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        q.push(W {
            key: 7,
            gone: true,
            ..w(0, t0)
        });
        q.push(W { key: 7, ..w(1, t0) });
        assert!(
            q.has_room_for_key(3, 1),
            "another key is not held to key 7's count"
        );
        assert!(q.has_room_for_key(7, 2), "the gone one was pruned");
        assert_eq!(q.len(), 1);
        assert!(!q.has_room_for_key(7, 1));
    }

    #[test]
    fn a_request_taken_back_goes_first_and_take_all_empties() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        q.push(W { key: 1, ..w(0, t0) });
        q.push(W { key: 2, ..w(1, t0) });
        q.push_front(W { key: 2, ..w(2, t0) });
        assert_eq!(q.front().map(|w| w.id), Some(2));
        assert_eq!(q.remove_first(|w| w.id == 0).map(|w| w.id), Some(0));
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_all().len(), 2);
        assert!(q.is_empty() && q.front().is_none());
    }

    #[test]
    fn shedding_looks_at_every_key() {
        let t0 = Instant::now();
        let target = 500 * MS;
        let mut q = WaitQueue::default();
        q.push(W {
            key: 1,
            ..w(0, t0 + 500 * MS)
        });
        q.push(W { key: 2, ..w(1, t0) });
        // The oldest waiter is key 2's, although key 1 is first in turn.
        q.regulate(t0 + 600 * MS, Some(&CODEL), |_| target);
        let (s, shed) = q.regulate(t0 + 700 * MS, Some(&CODEL), |_| target);
        assert!(s);
        assert_eq!(shed.iter().map(|(w, _)| w.id).collect::<Vec<_>>(), [1]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn each_waiter_is_judged_by_its_own_routes_target() {
        // Key 1: a 5 s report route (target 15 s); key 2: a 20 ms route (target 60 ms).
        let t0 = Instant::now();
        let target = |w: &W| if w.key == 1 { 15_000 * MS } else { 60 * MS };
        let mut q = WaitQueue::default();
        for id in 0..3 {
            q.push(W {
                key: 1,
                ..w(id, t0)
            });
        }
        q.push(W {
            key: 2,
            ..w(10, t0 + 990 * MS)
        });
        // The reports have waited a second: long, but well within their own target; the
        // fast request at most 50 ms: nothing is overloaded.
        for i in 0..5 {
            let (s, shed) = q.regulate(t0 + (1000 + 10 * i) * MS, Some(&CODEL), target);
            assert!(!s && shed.is_empty());
        }
        // A fast request that has waited past its own 60 ms for a whole interval: shed
        // alone; the reports keep their places.
        q.push(W {
            key: 2,
            ..w(11, t0 + 1000 * MS)
        });
        q.remove_first(|w| w.id == 10);
        q.regulate(t0 + 1100 * MS, Some(&CODEL), target);
        let (s, shed) = q.regulate(t0 + 1200 * MS, Some(&CODEL), target);
        assert!(s);
        assert_eq!(
            shed.iter().map(|(w, t)| (w.id, *t)).collect::<Vec<_>>(),
            [(11, 60 * MS)]
        );
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn an_arrival_is_judged_by_the_waiters_ahead_of_it_in_round_robin() {
        let t = Instant::now();
        let keyed = |id: u32, key: u64| W { key, ..w(id, t) };
        let mut q = WaitQueue::default();
        for i in 0..10 {
            q.push(keyed(i, 7)); // a flood on key 7
        }
        q.push(keyed(100, 3));
        // A polite client (key 9, nothing waiting): one of each other lane.
        let ahead: Vec<u32> = q.ahead_of(9).map(|x| x.id).collect();
        assert_eq!(ahead, vec![0, 100]);
        // The flood's next request waits behind all of its own, and key 3's one.
        assert_eq!(q.ahead_of(7).count(), 11);
        // One lane (fair queueing off): everyone.
        let mut one = WaitQueue::default();
        for i in 0..5 {
            one.push(w(i, t));
        }
        assert_eq!(one.ahead_of(0).count(), 5);
    }
}

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
    /// control law on the queue's delay (the oldest live waiter's age; gone waiters at the
    /// front of each lane are dropped), and, while overloaded, the waiters that have
    /// waited past the target, taken out to be refused (and gone ones met on the way, to
    /// be dropped). Returns the target while shedding.
    pub fn regulate(
        &mut self,
        now: Instant,
        codel: Option<&Codel>,
        target: Duration,
    ) -> (Option<Duration>, Vec<W>) {
        let Some(codel) = codel else {
            return (None, Vec::new());
        };
        let mut removed = 0;
        for lane in self.lanes.values_mut() {
            while lane.front().is_some_and(Waiting::gone) {
                lane.pop_front();
                removed += 1;
            }
        }
        let oldest = self
            .lanes
            .values()
            .filter_map(|l| l.front().map(Waiting::since))
            .min();
        let shedding = self.codel.on_release(now, oldest, target, codel.interval);
        let mut shed = Vec::new();
        if let Some(target) = shedding {
            for lane in self.lanes.values_mut() {
                while let Some(w) = lane.front() {
                    if !w.gone() && now.saturating_duration_since(w.since()) <= target {
                        break;
                    }
                    shed.extend(lane.pop_front());
                }
            }
        }
        self.len -= removed + shed.len();
        self.drop_empty_lanes();
        (shedding, shed)
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
        let (s, shed) = q.regulate(t0 + 600 * MS, Some(&CODEL), target);
        assert_eq!((s, shed.len()), (None, 0));
        // A whole interval later, still above: the waiter older than the target goes.
        let (s, shed) = q.regulate(t0 + 700 * MS, Some(&CODEL), target);
        assert_eq!(s, Some(target));
        assert_eq!(shed.iter().map(|w| w.id).collect::<Vec<_>>(), [0]);
        assert!(q.overloaded());
        assert_eq!(q.front().unwrap().id, 1);
        // Without CoDel nothing is ever shed.
        let (s, shed) = q.regulate(t0 + 9000 * MS, None, target);
        assert_eq!((s, shed.len()), (None, 0));
    }

    #[test]
    fn gone_waiters_at_the_front_do_not_count_as_delay() {
        let t0 = Instant::now();
        let mut q = WaitQueue::default();
        q.push(W {
            gone: true,
            ..w(0, t0)
        });
        let (s, _) = q.regulate(t0 + 900 * MS, Some(&CODEL), 500 * MS);
        assert_eq!(s, None);
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
        q.regulate(t0 + 600 * MS, Some(&CODEL), target);
        let (s, shed) = q.regulate(t0 + 700 * MS, Some(&CODEL), target);
        assert_eq!(s, Some(target));
        assert_eq!(shed.iter().map(|w| w.id).collect::<Vec<_>>(), [1]);
        assert_eq!(q.len(), 1);
    }
}

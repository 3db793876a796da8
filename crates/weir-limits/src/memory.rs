//! The memory store: one instance's buckets, per zone, bounded by `max_keys`.
//!
//! A zone is split into shards (up to 16, each behind its own mutex, held only for one
//! bucket's arithmetic) so that two runtime threads rarely contend. A shard is a compact
//! LRU: a slab of 32-byte entries (the key's 64-bit hash, the bucket, and the LRU links as
//! `u32` indices) and a `hashbrown::HashTable<u32>` index into it, so a key costs about 40
//! bytes whatever its length (measured: see the crate doc and `crates/weir-limits/tests/memory_per_key.rs`).
//! When a shard is full its least recently used key goes.
//!
//! Keys are not stored, only a 64-bit SipHash of them under a per-process random key
//! (std's `RandomState`): two keys that collide share a bucket. With a random key an
//! attacker cannot aim for a collision, and among a million keys the chance of any is
//! about 3 in 100 million.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hashbrown::HashTable;

use crate::limit_req::{Bucket, Rule};

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Entry {
    key: u64,
    bucket: Bucket,
    prev: u32,
    next: u32,
}

/// One shard: an LRU over a slab.
struct Shard {
    table: HashTable<u32>,
    entries: Vec<Entry>,
    head: u32,
    tail: u32,
    free: u32,
    len: usize,
    cap: usize,
}

impl Shard {
    fn new(cap: usize) -> Shard {
        Shard {
            table: HashTable::new(),
            entries: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            len: 0,
            cap,
        }
    }

    fn find(&self, key: u64) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(key, |&i| entries[i as usize].key == key)
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let Entry { prev, next, .. } = self.entries[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let e = &mut self.entries[i as usize];
        e.prev = NIL;
        e.next = self.head;
        if self.head != NIL {
            self.entries[self.head as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    fn remove(&mut self, i: u32, total: &AtomicUsize) {
        total.fetch_sub(1, Ordering::Relaxed);
        let key = self.entries[i as usize].key;
        if let Ok(e) = self.table.find_entry(key, |&j| j == i) {
            e.remove();
        }
        self.unlink(i);
        self.entries[i as usize].next = self.free;
        self.free = i;
        self.len -= 1;
    }

    fn insert(&mut self, key: u64, bucket: Bucket, total: &AtomicUsize, max: usize) {
        // the zone's bound is global (`max`); a shard also has a hard cap with room for
        // an uneven spread of keys
        if (total.load(Ordering::Relaxed) >= max || self.len >= self.cap) && self.tail != NIL {
            self.remove(self.tail, total);
        }
        total.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            key,
            bucket,
            prev: NIL,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.entries[i as usize].next;
            self.entries[i as usize] = entry;
            i
        } else {
            if self.entries.len() == self.entries.capacity() {
                // grow by doubling, but never past the shard's bound
                let want = (self.entries.len() * 2).max(16).min(self.cap.max(1));
                self.entries
                    .reserve_exact(want.saturating_sub(self.entries.len()).max(1));
            }
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        };
        let entries = &self.entries;
        self.table
            .insert_unique(key, i, |&j| entries[j as usize].key);
        self.push_front(i);
        self.len += 1;
    }

    /// NGINX's `ngx_http_limit_req_expire(ctx, 1)`, run when a key is created: at most two
    /// least recently used buckets idle for a minute and drained are freed.
    fn expire_idle(&mut self, rule: &Rule, now: u64, total: &AtomicUsize) {
        for _ in 0..2 {
            let t = self.tail;
            if t == NIL {
                return;
            }
            let b = self.entries[t as usize].bucket;
            let idle = now.abs_diff(b.last);
            let leaked = u128::from(rule.rate) * u128::from(idle) / 1000;
            if idle < 60_000 || u128::from(b.excess) > leaked {
                return;
            }
            self.remove(t, total);
        }
    }

    fn with<R>(
        &mut self,
        key: u64,
        (rule, now): (&Rule, u64),
        (total, max): (&AtomicUsize, usize),
        f: impl FnOnce(&mut Option<Bucket>) -> R,
    ) -> R {
        match self.find(key) {
            Some(i) => {
                self.unlink(i);
                self.push_front(i);
                let mut slot = Some(self.entries[i as usize].bucket);
                let r = f(&mut slot);
                match slot {
                    Some(b) => self.entries[i as usize].bucket = b,
                    None => self.remove(i, total),
                }
                r
            }
            None => {
                let mut slot = None;
                let r = f(&mut slot);
                if let Some(b) = slot {
                    self.expire_idle(rule, now, total);
                    self.insert(key, b, total, max);
                }
                r
            }
        }
    }
}

/// One zone's buckets in memory.
pub struct MemoryZone {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::hash::RandomState,
    max_keys: usize,
    len: AtomicUsize,
}

impl std::fmt::Debug for MemoryZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryZone")
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl MemoryZone {
    /// A zone that remembers at most `max_keys` keys (give or take one per thread
    /// inserting at the same moment). When full, a new key evicts the least recently used
    /// key of its shard (an approximation of the zone's LRU; below 1024 keys there is one
    /// shard, so it is exact).
    pub fn new(max_keys: usize) -> MemoryZone {
        let max_keys = max_keys.max(1);
        let n = if max_keys < 1024 { 1 } else { 16 };
        let per = if n == 1 {
            max_keys
        } else {
            max_keys.div_ceil(n) * 5 / 4 + 16
        };
        MemoryZone {
            shards: (0..n).map(|_| Mutex::new(Shard::new(per))).collect(),
            hasher: std::hash::RandomState::new(),
            max_keys,
            len: AtomicUsize::new(0),
        }
    }

    /// The hash a key is kept under.
    pub fn hash_key(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // the table uses the hash's low bits (bucket) and top 7 (tag): pick the shard
        // from a remix so a shard's keys still spread over its whole table
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.shards[(mixed as usize) % self.shards.len()]
    }

    /// Runs `f` on the slot of the key with hash `hash`, under its shard's lock; `now`
    /// and `rule` drive NGINX's idle expiry when a key is created.
    pub fn with<R>(
        &self,
        hash: u64,
        rule: &Rule,
        now: u64,
        f: impl FnOnce(&mut Option<Bucket>) -> R,
    ) -> R {
        let mut shard = self.shard(hash).lock().unwrap_or_else(|p| p.into_inner());
        shard.with(hash, (rule, now), (&self.len, self.max_keys), f)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// No key remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket of a key, if remembered (tests and tools; does not touch the LRU order).
    pub fn peek(&self, key: &str) -> Option<Bucket> {
        let h = self.hash_key(key);
        let shard = self.shard(h).lock().unwrap_or_else(|p| p.into_inner());
        shard.find(h).map(|i| shard.entries[i as usize].bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit_req::{check, Buckets, DelayMode, Verdict};
    use weir_config::units::parse_rate;

    struct Z<'a> {
        zone: &'a MemoryZone,
        hash: u64,
        rule: Rule,
        now: u64,
    }
    impl Buckets for Z<'_> {
        fn with<R>(&mut self, _i: usize, f: impl FnOnce(&mut Option<Bucket>) -> R) -> R {
            self.zone.with(self.hash, &self.rule, self.now, f)
        }
    }

    fn rule() -> Rule {
        Rule::new(parse_rate("10r/s").unwrap(), 0, DelayMode::NoDelay)
    }

    fn hit(zone: &MemoryZone, key: &str, now: u64) -> Verdict {
        let rule = rule();
        let mut z = Z {
            zone,
            hash: zone.hash_key(key),
            rule,
            now,
        };
        check(&mut z, &[rule], || now).verdict
    }

    #[test]
    fn limits_per_key_and_evicts_least_recently_used() {
        let t = 1_000_000_000;
        let zone = MemoryZone::new(3);
        for k in ["a", "b", "c"] {
            assert_eq!(hit(&zone, k, t), Verdict::Admit);
        }
        assert_eq!(zone.len(), 3);
        assert!(matches!(hit(&zone, "a", t), Verdict::Refuse { .. })); // a is now most recent
        assert_eq!(hit(&zone, "d", t), Verdict::Admit); // evicts b
        assert_eq!(zone.len(), 3);
        assert!(zone.peek("b").is_none());
        assert!(zone.peek("a").is_some() && zone.peek("c").is_some());
        // b forgotten: admitted again as a new key; c was not
        assert_eq!(hit(&zone, "b", t), Verdict::Admit);
        assert!(zone.peek("c").is_none(), "c was least recently used");
        assert!(matches!(hit(&zone, "a", t), Verdict::Refuse { .. }));
    }

    #[test]
    fn idle_drained_keys_expire_as_nginx() {
        let t = 1_000_000_000;
        let zone = MemoryZone::new(100);
        hit(&zone, "old", t);
        hit(&zone, "new1", t + 59_999);
        assert!(zone.peek("old").is_some(), "not a minute yet");
        hit(&zone, "new2", t + 70_000);
        assert!(zone.peek("old").is_none(), "idle a minute and drained");
        assert_eq!(zone.len(), 2);
    }

    #[test]
    fn many_keys_stay_bounded_and_consistent() {
        let t = 1_000_000_000;
        let zone = MemoryZone::new(5000);
        for i in 0..20_000u32 {
            hit(&zone, &format!("k{i}"), t);
        }
        let n = zone.len();
        assert_eq!(n, 5000);
        // the most recent keys are all there and limited
        for i in 19_950..20_000u32 {
            assert!(
                matches!(hit(&zone, &format!("k{i}"), t), Verdict::Refuse { .. }),
                "{i}"
            );
        }
    }
}

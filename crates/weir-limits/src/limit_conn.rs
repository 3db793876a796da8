//! NGINX's `limit_conn`: requests in progress per key.
//!
//! [`ConnZone::try_acquire`] counts one more request for a key if it has fewer than `max`
//! in progress and returns a [`ConnGuard`] that gives the slot back when dropped: the
//! front door holds it until the response is done or the client has left (dropping the
//! request's future drops the guard). A key with no request in progress is not kept, so
//! memory follows the keys in progress, not the keys seen.
//!
//! This is the memory store's `limit_conn`, per instance. With `[limits] store =
//! "redis://..."` the counts live in Redis instead, shared by every instance, as leases
//! that end the slots of an instance that died: see [`crate::redis_conn`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

/// One `[limit_conn.NAME]` zone's counts.
#[derive(Debug)]
pub struct ConnZone {
    max: u64,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    hasher: std::hash::RandomState,
}

impl ConnZone {
    /// A zone allowing `max` requests in progress per key.
    pub fn new(max: u64) -> Arc<ConnZone> {
        Arc::new(ConnZone {
            max,
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
        })
    }

    fn shard(&self, h: u64) -> &Mutex<HashMap<u64, u64>> {
        &self.shards[((h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize) % self.shards.len()]
    }

    /// One more request in progress for `key`, or `None` when it already has `max`.
    pub fn try_acquire(self: &Arc<Self>, key: &str) -> Option<ConnGuard> {
        let h = self.hasher.hash_one(key);
        let mut m = self.shard(h).lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(h).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                m.remove(&h);
            }
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            zone: self.clone(),
            hash: h,
        })
    }

    /// Requests in progress for `key`.
    pub fn in_progress(&self, key: &str) -> u64 {
        let h = self.hasher.hash_one(key);
        let m = self.shard(h).lock().unwrap_or_else(|p| p.into_inner());
        m.get(&h).copied().unwrap_or(0)
    }

    /// Keys with a request in progress.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn release(&self, h: u64) {
        let mut m = self.shard(h).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&h) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&h);
            }
        }
    }
}

/// A request's slot in a [`ConnZone`]; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnGuard {
    zone: Arc<ConnZone>,
    hash: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.zone.release(self.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_releases_on_drop() {
        let z = ConnZone::new(2);
        let a1 = z.try_acquire("a").unwrap();
        let a2 = z.try_acquire("a").unwrap();
        assert!(z.try_acquire("a").is_none());
        let b = z.try_acquire("b").unwrap();
        assert_eq!(
            (z.in_progress("a"), z.in_progress("b"), z.keys()),
            (2, 1, 2)
        );
        drop(a1);
        let a3 = z.try_acquire("a").unwrap();
        drop((a2, a3, b));
        assert_eq!(z.keys(), 0, "idle keys are not kept");
    }

    #[test]
    fn guards_cross_threads() {
        let z = ConnZone::new(1000);
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let z = z.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let g = z.try_acquire("k").unwrap();
                        drop(g);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(z.in_progress("k"), 0);
    }
}

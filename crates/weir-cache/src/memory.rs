//! The memory tier: moka, bounded by the bytes of its entries (`[cache] memory`), each
//! entry kept no longer than it is of use ([`Stored::time_to_keep`]).
//!
//! Purges by prefix and tag walk the entries: they are rare (an operator's or a deploy's
//! request), and an index per tag would cost memory on every entry for them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache;
use moka::Expiry;

use crate::entry::{is_key_or_variant, Purge, Stored};

/// The memory tier.
pub struct MemoryTier {
    cache: Cache<String, Stored>,
    max_entry: u64,
}

struct KeepWhileUseful;

impl Expiry<String, Stored> for KeepWhileUseful {
    fn expire_after_create(&self, _: &String, v: &Stored, _: Instant) -> Option<Duration> {
        Some(v.time_to_keep(SystemTime::now()))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.time_to_keep(SystemTime::now()))
    }
}

impl MemoryTier {
    /// A tier of at most `max_bytes`; an entry over a tenth of it is not kept.
    pub fn new(max_bytes: u64) -> MemoryTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &String, v: &Stored| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .expire_after(KeepWhileUseful)
            .build();
        MemoryTier {
            cache,
            max_entry: max_bytes / 10,
        }
    }

    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<Stored> {
        self.cache.get(key)
    }

    /// Keeps `stored` (replacing what was under its key); false when it is over a tenth of
    /// the tier or already useless.
    pub fn put(&self, stored: Stored) -> bool {
        if stored.weight() as u64 > self.max_entry
            || stored.time_to_keep(SystemTime::now()).is_zero()
        {
            return false;
        }
        self.cache.insert(stored.key().to_owned(), stored);
        true
    }

    /// Forgets what `purge` names; how many entries went.
    pub fn purge(&self, purge: &Purge) -> usize {
        let gone: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, v)| match purge {
                Purge::Key(key) => is_key_or_variant(k, key),
                _ => v.matches(purge),
            })
            .map(|(k, _)| k)
            .collect();
        for k in &gone {
            self.cache.invalidate(k.as_str());
        }
        gone.len()
    }

    /// Entries and their bytes (for metrics; moka's counts lag by its pending work).
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::entry;

    #[test]
    fn keeps_fetches_and_purges() {
        let now = SystemTime::now();
        let t = MemoryTier::new(1 << 20);
        assert!(t.put(entry("httpa/items", "/items", b"x", now)));
        assert!(t.put(entry("httpa/items?p=2", "/items?p=2", b"y", now)));
        assert!(t.put(entry("httpa/users", "/users", b"z", now)));
        assert!(t.get("httpa/items").is_some());
        assert_eq!(t.purge(&Purge::Key("httpa/items".into())), 1);
        assert!(t.get("httpa/items").is_none());
        assert_eq!(t.purge(&Purge::Prefix("/items".into())), 1);
        assert!(t.get("httpa/users").is_some());
        assert_eq!(t.purge(&Purge::Tag("t1".into())), 1);
        assert!(t.get("httpa/users").is_none());
    }

    #[test]
    fn an_entry_over_a_tenth_of_the_tier_is_not_kept() {
        static BIG: [u8; 200_000] = [0; 200_000];
        let t = MemoryTier::new(1 << 20);
        assert!(!t.put(entry("k", "/", &BIG, SystemTime::now())));
        assert!(t.get("k").is_none());
    }

    #[test]
    fn the_tier_stays_within_its_bytes() {
        static BODY: [u8; 50_000] = [7; 50_000];
        let t = MemoryTier::new(1 << 20);
        let now = SystemTime::now();
        for i in 0..100 {
            t.put(entry(&format!("k{i}"), "/", &BODY, now));
        }
        let (_, bytes) = t.usage();
        assert!(bytes <= 1 << 20, "{bytes} bytes held");
    }
}

//! Requests counted per key for `min_uses` (NGINX's `uwsgi_cache_min_uses`): a key is
//! stored only from its Nth request. Counts are forgotten after ten minutes without a
//! request (NGINX's default `inactive`) and bounded in number, least recently used first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// The counts.
pub struct UseCounts(Cache<String, Arc<AtomicU64>>);

impl Default for UseCounts {
    fn default() -> Self {
        UseCounts(
            Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        )
    }
}

impl UseCounts {
    /// Counts one request for `key`; its count so far, this one included.
    pub fn count(&self, key: &str) -> u64 {
        self.0
            .get_with_by_ref(key, || Arc::new(AtomicU64::new(0)))
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key() {
        let u = UseCounts::default();
        assert_eq!(u.count("a"), 1);
        assert_eq!(u.count("a"), 2);
        assert_eq!(u.count("b"), 1);
    }
}

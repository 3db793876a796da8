//! The Redis tier (stub; being written).
use crate::{CacheError, Purge, Stored};

/// The Redis tier.
pub struct RedisTier;

impl RedisTier {
    /// Connects.
    pub async fn connect(_url: &str, _max_entry: u64) -> Result<RedisTier, CacheError> {
        Ok(RedisTier)
    }
    /// The entry under `key`.
    pub async fn get(&self, _key: &str) -> Option<Stored> {
        None
    }
    /// Stores an entry.
    pub async fn put(&self, _stored: &Stored) {}
    /// Purges in Redis.
    pub async fn purge(&self, _purge: &Purge) -> usize {
        0
    }
    /// Tells the other instances.
    pub async fn publish(&self, _purge: &Purge) {}
    /// Listens for the other instances' purges.
    pub fn subscribe(
        &self,
        _on_purge: impl Fn(Purge) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
    /// Redis errors.
    pub fn errors(&self) -> u64 {
        0
    }
    /// Corrupt records.
    pub fn corrupt(&self) -> u64 {
        0
    }
}

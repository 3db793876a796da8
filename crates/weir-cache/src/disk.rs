//! The disk tier (stub; being written).
use std::path::Path;

use crate::{CacheError, Purge, Stored};

/// The disk tier.
pub struct DiskTier;

impl DiskTier {
    /// Opens the tier.
    pub async fn open(_dir: &Path, _max_bytes: u64) -> Result<DiskTier, CacheError> {
        Ok(DiskTier)
    }
    /// The entry under `key`.
    pub async fn get(&self, _key: &str) -> Option<Stored> {
        None
    }
    /// Writes an entry.
    pub async fn put(&self, _stored: &Stored) -> bool {
        false
    }
    /// Purges.
    pub async fn purge(&self, _purge: &Purge) -> usize {
        0
    }
    /// (entries, bytes).
    pub fn usage(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Corrupt files.
    pub fn corrupt(&self) -> u64 {
        0
    }
    /// I/O errors.
    pub fn errors(&self) -> u64 {
        0
    }
}

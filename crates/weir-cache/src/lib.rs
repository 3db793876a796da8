//! The response cache of the front door (NGINX's `uwsgi_cache`): RFC 9111 freshness read
//! by `http-cache-semantics`, three tiers read in order and filled on the way back
//! (memory, then disk, then Redis shared by every instance), purges by key, prefix and tag
//! that reach every instance, and the fill lock that sends one request of a stampede to
//! the app.
//!
//! The tiers:
//! - [`memory::MemoryTier`]: moka, bounded by bytes;
//! - [`disk::DiskTier`]: one file per entry, bounded by bytes, survives restarts;
//! - [`redis_tier::RedisTier`]: entries in Redis with their time to live, purges
//!   published to the other instances.
//!
//! What a tier holds and its byte form are in [`entry`]. The front door's stage (weir-front
//! `cache.rs`) decides what to look up, store and answer. See docs/cache.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod disk;
pub mod entry;
pub mod freshness;
pub mod lock;
pub mod memory;
pub mod redis_tier;
pub mod tiers;
pub mod uses;

pub use entry::{CodecError, Entry, Purge, Stored, VaryMarker};
pub use lock::{Fill, FillLocks, FillTurn, FillWait};
pub use tiers::{Lookup, Purged, TierName, TierStats, Tiers};
pub use uses::UseCounts;

/// A cache that cannot start (the process exits 2 with this message).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The disk tier's directory cannot be created, read or written.
    #[error("cache.disk: {path} cannot be used: {reason}; create it writable by weir's user, or remove cache.disk")]
    Disk {
        /// The directory.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// The Redis URL cannot be used.
    #[error("cache.store: {0}")]
    Redis(String),
}

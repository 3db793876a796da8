//! The tiers as one cache: a lookup reads memory, then disk, then Redis, and fills the
//! tiers above the one that had it; a store writes memory at once and disk and Redis in
//! the background (the client's answer does not wait for them); a purge reaches every
//! tier, and through Redis every other instance's local tiers.
//!
//! A key whose response varies holds a [`VaryMarker`] naming the request headers; its
//! variants are stored under [`entry::variant_key`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use weir_config::CacheConfig;

use crate::disk::DiskTier;
use crate::entry::{self, unix_ms, Entry, Purge, Stored, VaryMarker};
use crate::memory::MemoryTier;
use crate::redis_tier::RedisTier;
use crate::CacheError;

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierName {
    /// This instance's memory.
    Memory,
    /// This instance's disk.
    Disk,
    /// The shared Redis.
    Redis,
}

impl TierName {
    /// Its name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TierName::Memory => "memory",
            TierName::Disk => "disk",
            TierName::Redis => "redis",
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    /// An entry (fresh or not: the caller decides).
    Found {
        /// The entry.
        entry: Arc<Entry>,
        /// Where it was.
        tier: TierName,
    },
    /// Nothing for this request; `vary_miss` when the key has variants but not this one.
    Miss {
        /// The key varies, and this request's variant is not stored.
        vary_miss: bool,
    },
}

/// How many entries a purge removed, per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// From memory.
    pub memory: usize,
    /// From disk.
    pub disk: usize,
    /// From Redis.
    pub redis: usize,
}

impl Purged {
    /// Entries gone (an entry held in several tiers counts once, so the largest count).
    pub fn entries(&self) -> usize {
        self.memory.max(self.disk).max(self.redis)
    }
}

/// The cache's tiers.
pub struct Tiers {
    memory: MemoryTier,
    disk: Option<DiskTier>,
    redis: Option<RedisTier>,
    /// Purges received from other instances.
    remote_purges: AtomicU64,
}

/// Counters of the tiers, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TierStats {
    /// Entries in memory.
    pub memory_entries: u64,
    /// Bytes in memory.
    pub memory_bytes: u64,
    /// Entries on disk.
    pub disk_entries: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Corrupt disk files and Redis records dropped.
    pub corrupt: u64,
    /// Disk I/O errors.
    pub disk_errors: u64,
    /// Redis errors (the cache went on from its local tiers).
    pub redis_errors: u64,
    /// Purges received from other instances.
    pub remote_purges: u64,
}

impl Tiers {
    /// Opens the tiers `[cache]` configures; the disk directory must be usable (the
    /// process exits 2 otherwise), Redis need not be up.
    pub async fn open(cfg: &CacheConfig) -> Result<Arc<Tiers>, CacheError> {
        let memory_bytes = cfg.memory.bytes();
        let disk = match &cfg.disk {
            Some(dir) => Some(DiskTier::open(dir, cfg.disk_max_bytes()).await?),
            None => None,
        };
        let redis = match &cfg.store {
            Some(url) => Some(RedisTier::connect(url, memory_bytes / 10).await?),
            None => None,
        };
        let tiers = Arc::new(Tiers {
            memory: MemoryTier::new(memory_bytes),
            disk,
            redis,
            remote_purges: AtomicU64::new(0),
        });
        if let Some(r) = &tiers.redis {
            let weak = Arc::downgrade(&tiers);
            // The task holds the tiers weakly: it ends its work when they are dropped.
            r.subscribe(move |p| {
                if let Some(t) = weak.upgrade() {
                    t.remote_purges.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        t.purge_local(&p).await;
                    });
                }
            });
        }
        Ok(tiers)
    }

    /// The tiers with memory only (tests, and a `[cache]` without disk or store).
    pub fn in_memory(max_bytes: u64) -> Arc<Tiers> {
        Arc::new(Tiers {
            memory: MemoryTier::new(max_bytes),
            disk: None,
            redis: None,
            remote_purges: AtomicU64::new(0),
        })
    }

    async fn get_raw(&self, key: &str) -> Option<(Stored, TierName)> {
        if let Some(s) = self.memory.get(key) {
            return Some((s, TierName::Memory));
        }
        if let Some(d) = &self.disk {
            if let Some(s) = d.get(key).await {
                self.memory.put(s.clone());
                return Some((s, TierName::Disk));
            }
        }
        if let Some(r) = &self.redis {
            if let Some(s) = r.get(key).await {
                if s.time_to_keep(SystemTime::now()).is_zero() {
                    return None;
                }
                self.memory.put(s.clone());
                if let Some(d) = &self.disk {
                    d.put(&s).await;
                }
                return Some((s, TierName::Redis));
            }
        }
        None
    }

    /// The entry for cache key `key` and a request with `headers` (its variant, when the
    /// key's response varies).
    pub async fn lookup(&self, key: &str, headers: &HeaderMap) -> Lookup {
        match self.get_raw(key).await {
            None => Lookup::Miss { vary_miss: false },
            Some((Stored::Response(entry), tier)) => Lookup::Found { entry, tier },
            Some((Stored::Vary(m), _)) => {
                let vk = entry::variant_key(key, &m.names, headers);
                match self.get_raw(&vk).await {
                    Some((Stored::Response(entry), tier)) => Lookup::Found { entry, tier },
                    _ => Lookup::Miss { vary_miss: true },
                }
            }
        }
    }

    /// Stores `entry` for cache key `key` (its `key` field is set here): under the key, or
    /// under its variant's key beside a marker naming `vary` when the response varies.
    /// Memory at once; disk and Redis in the background.
    pub fn store(
        self: &Arc<Self>,
        key: &str,
        vary: Vec<String>,
        headers: &HeaderMap,
        mut entry: Entry,
    ) {
        let mut records = Vec::with_capacity(2);
        if vary.is_empty() {
            entry.key = key.to_owned();
        } else {
            entry.key = entry::variant_key(key, &vary, headers);
            // The marker lives as long as the longest variant may.
            let useless_after_ms = match self.memory.get(key) {
                Some(Stored::Vary(old)) if old.names == vary => {
                    old.useless_after_ms.max(entry.useless_after_ms)
                }
                _ => entry.useless_after_ms,
            };
            records.push(Stored::Vary(Arc::new(VaryMarker {
                key: key.to_owned(),
                uri: entry.uri.clone(),
                names: vary,
                useless_after_ms,
            })));
        }
        records.push(Stored::Response(Arc::new(entry)));
        for r in &records {
            self.memory.put(r.clone());
        }
        if self.disk.is_none() && self.redis.is_none() {
            return;
        }
        let tiers = self.clone();
        tokio::spawn(async move {
            for r in &records {
                if let Some(d) = &tiers.disk {
                    d.put(r).await;
                }
                if let Some(x) = &tiers.redis {
                    x.put(r).await;
                }
            }
        });
    }

    /// Removes what `purge` names from every tier and tells the other instances.
    pub async fn purge(&self, purge: &Purge) -> Purged {
        let mut n = self.purge_local(purge).await;
        if let Some(r) = &self.redis {
            n.redis = r.purge(purge).await;
            r.publish(purge).await;
        }
        n
    }

    /// Removes what `purge` names from this instance's tiers.
    pub async fn purge_local(&self, purge: &Purge) -> Purged {
        let mut n = Purged {
            memory: self.memory.purge(purge),
            ..Purged::default()
        };
        if let Some(d) = &self.disk {
            n.disk = d.purge(purge).await;
        }
        n
    }

    /// The tiers' counters.
    pub fn stats(&self) -> TierStats {
        let (memory_entries, memory_bytes) = self.memory.usage();
        let (disk_entries, disk_bytes) = self.disk.as_ref().map_or((0, 0), DiskTier::usage);
        TierStats {
            memory_entries,
            memory_bytes,
            disk_entries,
            disk_bytes,
            corrupt: self.disk.as_ref().map_or(0, DiskTier::corrupt)
                + self.redis.as_ref().map_or(0, RedisTier::corrupt),
            disk_errors: self.disk.as_ref().map_or(0, DiskTier::errors),
            redis_errors: self.redis.as_ref().map_or(0, RedisTier::errors),
            remote_purges: self.remote_purges.load(Ordering::Relaxed),
        }
    }
}

/// Unix milliseconds now plus `d` (an entry's `useless_after_ms`).
pub fn useless_after(now: SystemTime, d: std::time::Duration) -> u64 {
    unix_ms(now).saturating_add(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::entry;

    fn as_entry(s: Stored) -> Entry {
        match s {
            Stored::Response(e) => (*e).clone(),
            Stored::Vary(_) => panic!(),
        }
    }

    #[tokio::test]
    async fn variants_are_found_by_the_headers_vary_names() {
        let t = Tiers::in_memory(1 << 20);
        let now = SystemTime::now();
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        let plain = HeaderMap::new();
        let names = vec!["accept-encoding".to_string()];
        t.store(
            "k",
            names.clone(),
            &gzip,
            as_entry(entry("x", "/", b"zipped", now)),
        );
        t.store("k", names, &plain, as_entry(entry("x", "/", b"plain", now)));
        let body = |l: Lookup| match l {
            Lookup::Found { entry, .. } => entry.body.clone(),
            Lookup::Miss { vary_miss } => panic!("miss, vary_miss={vary_miss}"),
        };
        assert_eq!(&body(t.lookup("k", &gzip).await)[..], b"zipped");
        assert_eq!(&body(t.lookup("k", &plain).await)[..], b"plain");
        let mut br = HeaderMap::new();
        br.insert("accept-encoding", "br".parse().unwrap());
        assert!(matches!(
            t.lookup("k", &br).await,
            Lookup::Miss { vary_miss: true }
        ));
        let gone = t.purge(&Purge::Key("k".into())).await;
        assert_eq!(gone.memory, 3, "the marker and both variants");
        assert!(matches!(
            t.lookup("k", &gzip).await,
            Lookup::Miss { vary_miss: false }
        ));
    }
}

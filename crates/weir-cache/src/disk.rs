//! The disk tier (NGINX's `uwsgi_cache_path ... max_size=`): one file per entry, holding
//! its record ([`Stored::encode`]), bounded by the bytes of its files, least recently used
//! entries evicted first; it survives restarts ([`DiskTier::open`] reads the files back).
//!
//! Layout: the file of tier key `k` is `<dir>/<h[30..32]>/<h>`, `h` the 32 hex digits of
//! FNV-1a 128 of `k` (a published, fixed function: the same name in every run and build,
//! unlike std's `RandomState`). The 256 subdirectories, by the hash's last byte (its best
//! spread one: FNV's multiply hardly carries a key's last bytes into the top ones), keep
//! each directory small (a tier of a million entries is 4,000 files a directory, not a
//! million, which `ls`, backups and file systems without hashed directories handle
//! badly), as NGINX's `levels=` does. FNV is not a cryptographic hash: two keys may share
//! a name (by chance, at odds under 2^-64 among four billion keys, or made to by
//! someone), so a record's key is compared on every read and the index holds one key per
//! name; a collision costs a miss, never the other key's response.
//!
//! Writes go to a `.tmp-` file in the entry's directory, then are renamed over the entry's
//! name: a reader, a crash or a concurrent write of the same key sees the old record or
//! the new one, never half of one. There is no fsync: after a power loss a file may be
//! empty or torn, and its checksum sends it to the app (it is deleted when read or at the
//! next start). `open` deletes leftover `.tmp-` files and never touches names it did not
//! write. A deletion (purge, eviction) racing a write of the same key may delete the new
//! file: the index then names a missing file, which the next get finds and forgets (a
//! miss, never a wrong or torn response).
//!
//! The index (in memory, behind a mutex never held across an await or any I/O) holds per
//! entry its key, request URI, tags, size, time of uselessness and a recency tick, so
//! lookups of absent keys, purges and evictions read no file. Bytes counted are the
//! files' lengths (not the file system's blocks). `open` rebuilds it by reading every
//! file, so a start reads the whole tier (a few seconds a gigabyte); entries are then
//! ordered by the files' modification times.
//!
//! One process uses a directory at a time (as with NGINX's cache).
//!
//! Hand-written rather than a crate: `foyer` is a hybrid cache with a heavy dependency tree
//! and its own device format, `cacache` has no bound on bytes and pulls a dozen crates;
//! what the tier needs is the few hundred lines below, on the record format it shares
//! with Redis.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::entry::{is_key_or_variant, unix_ms, Purge, Stored};
use crate::CacheError;

/// Prefix of files being written (and of the probe `open` writes).
const TMP_PREFIX: &str = ".tmp-";

/// How often at most the expired entries are looked for when the tier is full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The disk tier: one file per entry under a directory, at most `max_bytes` of them.
pub struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    corrupt: AtomicU64,
    errors: AtomicU64,
    /// Unix second of the last I/O warning (they are logged at most once a second).
    last_warn: AtomicU64,
    /// Makes temp file names unique within the process.
    tmp_seq: AtomicU64,
}

/// What a file-system step failed at, for the logs and [`CacheError::Disk`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// An I/O call failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The blocking task running the I/O did not finish (the runtime is shutting down).
    #[error("the disk task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Failure {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Failure + 'a {
        move |source| Failure::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The entries, by file name (the key's hash), and their recency.
#[derive(Default)]
struct Index {
    slots: HashMap<u128, Slot>,
    /// Recency tick -> file name; the first is the least recently used.
    lru: BTreeMap<u64, u128>,
    /// The next tick (ticks also tell the writes of one name apart).
    next: u64,
    bytes: u64,
    last_sweep: Option<Instant>,
}

/// What the index knows of one entry.
struct Slot {
    key: Box<str>,
    uri: Box<str>,
    tags: Box<[String]>,
    size: u64,
    useless_after_ms: u64,
    /// Its place in [`Index::lru`].
    tick: u64,
    /// The tick it was inserted at: a get that read the file removes the slot only if it
    /// is still this one (a put may have replaced it meanwhile).
    generation: u64,
}

impl Slot {
    fn of(stored: &Stored, size: u64) -> Slot {
        Slot {
            key: stored.key().into(),
            uri: stored.uri().into(),
            tags: stored.tags().into(),
            size,
            useless_after_ms: stored.useless_after_ms(),
            tick: 0,
            generation: 0,
        }
    }

    fn matches(&self, purge: &Purge) -> bool {
        match purge {
            Purge::Key(k) => is_key_or_variant(&self.key, k),
            Purge::Prefix(p) => self.uri.starts_with(p.as_str()),
            Purge::Tag(t) => self.tags.iter().any(|x| x == t),
        }
    }
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Inserts `slot` under `name`, replacing what was there, as the most recently used.
    fn insert(&mut self, name: u128, mut slot: Slot) {
        self.remove(name);
        let t = self.tick();
        slot.tick = t;
        slot.generation = t;
        self.bytes += slot.size;
        self.lru.insert(t, name);
        self.slots.insert(name, slot);
    }

    fn remove(&mut self, name: u128) -> Option<Slot> {
        let slot = self.slots.remove(&name)?;
        self.lru.remove(&slot.tick);
        self.bytes -= slot.size;
        Some(slot)
    }

    /// Removes `name` if it still holds the slot of `generation`; whether it did.
    fn remove_if(&mut self, name: u128, generation: u64) -> bool {
        if self
            .slots
            .get(&name)
            .is_some_and(|s| s.generation == generation)
        {
            self.remove(name);
            true
        } else {
            false
        }
    }

    fn touch(&mut self, name: u128) {
        let t = self.tick();
        if let Some(slot) = self.slots.get_mut(&name) {
            self.lru.remove(&slot.tick);
            slot.tick = t;
            self.lru.insert(t, name);
        }
    }

    /// Removes entries until the index is within `max_bytes`: the expired ones first (looked
    /// for at most every [`SWEEP_EVERY`]), then the least recently used. The names removed.
    fn evict(&mut self, max_bytes: u64, now_ms: u64) -> Vec<u128> {
        let mut gone = Vec::new();
        if self.bytes <= max_bytes {
            return gone;
        }
        if self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            self.last_sweep = Some(Instant::now());
            gone.extend(
                self.slots
                    .iter()
                    .filter(|(_, s)| s.useless_after_ms <= now_ms)
                    .map(|(n, _)| *n),
            );
            for n in &gone {
                self.remove(*n);
            }
        }
        while self.bytes > max_bytes {
            let Some((_, name)) = self.lru.pop_first() else {
                break;
            };
            // Out of the order already (pop_first); out of the slots and the bytes now.
            if let Some(slot) = self.slots.remove(&name) {
                self.bytes -= slot.size;
            }
            gone.push(name);
        }
        gone
    }
}

/// FNV-1a, 128 bits (the published offset basis and prime): a file name per key.
fn hash(key: &str) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    key.bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// The file of `name` under `dir`.
fn path_of(dir: &Path, name: u128) -> PathBuf {
    dir.join(format!("{:02x}", name & 0xff))
        .join(format!("{name:032x}"))
}

/// The entry name a file name is, if it is one (32 lowercase hex digits).
fn parse_name(file: &str) -> Option<u128> {
    if file.len() != 32
        || !file
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(file, 16).ok()
}

/// Removes `path`; a file already gone is not an error.
fn remove_file(path: &Path) -> Result<(), Failure> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Failure::io("removing", path)(e)),
        _ => Ok(()),
    }
}

impl DiskTier {
    /// Opens (creates) `dir`, checks it is writable (writes and removes a probe file), and
    /// rebuilds the index by reading every entry file's record; unreadable, corrupt and
    /// expired files are deleted, leftover temp files too, and then the least recently
    /// written entries while the tier is over `max_bytes` (a bound lowered since the last
    /// run). Errors: [`CacheError::Disk`] naming the path and what failed.
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<DiskTier, CacheError> {
        let tier = DiskTier {
            dir: dir.to_owned(),
            max_bytes,
            index: Mutex::new(Index::default()),
            corrupt: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        };
        let dir2 = dir.to_owned();
        let scan = tokio::task::spawn_blocking(move || scan(&dir2, max_bytes))
            .await
            .map_err(Failure::from)
            .and_then(|r| r)
            .map_err(|e| CacheError::Disk {
                path: dir.to_owned(),
                reason: e.to_string(),
            })?;
        tier.corrupt.store(scan.corrupt, Ordering::Relaxed);
        tier.errors.store(scan.errors, Ordering::Relaxed);
        tracing::info!(
            dir = %dir.display(),
            entries = scan.index.slots.len(),
            bytes = scan.index.bytes,
            corrupt = scan.corrupt,
            "disk cache opened"
        );
        *tier.index() = scan.index;
        Ok(tier)
    }

    /// The entry under tier key `key`, read from its file. A file whose record does not
    /// decode (or holds another key) is deleted, counted ([`DiskTier::corrupt`]) and logged;
    /// an expired entry is deleted; both are `None`, as is an I/O error (counted in
    /// [`DiskTier::errors`]).
    pub async fn get(&self, key: &str) -> Option<Stored> {
        let name = hash(key);
        let now_ms = unix_ms(SystemTime::now());
        // Some(generation) to read, None when expired (and taken out of the index).
        let generation = {
            let mut index = self.index();
            let slot = index.slots.get(&name).filter(|s| &*s.key == key)?;
            if slot.useless_after_ms <= now_ms {
                index.remove(name);
                None
            } else {
                let generation = slot.generation;
                index.touch(name);
                Some(generation)
            }
        };
        let path = path_of(&self.dir, name);
        let Some(generation) = generation else {
            self.remove_files(vec![path]).await;
            return None;
        };
        let read = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(p))
                .await
                .map_err(Failure::from)
                .and_then(|r| r.map_err(Failure::io("reading", &path)))
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(Failure::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                // Deleted meanwhile (a purge or an eviction racing a put): a miss.
                self.index().remove_if(name, generation);
                return None;
            }
            Err(e) => {
                self.io_error(&e);
                self.drop_entry(name, generation, path).await;
                return None;
            }
        };
        let stored = match Stored::decode(&raw) {
            Ok(s) if s.key() == key => s,
            Ok(s) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    path = %path.display(),
                    key,
                    found = s.key(),
                    "disk cache: a file holds another key; deleted"
                );
                self.drop_entry(name, generation, path).await;
                return None;
            }
            Err(e) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    path = %path.display(),
                    key,
                    error = %e,
                    "disk cache: a corrupt file; deleted"
                );
                self.drop_entry(name, generation, path).await;
                return None;
            }
        };
        if stored.time_to_keep(SystemTime::now()).is_zero() {
            self.drop_entry(name, generation, path).await;
            return None;
        }
        Some(stored)
    }

    /// Writes `stored`, replacing its key's old file; whether it was stored. It is not when
    /// its record is over a tenth of the tier or it is already useless, nor on an I/O error
    /// (disk full...: logged at most once a second, counted in [`DiskTier::errors`]).
    ///
    /// The record goes to a temp file in the same directory which is then renamed over the
    /// entry's name. Then the least recently used entries (expired ones first) are evicted
    /// until the tier is within its bytes.
    pub async fn put(&self, stored: &Stored) -> bool {
        if stored.time_to_keep(SystemTime::now()).is_zero() {
            return false;
        }
        let name = hash(stored.key());
        let path = path_of(&self.dir, name);
        let tmp = path.with_file_name(format!(
            "{TMP_PREFIX}{name:032x}-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let max_entry = self.max_bytes / 10;
        let record = stored.clone();
        // Encoding (a JSON and a CRC over the body) is done off the async threads too.
        let written = tokio::task::spawn_blocking(move || -> Result<Option<u64>, Failure> {
            let raw = record.encode();
            let size = raw.len() as u64;
            if size > max_entry {
                return Ok(None);
            }
            write_replace(&path, &tmp, &raw)?;
            Ok(Some(size))
        })
        .await
        .map_err(Failure::from)
        .and_then(|r| r);
        let size = match written {
            Ok(Some(size)) => size,
            Ok(None) => return false,
            Err(e) => {
                self.io_error(&e);
                return false;
            }
        };
        let gone = {
            let mut index = self.index();
            index.insert(name, Slot::of(stored, size));
            index.evict(self.max_bytes, unix_ms(SystemTime::now()))
        };
        self.remove_files(gone.into_iter().map(|n| path_of(&self.dir, n)).collect())
            .await;
        true
    }

    /// Removes what `purge` names (a key with its variants, the entries whose URI starts
    /// with a prefix, or those with a tag), found in the index (no file is read); how many
    /// entries went.
    pub async fn purge(&self, purge: &Purge) -> usize {
        let gone: Vec<u128> = {
            let mut index = self.index();
            let gone: Vec<u128> = index
                .slots
                .iter()
                .filter(|(_, s)| s.matches(purge))
                .map(|(n, _)| *n)
                .collect();
            for n in &gone {
                index.remove(*n);
            }
            gone
        };
        let count = gone.len();
        self.remove_files(gone.into_iter().map(|n| path_of(&self.dir, n)).collect())
            .await;
        count
    }

    /// (entries, bytes) in the tier.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.index();
        (index.slots.len() as u64, index.bytes)
    }

    /// Corrupt files found since start (at `open` and by reads).
    pub fn corrupt(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// I/O errors since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Nothing panics while holding it; if something did, the index is still usable.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops `name`'s entry after a bad read: its slot, and its file when the slot was
    /// still the one read (otherwise a put has written a new file since).
    async fn drop_entry(&self, name: u128, generation: u64, path: PathBuf) {
        if self.index().remove_if(name, generation) {
            self.remove_files(vec![path]).await;
        }
    }

    /// Deletes files (off the async threads); failures are logged and counted.
    async fn remove_files(&self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        let failed = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .filter_map(|p| remove_file(p).err())
                .collect::<Vec<_>>()
        })
        .await;
        match failed {
            Ok(failed) => failed.iter().for_each(|e| self.io_error(e)),
            Err(e) => self.io_error(&Failure::from(e)),
        }
    }

    /// Counts an I/O error and logs it, at most once a second.
    fn io_error(&self, e: &dyn Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let second = unix_ms(SystemTime::now()) / 1000;
        if self.last_warn.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(
                dir = %self.dir.display(),
                error = %e,
                errors = self.errors(),
                "disk cache I/O error"
            );
        }
    }
}

/// Writes `raw` to `tmp`, then renames it to `path` (creating the directory if need be);
/// on failure the temp file is removed.
fn write_replace(path: &Path, tmp: &Path, raw: &[u8]) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Failure::io("creating", parent))?;
    }
    let result = std::fs::write(tmp, raw)
        .map_err(Failure::io("writing", tmp))
        .and_then(|()| std::fs::rename(tmp, path).map_err(Failure::io("renaming to", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// What `open` found on disk.
struct Scan {
    index: Index,
    corrupt: u64,
    /// Files that could not be read (and were deleted).
    errors: u64,
}

/// Creates and probes `dir`, reads its entries back, deletes what is of no use.
fn scan(dir: &Path, max_bytes: u64) -> Result<Scan, Failure> {
    std::fs::create_dir_all(dir).map_err(Failure::io("creating", dir))?;
    let probe = dir.join(format!("{TMP_PREFIX}probe-{}", std::process::id()));
    std::fs::write(&probe, b"weir").map_err(Failure::io("writing", &probe))?;
    std::fs::remove_file(&probe).map_err(Failure::io("removing", &probe))?;

    let now_ms = unix_ms(SystemTime::now());
    let mut corrupt = 0;
    let mut errors = 0;
    // (modification time, name, slot): the index is ordered by when files were written.
    let mut found: Vec<(SystemTime, u128, Slot)> = Vec::new();
    for top in std::fs::read_dir(dir).map_err(Failure::io("reading", dir))? {
        let top = top.map_err(Failure::io("reading", dir))?;
        let top_name = top.file_name();
        let top_name = top_name.to_string_lossy();
        let top_path = top.path();
        if top_name.starts_with(TMP_PREFIX) {
            remove_file(&top_path)?;
            continue;
        }
        let is_level = top_name.len() == 2
            && top_name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_level || !top.file_type().is_ok_and(|t| t.is_dir()) {
            continue; // Not ours: left alone.
        }
        for file in std::fs::read_dir(&top_path).map_err(Failure::io("reading", &top_path))? {
            let file = file.map_err(Failure::io("reading", &top_path))?;
            let path = file.path();
            let file_name = file.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with(TMP_PREFIX) {
                remove_file(&path)?;
                continue;
            }
            let Some(name) = parse_name(&file_name).filter(|_| file_name.ends_with(&*top_name))
            else {
                continue;
            };
            let read = std::fs::read(&path).and_then(|raw| {
                let modified = file.metadata()?.modified()?;
                Ok((raw, modified))
            });
            let (raw, modified) = match read {
                Ok(r) => r,
                Err(e) => {
                    errors += 1;
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "disk cache: an unreadable file; deleted"
                    );
                    remove_file(&path)?;
                    continue;
                }
            };
            match Stored::decode(&raw) {
                Ok(s) if hash(s.key()) == name => {
                    if s.useless_after_ms() <= now_ms {
                        remove_file(&path)?;
                    } else {
                        found.push((modified, name, Slot::of(&s, raw.len() as u64)));
                    }
                }
                Ok(s) => {
                    corrupt += 1;
                    tracing::warn!(
                        path = %path.display(),
                        key = s.key(),
                        "disk cache: a file under another key's name; deleted"
                    );
                    remove_file(&path)?;
                }
                Err(e) => {
                    corrupt += 1;
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "disk cache: a corrupt file; deleted"
                    );
                    remove_file(&path)?;
                }
            }
        }
    }
    found.sort_by_key(|(modified, _, _)| *modified);
    let mut index = Index::default();
    for (_, name, slot) in found {
        index.insert(name, slot);
    }
    for name in index.evict(max_bytes, now_ms) {
        remove_file(&path_of(dir, name))?;
    }
    Ok(Scan {
        index,
        corrupt,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::entry;
    use crate::entry::Entry;
    use std::sync::Arc;

    /// A directory under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "weir-disk-{test}-{}-{nanos}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn body(s: &Stored) -> &[u8] {
        match s {
            Stored::Response(e) => &e.body,
            Stored::Vary(_) => panic!("a marker"),
        }
    }

    /// Every file under `dir` (recursively).
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn names_are_stable_and_spread() {
        // The name must not change between builds: entries written by one are read by the next.
        assert_eq!(
            format!("{:032x}", hash("")),
            "6c62272e07bb014262b821756295c58d"
        );
        assert_eq!(
            format!("{:032x}", hash("a")),
            "d228cb696f1a8caf78912b704e4a8964"
        );
        let levels: std::collections::HashSet<u128> = (0..10_000)
            .map(|i| hash(&format!("httpexample.com/items?page={i}")) & 0xff)
            .collect();
        assert_eq!(levels.len(), 256);
        let p = path_of(Path::new("/c"), hash("a"));
        assert_eq!(p, Path::new("/c/64/d228cb696f1a8caf78912b704e4a8964"));
        assert_eq!(
            parse_name("d228cb696f1a8caf78912b704e4a8964"),
            Some(hash("a"))
        );
        assert_eq!(parse_name("D228CB696F1A8CAF78912B704E4A8964"), None);
        assert_eq!(parse_name(".tmp-d228cb696f1a8caf78912b704e4a"), None);
    }

    #[tokio::test]
    async fn puts_and_gets_and_reopens() {
        let d = TempDir::new("roundtrip");
        let now = SystemTime::now();
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert!(t.get("httpa/items").await.is_none());
        assert!(t.put(&entry("httpa/items", "/items", b"hello", now)).await);
        assert!(t.put(&entry("httpa/users", "/users", b"users", now)).await);
        let got = t.get("httpa/items").await.unwrap();
        assert_eq!(got.key(), "httpa/items");
        assert_eq!(body(&got), b"hello");
        assert_eq!(t.usage().0, 2);
        let bytes = t.usage().1;
        // Replacing keeps one entry.
        assert!(t.put(&entry("httpa/items", "/items", b"hello2", now)).await);
        assert_eq!(t.usage(), (2, bytes + 1));
        assert_eq!(files(&d.0).len(), 2);
        drop(t);

        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert_eq!(t.usage(), (2, bytes + 1));
        assert_eq!(body(&t.get("httpa/items").await.unwrap()), b"hello2");
        assert_eq!(body(&t.get("httpa/users").await.unwrap()), b"users");
        assert_eq!((t.corrupt(), t.errors()), (0, 0));
    }

    async fn damaged_file_is_dropped(test: &str, damage: fn(&mut Vec<u8>)) {
        let d = TempDir::new(test);
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert!(
            t.put(&entry("k", "/", b"hello world", SystemTime::now()))
                .await
        );
        let path = path_of(&d.0, hash("k"));
        let mut raw = std::fs::read(&path).unwrap();
        damage(&mut raw);
        std::fs::write(&path, raw).unwrap();
        assert!(t.get("k").await.is_none());
        assert!(!path.exists());
        assert_eq!(t.corrupt(), 1);
        assert_eq!(t.usage(), (0, 0));
        assert!(t.get("k").await.is_none());
        assert_eq!(t.corrupt(), 1);
    }

    #[tokio::test]
    async fn a_flipped_byte_is_dropped() {
        damaged_file_is_dropped("flipped", |raw| {
            let mid = raw.len() / 2;
            raw[mid] ^= 0x10;
        })
        .await;
    }

    #[tokio::test]
    async fn a_truncated_file_is_dropped() {
        damaged_file_is_dropped("truncated", |raw| raw.truncate(raw.len() / 2)).await;
    }

    #[tokio::test]
    async fn open_deletes_corrupt_expired_and_temp_files_only() {
        let d = TempDir::new("open");
        let now = SystemTime::now();
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert!(t.put(&entry("good", "/g", b"g", now)).await);
        assert!(t.put(&entry("bad", "/b", b"b", now)).await);
        drop(t);
        let bad = path_of(&d.0, hash("bad"));
        std::fs::write(&bad, b"WEIR-CACHE1 not a record").unwrap();
        // An expired record, written as a previous run would have.
        let old = entry("old", "/o", b"o", now - Duration::from_secs(3600));
        let old_path = path_of(&d.0, hash("old"));
        std::fs::create_dir_all(old_path.parent().unwrap()).unwrap();
        std::fs::write(&old_path, old.encode()).unwrap();
        // Temp files a crash left, at both levels, and a file that is not the tier's.
        let level = old_path.parent().unwrap().to_owned();
        std::fs::write(level.join(".tmp-abc-1-2"), b"half").unwrap();
        std::fs::write(d.0.join(".tmp-probe-1"), b"weir").unwrap();
        std::fs::write(d.0.join("README"), b"mine").unwrap();

        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert_eq!(t.usage().0, 1);
        assert_eq!(t.corrupt(), 1);
        assert!(!bad.exists() && !old_path.exists());
        assert!(!level.join(".tmp-abc-1-2").exists());
        assert!(!d.0.join(".tmp-probe-1").exists());
        assert!(d.0.join("README").exists());
        assert!(t.get("good").await.is_some());
    }

    #[tokio::test]
    async fn expired_and_useless_entries() {
        let d = TempDir::new("expired");
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        assert!(!t.put(&entry("old", "/", b"x", past)).await);
        assert_eq!(t.usage(), (0, 0));

        let Stored::Response(e) = entry("soon", "/", b"x", SystemTime::now()) else {
            panic!()
        };
        let mut e: Entry = (*e).clone();
        e.useless_after_ms = unix_ms(SystemTime::now()) + 500;
        assert!(t.put(&Stored::Response(Arc::new(e))).await);
        assert!(t.get("soon").await.is_some());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(t.get("soon").await.is_none());
        assert_eq!(t.usage(), (0, 0));
        assert!(files(&d.0).is_empty());
    }

    #[tokio::test]
    async fn stays_within_its_bytes_least_recently_used_first() {
        static BODY: [u8; 4000] = [7; 4000];
        let d = TempDir::new("lru");
        let now = SystemTime::now();
        let size = entry("k00", "/", &BODY, now).encode().len() as u64;
        let max = size * 10 + size / 2;
        let t = DiskTier::open(&d.0, max).await.unwrap();
        for i in 0..10 {
            assert!(t.put(&entry(&format!("k{i:02}"), "/", &BODY, now)).await);
        }
        assert_eq!(t.usage(), (10, size * 10));
        assert!(t.get("k00").await.is_some());
        assert!(t.put(&entry("k10", "/", &BODY, now)).await);
        assert_eq!(t.usage(), (10, size * 10));
        assert!(
            t.get("k00").await.is_some(),
            "the recently read one was evicted"
        );
        assert!(
            t.get("k01").await.is_none(),
            "the least recently used one stayed"
        );
        assert!(!path_of(&d.0, hash("k01")).exists());
        for i in 11..40 {
            assert!(t.put(&entry(&format!("k{i:02}"), "/", &BODY, now)).await);
            assert!(t.usage().1 <= max);
        }
        assert_eq!(files(&d.0).len(), 10);
        drop(t);
        // A smaller bound at the next start evicts down to it, the least recently written
        // first (file times are coarse: k39 is made the newest by hand).
        std::fs::File::options()
            .write(true)
            .open(path_of(&d.0, hash("k39")))
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let t = DiskTier::open(&d.0, size * 5).await.unwrap();
        assert_eq!(t.usage(), (5, size * 5));
        assert_eq!(files(&d.0).len(), 5);
        assert!(t.get("k39").await.is_some());
    }

    #[tokio::test]
    async fn an_entry_over_a_tenth_is_not_stored() {
        static BIG: [u8; 200_000] = [0; 200_000];
        let d = TempDir::new("big");
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        assert!(!t.put(&entry("k", "/", &BIG, SystemTime::now())).await);
        assert!(t.get("k").await.is_none());
        assert_eq!(t.usage(), (0, 0));
        assert!(files(&d.0).is_empty());
    }

    #[tokio::test]
    async fn purges_by_key_with_variants_prefix_and_tag() {
        let d = TempDir::new("purge");
        let now = SystemTime::now();
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        let variant = format!("httpa/items{}gzip", crate::entry::VARIANT_SEP);
        assert_eq!(variant, "httpa/items\u{1}gzip");
        for (k, u) in [
            ("httpa/items", "/items"),
            (variant.as_str(), "/items"),
            ("httpa/items2", "/items2"),
            ("httpa/users", "/users"),
        ] {
            assert!(t.put(&entry(k, u, b"x", now)).await);
        }
        assert_eq!(t.purge(&Purge::Key("httpa/items".into())).await, 2);
        assert!(t.get("httpa/items").await.is_none());
        assert!(t.get(&variant).await.is_none());
        assert!(t.get("httpa/items2").await.is_some());
        assert_eq!(files(&d.0).len(), 2);
        assert_eq!(t.purge(&Purge::Prefix("/items".into())).await, 1);
        assert!(t.get("httpa/users").await.is_some());
        assert_eq!(t.purge(&Purge::Tag("t2".into())).await, 0);
        assert_eq!(t.purge(&Purge::Tag("t1".into())).await, 1);
        assert_eq!(t.usage(), (0, 0));
        assert!(files(&d.0).is_empty());
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_key_leave_one_whole_entry() {
        let d = TempDir::new("race");
        let now = SystemTime::now();
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        let (a, b) = (entry("k", "/", b"aaaa", now), entry("k", "/", b"bbbb", now));
        for _ in 0..20 {
            let (x, y) = tokio::join!(t.put(&a), t.put(&b));
            assert!(x && y);
            let got = t.get("k").await.unwrap();
            assert!(body(&got) == b"aaaa" || body(&got) == b"bbbb");
            assert_eq!(t.usage().0, 1);
        }
        assert_eq!(files(&d.0).len(), 1);
        assert_eq!(t.corrupt(), 0);
    }

    #[tokio::test]
    async fn an_unwritable_dir_is_an_error_naming_it() {
        let d = TempDir::new("unwritable");
        let file = d.0.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let under = file.join("sub");
        let Err(err) = DiskTier::open(&under, 1 << 20).await else {
            panic!("opened a dir under a file")
        };
        assert!(matches!(err, CacheError::Disk { ref path, .. } if *path == under));
        let msg = err.to_string();
        assert!(msg.contains(&*under.to_string_lossy()), "{msg}");
    }

    #[tokio::test]
    async fn a_write_error_is_counted_not_raised() {
        let d = TempDir::new("write-error");
        let t = DiskTier::open(&d.0, 1 << 20).await.unwrap();
        // A regular file where the entry's level directory should be.
        let level = path_of(&d.0, hash("k")).parent().unwrap().to_owned();
        std::fs::write(&level, b"in the way").unwrap();
        assert!(!t.put(&entry("k", "/", b"x", SystemTime::now())).await);
        assert_eq!(t.errors(), 1);
        assert_eq!(t.usage(), (0, 0));
    }
}

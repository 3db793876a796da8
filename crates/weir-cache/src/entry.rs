//! What a tier holds ([`Stored`]: a response, or the Vary marker of a key) and its byte
//! form, the same on disk and in Redis.
//!
//! The byte form is `MAGIC`, a kind byte, the metadata as JSON (length-prefixed), the body
//! (length-prefixed), and a CRC-32 of everything before it. A record whose magic, lengths,
//! JSON or checksum do not hold is refused with [`CodecError`]: a tier drops it and the
//! request goes to the app, so a torn write or a flipped bit is refetched, never served.
//! Hand-written because it is forty lines; a general format crate would add a dependency
//! and still need the checksum.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};

/// The first bytes of every record (`1`: the format's version).
pub const MAGIC: &[u8; 11] = b"WEIR-CACHE1";

/// Separates a key from its variant's suffix (the values of the headers Vary names).
/// Not a byte a key template can produce from a valid request line or header.
pub const VARIANT_SEP: char = '\u{1}';

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The tier key: the cache key, or the cache key, [`VARIANT_SEP`] and the variant.
    pub key: String,
    /// The request's path and query (purges by prefix match on it).
    pub uri: String,
    /// The app's tags (`Surrogate-Key`, `Cache-Tag`), for purges by tag.
    pub tags: Vec<String>,
    /// The status.
    #[serde(with = "http_serde::status_code")]
    pub status: StatusCode,
    /// The response's headers as the app sent them (hop-by-hop ones dropped).
    #[serde(with = "http_serde::header_map")]
    pub headers: HeaderMap,
    /// Freshness, validators and Vary as RFC 9111 reads them.
    pub policy: CachePolicy,
    /// Unix milliseconds after which the entry is of no use even stale: every tier may
    /// forget it then (its time to live there).
    pub useless_after_ms: u64,
    /// Unix milliseconds when it stops being fresh (as the policy saw it when stored): how
    /// stale it is, for `stale-while-revalidate`, `stale-if-error` and `Cache-Status`.
    pub fresh_until_ms: u64,
    /// The body.
    #[serde(skip)]
    pub body: Bytes,
    /// Compressed copies of the body, made on first use for clients that accept a coding
    /// (weir-front's compression stage) and kept as long as the entry is in memory; not
    /// part of the byte form.
    #[serde(skip)]
    pub encoded: Encodings,
}

impl Entry {
    /// A response to store: its tags are read from its headers, its tier key is set by
    /// the tiers ([`crate::Tiers::store`]), and it has no compressed copy yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uri: String,
        status: StatusCode,
        headers: HeaderMap,
        policy: CachePolicy,
        fresh_until_ms: u64,
        useless_after_ms: u64,
        body: Bytes,
    ) -> Entry {
        Entry {
            key: String::new(),
            uri,
            tags: crate::freshness::tags(&headers),
            status,
            headers,
            policy,
            useless_after_ms,
            fresh_until_ms,
            body,
            encoded: Encodings::default(),
        }
    }
}

/// An entry's compressed copies, one slot per content coding.
#[derive(Debug, Clone, Default)]
pub struct Encodings([std::sync::OnceLock<Bytes>; 4]);

impl Encodings {
    /// The copy in `slot` (0 to 3, one per coding), made by `make` if it is not yet;
    /// `None` when `make` fails (nothing is kept then).
    pub fn get_or_make(&self, slot: usize, make: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
        let cell = self.0.get(slot)?;
        if let Some(b) = cell.get() {
            return Some(b.clone());
        }
        let b = make()?;
        Some(cell.get_or_init(|| b).clone())
    }
}

/// The marker stored under a cache key whose response varies: the request headers its
/// variants are keyed by (lowercase, in the order Vary lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaryMarker {
    /// The cache key.
    pub key: String,
    /// The request's path and query.
    pub uri: String,
    /// The headers Vary names.
    pub names: Vec<String>,
    /// As [`Entry::useless_after_ms`].
    pub useless_after_ms: u64,
}

/// What a tier holds under a key.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A response.
    Response(Arc<Entry>),
    /// The key's response varies; look up the variant's key.
    Vary(Arc<VaryMarker>),
}

/// Why a record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not a record of this format (or of another version).
    #[error("not a weir cache record (bad magic or version)")]
    Magic,
    /// Shorter than its lengths say.
    #[error("record truncated")]
    Truncated,
    /// The checksum does not match the bytes.
    #[error("record checksum mismatch")]
    Checksum,
    /// The metadata is not what this version writes.
    #[error("record metadata unreadable: {0}")]
    Meta(String),
}

const KIND_RESPONSE: u8 = b'R';
const KIND_VARY: u8 = b'V';

impl Stored {
    /// Its tier key.
    pub fn key(&self) -> &str {
        match self {
            Stored::Response(e) => &e.key,
            Stored::Vary(v) => &v.key,
        }
    }

    /// The request path and query it was stored for.
    pub fn uri(&self) -> &str {
        match self {
            Stored::Response(e) => &e.uri,
            Stored::Vary(v) => &v.uri,
        }
    }

    /// Its tags (a Vary marker has none).
    pub fn tags(&self) -> &[String] {
        match self {
            Stored::Response(e) => &e.tags,
            Stored::Vary(_) => &[],
        }
    }

    /// As [`Entry::useless_after_ms`].
    pub fn useless_after_ms(&self) -> u64 {
        match self {
            Stored::Response(e) => e.useless_after_ms,
            Stored::Vary(v) => v.useless_after_ms,
        }
    }

    /// How long a tier should keep it from `now` (zero: already useless).
    pub fn time_to_keep(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.useless_after_ms().saturating_sub(unix_ms(now)))
    }

    /// About how many bytes it takes in memory (the body and an allowance for its
    /// compressed copies, the headers twice: ours and the policy's copy, and the keys), for
    /// the tiers' byte bounds.
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 256;
        match self {
            Stored::Response(e) => {
                let headers: usize = e
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 16)
                    .sum();
                // Half the body again for its compressed copies (a text body compresses
                // to a fifth or less, and a client population uses one or two codings).
                OVERHEAD + e.key.len() + e.uri.len() + e.body.len() * 3 / 2 + 2 * headers
            }
            Stored::Vary(v) => {
                OVERHEAD
                    + v.key.len()
                    + v.uri.len()
                    + v.names.iter().map(String::len).sum::<usize>()
            }
        }
    }

    /// Whether a purge matches it.
    pub fn matches(&self, purge: &Purge) -> bool {
        match purge {
            Purge::Key(k) => is_key_or_variant(self.key(), k),
            Purge::Prefix(p) => self.uri().starts_with(p.as_str()),
            Purge::Tag(t) => self.tags().iter().any(|x| x == t),
        }
    }

    /// Its byte form (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, meta, body): (u8, Vec<u8>, &[u8]) = match self {
            Stored::Response(e) => (
                KIND_RESPONSE,
                serde_json::to_vec(&**e).expect("an entry always serializes"),
                &e.body,
            ),
            Stored::Vary(v) => (
                KIND_VARY,
                serde_json::to_vec(&**v).expect("a marker always serializes"),
                &[],
            ),
        };
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + 4 + meta.len() + 8 + body.len() + 4);
        out.extend_from_slice(MAGIC);
        out.push(kind);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a record written by [`Stored::encode`]; refuses anything else.
    pub fn decode(raw: &[u8]) -> Result<Stored, CodecError> {
        let head = MAGIC.len() + 1 + 4;
        if raw.len() < MAGIC.len() || &raw[..MAGIC.len()] != MAGIC {
            return Err(CodecError::Magic);
        }
        if raw.len() < head + 8 + 4 {
            return Err(CodecError::Truncated);
        }
        let (content, crc) = raw.split_at(raw.len() - 4);
        if crc32fast::hash(content).to_le_bytes() != crc {
            return Err(CodecError::Checksum);
        }
        let kind = content[MAGIC.len()];
        let meta_len =
            u32::from_le_bytes(content[MAGIC.len() + 1..head].try_into().expect("4 bytes"))
                as usize;
        let meta_end = head.checked_add(meta_len).ok_or(CodecError::Truncated)?;
        if content.len() < meta_end + 8 {
            return Err(CodecError::Truncated);
        }
        let meta = &content[head..meta_end];
        let body_len =
            u64::from_le_bytes(content[meta_end..meta_end + 8].try_into().expect("8 bytes"))
                as usize;
        let body = &content[meta_end + 8..];
        if body.len() != body_len {
            return Err(CodecError::Truncated);
        }
        match kind {
            KIND_RESPONSE => {
                let mut e: Entry =
                    serde_json::from_slice(meta).map_err(|e| CodecError::Meta(e.to_string()))?;
                e.body = Bytes::copy_from_slice(body);
                Ok(Stored::Response(Arc::new(e)))
            }
            KIND_VARY => {
                let v: VaryMarker =
                    serde_json::from_slice(meta).map_err(|e| CodecError::Meta(e.to_string()))?;
                Ok(Stored::Vary(Arc::new(v)))
            }
            _ => Err(CodecError::Meta(format!("unknown kind {kind}"))),
        }
    }
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purge {
    /// One cache key (with all its variants).
    Key(String),
    /// Every entry whose request path and query start with this.
    Prefix(String),
    /// Every entry the app tagged so (`Surrogate-Key`, `Cache-Tag`).
    Tag(String),
}

/// Whether tier key `stored` is cache key `key` or one of its variants.
pub fn is_key_or_variant(stored: &str, key: &str) -> bool {
    stored
        .strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(VARIANT_SEP))
}

/// The tier key of a variant of `key`: the values of the headers Vary names, in order.
pub fn variant_key(key: &str, names: &[String], headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(key.len() + 32);
    out.push_str(key);
    out.push(VARIANT_SEP);
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(VARIANT_SEP);
        }
        if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
            for (j, v) in headers.get_all(&name).iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
    }
    out
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::{Request, Response};

    /// An entry for `key`, fresh for a minute from `now`, tagged `t1`.
    pub(crate) fn entry(key: &str, uri: &str, body: &'static [u8], now: SystemTime) -> Stored {
        let minute = std::time::Duration::from_secs(60);
        entry_kept(key, uri, &["t1"], Bytes::from_static(body), minute, now)
    }

    /// An entry for `key` with `tags`, fresh and kept for `keep` from `now`.
    pub(crate) fn entry_kept(
        key: &str,
        uri: &str,
        tags: &[&str],
        body: Bytes,
        keep: std::time::Duration,
        now: SystemTime,
    ) -> Stored {
        let req = Request::get(uri).body(()).unwrap();
        let res = Response::builder()
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let policy = CachePolicy::new_options(&req, &res, now, Default::default());
        let until = unix_ms(now) + keep.as_millis() as u64;
        Stored::Response(Arc::new(Entry {
            key: key.into(),
            uri: uri.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status: StatusCode::OK,
            headers: res.headers().clone(),
            policy,
            useless_after_ms: until,
            fresh_until_ms: until,
            body,
            encoded: Default::default(),
        }))
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let now = SystemTime::now();
        let e = entry("httpa/items", "/items", b"hello", now);
        let back = Stored::decode(&e.encode()).unwrap();
        let Stored::Response(b) = back else { panic!() };
        assert_eq!(b.key, "httpa/items");
        assert_eq!(&b.body[..], b"hello");
        assert_eq!(b.headers.get("content-type").unwrap(), "text/plain");
        assert_eq!(b.tags, vec!["t1".to_string()]);
        let m = Stored::Vary(Arc::new(VaryMarker {
            key: "k".into(),
            uri: "/".into(),
            names: vec!["accept-encoding".into()],
            useless_after_ms: 5,
        }));
        let Stored::Vary(v) = Stored::decode(&m.encode()).unwrap() else {
            panic!()
        };
        assert_eq!(v.names, vec!["accept-encoding".to_string()]);
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let raw = entry("k", "/", b"hello world", SystemTime::now()).encode();
        assert_eq!(Stored::decode(b"junk").unwrap_err(), CodecError::Magic);
        assert_eq!(
            Stored::decode(&raw[..20]).unwrap_err(),
            CodecError::Truncated
        );
        for at in [MAGIC.len() + 2, raw.len() / 2, raw.len() - 6, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[at] ^= 0x40;
            assert!(Stored::decode(&bad).is_err(), "flipped byte {at} passed");
        }
        let mut cut = raw.clone();
        cut.truncate(raw.len() - 3);
        assert!(Stored::decode(&cut).is_err());
    }

    #[test]
    fn purges_match_keys_variants_prefixes_and_tags() {
        let now = SystemTime::now();
        let e = entry("httpa/items?x=1", "/items?x=1", b"", now);
        assert!(e.matches(&Purge::Key("httpa/items?x=1".into())));
        assert!(!e.matches(&Purge::Key("httpa/items".into())));
        assert!(e.matches(&Purge::Prefix("/items".into())));
        assert!(!e.matches(&Purge::Prefix("/users".into())));
        assert!(e.matches(&Purge::Tag("t1".into())));
        assert!(!e.matches(&Purge::Tag("t2".into())));
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", "gzip".parse().unwrap());
        let v = variant_key("httpa/items", &["accept-encoding".into()], &h);
        assert!(is_key_or_variant(&v, "httpa/items"));
        assert!(!is_key_or_variant(&v, "httpa/item"));
    }
}

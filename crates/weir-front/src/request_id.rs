//! `X-Request-ID`: a well-formed one from a trusted peer is kept; otherwise weir makes one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Is this id safe to keep (1 to 128 of `A-Z a-z 0-9 - _ . :`)? Anything else could
/// inject into logs or headers.
pub fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new id: 16 hex digits, unique within this process and unlikely to repeat across
/// restarts (a random prefix from the process's hasher seed and start time).
pub fn make() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(d.as_nanos());
        }
        h.finish()
    });
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    // An odd multiplier makes the sequence a permutation: unique for 2^64 requests.
    format!("{:016x}", prefix ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_well_formed(b"abc-123_x.y:z"));
        assert!(!is_well_formed(b""));
        assert!(!is_well_formed(b"a b"));
        assert!(!is_well_formed(b"a\r\nb"));
        assert!(!is_well_formed(&[b'a'; 129]));
        let (a, b) = (make(), make());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}

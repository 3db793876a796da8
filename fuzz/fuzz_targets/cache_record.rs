//! Any bytes: a cache record (as read back from disk or Redis) is decoded or refused,
//! never a panic; what decodes encodes back to bytes that decode to the same entry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_cache::Stored;

fuzz_target!(|data: &[u8]| {
    let mut framed = weir_cache::entry::MAGIC.to_vec();
    framed.extend_from_slice(data);
    for raw in [data, &framed[..]] {
        if let Ok(s) = Stored::decode(raw) {
            let again = Stored::decode(&s.encode()).expect("a re-encoded record decodes");
            assert_eq!(again.key(), s.key());
            assert_eq!(again.uri(), s.uri());
            assert_eq!(again.tags(), s.tags());
        }
    }
});

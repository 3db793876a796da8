//! Any bytes: a static file path is resolved or refused, never a panic, and what resolves
//! has only normal segments (nothing that could climb out of the root) and no NUL; a Range
//! field parsed against any length is ignored, unsatisfiable, several ranges, or one range
//! inside the length.
#![no_main]
use std::path::Component;

use libfuzzer_sys::fuzz_target;
use weir_static::{parse_range, resolve, Ranges};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = resolve(s) {
            assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
            assert!(!p.as_os_str().as_encoded_bytes().contains(&0));
        }
    }
    let (len, field) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l) >> (l[0] % 64), rest),
        None => (1000, data),
    };
    if let Ranges::One { start, end } = parse_range(field, len) {
        assert!(start <= end && end < len, "{start}-{end}/{len}");
    }
});

//! Any bytes: frame decoding never panics and always makes progress or stops.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_uwsgi::frame::{self, Frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((f, used)) = frame::decode(rest) {
        assert!(used >= frame::PREFIX_LEN && used <= rest.len());
        if let Frame::Data(d) = f {
            assert!(!d.is_empty());
        }
        rest = &rest[used..];
    }
});

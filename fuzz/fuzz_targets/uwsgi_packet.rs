//! Any bytes: decode and decode_claim never panic; a decoded packet (or CLAIM) re-encodes
//! to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_uwsgi::packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(c)) = packet::decode_claim(data) {
        let mut out = Vec::new();
        packet::encode_claim(&mut out, c);
        assert_eq!(&out[..], &data[..packet::CLAIM_LEN]);
    }
    if let Ok((p, used)) = packet::decode(data) {
        assert!(used <= data.len());
        let mut out = Vec::new();
        let mut b = packet::Builder::new(&mut out, p.modifier1, p.modifier2);
        for (k, v) in p.vars() {
            b.var(k, v).expect("decoded vars fit a packet");
        }
        b.finish().expect("decoded vars fit a packet");
        assert_eq!(&out[..], &data[..used]);
    }
});

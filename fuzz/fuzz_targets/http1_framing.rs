//! Any bytes, cut into any pieces: the framer never panics, every Pass is within the
//! input and not empty, and how the bytes arrive does not change the verdict (the bytes
//! passed and how the connection ended are the same as when they come at once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_http1::{Limits, RequestFramer, Step};

/// Feeds `data` in pieces (`cuts` are piece lengths, none: all at once); returns the bytes
/// passed and the verdict.
fn frame(data: &[u8], cuts: Option<&[u8]>) -> (usize, String) {
    let mut f = RequestFramer::new(Limits { max_head: 512 });
    let (mut pending, mut passed, mut fed) = (Vec::new(), 0usize, 0usize);
    let mut cuts = cuts.unwrap_or_default().iter().cycle();
    while fed < data.len() {
        let n = match cuts.next() {
            Some(c) => (*c as usize % 64 + 1).min(data.len() - fed),
            None => data.len(),
        };
        pending.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match f.step(&pending) {
                Step::Pass(n) => {
                    assert!(n > 0 && n <= pending.len());
                    pending.drain(..n);
                    passed += n;
                }
                Step::More => break,
                s => return (passed, format!("{s:?}")),
            }
        }
    }
    (passed, "More".into())
}

fuzz_target!(|input: &[u8]| {
    // The first 8 bytes choose the cuts; the rest is the connection's input.
    let (cuts, data) = input.split_at(input.len().min(8));
    let whole = frame(data, None);
    let pieces = frame(data, Some(if cuts.is_empty() { &[0] } else { cuts }));
    assert_eq!(whole, pieces);
});

//! What a remembered key costs in the memory store: 1,000,000 distinct keys in one zone,
//! measured as the growth of this process's RSS (/proc/self/status). Ignored by default
//! (it takes a few seconds in a debug build):
//! `cargo test -p weir-limits --test memory_per_key -- --ignored --nocapture`.

use weir_limits::limit_req::{lookup, DelayMode, Rule};
use weir_limits::memory::MemoryZone;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
#[ignore = "measures memory; run with --ignored --nocapture"]
fn a_million_keys_cost_at_most_100_mib() {
    const N: u32 = 1_000_000;
    let rule = Rule::new(
        weir_config::units::parse_rate("10r/s").unwrap(),
        0,
        DelayMode::NoDelay,
    );
    let before = rss_bytes();
    let zone = MemoryZone::new(N as usize);
    let mut key = String::with_capacity(32);
    for i in 0..N {
        use std::fmt::Write;
        key.clear();
        // IPv4-shaped keys, as $remote_addr
        write!(key, "10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).unwrap();
        let h = zone.hash_key(&key);
        zone.with(h, &rule, 1_000_000_000, |slot| {
            lookup(slot, &rule, 1_000_000_000, true)
        });
    }
    assert_eq!(zone.len(), N as usize);
    let after = rss_bytes();
    let per_key = (after - before) as f64 / f64::from(N);
    println!(
        "memory store: {N} keys, RSS {} -> {} MiB: {:.1} bytes per key",
        before >> 20,
        after >> 20,
        per_key
    );
    assert!(
        after - before <= 100 << 20,
        "{} MiB",
        (after - before) >> 20
    );
    // max_keys holds: another million keys do not grow it
    for i in 0..N {
        let h = zone.hash_key(&format!("other-{i}"));
        zone.with(h, &rule, 1_000_000_000, |slot| {
            lookup(slot, &rule, 1_000_000_000, true)
        });
    }
    assert!(zone.len() <= N as usize);
    let again = rss_bytes();
    println!(
        "after 1,000,000 more keys (evicting): RSS {} MiB",
        again >> 20
    );
    assert!(
        again <= after + (8 << 20),
        "{} -> {}",
        after >> 20,
        again >> 20
    );
}

//! `limit_req_sim`: runs weir's pure `limit_req` state machine over a request trace, for
//! the NGINX parity harness (tests/front/test_limit_req_parity.py).
//!
//! Reads JSON on stdin: `{"rate": "10r/s", "burst": 3, "nodelay": true, "delay": null,
//! "trace": [[ms, "key"], ...]}` (one zone; requests in order) and prints one JSON array:
//! `[["admit", 0] | ["delay", ms] | ["refuse", retry_after_secs], ...]`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Read;

use serde_json::{json, Value};
use weir_limits::limit_req::{check, Bucket, Buckets, DelayMode, Rule, Verdict};

struct One<'a>(&'a mut Option<Bucket>);

impl Buckets for One<'_> {
    fn with<R>(&mut self, _i: usize, f: impl FnOnce(&mut Option<Bucket>) -> R) -> R {
        f(self.0)
    }
}

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("limit_req_sim: {e}");
        std::process::exit(2);
    }
    let spec: Value = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("limit_req_sim: bad JSON: {e}");
            std::process::exit(2);
        }
    };
    let rate = match weir_config::units::parse_rate(spec["rate"].as_str().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("limit_req_sim: {e}");
            std::process::exit(2);
        }
    };
    let burst = spec["burst"].as_u64().unwrap_or(0);
    let mode = match (
        spec["nodelay"].as_bool().unwrap_or(false),
        spec["delay"].as_u64(),
    ) {
        (true, _) => DelayMode::NoDelay,
        (false, Some(n)) => DelayMode::After(n),
        (false, None) => DelayMode::All,
    };
    let rule = Rule::new(rate, burst, mode);
    let mut buckets: HashMap<String, Option<Bucket>> = HashMap::new();
    let mut out = Vec::new();
    for ev in spec["trace"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let ms = ev[0].as_u64().unwrap_or(0);
        let key = ev[1].as_str().unwrap_or("").to_owned();
        let now = 1_000_000_000 + ms;
        let slot = buckets.entry(key).or_default();
        let d = check(&mut One(slot), &[rule], || now);
        out.push(match d.verdict {
            Verdict::Admit => json!(["admit", 0]),
            Verdict::Delay(t) => json!(["delay", t.as_millis() as u64]),
            Verdict::Refuse { retry_after } => json!(["refuse", retry_after.as_secs()]),
        });
    }
    println!("{}", Value::Array(out));
}

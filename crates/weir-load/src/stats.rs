//! What a run records: latency histograms (overall, per mix entry, warmup apart), the
//! generator's own lateness, status codes, `x-weir-error` classes and errors by kind.
//!
//! Values are microseconds in HdrHistogram (3 significant digits), so any percentile is
//! within 0.1% and runs serialize, merge and re-plot losslessly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

use crate::http::Response;

/// A latency histogram in microseconds.
pub type Hist = Histogram<u64>;

/// A histogram covering 1 µs to `highest`.
pub fn new_hist(highest: Duration) -> Hist {
    let hi = (highest.as_micros() as u64).max(10_000_000);
    Histogram::new_with_bounds(1, hi, 3).expect("bounds are valid: 1 < 10 s, 3 digits")
}

/// Serializes a histogram (HdrHistogram V2, base64), as the JSON keeps it.
pub fn encode(h: &Hist) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Reads back a histogram written by [`encode`].
pub fn decode(s: &str) -> Result<Hist, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// A whole response arrived.
    Response(Response),
    /// No whole response before the timeout.
    Timeout,
    /// A connection or protocol error, by kind.
    Error(&'static str),
}

/// Counters kept per mix entry.
#[derive(Debug, Clone, Default)]
pub struct EntryCounts {
    /// Measured requests that ended (any outcome).
    pub requests: u64,
    /// Of those, errors (timeouts included).
    pub errors: u64,
    /// Status codes.
    pub status: BTreeMap<u16, u64>,
}

/// Everything one run records.
#[derive(Debug)]
pub struct Recorder {
    /// Latency of measured requests, from the scheduled time (open loop) or from the send
    /// (closed loop) to the end of the response; timeouts count as the timeout.
    pub latency: Hist,
    /// The same per mix entry.
    pub entries: Vec<Hist>,
    /// Per mix entry counters.
    pub entry_counts: Vec<EntryCounts>,
    /// Latency during the warmup.
    pub warmup: Hist,
    /// Warmup requests that ended.
    pub warmup_requests: u64,
    /// How late each request's task started after its scheduled time (open loop).
    pub lateness: Hist,
    /// Measured requests that ended (any outcome).
    pub requests: u64,
    /// Measured requests with a whole response.
    pub completed: u64,
    /// Status codes of measured requests.
    pub status: BTreeMap<u16, u64>,
    /// `x-weir-error` classes of measured requests.
    pub weir_errors: BTreeMap<String, u64>,
    /// Errors of measured requests by kind (`timeout`, `connect`, `io`, `closed`, `protocol`).
    pub errors: BTreeMap<&'static str, u64>,
    /// When the last measured request ended.
    pub last_done: Option<Instant>,
}

impl Recorder {
    /// An empty recorder for `entries` mix entries; histograms reach up to `highest`.
    pub fn new(entries: usize, highest: Duration) -> Recorder {
        Recorder {
            latency: new_hist(highest),
            entries: (0..entries).map(|_| new_hist(highest)).collect(),
            entry_counts: vec![EntryCounts::default(); entries],
            warmup: new_hist(highest),
            warmup_requests: 0,
            lateness: new_hist(highest),
            requests: 0,
            completed: 0,
            status: BTreeMap::new(),
            weir_errors: BTreeMap::new(),
            errors: BTreeMap::new(),
            last_done: None,
        }
    }

    /// Records one ended request. `latency` is `None` for errors that are not timeouts:
    /// they are counted, not put in the percentiles.
    pub fn record(
        &mut self,
        entry: usize,
        warmup: bool,
        latency: Duration,
        outcome: Outcome,
        done: Instant,
    ) {
        let us = (latency.as_micros() as u64).max(1);
        let in_hist = !matches!(outcome, Outcome::Error(_));
        if warmup {
            self.warmup_requests += 1;
            if in_hist {
                self.warmup.saturating_record(us);
            }
            return;
        }
        self.requests += 1;
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
        let ec = &mut self.entry_counts[entry];
        ec.requests += 1;
        if in_hist {
            self.latency.saturating_record(us);
            self.entries[entry].saturating_record(us);
        }
        match outcome {
            Outcome::Response(r) => {
                self.completed += 1;
                *self.status.entry(r.status).or_default() += 1;
                *ec.status.entry(r.status).or_default() += 1;
                if let Some(class) = r.weir_error {
                    *self.weir_errors.entry(class).or_default() += 1;
                }
            }
            Outcome::Timeout => {
                ec.errors += 1;
                *self.errors.entry("timeout").or_default() += 1;
            }
            Outcome::Error(kind) => {
                ec.errors += 1;
                *self.errors.entry(kind).or_default() += 1;
            }
        }
    }

    /// Records how late a request's task started.
    pub fn record_lateness(&mut self, late: Duration) {
        self.lateness
            .saturating_record((late.as_micros() as u64).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = new_hist(Duration::from_secs(30));
        for v in 1..=1000u64 {
            a.record(v * 10).unwrap();
        }
        let s = encode(&a);
        let b = decode(&s).unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(a.value_at_quantile(0.99), b.value_at_quantile(0.99));
        let mut m = new_hist(Duration::from_secs(30));
        m.add(&b).unwrap();
        m.add(&a).unwrap();
        assert_eq!(m.len(), 2000);
        assert!(decode("!!").is_err());
        assert!(decode("aGVsbG8=").is_err());
    }
}

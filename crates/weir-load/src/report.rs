//! The result of a run: a serializable [`RunJson`] (what `--json` writes and `--fail-if`
//! reads) and its text rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::RunData;
use crate::parse::fmt_us;
use crate::stats::{encode, Hist};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Percentiles of a microsecond histogram, in milliseconds (zeros when empty).
    pub fn of(h: &Hist) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: h.max() as f64 / 1e3,
            min: h.min() as f64 / 1e3,
            mean: h.mean() / 1e3,
        }
    }

    fn line(&self) -> String {
        let f = |ms: f64| fmt_us(ms * 1e3);
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.p999),
            f(self.p9999),
            f(self.max)
        )
    }
}

/// How the run was asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The command line.
    pub command: String,
    /// The target.
    pub target: String,
    /// `open` (scheduled rate) or `closed` (back-to-back connections).
    pub mode: String,
    /// Offered rate (open loop).
    pub rate: Option<f64>,
    /// `constant` or `poisson` (open loop).
    pub arrivals: Option<String>,
    /// `newest` or `oldest`: which idle connection a due request takes (open loop).
    pub reuse: Option<String>,
    /// `--spin` in µs (open loop): how long before a slot the scheduler stops sleeping.
    #[serde(default)]
    pub spin_us: Option<f64>,
    /// Seed of the schedule and the mix picks.
    pub seed: u64,
    /// Measured duration in seconds, when the run was timed.
    pub duration: Option<f64>,
    /// Measured requests asked for, when the run was counted.
    pub requests_planned: Option<u64>,
    /// Warmup in seconds.
    pub warmup: f64,
    /// Per-request timeout in seconds.
    pub timeout: f64,
    /// `--connections`.
    pub connections: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// Runtime threads.
    pub threads: usize,
    /// The mix file, if any.
    pub mix: Option<String>,
    /// weir's version.
    pub version: String,
    /// When the run started (UTC, RFC 3339).
    pub time: String,
}

/// The generator's self-check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generator {
    /// How late request tasks started after their slot (open loop), in ms.
    pub lateness_ms: Percentiles,
    /// Slots that found every allowed connection busy and had to wait for one (reported,
    /// not INVALID: with `--max-connections` the cap is part of the experiment, as with
    /// wrk2's fixed connections; `--fail-if 'missed>0'` makes it a failure).
    pub missed_slots: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Requests retried on a fresh connection after a kept-alive one was found closed.
    pub reconnects: u64,
    /// CPU time (user + system) the generator used during the run, in seconds.
    pub cpu_s: f64,
    /// Times the kernel preempted the generator (involuntary context switches): many
    /// means other processes shared its core.
    pub preemptions: u64,
    /// Whether the run measured what was asked.
    pub valid: bool,
    /// Why not, when it did not.
    pub invalid_reasons: Vec<String>,
    /// The lateness histogram (µs, HdrHistogram V2, base64).
    pub lateness_histogram: String,
}

/// The warmup, reported apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Warmup {
    /// Requests that ended during the warmup.
    pub requests: u64,
    /// Their latency.
    pub latency_ms: Percentiles,
}

/// One mix entry's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryJson {
    /// The entry's label.
    pub name: String,
    /// Its weight in the mix.
    pub weight: f64,
    /// Measured requests.
    pub requests: u64,
    /// Errors (timeouts included).
    pub errors: u64,
    /// Status counts.
    pub status: BTreeMap<String, u64>,
    /// Latency.
    pub latency_ms: Percentiles,
    /// Latency histogram (µs, HdrHistogram V2, base64).
    pub histogram: String,
}

/// Serialized latency histogram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramJson {
    /// Unit of the recorded values.
    pub unit: String,
    /// Encoding of `data`.
    pub encoding: String,
    /// The histogram.
    pub data: String,
}

/// The whole result of one run, as `--json` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunJson {
    /// How the run was asked for.
    pub manifest: Manifest,
    /// Measured requests that ended (responses, timeouts and errors).
    pub requests: u64,
    /// Of those, with a whole response.
    pub completed: u64,
    /// Responses per second over the measured window.
    pub achieved_rate: f64,
    /// Latency percentiles (ms) from each request's scheduled time (open loop) or send
    /// (closed loop); timeouts count as the timeout, other errors are not included.
    pub latency_ms: Percentiles,
    /// Timeouts are in the percentiles at this value (ms).
    pub timeouts_counted_as_ms: f64,
    /// Status code to count.
    pub status: BTreeMap<String, u64>,
    /// `x-weir-error` class to count.
    pub weir_errors: BTreeMap<String, u64>,
    /// Errors of every kind (timeouts included).
    pub errors: u64,
    /// Errors by kind: `timeout`, `connect`, `io`, `closed`, `protocol`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The generator's self-check.
    pub generator: Generator,
    /// The warmup, apart.
    pub warmup: Option<Warmup>,
    /// Per mix entry.
    pub entries: Vec<EntryJson>,
    /// The overall latency histogram.
    pub histogram: HistogramJson,
    /// Wall time of the run, warmup and drain included (s).
    pub elapsed_s: f64,
}

/// The default `--max-lateness` (`auto`), in ms: 1 ms, or, when both are more, the smaller
/// of 5% of the latency p99 and 10 slot intervals. A send that late is small against the
/// tail being measured and is not the generator running behind its schedule (at 10 req/s
/// against a 5 s query, 2 ms late changes nothing); at high rates the 10 slots keep the
/// limit at 1 ms, since a generator that cannot keep up there shows more as missed slots
/// and a long latency than as lateness.
pub fn auto_lateness_limit_ms(latency_p99_ms: f64, rate: f64) -> f64 {
    let ten_slots_ms = 10.0 * 1e3 / rate.max(1e-9);
    (latency_p99_ms * 0.05).min(ten_slots_ms).max(1.0)
}

/// Builds the result of a run.
pub fn build(
    manifest: Manifest,
    data: RunData,
    names: &[(String, f64)],
    timeout: Duration,
    lateness_limit: Option<Duration>,
) -> RunJson {
    let rec = &data.rec;
    let measured_start = data.measured_start.into_std();
    let actual = rec
        .last_done
        .map(|d| d.saturating_duration_since(measured_start).as_secs_f64())
        .unwrap_or(0.0);
    let window = data.nominal_window.unwrap_or(0.0).max(actual);
    let achieved_rate = if window > 0.0 {
        rec.completed as f64 / window
    } else {
        0.0
    };
    let open = manifest.mode == "open";
    let lateness = Percentiles::of(&rec.lateness);
    let latency = Percentiles::of(&rec.latency);
    let mut reasons = Vec::new();
    if open {
        let limit_ms = match lateness_limit {
            Some(d) => d.as_secs_f64() * 1e3,
            None => auto_lateness_limit_ms(latency.p99, manifest.rate.unwrap_or(1.0)),
        };
        if lateness.p99 > limit_ms {
            let wall = data.elapsed.as_secs_f64().max(1e-9);
            reasons.push(format!(
                "the generator fell behind: send lateness p99 {} is above {} (it used {:.0}% of a CPU and was preempted {} times{})",
                fmt_us(lateness.p99 * 1e3),
                fmt_us(limit_ms * 1e3),
                100.0 * data.cpu.cpu_s / wall,
                data.cpu.preemptions,
                if data.cpu.preemptions as f64 > 10.0 * wall {
                    ": other processes shared its core"
                } else {
                    ""
                }
            ));
        }
    }
    let errors: u64 = rec.errors.values().sum();
    let entries = names
        .iter()
        .enumerate()
        .map(|(i, (name, weight))| EntryJson {
            name: name.clone(),
            weight: *weight,
            requests: rec.entry_counts[i].requests,
            errors: rec.entry_counts[i].errors,
            status: rec.entry_counts[i]
                .status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            latency_ms: Percentiles::of(&rec.entries[i]),
            histogram: encode(&rec.entries[i]),
        })
        .collect();
    RunJson {
        requests: rec.requests,
        completed: rec.completed,
        achieved_rate,
        latency_ms: latency,
        timeouts_counted_as_ms: timeout.as_secs_f64() * 1e3,
        status: rec
            .status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        weir_errors: rec.weir_errors.clone(),
        errors,
        errors_by_kind: rec
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        generator: Generator {
            lateness_ms: lateness,
            missed_slots: data.missed,
            connections_opened: data.opened,
            reconnects: data.reconnects,
            cpu_s: data.cpu.cpu_s,
            preemptions: data.cpu.preemptions,
            valid: reasons.is_empty(),
            invalid_reasons: reasons,
            lateness_histogram: encode(&rec.lateness),
        },
        warmup: (manifest.warmup > 0.0).then(|| Warmup {
            requests: rec.warmup_requests,
            latency_ms: Percentiles::of(&rec.warmup),
        }),
        entries,
        histogram: HistogramJson {
            unit: "us".into(),
            encoding: "HdrHistogram V2, base64".into(),
            data: encode(&rec.latency),
        },
        elapsed_s: data.elapsed.as_secs_f64(),
        manifest,
    }
}

fn counts<K: std::fmt::Display>(m: impl IntoIterator<Item = (K, u64)>) -> String {
    let v: Vec<String> = m.into_iter().map(|(k, n)| format!("{k}: {n}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("  ")
    }
}

/// The text report of one run. (`writeln!` into a `String` cannot fail, so its `Result`
/// is dropped with `let _` throughout this file.)
pub fn render(r: &RunJson) -> String {
    let m = &r.manifest;
    let mut s = String::new();
    let what = match (m.rate, &m.arrivals) {
        (Some(rate), Some(a)) => format!("{rate} req/s ({a}), open loop"),
        _ => format!("{} connections, closed loop", m.connections),
    };
    let span = match (m.duration, m.requests_planned) {
        (Some(d), _) => format!("{d}s"),
        (_, Some(n)) => format!("{n} requests"),
        _ => String::new(),
    };
    let warm = if m.warmup > 0.0 {
        format!(" + {}s warmup", m.warmup)
    } else {
        String::new()
    };
    let _ = writeln!(s, "weir load {} — {what}, {span}{warm}", m.target);
    let _ = writeln!(
        s,
        "  requests   {} ended, {} with a response, {} errors; achieved {:.1} req/s",
        r.requests, r.completed, r.errors, r.achieved_rate
    );
    let from = if m.mode == "open" {
        "from each request's scheduled time"
    } else {
        "from each send"
    };
    let _ = writeln!(s, "  latency    {}", r.latency_ms.line());
    let _ = writeln!(
        s,
        "             ({from}; timeouts count as {}, other errors are not in the percentiles)",
        fmt_us(r.timeouts_counted_as_ms * 1e3)
    );
    let _ = writeln!(
        s,
        "  status     {}",
        counts(r.status.iter().map(|(k, v)| (k, *v)))
    );
    if !r.weir_errors.is_empty() {
        let _ = writeln!(
            s,
            "  x-weir-error {}",
            counts(r.weir_errors.iter().map(|(k, v)| (k, *v)))
        );
    }
    let _ = writeln!(
        s,
        "  errors     {}",
        counts(r.errors_by_kind.iter().map(|(k, v)| (k, *v)))
    );
    if r.entries.len() > 1 {
        let _ = writeln!(s, "  per request of the mix:");
        for e in &r.entries {
            let _ = writeln!(
                s,
                "    {:<20} {:>8} req {:>6} err  {}",
                e.name,
                e.requests,
                e.errors,
                e.latency_ms.line()
            );
        }
    }
    if let Some(w) = &r.warmup {
        let _ = writeln!(
            s,
            "  warmup     {} requests, {} (not in the numbers above)",
            w.requests,
            w.latency_ms.line()
        );
    }
    let g = &r.generator;
    if m.mode == "open" {
        let l = &g.lateness_ms;
        let _ = writeln!(
            s,
            "  generator  send lateness p50 {} p99 {} p99.9 {} max {}; missed slots {}; connections opened {} (max {}); reconnects {}; cpu {:.2}s over {:.2}s, preempted {} times",
            fmt_us(l.p50 * 1e3),
            fmt_us(l.p99 * 1e3),
            fmt_us(l.p999 * 1e3),
            fmt_us(l.max * 1e3),
            g.missed_slots,
            g.connections_opened,
            m.max_connections,
            g.reconnects,
            g.cpu_s,
            r.elapsed_s,
            g.preemptions
        );
    } else {
        let _ = writeln!(
            s,
            "  generator  closed loop (no schedule to keep); connections opened {}; reconnects {}; cpu {:.2}s over {:.2}s, preempted {} times",
            g.connections_opened, g.reconnects, g.cpu_s, r.elapsed_s, g.preemptions
        );
    }
    if g.missed_slots > 0 {
        let _ = writeln!(
            s,
            "  note       {} slots found all {} connections busy and waited for one: the server never had more than {} requests at once (latency still counts from each slot; raise --max-connections to offer more)",
            g.missed_slots, m.max_connections, m.max_connections
        );
    }
    if g.valid {
        let _ = writeln!(s, "  run        VALID");
    } else {
        for why in &g.invalid_reasons {
            let _ = writeln!(s, "  run        INVALID: {why}");
        }
    }
    s
}

/// The summary table of a sweep.
pub fn render_sweep(runs: &[RunJson]) -> String {
    let mut s = String::from("sweep: offered -> achieved, latency from the scheduled time\n");
    let _ = writeln!(
        s,
        "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}  run",
        "offered", "achieved", "p50", "p99", "p99.9", "max", "errors"
    );
    for r in runs {
        let l = &r.latency_ms;
        let f = |ms: f64| fmt_us(ms * 1e3);
        let _ = writeln!(
            s,
            "  {:>10.1} {:>10.1} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
            r.manifest.rate.unwrap_or(0.0),
            r.achieved_rate,
            f(l.p50),
            f(l.p99),
            f(l.p999),
            f(l.max),
            r.errors,
            if r.generator.valid {
                "valid"
            } else {
                "INVALID"
            }
        );
    }
    s
}

/// The current UTC time, RFC 3339, whole seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_lateness_limit() {
        // A fast server at 20k req/s: 1 ms.
        assert_eq!(auto_lateness_limit_ms(0.2, 20_000.0), 1.0);
        // Saturated at 60k req/s: still 1 ms, whatever the latency.
        assert_eq!(auto_lateness_limit_ms(600.0, 60_000.0), 1.0);
        // 5 s queries at 10 req/s: 5% of p99.
        assert_eq!(auto_lateness_limit_ms(20_000.0, 10.0), 1000.0);
        assert_eq!(auto_lateness_limit_ms(1000.0, 10.0), 50.0);
        // 1000 req/s: at most 10 slots.
        assert_eq!(auto_lateness_limit_ms(7000.0, 1000.0), 10.0);
    }

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

//! `--fail-if 'p99>50ms,5xx>0,rate<190'`: thresholds that make the run exit 1 when
//! crossed, for CI.
//!
//! A condition is `METRIC OP VALUE` with `OP` one of `>`, `>=`, `<`, `<=`, `==`:
//! - latency: `p50`, `p90`, `p99`, `p99.9` (or `p999`), `p99.99` (or `p9999`), `max`,
//!   `mean`, against a duration (`50ms`, `1.5s`);
//! - `rate`: the achieved rate in requests/s;
//! - counts: `errors`, `timeouts`, `missed` (slots the generator could not keep), a status
//!   class `1xx`..`5xx`, or a status code (`503`), against a number, or a percentage of the
//!   measured requests (`errors>1%`).

use std::fmt;

use crate::parse;
use crate::report::RunJson;

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Eq => a == b,
        }
    }
}

/// What a condition measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A latency percentile by its JSON key (`p50`, `p90`, `p99`, `p999`, `p9999`, `max`).
    Latency(&'static str),
    /// The mean latency.
    Mean,
    /// The achieved rate.
    Rate,
    /// Errors of any kind.
    Errors,
    /// Timeouts.
    Timeouts,
    /// Missed slots.
    Missed,
    /// Responses whose status is in `class*100..class*100+99`.
    Class(u16),
    /// Responses with this status.
    Status(u16),
}

/// The threshold's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Milliseconds (latency metrics).
    Ms(f64),
    /// A plain number (counts, rate).
    Num(f64),
    /// A percentage of the measured requests (counts).
    Percent(f64),
}

/// One parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// As written, for the report.
    pub text: String,
    /// What it measures.
    pub metric: Metric,
    /// How it compares.
    pub op: Op,
    /// Against what.
    pub value: Value,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a comma-separated list of conditions.
pub fn parse(s: &str) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(parse_one(part)?);
    }
    if out.is_empty() {
        return Err(format!("`{s}` has no condition"));
    }
    Ok(out)
}

fn parse_one(text: &str) -> Result<Condition, String> {
    let i = text
        .find(['<', '>', '='])
        .ok_or_else(|| format!("`{text}`: no comparison (write e.g. p99>50ms, 5xx>0, rate<190)"))?;
    let name = text[..i].trim().to_ascii_lowercase();
    let rest = &text[i..];
    let (op, value) = if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix("==") {
        (Op::Eq, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Gt, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else {
        return Err(format!(
            "`{text}`: the comparison must be >, >=, <, <= or =="
        ));
    };
    let value = value.trim();
    let metric = match name.as_str() {
        "p50" => Metric::Latency("p50"),
        "p90" => Metric::Latency("p90"),
        "p99" => Metric::Latency("p99"),
        "p99.9" | "p999" => Metric::Latency("p999"),
        "p99.99" | "p9999" => Metric::Latency("p9999"),
        "max" => Metric::Latency("max"),
        "mean" => Metric::Mean,
        "rate" => Metric::Rate,
        "errors" => Metric::Errors,
        "timeouts" => Metric::Timeouts,
        "missed" => Metric::Missed,
        n if n.len() == 3 && n.ends_with("xx") && (b'1'..=b'5').contains(&n.as_bytes()[0]) => {
            Metric::Class((n.as_bytes()[0] - b'0') as u16)
        }
        n if n.len() == 3 && n.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)) => {
            Metric::Status(n.parse().expect("checked just above"))
        }
        n => {
            return Err(format!(
                "`{text}`: unknown metric `{n}` (p50, p90, p99, p99.9, p99.99, max, mean, rate, errors, timeouts, missed, 5xx, 503...)"
            ))
        }
    };
    let value = match metric {
        Metric::Latency(_) | Metric::Mean => Value::Ms(
            parse::duration(value)
                .map_err(|e| format!("`{text}`: {e}"))?
                .as_secs_f64()
                * 1e3,
        ),
        Metric::Rate => Value::Num(parse::rate(value).map_err(|e| format!("`{text}`: {e}"))?),
        _ => {
            let (v, pct) = match value.strip_suffix('%') {
                Some(v) => (v, true),
                None => (value, false),
            };
            let n: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("`{text}`: `{value}` is not a count or a percentage"))?;
            if pct {
                Value::Percent(n)
            } else {
                Value::Num(n)
            }
        }
    };
    Ok(Condition {
        text: text.to_string(),
        metric,
        op,
        value,
    })
}

/// The conditions that hold (are crossed) for a run, each with the measured value.
pub fn crossed(conds: &[Condition], run: &RunJson) -> Vec<String> {
    let mut out = Vec::new();
    for c in conds {
        let count = |n: u64| match c.value {
            Value::Percent(_) => {
                if run.requests == 0 {
                    0.0
                } else {
                    n as f64 * 100.0 / run.requests as f64
                }
            }
            _ => n as f64,
        };
        let l = &run.latency_ms;
        let measured = match c.metric {
            Metric::Latency(k) => match k {
                "p50" => l.p50,
                "p90" => l.p90,
                "p99" => l.p99,
                "p999" => l.p999,
                "p9999" => l.p9999,
                _ => l.max,
            },
            Metric::Mean => l.mean,
            Metric::Rate => run.achieved_rate,
            Metric::Errors => count(run.errors),
            Metric::Timeouts => count(run.errors_by_kind.get("timeout").copied().unwrap_or(0)),
            Metric::Missed => count(run.generator.missed_slots),
            Metric::Class(k) => count(
                run.status
                    .iter()
                    .filter(|(code, _)| code.parse::<u16>().is_ok_and(|c| c / 100 == k))
                    .map(|(_, n)| n)
                    .sum(),
            ),
            Metric::Status(s) => count(run.status.get(&s.to_string()).copied().unwrap_or(0)),
        };
        let threshold = match c.value {
            Value::Ms(v) | Value::Num(v) | Value::Percent(v) => v,
        };
        if c.op.holds(measured, threshold) {
            let unit = match c.value {
                Value::Ms(_) => "ms",
                Value::Percent(_) => "%",
                Value::Num(_) => "",
            };
            out.push(format!("{} (measured {measured:.3}{unit})", c.text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conditions() {
        let c = parse("p99>50ms, 5xx>0,rate<190, errors>=1%, 503==3, p99.9<=2s").unwrap();
        assert_eq!(c.len(), 6);
        assert_eq!(c[0].metric, Metric::Latency("p99"));
        assert_eq!(c[0].op, Op::Gt);
        assert_eq!(c[0].value, Value::Ms(50.0));
        assert_eq!(c[1].metric, Metric::Class(5));
        assert_eq!(c[1].value, Value::Num(0.0));
        assert_eq!(c[2].metric, Metric::Rate);
        assert_eq!(c[2].op, Op::Lt);
        assert_eq!(c[2].value, Value::Num(190.0));
        assert_eq!(c[3].value, Value::Percent(1.0));
        assert_eq!(c[3].op, Op::Ge);
        assert_eq!(c[4].metric, Metric::Status(503));
        assert_eq!(c[5].value, Value::Ms(2000.0));
    }

    #[test]
    fn refuses_bad_conditions() {
        for (s, want) in [
            ("", "no condition"),
            ("p99", "no comparison"),
            ("p98>1ms", "unknown metric"),
            ("p99>50", "no unit"),
            ("5xx>lots", "not a count"),
            ("rate<fast", "not a rate"),
            ("p99=>5ms", "comparison"),
            ("6xx>0", "unknown metric"),
            ("errors>-1", "not a count"),
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}

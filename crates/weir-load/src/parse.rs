//! Small parsers for command-line values: durations (`250ms`, `10s`, `2m`), rates (`200`,
//! `200r/s`, `600r/m`, `20k`) and rate lists for a sweep (`100,200,400`). Each returns a
//! one-line reason on failure, so the caller can name the flag.

use std::time::Duration;

/// The highest rate `weir load` accepts, in requests per second: past it the schedule's
/// slots would be closer than a clock read and no generator keeps them.
pub const MAX_RATE: f64 = 5_000_000.0;

/// Parses a duration with a unit: `us`/`µs`, `ms`, `s`, `m`, `h`; fractions are allowed
/// (`1.5s`). A bare number is refused, since `30` could mean seconds or milliseconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit (write e.g. `250ms`, `10s`, `2m`)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (write e.g. `250ms`, `10s`)"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (us, ms, s, m, h)")),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate in requests per second: a number with an optional `k` (thousands) and an
/// optional nginx-style unit (`r/s`, `/s`, `r/m`, `/m`). It must be positive and at most
/// [`MAX_RATE`].
pub fn rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (body, per) = if let Some(b) = t.strip_suffix("r/s").or_else(|| t.strip_suffix("/s")) {
        (b, 1.0)
    } else if let Some(b) = t.strip_suffix("r/m").or_else(|| t.strip_suffix("/m")) {
        (b, 60.0)
    } else {
        (t, 1.0)
    };
    let (body, mult) = match body.strip_suffix(['k', 'K']) {
        Some(b) => (b, 1000.0),
        None => (body, 1.0),
    };
    let n: f64 = body.trim().parse().map_err(|_| {
        format!("`{s}` is not a rate (write e.g. `200`, `200r/s`, `600r/m`, `20k`)")
    })?;
    let r = n * mult / per;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!("`{s}`: a rate must be above zero"));
    }
    if r > MAX_RATE {
        return Err(format!(
            "`{s}`: {r} req/s is above what one generator can schedule ({MAX_RATE} req/s)"
        ));
    }
    Ok(r)
}

/// Parses a comma-separated list of rates for a sweep, in the order given.
pub fn rates(s: &str) -> Result<Vec<f64>, String> {
    let v: Vec<f64> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(rate)
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err(format!("`{s}` lists no rate"));
    }
    Ok(v)
}

/// Formats a duration in the unit that reads best (`850µs`, `12.3ms`, `1.20s`).
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 10_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(duration(" 3 s ").unwrap(), Duration::from_secs(3));
        assert!(duration("30").unwrap_err().contains("no unit"));
        assert!(duration("10x").unwrap_err().contains("unknown unit"));
        assert!(duration("ms").is_err());
        assert!(duration("").is_err());
        assert!(duration("1.2.3s").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(rate("200").unwrap(), 200.0);
        assert_eq!(rate("200r/s").unwrap(), 200.0);
        assert_eq!(rate("600r/m").unwrap(), 10.0);
        assert_eq!(rate("20k").unwrap(), 20_000.0);
        assert_eq!(rate("0.5").unwrap(), 0.5);
        assert!(rate("0").is_err());
        assert!(rate("-5").is_err());
        assert!(rate("fast").is_err());
        assert!(rate("NaN").is_err());
        assert!(rate("1e9").unwrap_err().contains("above"));
        assert_eq!(rates("100,200, 400").unwrap(), vec![100.0, 200.0, 400.0]);
        assert!(rates("100,x").is_err());
        assert!(rates(",").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(1234.0), "1.23ms");
        assert_eq!(fmt_us(12_345.0), "12.3ms");
        assert_eq!(fmt_us(1_200_000.0), "1.20s");
    }
}

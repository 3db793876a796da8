//! Values as NGINX and uWSGI users write them: durations ("250ms", "30s", "2m", or a bare
//! number of seconds), sizes ("16KiB", "16k", "1m", "200MB", or bytes), and listen
//! addresses (`HOST:PORT`, `unix:PATH`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration read from "250ms", "1.5s", "30s", "2m", "1h", or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(Duration);

impl Seconds {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Seconds(Duration::from_secs(s))
    }
    /// From a std duration.
    pub const fn from_duration(d: Duration) -> Self {
        Seconds(d)
    }
    /// The value.
    pub const fn as_duration(self) -> Duration {
        self.0
    }
    /// Is it zero?
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Parses a duration: a number with an optional unit (ms, s, m, h, d; default seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use e.g. \"250ms\", \"30s\", \"2m\")"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"30s\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds::from_secs)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Seconds(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom(format!("{v} is not a valid number of seconds")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                parse_duration(v).map(Seconds).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes, read from "16KiB", "16k", "1m", "200MB", "1GiB" or a number of bytes.
/// As in NGINX, `k`/`m`/`g` are powers of 1024; so are KB/MB/GB (as uWSGI reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(u64);

impl Size {
    /// From bytes.
    pub const fn from_bytes(b: u64) -> Self {
        Size(b)
    }
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses a size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. \"16KiB\", \"200MiB\", \"1g\")"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"16KiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A request rate as NGINX's `limit_req_zone ... rate=`: `"10r/s"` or `"600r/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per [`Rate::window_secs`].
    pub count: u64,
    /// `true` for `r/m`, `false` for `r/s`.
    pub per_minute: bool,
}

impl Rate {
    /// The largest count accepted (keeps NGINX's millisecond arithmetic far from overflow).
    pub const MAX_COUNT: u64 = 1_000_000_000;

    /// NGINX's internal rate: requests per second times 1000, rounded down
    /// (`rate * 1000 / scale`), so `"600r/m"` is 10000 and `"1r/m"` is 16.
    pub const fn per_sec_x1000(self) -> u64 {
        if self.per_minute {
            self.count * 1000 / 60
        } else {
            self.count * 1000
        }
    }

    /// The window the count is given for: 1 (r/s) or 60 (r/m) seconds.
    pub const fn window_secs(self) -> u64 {
        if self.per_minute {
            60
        } else {
            1
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}r/{}",
            self.count,
            if self.per_minute { 'm' } else { 's' }
        )
    }
}

/// Parses a rate: `"10r/s"` or `"600r/m"` (a positive whole number of requests).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || {
        format!("{s:?} is not a rate: use requests per second or per minute, e.g. \"10r/s\" or \"600r/m\"")
    };
    let t = s.trim();
    let (num, per_minute) = if let Some(n) = t.strip_suffix("r/s") {
        (n, false)
    } else if let Some(n) = t.strip_suffix("r/m") {
        (n, true)
    } else {
        return Err(bad());
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: u64 = num.parse().map_err(|_| bad())?;
    if count == 0 || count > Rate::MAX_COUNT {
        return Err(format!(
            "{s:?}: the number of requests must be 1 to {}",
            Rate::MAX_COUNT
        ));
    }
    Ok(Rate { count, per_minute })
}

/// Checks a Redis URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` or
/// `redis+unix:///PATH[?db=N]` (TLS, `rediss://`, is not built in).
pub fn check_redis_url(s: &str) -> Result<(), String> {
    let hint = "use redis://HOST:PORT/DB (e.g. \"redis://127.0.0.1:6379/0\") or redis+unix:///PATH";
    if let Some(path) = s.strip_prefix("redis+unix://") {
        let path = path.split('?').next().unwrap_or("");
        if !path.starts_with('/') {
            return Err(format!("{s:?}: the socket path must be absolute; {hint}"));
        }
        return Ok(());
    }
    if s.starts_with("rediss://") {
        return Err(format!(
            "{s:?}: TLS to Redis is not supported; {hint} (over a trusted network or a tunnel)"
        ));
    }
    let rest = s
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{s:?} is not a Redis URL; {hint}"))?;
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed [ in the host; {hint}"))?;
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?} has no host; {hint}"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{s:?}: the port {p:?} is not 1 to 65535; {hint}"));
        }
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!(
            "{s:?}: the database {db:?} is not a number; {hint}"
        ));
    }
    Ok(())
}

/// Where to listen: `HOST:PORT` (TCP) or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT`, resolved when bound.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `HOST:PORT` or `unix:PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ListenAddr::Tcp(s.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is not an address: use HOST:PORT (127.0.0.1:8000) or unix:PATH"
            )),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ListenAddr::parse(s)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(de::Error::custom)
    }
}

/// An address range: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Does the range hold `ip`? (An IPv4-mapped IPv6 address matches its IPv4 range.)
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses a CIDR range or a single address.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = s.split_once('/').unwrap_or((s, ""));
    let addr: std::net::IpAddr = a.trim().parse().map_err(|_| {
        format!("{s:?} is not an address or CIDR range (e.g. 10.0.0.0/8, 127.0.0.1)")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = if p.is_empty() {
        max
    } else {
        p.parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?
    };
    Ok(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(parse_cidr("::/0").unwrap().contains("::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 days").is_err());
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("16k").unwrap(), 16384);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("200MB").unwrap(), 200 << 20);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn rates() {
        let r = parse_rate("10r/s").unwrap();
        assert_eq!((r.per_sec_x1000(), r.window_secs()), (10_000, 1));
        let r = parse_rate("600r/m").unwrap();
        assert_eq!((r.per_sec_x1000(), r.window_secs()), (10_000, 60));
        assert_eq!(parse_rate("1r/m").unwrap().per_sec_x1000(), 16);
        assert_eq!(parse_rate("600r/m").unwrap().to_string(), "600r/m");
        for bad in [
            "10",
            "10r/h",
            "r/s",
            "-1r/s",
            "0r/s",
            "1.5r/s",
            "ten r/s",
            "99999999999r/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_urls() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost",
            "redis://:secret@10.0.0.1:6380/2",
            "redis://[::1]:6379",
            "redis+unix:///run/redis.sock",
        ] {
            assert!(check_redis_url(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:6379",
            "redis://",
            "redis://h:99999",
            "redis://h:6379/x",
            "rediss://h",
            "redis+unix://rel",
            "http://h",
        ] {
            assert!(check_redis_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            ListenAddr::parse("unix:/tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert!(matches!(
            ListenAddr::parse("127.0.0.1:80"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(matches!(
            ListenAddr::parse("[::1]:80"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(ListenAddr::parse("nope").is_err());
        assert!(ListenAddr::parse("unix:").is_err());
    }
}

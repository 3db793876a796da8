//! An HTTP request as the uwsgi vars a worker turns into its WSGI environ (what NGINX's
//! `uwsgi_params` sends, plus weir's own `WEIR_*` vars).
//!
//! Percent-decoding is written here (a dozen lines) because PATH_INFO must be decoded to
//! raw bytes, `%2F` included, exactly as NGINX and uWSGI do; URL crates normalise paths.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::request::Parts;
use http::Version;
use weir_uwsgi::packet::{Builder, EncodeError, MODIFIER_WSGI};

/// Where a connection came from and arrived.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address (None on a Unix socket).
    pub peer: Option<SocketAddr>,
    /// Local address (None on a Unix socket).
    pub local: Option<SocketAddr>,
    /// Tells when the client has gone.
    pub watch: crate::conn_io::ClientWatch,
    /// Arrived over TLS (a `tls_listen` address): the scheme is `https`, `HTTPS=on`.
    pub tls: bool,
    /// When the queue last refused a request of this connection.
    pub refused: LastRefusal,
}

/// When the queue last refused a request of one connection (503 `queue-full` or
/// `queue-timeout`): a request on the same connection within [`LastRefusal::RETRY_WINDOW`]
/// of it is the client's retry, not new demand, so it does not count towards rate
/// overload (`weir_queue::demand`). A closed-loop client (`wrk`, a page's assets) sends
/// its next request within microseconds of an answer; new visitors come on their own
/// connections, and one client's next request after a pause is new demand again. A client
/// that reconnects after its 503 is told by its address instead ([`ClientRefusals`]).
#[derive(Debug, Default)]
pub struct LastRefusal {
    /// Microseconds since the clock base ([`since_epoch`]) plus one; 0: never refused.
    at_micros: AtomicU64,
    /// Whether a request of this connection has reached the queue yet.
    asked: AtomicBool,
}

impl LastRefusal {
    /// How soon after a refusal a request on the same connection is its retry.
    pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

    /// The queue refused a request of this connection at `at`.
    pub fn mark(&self, at: std::time::Instant) {
        self.at_micros.store(since_epoch(at) + 1, Ordering::Relaxed);
    }

    /// Whether a request arriving at `at` follows a refusal by less than the window.
    pub fn is_retry(&self, at: std::time::Instant) -> bool {
        let last = self.at_micros.load(Ordering::Relaxed);
        let window = u64::try_from(Self::RETRY_WINDOW.as_micros()).unwrap_or(u64::MAX);
        last != 0 && (since_epoch(at) + 1).saturating_sub(last) < window
    }

    /// Whether this is the connection's first request to ask (the first that reached the
    /// queue): the one a reconnecting client sends.
    pub fn first_request(&self) -> bool {
        !self.asked.swap(true, Ordering::Relaxed)
    }
}

impl Clone for LastRefusal {
    fn clone(&self) -> Self {
        LastRefusal {
            at_micros: AtomicU64::new(self.at_micros.load(Ordering::Relaxed)),
            asked: AtomicBool::new(self.asked.load(Ordering::Relaxed)),
        }
    }
}

/// For `[queue] rate_overload`: when an HTTP/1 connection from each peer address last
/// ended within [`LastRefusal::RETRY_WINDOW`] of a refusal on it (the client hung up on
/// its 503). The first request of a new connection from that address within the window
/// is that client reconnecting to retry (a script without a session, a herd of clients
/// reconnecting at once), not new demand. Clients that keep their connections after a
/// 503 (browsers, connection pools) leave no mark, so new clients from the same address
/// are still counted. Behind a front server (the uwsgi listener), whose connection to weir
/// is one request's, neither the client's connection nor its hang-up is seen: there a
/// second map marks the client's address (`REMOTE_ADDR`) at the refusal itself, and any
/// request from it within the window is its retry; clients sharing one address count as
/// one then, in the safe direction (rate overload begins later, or not at all). Bounded:
/// past [`ClientRefusals::MAX`] addresses, the ones older than the window are dropped.
#[derive(Debug, Default)]
pub struct ClientRefusals(
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
);

impl ClientRefusals {
    /// The most addresses kept before the stale ones are dropped.
    pub const MAX: usize = 65_536;

    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, std::time::Instant>>
    {
        // A panic while holding this lock would be a bug in a map insert; the map is
        // still usable, so keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `ip` ended at `at` just after a refusal (the uwsgi listener: a
    /// request from `ip` was refused at `at`).
    pub fn mark(&self, ip: std::net::IpAddr, at: std::time::Instant) {
        let mut map = self.map();
        if map.len() >= Self::MAX && !map.contains_key(&ip) {
            map.retain(|_, t| at.saturating_duration_since(*t) < LastRefusal::RETRY_WINDOW);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(ip, at);
    }

    /// Whether a new connection's first request from `ip` arriving at `at` follows such
    /// an end by less than the window.
    pub fn is_retry(&self, ip: std::net::IpAddr, at: std::time::Instant) -> bool {
        self.map()
            .get(&ip)
            .is_some_and(|t| at.saturating_duration_since(*t) < LastRefusal::RETRY_WINDOW)
    }
}

/// Microseconds from the first instant asked for (the process's clock base) to `at`;
/// [`LastRefusal`] stores it plus one, 0 meaning never.
fn since_epoch(at: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

/// Appends the CGI variable of a (lowercase) header name: `x-api-key` -> `HTTP_X_API_KEY`,
/// as NGINX's uwsgi params name it.
pub(crate) fn push_cgi_header_name(out: &mut Vec<u8>, lowercase_name: &str) {
    out.extend_from_slice(b"HTTP_");
    out.extend(lowercase_name.bytes().map(|b| {
        if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        }
    }));
}

/// Decodes `%XX` escapes into raw bytes; a malformed escape is kept as it is (as NGINX
/// does for PATH_INFO).
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What the handler knows about the body when it builds the packet.
#[derive(Debug, Clone, Copy)]
pub enum BodyLength {
    /// No body.
    None,
    /// This many bytes (CONTENT_LENGTH).
    Known(u64),
    /// Unknown (chunked, streamed in frames).
    Chunked,
}

/// What weir has decided about a request before it reaches a worker.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client as believed (through trusted proxies).
    pub client: Option<std::net::IpAddr>,
    /// "http" or "https".
    pub scheme: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The deadline as unix seconds.
    pub deadline_unix: Option<f64>,
}

/// Builds the packet for a request into `out`.
pub fn encode(
    out: &mut Vec<u8>,
    parts: &Parts,
    conn: &ConnInfo,
    body: BodyLength,
    facts: Facts<'_>,
) -> Result<(), EncodeError> {
    let mut p = Builder::new(out, MODIFIER_WSGI, 0);
    let uri = &parts.uri;
    let path = uri.path();
    p.var(b"REQUEST_METHOD", parts.method.as_str().as_bytes())?;
    p.var(
        b"REQUEST_URI",
        uri.path_and_query()
            .map_or(path, |pq| pq.as_str())
            .as_bytes(),
    )?;
    p.var(b"PATH_INFO", &percent_decode(path.as_bytes()))?;
    p.var(b"SCRIPT_NAME", b"")?;
    p.var(b"QUERY_STRING", uri.query().unwrap_or("").as_bytes())?;
    p.var(
        b"SERVER_PROTOCOL",
        match parts.version {
            Version::HTTP_10 => b"HTTP/1.0",
            Version::HTTP_2 => b"HTTP/2.0",
            _ => b"HTTP/1.1",
        },
    )?;
    // RFC 9112 3.2.2: a target in absolute form (`GET http://a.example/p`) names the host,
    // and the Host header is ignored (the framing gate lets no other form with an
    // authority through).
    let target_host = uri.authority().map(|a| match a.port() {
        Some(port) => format!("{}:{}", a.host(), port.as_str()),
        None => a.host().to_owned(),
    });
    let host = match &target_host {
        Some(h) => Some(h.as_bytes()),
        None => parts.headers.get(http::header::HOST).map(|h| h.as_bytes()),
    }
    .filter(|h| !h.is_empty());
    let (name, port) = server_name_port(host, conn.local);
    p.var(b"SERVER_NAME", name.as_bytes())?;
    p.var(b"SERVER_PORT", port.as_bytes())?;
    match (facts.client, conn.peer) {
        (Some(ip), Some(peer)) if ip == peer.ip() => {
            p.var(b"REMOTE_ADDR", ip.to_string().as_bytes())?;
            p.var(b"REMOTE_PORT", peer.port().to_string().as_bytes())?;
        }
        (Some(ip), _) => {
            p.var(b"REMOTE_ADDR", ip.to_string().as_bytes())?;
        }
        (None, _) => {
            p.var(b"REMOTE_ADDR", b"unix:")?;
        }
    }
    p.var(b"UWSGI_SCHEME", facts.scheme.as_bytes())?;
    if conn.tls {
        // NGINX's `uwsgi_param HTTPS $https if_not_empty`.
        p.var(b"HTTPS", b"on")?;
    }
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        p.var(b"CONTENT_TYPE", ct.as_bytes())?;
    }
    match body {
        BodyLength::None => {}
        BodyLength::Known(n) => {
            p.var(b"CONTENT_LENGTH", n.to_string().as_bytes())?;
        }
        BodyLength::Chunked => {
            p.var(b"WEIR_BODY", b"chunked")?;
        }
    }
    if let Some(h) = &target_host {
        p.var(b"HTTP_HOST", h.as_bytes())?;
    }
    let mut key = Vec::with_capacity(64);
    let mut joined = Vec::new();
    for name in parts.headers.keys() {
        let n = name.as_str();
        if target_host.is_some() && n == "host" {
            continue;
        }
        // Content-* travel as CGI vars; framing headers describe the hop, not the
        // request; names with '_' are dropped as NGINX does (underscores_in_headers off),
        // so `X_Forwarded_For` cannot pose as `X-Forwarded-For`.
        // X-Request-ID: the app gets weir's effective id (below), never a refused one.
        if matches!(
            n,
            "content-type"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "te"
                | "x-request-id"
        ) || n.contains('_')
        {
            continue;
        }
        key.clear();
        push_cgi_header_name(&mut key, n);
        let mut values = parts.headers.get_all(name).iter();
        let first = values.next().map_or(&b""[..], |v| v.as_bytes());
        match values.next() {
            None => {
                p.var(&key, first)?;
            }
            Some(second) => {
                let sep: &[u8] = if n == "cookie" { b"; " } else { b", " };
                joined.clear();
                joined.extend_from_slice(first);
                for v in std::iter::once(second).chain(values) {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(v.as_bytes());
                }
                p.var(&key, &joined)?;
            }
        }
    }
    p.var(b"HTTP_X_REQUEST_ID", facts.request_id.as_bytes())?;
    p.var(b"WEIR_REQUEST_ID", facts.request_id.as_bytes())?;
    if let Some(d) = facts.deadline_unix {
        p.var(b"WEIR_DEADLINE", format!("{d:.6}").as_bytes())?;
    }
    p.finish()
}

fn server_name_port(host: Option<&[u8]>, local: Option<SocketAddr>) -> (String, String) {
    let default_port = local.map_or_else(|| "80".to_owned(), |a| a.port().to_string());
    match host.and_then(|h| std::str::from_utf8(h).ok()) {
        Some(h) => {
            // [v6]:port, host:port, or a bare host.
            if let Some(rest) = h.strip_prefix('[') {
                if let Some((ip, port)) = rest.split_once(']') {
                    let port = port.strip_prefix(':').unwrap_or("");
                    let port = if port.is_empty() {
                        default_port
                    } else {
                        port.to_owned()
                    };
                    return (ip.to_owned(), port);
                }
            }
            match h.rsplit_once(':') {
                Some((name, port))
                    if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() =>
                {
                    (name.to_owned(), port.to_owned())
                }
                _ => (h.to_owned(), default_port),
            }
        }
        None => (
            local.map_or_else(|| "localhost".to_owned(), |a| a.ip().to_string()),
            default_port,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_soon_after_a_refusal_on_its_connection_is_a_retry() {
        let ms = std::time::Duration::from_millis(1);
        let t0 = std::time::Instant::now();
        let r = LastRefusal::default();
        assert!(!r.is_retry(t0), "nothing refused yet");
        r.mark(t0);
        assert!(r.is_retry(t0));
        assert!(r.is_retry(t0 + 9 * ms));
        assert!(!r.is_retry(t0 + 10 * ms));
        assert!(!r.is_retry(t0 + 1000 * ms));
        // A later refusal starts the window again.
        r.mark(t0 + 1000 * ms);
        assert!(r.is_retry(t0 + 1005 * ms));
        assert!(r.clone().is_retry(t0 + 1005 * ms));
        assert!(r.first_request());
        assert!(!r.first_request());
    }

    #[test]
    fn a_new_connection_soon_after_a_refusal_to_its_address_is_a_retry() {
        let ms = std::time::Duration::from_millis(1);
        let t0 = std::time::Instant::now();
        let c = ClientRefusals::default();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!c.is_retry(a, t0));
        c.mark(a, t0);
        assert!(c.is_retry(a, t0 + 9 * ms));
        assert!(!c.is_retry(a, t0 + 10 * ms));
        assert!(!c.is_retry(b, t0 + ms));
        // Bounded: a flood of addresses drops the stale ones.
        for i in 0..ClientRefusals::MAX as u32 {
            c.mark(std::net::IpAddr::from(i.to_be_bytes()), t0 + 100 * ms);
        }
        c.mark(b, t0 + 200 * ms);
        assert!(c.is_retry(b, t0 + 205 * ms));
        assert!(c.map().len() <= ClientRefusals::MAX);
    }

    #[test]
    fn decode() {
        assert_eq!(percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(percent_decode(b"/caf%C3%A9"), "/café".as_bytes());
        assert_eq!(percent_decode(b"%41"), b"A");
    }

    #[test]
    fn host_split() {
        assert_eq!(
            server_name_port(Some(b"example.com:8080"), None),
            ("example.com".into(), "8080".into())
        );
        assert_eq!(
            server_name_port(Some(b"[::1]:9"), None),
            ("::1".into(), "9".into())
        );
        assert_eq!(
            server_name_port(Some(b"example.com"), None),
            ("example.com".into(), "80".into())
        );
    }

    fn vars(req: http::Request<()>) -> Vec<u8> {
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let conn = ConnInfo {
            peer: None,
            local: Some("127.0.0.1:8000".parse().unwrap()),
            watch: crate::conn_io::ClientWatch::None,
            tls: false,
            refused: Default::default(),
        };
        let facts = Facts {
            client: None,
            scheme: "http",
            request_id: "rid",
            deadline_unix: None,
        };
        encode(&mut out, &parts, &conn, BodyLength::None, facts).unwrap();
        out
    }

    #[test]
    fn an_absolute_form_target_names_the_host() {
        for (uri, host, name, port) in [
            ("http://a.example/p?q=1", "a.example", "a.example", "8000"),
            (
                "http://u@a.example:8080/p?q=1",
                "a.example:8080",
                "a.example",
                "8080",
            ),
            ("http://[::1]:9/p?q=1", "[::1]:9", "::1", "9"),
        ] {
            let req = http::Request::builder()
                .uri(uri)
                .header("host", "b.example")
                .body(())
                .unwrap();
            let out = vars(req);
            let (p, _) = weir_uwsgi::packet::decode(&out).unwrap();
            assert_eq!(p.get(b"HTTP_HOST"), Some(host.as_bytes()), "{uri}");
            assert_eq!(p.get(b"SERVER_NAME"), Some(name.as_bytes()), "{uri}");
            assert_eq!(p.get(b"SERVER_PORT"), Some(port.as_bytes()), "{uri}");
            assert_eq!(p.get(b"PATH_INFO"), Some(&b"/p"[..]), "{uri}");
            assert_eq!(p.get(b"REQUEST_URI"), Some(&b"/p?q=1"[..]), "{uri}");
            assert_eq!(p.get(b"QUERY_STRING"), Some(&b"q=1"[..]), "{uri}");
        }
        // The origin form keeps the Host header.
        let req = http::Request::builder()
            .uri("/p")
            .header("host", "b.example:81")
            .body(())
            .unwrap();
        let out = vars(req);
        let (p, _) = weir_uwsgi::packet::decode(&out).unwrap();
        assert_eq!(p.get(b"HTTP_HOST"), Some(&b"b.example:81"[..]));
        assert_eq!(p.get(b"SERVER_NAME"), Some(&b"b.example"[..]));
    }

    #[test]
    fn joins_repeated_headers_and_drops_underscored_names() {
        let req = http::Request::builder()
            .uri("/p%20q?x=%20")
            .header("x-a", "1")
            .header("x-a", "2")
            .header("x_forwarded_for", "6.6.6.6")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let out = vars(req);
        let (p, _) = weir_uwsgi::packet::decode(&out).unwrap();
        assert_eq!(p.get(b"HTTP_X_A"), Some(&b"1, 2"[..]));
        assert_eq!(p.get(b"HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
        assert_eq!(p.get(b"HTTP_X_FORWARDED_FOR"), None);
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/p q"[..]));
        assert_eq!(p.get(b"QUERY_STRING"), Some(&b"x=%20"[..]));
        assert_eq!(p.get(b"WEIR_REQUEST_ID"), Some(&b"rid"[..]));
    }
}

//! The limit stage of the request path (after identify and route, before the request body
//! is read and before the admission queue): the route's `limit_req` zones (NGINX's leaky
//! bucket: admit, delay outside the queue, or refuse), its `limit_conn` zones (requests in
//! progress per key), and the request's fairness key for the queue (`[queue] fair_key`).
//! The limits themselves are crate weir-limits; this module gives them the request as
//! either listener has it ([`HttpView`], [`UwsgiView`]) and turns their verdict into the
//! error contract: a refusal is a [`Rejection`] of class `rate-limited` or `conn-limited`
//! with the zone's status, Retry-After, and the `RateLimit-Policy` and `RateLimit`
//! headers; the refused request never reaches the queue or a worker.
//!
//! A delayed request waits here, holding nothing (no worker, no queue place, no
//! `limit_conn` slot, as NGINX takes its `limit_conn` slot after the delay); a client that
//! leaves meanwhile ends it (499). The `limit_conn` slots go into the request's log record
//! and are freed when its line is written: when the response body is done, or the client
//! left. See docs/limits.md.

use std::hash::BuildHasher;

use http::header::RETRY_AFTER;
use http::request::Parts;
use weir_limits::{KeyTemplate, Limits, RequestView, Verdict};
use weir_uwsgi::packet::Packet;

use crate::access_log::{LimitNote, Record};
use crate::conn_io::ClientWatch;
use crate::dispatch::client_gone;
use crate::front::Front;
use crate::rejection::Rejection;
use crate::route::Route;

/// The limits of the front door and the queue's fairness key.
#[derive(Debug)]
pub struct FrontLimits {
    /// Every zone.
    pub limits: Limits,
    /// `[queue] fair_key`.
    pub fair_key: Option<KeyTemplate>,
    /// Hashes fairness keys (randomly keyed, so a client cannot aim at another's turn).
    hasher: std::collections::hash_map::RandomState,
}

impl FrontLimits {
    /// From the built zones and `[queue] fair_key` (already validated).
    pub fn new(limits: Limits, fair_key: Option<KeyTemplate>) -> FrontLimits {
        FrontLimits {
            limits,
            fair_key,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether a request of `route` has anything to check here (a zone, `limit_rate`, or
    /// fair queueing): when not, the stage costs nothing.
    pub fn applies(&self, route: &Route) -> bool {
        self.fair_key.is_some() || !route.limits.is_empty()
    }

    /// The request's fairness key: 0 when fair queueing is off or the key renders empty.
    pub fn fair_key(&self, view: &impl RequestView) -> u64 {
        let Some(t) = &self.fair_key else { return 0 };
        let k = t.eval(view);
        if k.is_empty() {
            return 0;
        }
        self.hasher.hash_one(&k).max(1)
    }
}

/// Runs the route's limits on a request: `Ok` when it may go on (its `limit_conn` slots
/// are in `rec`), or the refusal.
pub async fn check(
    front: &Front,
    route: &Route,
    view: &impl RequestView,
    watch: &ClientWatch,
    rec: &mut Record,
) -> Result<(), Rejection> {
    rec.limit_rate = route.limits.limit_rate();
    if route.limits.is_empty() {
        return Ok(());
    }
    let outcome = tokio::select! {
        biased;
        o = front.limits.limits.check(&route.limits, view) => o,
        () = watch.gone() => return Err(client_gone()),
    };
    rec.limit = note(&outcome);
    if let Some(r) = &outcome.refusal {
        let mut rej = Rejection::new(r.class, r.message());
        rej.status = Some(r.status);
        rej.retry_after = r.retry_after_secs;
        rej.headers = outcome
            .headers
            .iter()
            .filter(|(k, _)| *k != RETRY_AFTER)
            .cloned()
            .collect();
        return Err(rej);
    }
    rec.conn_slots = Some(outcome.into_guard());
    Ok(())
}

/// The access log's note of what the limits did.
fn note(o: &weir_limits::Outcome) -> Option<LimitNote> {
    let delay = o.delayed.as_ref().map(|(_, d)| *d).unwrap_or_default();
    if let Some(r) = &o.refusal {
        let outcome = if r.store_error {
            "store_error"
        } else {
            "refused"
        };
        return Some(LimitNote {
            zone: r.zone.clone(),
            outcome,
            delay,
        });
    }
    if let Some((zone, d)) = &o.delayed {
        return Some(LimitNote {
            zone: zone.clone(),
            outcome: "delayed",
            delay: *d,
        });
    }
    o.dry_run.first().map(|d| LimitNote {
        zone: d.zone.clone(),
        outcome: match d.would {
            Verdict::Refuse { .. } => "dry_run_refused",
            _ => "dry_run_delayed",
        },
        delay,
    })
}

/// The request as the HTTP listener has it.
#[derive(Debug)]
pub struct HttpView<'a> {
    parts: &'a Parts,
    remote: String,
    scheme: &'static str,
}

impl<'a> HttpView<'a> {
    /// `client`: the address identify worked out (through `trusted_proxies`); `None` on
    /// a Unix socket with no proxy, which NGINX calls `unix:`.
    pub fn new(parts: &'a Parts, client: Option<std::net::IpAddr>, scheme: &'static str) -> Self {
        HttpView {
            parts,
            remote: client.map_or_else(|| "unix:".to_owned(), |ip| ip.to_string()),
            scheme,
        }
    }
}

/// A host without its port (NGINX's `$host`).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

impl RequestView for HttpView<'_> {
    fn remote_addr(&self) -> &str {
        &self.remote
    }
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.parts.headers.get(lowercase_name).map(|v| v.as_bytes())
    }
    fn path(&self) -> &str {
        self.parts.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }
    fn scheme(&self) -> &str {
        self.scheme
    }
    fn host(&self) -> &str {
        // The absolute form's authority wins over Host (RFC 9112 3.2.2), as for the app.
        match self.parts.uri.host() {
            Some(h) => h,
            None => self
                .parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map_or("", without_port),
        }
    }
    fn method(&self) -> &str {
        self.parts.method.as_str()
    }
}

/// The request as the uwsgi listener has it: the vars a real NGINX sent.
#[derive(Debug)]
pub struct UwsgiView<'a, 'p> {
    pkt: &'p Packet<'a>,
    remote: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: &'a str,
    method: &'a str,
    scheme: &'static str,
}

impl<'a, 'p> UwsgiView<'a, 'p> {
    /// Over a decoded packet.
    pub fn new(pkt: &'p Packet<'a>) -> Self {
        let s = |k: &[u8]| pkt.get(k).and_then(|v| std::str::from_utf8(v).ok());
        let https = s(b"HTTPS").is_some_and(|v| v.eq_ignore_ascii_case("on"))
            || s(b"UWSGI_SCHEME") == Some("https")
            || s(b"REQUEST_SCHEME") == Some("https");
        UwsgiView {
            pkt,
            remote: s(b"REMOTE_ADDR").unwrap_or("unix:"),
            path: s(b"PATH_INFO").unwrap_or("/"),
            query: s(b"QUERY_STRING").filter(|q| !q.is_empty()),
            host: s(b"HTTP_HOST")
                .map(without_port)
                .or_else(|| s(b"SERVER_NAME"))
                .unwrap_or(""),
            method: s(b"REQUEST_METHOD").unwrap_or("GET"),
            scheme: if https { "https" } else { "http" },
        }
    }
}

impl RequestView for UwsgiView<'_, '_> {
    fn remote_addr(&self) -> &str {
        self.remote
    }
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        let mut var = Vec::with_capacity(5 + lowercase_name.len());
        crate::environ::push_cgi_header_name(&mut var, lowercase_name);
        match lowercase_name {
            "content-type" => self.pkt.get(b"CONTENT_TYPE"),
            "content-length" => self.pkt.get(b"CONTENT_LENGTH"),
            _ => self.pkt.get(&var),
        }
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn scheme(&self) -> &str {
        self.scheme
    }
    fn host(&self) -> &str {
        self.host
    }
    fn method(&self) -> &str {
        self.method
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_view_is_what_nginx_variables_name() {
        let req = http::Request::get("/a/b?x=1&y=2")
            .header("host", "Example.org:8080")
            .header("x-api-key", "k1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let v = HttpView::new(&parts, Some("203.0.113.7".parse().unwrap()), "http");
        assert_eq!(v.remote_addr(), "203.0.113.7");
        assert_eq!(v.host(), "Example.org");
        assert_eq!(v.header("x-api-key"), Some(&b"k1"[..]));
        assert_eq!((v.path(), v.query()), ("/a/b", Some("x=1&y=2")));
        let t: KeyTemplate = "$remote_addr:$http_x_api_key:$arg_y".parse().unwrap();
        assert_eq!(t.eval(&v), "203.0.113.7:k1:2");
        let unix = HttpView::new(&parts, None, "http");
        assert_eq!(unix.remote_addr(), "unix:");
        assert_eq!(without_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn the_uwsgi_view_reads_nginx_s_vars() {
        let mut buf = Vec::new();
        let mut b = weir_uwsgi::packet::Builder::new(&mut buf, 0, 0);
        for (k, v) in [
            (&b"REMOTE_ADDR"[..], &b"198.51.100.2"[..]),
            (b"PATH_INFO", b"/items"),
            (b"QUERY_STRING", b"page=3"),
            (b"HTTP_HOST", b"shop.example:443"),
            (b"HTTPS", b"on"),
            (b"HTTP_X_API_KEY", b"k2"),
            (b"REQUEST_METHOD", b"POST"),
        ] {
            b.var(k, v).unwrap();
        }
        b.finish().unwrap();
        let (pkt, _) = weir_uwsgi::packet::decode(&buf).unwrap();
        let v = UwsgiView::new(&pkt);
        let t: KeyTemplate =
            "$scheme://$host$uri?$arg_page $http_x_api_key $request_method $remote_addr"
                .parse()
                .unwrap();
        assert_eq!(
            t.eval(&v),
            "https://shop.example/items?3 k2 POST 198.51.100.2"
        );
    }

    #[test]
    fn fairness_keys_hash_apart_and_an_empty_key_is_no_key() {
        let limits = Limits::from_config(&weir_config::Config::default()).unwrap();
        let f = FrontLimits::new(limits, Some("$http_x_client".parse().unwrap()));
        let req = |c: &str| {
            let (p, ()) = http::Request::get("/")
                .header("x-client", c)
                .body(())
                .unwrap()
                .into_parts();
            p
        };
        let (a, b) = (req("a"), req("b"));
        let ka = f.fair_key(&HttpView::new(&a, None, "http"));
        let kb = f.fair_key(&HttpView::new(&b, None, "http"));
        assert!(ka != 0 && kb != 0 && ka != kb);
        assert_eq!(ka, f.fair_key(&HttpView::new(&a, None, "http")));
        let (none, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        assert_eq!(f.fair_key(&HttpView::new(&none, None, "http")), 0);
    }
}

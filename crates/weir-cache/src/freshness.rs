//! Whether a response may be stored, for how long it is fresh, when a stale copy may still
//! be served, and the answers made from an entry (304 to a client's conditional request,
//! the `Cache-Status` field).
//!
//! RFC 9111 is `http-cache-semantics`'s ([`CachePolicy`], as a shared cache). What weir
//! adds, and why:
//! - `valid` (NGINX's `uwsgi_cache_valid`): a response with no freshness of its own (no
//!   `max-age`, `s-maxage` or `Expires`) is fresh for the time `valid` gives its status,
//!   and not stored when it gives none. The policy sees it as `s-maxage`; the client sees
//!   the app's headers unchanged. The Last-Modified heuristic is off, as in NGINX.
//! - Safe by default, as Varnish is: never a response with `Set-Cookie` (even `public`),
//!   never `Vary: *`; `private`, `no-store` and a request's `Authorization` are the
//!   policy's rules (Authorization is allowed only with `public`, `s-maxage` or
//!   `must-revalidate`).
//! - The client's own `Cache-Control` and `Pragma` neither bypass nor shorten the cache,
//!   as in NGINX and Varnish: a front door that let any client skip it would let any
//!   client send every request to the app (`bypass` is the operator's switch for that).
//! - Stale copies (RFC 5861's `stale-while-revalidate` and `stale-if-error`, and the
//!   route's `use_stale`/`background_update`, NGINX's) are never served when the response
//!   forbids it: `must-revalidate`, `proxy-revalidate`, `no-cache`, or `s-maxage` (which
//!   carries proxy-revalidate for a shared cache, RFC 9111 5.2.2.10).

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, ETAG, LAST_MODIFIED};
use http::{Method, Request, Response, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// The policy's options: a shared cache, no Last-Modified heuristic (see the module doc).
pub fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        immutable_min_time_to_live: Duration::ZERO,
        ignore_cargo_cult: false,
    }
}

/// Why a response was not stored (for the log and `Cache-Status`'s `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// RFC 9111 forbids it (`no-store`, `private`, Authorization, a status it does not
    /// know).
    Forbidden,
    /// It sets a cookie.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// No freshness of its own and none from `valid` for its status (or zero).
    NoFreshness,
}

impl NotStored {
    /// Its name in `Cache-Status`'s `detail` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Forbidden => "not-storable",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
        }
    }
}

/// The policy for a response to `req` (a GET: HEAD is fetched as GET), with `valid`'s
/// time as its freshness when it has none of its own; or why it must not be stored.
pub fn policy_for(
    req: &Request<()>,
    res: &Response<()>,
    valid: Option<Duration>,
    now: SystemTime,
) -> Result<(CachePolicy, Duration), NotStored> {
    let h = res.headers();
    if h.contains_key(http::header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if list_has(h, http::header::VARY, "*") {
        return Err(NotStored::VaryStar);
    }
    let explicit = h.contains_key(http::header::EXPIRES)
        || directive(h, "max-age").is_some()
        || directive(h, "s-maxage").is_some();
    let policy = if explicit {
        CachePolicy::new_options(req, res, now, options())
    } else {
        let secs = valid.map_or(0, |v| v.as_secs());
        if secs == 0 {
            return Err(NotStored::NoFreshness);
        }
        // `valid` as the policy's s-maxage: the policy then treats it as the response's own
        // freshness. Only the policy's copy of the headers carries it.
        let mut synthetic = Response::builder()
            .status(res.status())
            .body(())
            .expect("a status");
        *synthetic.headers_mut() = h.clone();
        let cc = match h.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()) {
            Some(v) if !v.trim().is_empty() => format!("{v}, s-maxage={secs}"),
            _ => format!("s-maxage={secs}"),
        };
        synthetic.headers_mut().insert(
            CACHE_CONTROL,
            HeaderValue::from_str(&cc).map_err(|_| NotStored::Forbidden)?,
        );
        CachePolicy::new_options(req, &synthetic, now, options())
    };
    if !policy.is_storable() {
        return Err(NotStored::Forbidden);
    }
    let ttl = policy.time_to_live(now);
    if ttl.is_zero() && !revalidatable(h) {
        return Err(NotStored::NoFreshness);
    }
    Ok((policy, ttl))
}

/// A request for the policy: the method as GET (a HEAD is answered from, and fetched as,
/// GET), the path, and the client's headers but its conditionals and cache directives
/// (see the module doc).
pub fn policy_request(uri: &http::Uri, headers: &HeaderMap) -> Request<()> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri.clone())
        .body(())
        .expect("a GET with the request's own URI");
    let h = req.headers_mut();
    for (k, v) in headers {
        if !ignored_request_field(k.as_str()) {
            h.append(k.clone(), v.clone());
        }
    }
    req
}

/// A client's conditional and range fields: never passed to the app on a cached route
/// (weir answers conditionals from the entry, and stores whole answers).
pub const CONDITIONAL_FIELDS: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

fn ignored_request_field(name: &str) -> bool {
    name == "cache-control" || name == "pragma" || CONDITIONAL_FIELDS.contains(&name)
}

/// Whether an entry with these headers can be revalidated (it has a validator).
pub fn revalidatable(h: &HeaderMap) -> bool {
    h.contains_key(ETAG) || h.contains_key(LAST_MODIFIED)
}

/// The validators to send when revalidating an entry: `If-None-Match` from its ETag,
/// `If-Modified-Since` from its Last-Modified.
pub fn revalidation_headers(h: &HeaderMap) -> Vec<(http::HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(e) = h.get(ETAG) {
        out.push((http::header::IF_NONE_MATCH, e.clone()));
    }
    if let Some(lm) = h.get(LAST_MODIFIED) {
        out.push((http::header::IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// How long past its freshness an entry may still be served, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StaleAllowance {
    /// The response forbids serving it stale at all.
    pub forbidden: bool,
    /// `stale-while-revalidate=N`: served while one request refreshes it.
    pub while_revalidate: Option<Duration>,
    /// `stale-if-error=N`: served when the app fails.
    pub if_error: Option<Duration>,
}

/// What the response's own headers allow (see the module doc).
pub fn stale_allowance(h: &HeaderMap) -> StaleAllowance {
    let forbidden = [
        "must-revalidate",
        "proxy-revalidate",
        "no-cache",
        "s-maxage",
    ]
    .iter()
    .any(|d| directive(h, d).is_some());
    let secs = |d| {
        directive(h, d)
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    StaleAllowance {
        forbidden,
        while_revalidate: secs("stale-while-revalidate"),
        if_error: secs("stale-if-error"),
    }
}

/// A Cache-Control directive: `None` when absent, `Some(None)` without a value,
/// `Some(Some(v))` with one (quotes removed).
pub fn directive(h: &HeaderMap, name: &str) -> Option<Option<String>> {
    for v in h.get_all(CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let part = part.trim();
            let (k, val) = match part.split_once('=') {
                Some((k, val)) => (k.trim(), Some(val.trim().trim_matches('"').to_owned())),
                None => (part, None),
            };
            if k.eq_ignore_ascii_case(name) {
                return Some(val);
            }
        }
    }
    None
}

fn list_has(h: &HeaderMap, name: http::HeaderName, item: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|x| x.trim() == item))
    })
}

/// The headers a Vary field names, lowercase, in order (empty when it has none).
pub fn vary_names(h: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in h.get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for n in v.split(',') {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// The app's tags for purges: `Surrogate-Key` (space-separated, Fastly's) and `Cache-Tag`
/// (comma-separated, Cloudflare's).
pub fn tags(h: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |t: &str| {
        let t = t.trim();
        if !t.is_empty() && !out.iter().any(|x| x == t) {
            out.push(t.to_owned());
        }
    };
    for v in h.get_all("surrogate-key") {
        v.to_str()
            .ok()
            .into_iter()
            .flat_map(str::split_whitespace)
            .for_each(&mut add);
    }
    for v in h.get_all("cache-tag") {
        v.to_str()
            .ok()
            .into_iter()
            .flat_map(|s| s.split(','))
            .for_each(&mut add);
    }
    out
}

/// Whether a client's conditional request is satisfied by an entry with these headers, so
/// the answer is 304 (RFC 9110 13.1.1/13.1.3: If-None-Match, weak comparison, wins over
/// If-Modified-Since).
pub fn not_modified(req: &HeaderMap, entry: &HeaderMap, status: StatusCode) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    if let Some(inm) = req
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = entry.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    let Some(ims) = req
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    entry
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|lm| lm <= ims)
}

/// The header fields a 304 answer carries from the entry (RFC 9110 15.4.5).
pub const NOT_MODIFIED_FIELDS: &[&str] = &[
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/items");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const TEN: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn the_responses_own_freshness_wins_over_valid() {
        let now = SystemTime::now();
        let (_, ttl) = policy_for(
            &req(&[]),
            &res(200, &[("cache-control", "max-age=60")]),
            TEN,
            now,
        )
        .unwrap();
        assert_eq!(ttl, Duration::from_secs(60));
        let (p, ttl) = policy_for(&req(&[]), &res(200, &[]), TEN, now).unwrap();
        assert_eq!(ttl, Duration::from_secs(10));
        assert!(!p.is_stale(now + Duration::from_secs(9)));
        assert!(p.is_stale(now + Duration::from_secs(10)));
    }

    #[test]
    fn without_freshness_or_valid_nothing_is_stored() {
        let now = SystemTime::now();
        let lm = [("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")];
        assert_eq!(
            policy_for(&req(&[]), &res(200, &lm), None, now).unwrap_err(),
            NotStored::NoFreshness
        );
        assert_eq!(
            policy_for(&req(&[]), &res(200, &[]), Some(Duration::ZERO), now).unwrap_err(),
            NotStored::NoFreshness
        );
    }

    #[test]
    fn unsafe_responses_are_never_stored() {
        let now = SystemTime::now();
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Fields, Fields, NotStored)] = &[
            (
                &[],
                &[
                    ("set-cookie", "s=1"),
                    ("cache-control", "public, max-age=60"),
                ],
                NotStored::SetCookie,
            ),
            (
                &[],
                &[("cache-control", "private, max-age=60")],
                NotStored::Forbidden,
            ),
            (&[], &[("cache-control", "no-store")], NotStored::Forbidden),
            (
                &[],
                &[("vary", "*"), ("cache-control", "max-age=60")],
                NotStored::VaryStar,
            ),
            (
                &[("authorization", "Bearer x")],
                &[("cache-control", "max-age=60")],
                NotStored::Forbidden,
            ),
        ];
        for (rq, rs, why) in cases {
            assert_eq!(
                policy_for(&req(rq), &res(200, rs), TEN, now).unwrap_err(),
                *why,
                "{rs:?}"
            );
        }
        let auth = [("authorization", "Bearer x")];
        for ok in ["public, max-age=60", "s-maxage=60"] {
            assert!(
                policy_for(&req(&auth), &res(200, &[("cache-control", ok)]), None, now).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn stale_allowance_reads_rfc_5861_and_what_forbids_it() {
        let h = res(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=30, stale-if-error=600",
            )],
        );
        let a = stale_allowance(h.headers());
        assert!(!a.forbidden);
        assert_eq!(a.while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(a.if_error, Some(Duration::from_secs(600)));
        for cc in [
            "max-age=1, must-revalidate",
            "no-cache",
            "s-maxage=5",
            "proxy-revalidate",
        ] {
            assert!(
                stale_allowance(res(200, &[("cache-control", cc)]).headers()).forbidden,
                "{cc}"
            );
        }
    }

    #[test]
    fn conditional_requests_match_etags_weakly_and_dates() {
        let e = res(
            200,
            &[
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT"),
            ],
        );
        let h = |k: &str, v: &str| req(&[(k, v)]).headers().clone();
        assert!(not_modified(
            &h("if-none-match", "W/\"v1\""),
            e.headers(),
            StatusCode::OK
        ));
        assert!(not_modified(
            &h("if-none-match", "\"v0\", \"v1\""),
            e.headers(),
            StatusCode::OK
        ));
        assert!(!not_modified(
            &h("if-none-match", "\"v2\""),
            e.headers(),
            StatusCode::OK
        ));
        assert!(not_modified(
            &h("if-modified-since", "Tue, 02 Jan 2001 00:00:00 GMT"),
            e.headers(),
            StatusCode::OK
        ));
        assert!(!not_modified(
            &h("if-modified-since", "Sun, 31 Dec 2000 00:00:00 GMT"),
            e.headers(),
            StatusCode::OK
        ));
        assert!(!not_modified(
            &h("if-none-match", "\"v1\""),
            e.headers(),
            StatusCode::NOT_FOUND
        ));
    }

    #[test]
    fn tags_come_from_surrogate_key_and_cache_tag() {
        let r = res(
            200,
            &[
                ("surrogate-key", "product-42  list"),
                ("cache-tag", "a, product-42"),
            ],
        );
        assert_eq!(tags(r.headers()), vec!["product-42", "list", "a"]);
        let v = res(
            200,
            &[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "accept-encoding"),
            ],
        );
        assert_eq!(
            vary_names(v.headers()),
            vec!["accept-encoding", "accept-language"]
        );
    }

    #[test]
    fn the_policy_request_drops_client_cache_directives() {
        let mut h = HeaderMap::new();
        h.insert("cache-control", "no-cache".parse().unwrap());
        h.insert("if-none-match", "\"x\"".parse().unwrap());
        h.insert("accept", "text/html".parse().unwrap());
        let r = policy_request(&"/a?b=1".parse().unwrap(), &h);
        assert_eq!(r.method(), Method::GET);
        assert!(r.headers().get("cache-control").is_none());
        assert!(r.headers().get("if-none-match").is_none());
        assert_eq!(r.headers().get("accept").unwrap(), "text/html");
    }
}

//! The cache stage of the request path (NGINX's `uwsgi_cache`), between admission (the
//! limits) and dispatch: a fresh entry is answered here, and the request never reaches a
//! worker or Python; otherwise the request goes on with a [`Plan`] that the response side
//! ([`after`]) follows: store what may be stored, refresh an entry the app confirmed
//! (304), or answer a stale copy when the app fails and the route allows it (`use_stale`).
//!
//! One request fills a missing entry when the route sets `lock` (the others wait for it,
//! up to `lock_timeout`, then go to the app uncached, as NGINX), and with
//! `background_update` an expired entry is refreshed by one background request while every
//! client gets the stale copy at once. The rules of freshness and storability are
//! weir-cache's (`freshness`); this module decides what to do with a request.
//!
//! Every answer of a cached route carries `Cache-Status` (RFC 9211); the access log's
//! `cache` field and `weir_cache_requests_total` say what the cache did, with NGINX's
//! `$upstream_cache_status` names (hit, miss, expired, stale, updating, revalidated,
//! bypass).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;
use weir_cache::freshness::{self, NotStored};
use weir_cache::tiers::useless_after;
use weir_cache::{Entry, FillLocks, FillTurn, Lookup, Purge, Tiers, UseCounts};
use weir_config::{CacheConfig, RouteCacheConfig, UseStale};
use weir_errors::ErrorClass;
use weir_limits::key::KeyTemplate;
use weir_pool::{BodyError, ResponseBody};

use crate::rejection::Rejection;

/// What the cache did with a request (NGINX's `$upstream_cache_status`, lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from a fresh entry.
    Hit,
    /// No entry: the app answered.
    Miss,
    /// The entry had expired: the app answered anew.
    Expired,
    /// The app failed; a stale entry answered (`use_stale`, `stale-if-error`).
    Stale,
    /// A stale entry answered while one request refreshes it.
    Updating,
    /// The entry had expired; the app confirmed it (304) and it answered.
    Revalidated,
    /// `bypass` matched: the app answered.
    Bypass,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Expired,
        Outcome::Stale,
        Outcome::Updating,
        Outcome::Revalidated,
        Outcome::Bypass,
    ];

    /// Its name in the log and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Expired => "expired",
            Outcome::Stale => "stale",
            Outcome::Updating => "updating",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Entries are kept this long past their freshness (NGINX's default `inactive`), for
/// `use_stale`, `background_update` and `revalidate`, and so a refetch is counted
/// `expired` as NGINX counts it; memory's bound evicts them first when it is short.
const STALE_KEEP: Duration = Duration::from_secs(600);

/// The cache of the front door: the tiers, the fill locks, the use counts.
pub struct FrontCache {
    /// The tiers (memory, disk, Redis).
    pub tiers: Arc<Tiers>,
    locks: FillLocks,
    uses: UseCounts,
    /// A response body larger than this is not buffered for storing (a tenth of memory).
    max_entry: usize,
}

impl std::fmt::Debug for FrontCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontCache").finish_non_exhaustive()
    }
}

impl FrontCache {
    /// Opens the tiers of `[cache]`.
    pub async fn open(cfg: &CacheConfig) -> Result<FrontCache, weir_cache::CacheError> {
        Ok(FrontCache {
            tiers: Tiers::open(cfg).await?,
            locks: FillLocks::default(),
            uses: UseCounts::default(),
            max_entry: (cfg.memory.bytes() / 10) as usize,
        })
    }

    /// Appends the cache's metrics (tiers, per-route outcomes) to the Prometheus text.
    pub fn render_metrics(&self, routes: &crate::route::Routes, out: &mut String) {
        out.push_str("# HELP weir_cache_requests_total What the cache did with each request of a cached route (NGINX's $upstream_cache_status), by route.\n# TYPE weir_cache_requests_total counter\n");
        for r in routes.iter() {
            let Some(c) = &r.cache else { continue };
            for o in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "weir_cache_requests_total{{route=\"{}\",outcome=\"{}\"}} {}",
                    r.path,
                    o.as_str(),
                    c.counts[o as usize].load(Ordering::Relaxed)
                );
            }
        }
        let s = self.tiers.stats();
        let _ = write!(
            out,
            "# HELP weir_cache_entries Entries held, by tier.\n# TYPE weir_cache_entries gauge\nweir_cache_entries{{tier=\"memory\"}} {}\nweir_cache_entries{{tier=\"disk\"}} {}\n\
             # HELP weir_cache_bytes Bytes held, by tier.\n# TYPE weir_cache_bytes gauge\nweir_cache_bytes{{tier=\"memory\"}} {}\nweir_cache_bytes{{tier=\"disk\"}} {}\n\
             # HELP weir_cache_errors_total Tier failures the cache went on past: corrupt records dropped, disk I/O errors, Redis errors.\n# TYPE weir_cache_errors_total counter\nweir_cache_errors_total{{kind=\"corrupt\"}} {}\nweir_cache_errors_total{{kind=\"disk\"}} {}\nweir_cache_errors_total{{kind=\"redis\"}} {}\n\
             # HELP weir_cache_remote_purges_total Purges received from other instances through Redis.\n# TYPE weir_cache_remote_purges_total counter\nweir_cache_remote_purges_total {}\n",
            s.memory_entries,
            s.disk_entries,
            s.memory_bytes,
            s.disk_bytes,
            s.corrupt,
            s.disk_errors,
            s.redis_errors,
            s.remote_purges
        );
    }
}

/// A route's `[route.cache]`, parsed, and its counts.
#[derive(Debug)]
pub struct RouteCache {
    key: KeyTemplate,
    bypass: Vec<KeyTemplate>,
    no_cache: Vec<KeyTemplate>,
    config: RouteCacheConfig,
    counts: [AtomicU64; 7],
}

impl RouteCache {
    /// From the route's config (already validated: a template that fails here names its
    /// key all the same).
    pub fn new(route: usize, c: &RouteCacheConfig) -> Result<RouteCache, weir_limits::LimitsError> {
        let parse = |what: String, s: &str| {
            s.parse::<KeyTemplate>()
                .map_err(|e| weir_limits::LimitsError::Invalid {
                    key: format!("route[{route}].cache.{what}"),
                    reason: e.to_string(),
                })
        };
        Ok(RouteCache {
            key: parse("key".into(), &c.key)?,
            bypass: c
                .bypass
                .iter()
                .enumerate()
                .map(|(i, s)| parse(format!("bypass[{i}]"), s))
                .collect::<Result<_, _>>()?,
            no_cache: c
                .no_cache
                .iter()
                .enumerate()
                .map(|(i, s)| parse(format!("no_cache[{i}]"), s))
                .collect::<Result<_, _>>()?,
            config: c.clone(),
            counts: Default::default(),
        })
    }

    fn count(&self, o: Outcome) {
        self.counts[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn uses_stale(&self, u: UseStale) -> bool {
        self.config.use_stale.contains(&u)
    }

    /// How long past freshness its entries are kept.
    fn stale_keep(&self, h: &HeaderMap) -> Duration {
        let a = freshness::stale_allowance(h);
        let own = a
            .while_revalidate
            .unwrap_or_default()
            .max(a.if_error.unwrap_or_default());
        own.max(STALE_KEEP)
    }
}

/// "Any non-empty value but 0" (NGINX's `*_cache_bypass` and `*_no_cache`).
fn any_set(templates: &[KeyTemplate], view: &impl weir_limits::key::RequestView) -> bool {
    templates.iter().any(|t| {
        let v = t.eval(view);
        !v.is_empty() && v != "0"
    })
}

/// What the route's templates give for a request: read before the stage changes the
/// request head.
pub(crate) struct Keys {
    key: String,
    bypass: bool,
    no_cache: bool,
}

impl RouteCache {
    /// The cache key and the `bypass` and `no_cache` verdicts for a request.
    pub(crate) fn keys(&self, view: &impl weir_limits::key::RequestView) -> Keys {
        Keys {
            key: self.key.eval(view),
            bypass: any_set(&self.bypass, view),
            no_cache: any_set(&self.no_cache, view),
        }
    }
}

/// What the cache stage decided for a request it did not answer.
pub(crate) struct Plan {
    route: Arc<RouteCache>,
    key: String,
    outcome: Outcome,
    /// The expired entry, for revalidation and `use_stale`.
    stale: Option<Arc<Entry>>,
    /// The request carries the entry's validators.
    revalidating: bool,
    may_store: bool,
    /// This request fills the key (the lock, or the background update).
    fill: Option<weir_cache::Fill>,
    /// The request as the policy sees it (GET, no client cache directives).
    policy_req: Request<()>,
    /// The client's request head fields that decide a 304 (its conditionals).
    client: HeaderMap,
    uri: String,
    /// It waited for another request's fill (which stored nothing usable).
    collapsed: bool,
    vary_miss: bool,
    /// A background update (its client was answered stale; not counted again).
    background: bool,
}

impl Plan {
    /// Counts what the cache did and notes it for the log line (a background update is
    /// logged, not counted: its client's request was).
    fn note(&self, o: Outcome, rec: &mut crate::access_log::Record) {
        if !self.background {
            self.route.count(o);
        }
        rec.cache = Some(o);
    }
}

/// The stage's decision.
pub(crate) enum Before {
    /// Answered from the cache.
    Answer(Response<ResponseBody>),
    /// On to the app; the response goes through [`after`].
    Forward(Box<Plan>),
    /// Not the cache's (not GET or HEAD, or an empty key): on to the app. `invalidate`:
    /// the key to purge when an unsafe method succeeds (RFC 9111 4.4).
    Pass {
        /// The key.
        invalidate: Option<String>,
    },
}

/// The cache stage, request side. `parts` is changed for the app: a HEAD goes as GET
/// (stored whole, answered without its body), and the client's conditional and range
/// fields are dropped (weir answers conditionals from the entry, as NGINX), the entry's
/// validators added when revalidating.
pub(crate) async fn before(
    fc: &FrontCache,
    rc: &Arc<RouteCache>,
    parts: &mut Parts,
    keys: Keys,
    rec: &mut crate::access_log::Record,
) -> Before {
    let Keys {
        key,
        bypass,
        no_cache,
    } = keys;
    if key.is_empty() {
        return Before::Pass { invalidate: None };
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let unsafe_method = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
        return Before::Pass {
            invalidate: unsafe_method.then_some(key),
        };
    }
    // A hit reads the request as it came (its Vary-named fields, its conditionals) and
    // builds nothing else; the plan is made only for a request that goes on.
    let mut waited = false;
    let mut found = None;
    let mut vary_miss = false;
    let mut fill = None;
    let mut collapsed = false;
    if !bypass {
        loop {
            let now = SystemTime::now();
            match fc.tiers.lookup(&key, &parts.headers).await {
                Lookup::Found { entry, .. } if !entry.policy.is_stale(now) => {
                    rc.count(Outcome::Hit);
                    rec.cache = Some(Outcome::Hit);
                    let ttl = entry.policy.time_to_live(now).as_secs();
                    let status = if waited {
                        format!("weir; hit; ttl={ttl}; collapsed")
                    } else {
                        format!("weir; hit; ttl={ttl}")
                    };
                    return Before::Answer(answer(&entry, &parts.headers, now, &status));
                }
                Lookup::Found { entry, .. } => {
                    found = Some(entry);
                    break;
                }
                Lookup::Miss { vary_miss: v } => {
                    vary_miss = v;
                    if !rc.config.lock || waited {
                        // After a wait: the fill stored nothing this request can use. To
                        // the app, uncached (NGINX).
                        collapsed = waited;
                        break;
                    }
                    match fc.locks.turn(&key) {
                        FillTurn::Mine(f) => {
                            fill = Some(f);
                            break;
                        }
                        FillTurn::Theirs(wait) => {
                            waited = true;
                            if !wait.done_within(rc.config.lock_timeout.as_duration()).await {
                                // lock_timeout: to the app, uncached (NGINX).
                                collapsed = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let plan = Box::new(Plan {
        route: rc.clone(),
        outcome: if bypass {
            Outcome::Bypass
        } else {
            Outcome::Miss
        },
        stale: None,
        revalidating: false,
        may_store: !no_cache && !collapsed && counted_enough(fc, rc, &key),
        fill,
        policy_req: freshness::policy_request(&parts.uri, &parts.headers),
        client: client_conditionals(&parts.headers),
        uri,
        collapsed,
        vary_miss,
        background: false,
        key,
    });
    match found {
        Some(entry) => expired(fc, rc, parts, plan, entry, SystemTime::now(), rec),
        None => forward(parts, plan),
    }
}

/// `min_uses`: whether this request for `key` is at least the Nth.
fn counted_enough(fc: &FrontCache, rc: &RouteCache, key: &str) -> bool {
    rc.config.min_uses <= 1 || fc.uses.count(key) >= rc.config.min_uses
}

/// An expired entry: served stale while one request refreshes it (in the background, or
/// another client's), or the request goes to the app (with the entry's validators when
/// `revalidate`), the entry kept for `use_stale`.
fn expired(
    fc: &FrontCache,
    rc: &Arc<RouteCache>,
    parts: &mut Parts,
    mut plan: Box<Plan>,
    entry: Arc<Entry>,
    now: SystemTime,
    rec: &mut crate::access_log::Record,
) -> Before {
    let allowance = freshness::stale_allowance(&entry.headers);
    let staleness = staleness(&entry, now);
    let swr = allowance.while_revalidate.is_some_and(|w| staleness <= w);
    let serve_while_updating = !allowance.forbidden
        && (rc.config.background_update || rc.uses_stale(UseStale::Updating) || swr);
    plan.outcome = Outcome::Expired;
    plan.stale = Some(entry.clone());
    if serve_while_updating {
        let updating = |rec: &mut crate::access_log::Record| {
            rc.count(Outcome::Updating);
            rec.cache = Some(Outcome::Updating);
            let status = format!("weir; hit; ttl={}; detail=updating", stale_ttl(staleness));
            answer(&entry, &plan.client, now, &status)
        };
        match fc.locks.turn(&plan.key) {
            FillTurn::Theirs(_) => return Before::Answer(updating(rec)),
            FillTurn::Mine(fill) if rc.config.background_update || swr => {
                let resp = updating(rec);
                plan.fill = Some(fill);
                add_validators(&mut plan);
                return Before::Answer(with_update(resp, parts, plan));
            }
            FillTurn::Mine(fill) => plan.fill = Some(fill),
        }
    }
    add_validators(&mut plan);
    forward(parts, plan)
}

/// `Cache-Status`'s ttl of a stale entry: minus the seconds past its freshness.
fn stale_ttl(staleness: Duration) -> i64 {
    -(staleness.as_secs() as i64)
}

/// How long past its freshness an entry is.
fn staleness(entry: &Entry, now: SystemTime) -> Duration {
    Duration::from_millis(weir_cache::entry::unix_ms(now).saturating_sub(entry.fresh_until_ms))
}

/// With `revalidate`, an expired entry that has validators is refreshed with them.
fn add_validators(plan: &mut Plan) {
    plan.revalidating = plan.route.config.revalidate
        && plan
            .stale
            .as_ref()
            .is_some_and(|e| freshness::revalidatable(&e.headers));
}

/// Makes `parts` what the app is sent for a cached route (see [`before`]).
fn forward(parts: &mut Parts, plan: Box<Plan>) -> Before {
    head_for_app(parts, &plan);
    Before::Forward(plan)
}

/// The request head the app is sent: HEAD as GET, the client's conditionals and range
/// dropped, the entry's validators added when revalidating.
fn head_for_app(parts: &mut Parts, plan: &Plan) {
    prepare_for_app(parts);
    if let (true, Some(entry)) = (plan.revalidating, &plan.stale) {
        for (k, v) in freshness::revalidation_headers(&entry.headers) {
            parts.headers.insert(k, v);
        }
    }
}

fn prepare_for_app(parts: &mut Parts) {
    if parts.method == Method::HEAD {
        parts.method = Method::GET;
    }
    for h in freshness::CONDITIONAL_FIELDS {
        parts.headers.remove(*h);
    }
}

fn client_conditionals(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [http::header::IF_NONE_MATCH, http::header::IF_MODIFIED_SINCE] {
        if let Some(v) = h.get(&name) {
            out.insert(name, v.clone());
        }
    }
    out
}

/// A response to send and the background update to start once it is on its way.
fn with_update(
    resp: Response<ResponseBody>,
    parts: &Parts,
    plan: Box<Plan>,
) -> Response<ResponseBody> {
    let mut resp = resp;
    let mut head = Request::builder()
        .method(Method::GET)
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(())
        .expect("the request's own method and URI")
        .into_parts()
        .0;
    head.headers = parts.headers.clone();
    head_for_app(&mut head, &plan);
    let mut plan = plan;
    plan.background = true;
    resp.extensions_mut()
        .insert(BackgroundUpdate(Arc::new(std::sync::Mutex::new(Some((
            head, plan,
        ))))));
    resp
}

/// A background update the listener starts after answering (its request head and plan).
#[derive(Clone)]
pub(crate) struct BackgroundUpdate(Arc<std::sync::Mutex<Option<UpdateWork>>>);

/// The request head and plan of a background update.
type UpdateWork = (Parts, Box<Plan>);

impl BackgroundUpdate {
    /// Takes what the update needs (once).
    pub(crate) fn take(&self) -> Option<UpdateWork> {
        self.0.lock().ok()?.take()
    }
}

/// An answer made from an entry: a 304 when the client's conditionals match it, else the
/// entry (hyper leaves the body out for a HEAD), with its Age and `Cache-Status`.
fn answer(
    entry: &Arc<Entry>,
    client: &HeaderMap,
    now: SystemTime,
    cache_status: &str,
) -> Response<ResponseBody> {
    let age = HeaderValue::from(entry.policy.age(now).as_secs());
    let status = HeaderValue::from_str(cache_status).unwrap_or(HeaderValue::from_static("weir"));
    if freshness::not_modified(client, &entry.headers, entry.status) {
        let mut r = Response::new(ResponseBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let h = r.headers_mut();
        for name in freshness::NOT_MODIFIED_FIELDS {
            for v in entry.headers.get_all(*name) {
                h.append(HeaderName::from_static(name), v.clone());
            }
        }
        h.insert(AGE, age);
        h.insert(CACHE_STATUS, status);
        return r;
    }
    let mut r = Response::new(ResponseBody::full(entry.body.clone()));
    *r.status_mut() = entry.status;
    *r.headers_mut() = entry.headers.clone();
    r.headers_mut().insert(AGE, age);
    r.headers_mut().insert(CACHE_STATUS, status);
    // The compression stage keeps its compressed copy of this body in the entry.
    r.extensions_mut().insert(CachedBody(entry.clone()));
    r
}

/// On an answer made from an entry: the entry, whose body the answer is.
#[derive(Clone)]
pub struct CachedBody(pub Arc<Entry>);

/// RFC 9211's field.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Which `use_stale` conditions a failure meets: its kind (`error`, `timeout`,
/// `invalid_header`) and its status (`http_NNN`).
fn failure_conditions(class: Option<ErrorClass>, status: StatusCode) -> Vec<UseStale> {
    let mut out = Vec::with_capacity(2);
    if let Some(c) = class {
        match c {
            ErrorClass::QueueTimeout
            | ErrorClass::Deadline
            | ErrorClass::Harakiri
            | ErrorClass::UpstreamTimeout => out.push(UseStale::Timeout),
            ErrorClass::WorkerProtocol | ErrorClass::UpstreamProtocol => {
                out.push(UseStale::InvalidHeader);
                out.push(UseStale::Error);
            }
            ErrorClass::QueueFull
            | ErrorClass::WorkerDied
            | ErrorClass::AppException
            | ErrorClass::UpstreamConnect
            | ErrorClass::ShuttingDown
            | ErrorClass::NotReady => out.push(UseStale::Error),
            _ => {}
        }
    }
    if let Some(s) = UseStale::ALL
        .iter()
        .find(|u| u.status() == Some(status.as_u16()))
    {
        out.push(*s);
    }
    out
}

/// A stale answer for a failure the route lists in `use_stale` (or the entry's own
/// `stale-if-error` covers), if the plan holds an entry that may be served stale.
fn stale_for_failure(
    plan: &Plan,
    class: Option<ErrorClass>,
    status: StatusCode,
    rec: &mut crate::access_log::Record,
) -> Option<Response<ResponseBody>> {
    let entry = plan.stale.as_ref()?;
    let now = SystemTime::now();
    let allowance = freshness::stale_allowance(&entry.headers);
    if allowance.forbidden && allowance.if_error.is_none() {
        return None;
    }
    let conditions = failure_conditions(class, status);
    if conditions.is_empty() {
        return None;
    }
    let staleness = staleness(entry, now);
    let by_route = conditions.iter().any(|c| plan.route.uses_stale(*c)) && !allowance.forbidden;
    let by_entry = allowance.if_error.is_some_and(|w| staleness <= w);
    if !(by_route || by_entry) {
        return None;
    }
    plan.note(Outcome::Stale, rec);
    let detail = conditions.last().map_or("error", |c| c.as_str());
    let status = format!(
        "weir; hit; ttl={}; fwd=stale; fwd-status={}; detail={detail}",
        stale_ttl(staleness),
        status.as_u16()
    );
    Some(answer(entry, &plan.client, now, &status))
}

/// The cache stage, response side: store, refresh, or answer stale (see the module doc).
pub(crate) fn after(
    fc: &FrontCache,
    mut plan: Box<Plan>,
    result: Result<Response<ResponseBody>, Rejection>,
    rec: &mut crate::access_log::Record,
) -> Result<Response<ResponseBody>, Rejection> {
    let result = result.and_then(crate::dispatch::attribute_worker_answer);
    let resp = match result {
        Err(mut rej) => {
            if let Some(stale) = stale_for_failure(&plan, Some(rej.class), rej.status(), rec) {
                return Ok(stale);
            }
            count_forwarded(&plan, rec);
            let v = format!(
                "weir; fwd={}; fwd-status={}",
                fwd_reason(&plan),
                rej.status().as_u16()
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                rej.headers.push((CACHE_STATUS, v));
            }
            return Err(rej);
        }
        Ok(resp) => resp,
    };
    let now = SystemTime::now();
    if let Some(stale) = stale_for_failure(&plan, None, resp.status(), rec) {
        return Ok(stale);
    }
    if plan.revalidating && resp.status() == StatusCode::NOT_MODIFIED {
        if let Some(r) = revalidated(fc, &mut plan, &resp, now, rec) {
            return Ok(r);
        }
    }
    count_forwarded(&plan, rec);
    let (mut parts, body) = resp.into_parts();
    let mut status = format!("weir; fwd={}", fwd_reason(&plan));
    if plan.outcome == Outcome::Expired {
        let _ = write!(status, "; fwd-status={}", parts.status.as_u16());
    }
    if plan.collapsed {
        status.push_str("; collapsed");
    }
    let stored = match storable(&plan, &parts, now) {
        Err(why) => {
            if let Some(why) = why {
                let _ = write!(status, "; detail={}", why.as_str());
            }
            None
        }
        Ok(policy) => Some(policy),
    };
    let body = match (stored, body) {
        (None, body) => body,
        (Some((policy, ttl)), ResponseBody::Full(b)) => {
            status.push_str("; stored");
            let b = b.unwrap_or_default();
            store(fc, &plan, &parts, policy, ttl, b.clone(), now);
            ResponseBody::Full(Some(b))
        }
        (Some((policy, ttl)), ResponseBody::Empty) => {
            status.push_str("; stored");
            store(fc, &plan, &parts, policy, ttl, Bytes::new(), now);
            ResponseBody::Empty
        }
        (Some((policy, ttl)), body @ (ResponseBody::Stream(_) | ResponseBody::Spooled(_))) => {
            status.push_str("; stored");
            // Stored when the body has all come, if it stays within a tenth of memory.
            let filler = StreamFill {
                tiers: fc.tiers.clone(),
                key: plan.key.clone(),
                uri: plan.uri.clone(),
                req_headers: plan.policy_req.headers().clone(),
                parts_status: parts.status,
                headers: parts.headers.clone(),
                policy,
                useless_after_ms: useless_after(now, ttl + plan.route.stale_keep(&parts.headers)),
                fresh_until_ms: useless_after(now, ttl),
                fill: plan.fill.take(),
                max: fc.max_entry,
            };
            ResponseBody::Stream(filler.tee(body))
        }
        (Some(_), body) => body,
    };
    if let Ok(v) = HeaderValue::from_str(&status) {
        parts.headers.insert(CACHE_STATUS, v);
    }
    let resp = Response::from_parts(parts, body);
    Ok(conditional_answer(resp, &plan.client))
}

fn fwd_reason(plan: &Plan) -> &'static str {
    match plan.outcome {
        Outcome::Bypass => "bypass",
        Outcome::Expired => "stale",
        _ if plan.vary_miss => "vary-miss",
        _ => "miss",
    }
}

fn count_forwarded(plan: &Plan, rec: &mut crate::access_log::Record) {
    plan.note(plan.outcome, rec);
}

/// The policy and freshness of a response the plan may store; `Err(None)` when the plan
/// may not store at all, `Err(Some(why))` when the response may not be stored.
fn storable(
    plan: &Plan,
    parts: &http::response::Parts,
    now: SystemTime,
) -> Result<(http_cache_semantics::CachePolicy, Duration), Option<NotStored>> {
    if !plan.may_store {
        return Err(None);
    }
    let res = head_only(parts);
    let valid = plan.route.config.valid_for(parts.status.as_u16());
    freshness::policy_for(&plan.policy_req, &res, valid, now).map_err(Some)
}

fn head_only(parts: &http::response::Parts) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = parts.status;
    *res.headers_mut() = parts.headers.clone();
    res
}

fn store(
    fc: &FrontCache,
    plan: &Plan,
    parts: &http::response::Parts,
    policy: http_cache_semantics::CachePolicy,
    ttl: Duration,
    body: Bytes,
    now: SystemTime,
) {
    if body.len() > fc.max_entry {
        return;
    }
    let entry = Entry::new(
        plan.uri.clone(),
        parts.status,
        parts.headers.clone(),
        policy,
        useless_after(now, ttl),
        useless_after(now, ttl + plan.route.stale_keep(&parts.headers)),
        body,
    );
    fc.tiers.store(
        &plan.key,
        freshness::vary_names(&parts.headers),
        plan.policy_req.headers(),
        entry,
    );
}

/// The app confirmed the stale entry (304 to its validators): the entry, its headers
/// updated from the 304, is stored again and answers.
fn revalidated(
    fc: &FrontCache,
    plan: &mut Plan,
    resp: &Response<ResponseBody>,
    now: SystemTime,
    rec: &mut crate::access_log::Record,
) -> Option<Response<ResponseBody>> {
    let old = plan.stale.clone()?;
    const KEEP: &[&str] = &[
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "content-range",
    ];
    let mut headers = old.headers.clone();
    for (k, v) in resp.headers() {
        if !KEEP.contains(&k.as_str()) {
            headers.insert(k.clone(), v.clone());
        }
    }
    let mut head = Response::new(());
    *head.status_mut() = old.status;
    *head.headers_mut() = headers.clone();
    let valid = plan.route.config.valid_for(old.status.as_u16());
    let (policy, ttl) = freshness::policy_for(&plan.policy_req, &head, valid, now).ok()?;
    let entry = Entry::new(
        plan.uri.clone(),
        old.status,
        headers,
        policy,
        useless_after(now, ttl),
        useless_after(now, ttl + plan.route.stale_keep(&old.headers)),
        old.body.clone(),
    );
    plan.note(Outcome::Revalidated, rec);
    let answer_status = format!(
        "weir; fwd=stale; fwd-status=304; stored; ttl={}",
        ttl.as_secs()
    );
    let r = answer(&Arc::new(entry.clone()), &plan.client, now, &answer_status);
    fc.tiers.store(
        &plan.key,
        freshness::vary_names(&entry.headers),
        plan.policy_req.headers(),
        entry,
    );
    Some(r)
}

/// A 304 for a client whose conditionals match a 200 the app just sent in full.
fn conditional_answer(resp: Response<ResponseBody>, client: &HeaderMap) -> Response<ResponseBody> {
    if client.is_empty()
        || !matches!(resp.body(), ResponseBody::Full(_) | ResponseBody::Empty)
        || !freshness::not_modified(client, resp.headers(), resp.status())
    {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let mut r = Response::new(ResponseBody::Empty);
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    let h = r.headers_mut();
    for name in freshness::NOT_MODIFIED_FIELDS
        .iter()
        .chain(&["cache-status", "age"])
    {
        for v in parts.headers.get_all(*name) {
            h.append(HeaderName::from_static(name), v.clone());
        }
    }
    r
}

/// A streamed response being stored as it goes to the client.
struct StreamFill {
    tiers: Arc<Tiers>,
    key: String,
    uri: String,
    req_headers: HeaderMap,
    parts_status: StatusCode,
    headers: HeaderMap,
    policy: http_cache_semantics::CachePolicy,
    useless_after_ms: u64,
    fresh_until_ms: u64,
    fill: Option<weir_cache::Fill>,
    max: usize,
}

type Chunks = mpsc::Receiver<Result<Bytes, BodyError>>;

impl StreamFill {
    /// Passes the chunks on to the client and keeps a copy; stores it at the body's normal
    /// end. A client that leaves does not stop the copy (the fill completes for the
    /// requests waiting on it); a body over `max`, or one that fails, is not stored.
    fn tee(self, mut body: ResponseBody) -> Chunks {
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut copy = Some(BytesMut::new());
            let mut client = Some(tx);
            loop {
                let chunk = match &mut body {
                    ResponseBody::Stream(rx) => rx.recv().await,
                    ResponseBody::Spooled(rx) => rx.recv().await,
                    _ => None,
                };
                let Some(chunk) = chunk else { break };
                let end = matches!(&chunk, Ok(b) if b.is_empty());
                match &chunk {
                    Ok(b) => {
                        if let Some(c) = &mut copy {
                            if c.len() + b.len() > self.max {
                                copy = None;
                            } else {
                                c.extend_from_slice(b);
                            }
                        }
                    }
                    Err(_) => copy = None,
                }
                if let Some(t) = &client {
                    if t.send(chunk).await.is_err() {
                        client = None;
                    }
                }
                if copy.is_none() && client.is_none() {
                    return;
                }
                if end {
                    if let Some(c) = copy.take() {
                        self.finish(c.freeze());
                    }
                    return;
                }
            }
        });
        out
    }

    fn finish(self, body: Bytes) {
        let entry = Entry::new(
            self.uri,
            self.parts_status,
            self.headers,
            self.policy,
            self.fresh_until_ms,
            self.useless_after_ms,
            body,
        );
        let vary = freshness::vary_names(&entry.headers);
        self.tiers.store(&self.key, vary, &self.req_headers, entry);
        drop(self.fill);
    }
}

/// An unsafe request that succeeded makes the entry of its URI stale (RFC 9111 4.4): it
/// is purged in every tier and instance.
pub(crate) async fn invalidate(fc: &FrontCache, key: String, status: StatusCode) {
    if status.is_success() || status.is_redirection() {
        fc.tiers.purge(&Purge::Key(key)).await;
    }
}

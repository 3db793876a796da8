//! Admission control for weir's front door: NGINX's `limit_req` (exactly), `limit_conn` and
//! `limit_rate`, keyed by NGINX-style templates, kept in memory or shared through Redis.
//!
//! # Modules
//! - [`key`]: key templates (`"$remote_addr:$uri"`) and [`RequestView`], the request as the
//!   templates see it.
//! - [`limit_req`]: NGINX's leaky bucket as a pure state machine on a millisecond clock,
//!   with its multi-zone rules, the verdict ([`Verdict`]: admit, delay, refuse with
//!   Retry-After) and the IETF RateLimit headers.
//! - [`memory`]: buckets in memory, sharded, bounded by `max_keys` (LRU).
//! - [`redis_store`]: buckets in Redis, one Lua script per check, timeouts, reconnects,
//!   `on_store_error`.
//! - [`limit_conn`]: requests in progress per key, in memory.
//! - [`redis_conn`]: requests in progress per key shared through Redis, with leases that
//!   end the slots of an instance that died.
//! - [`limit_rate`]: a response body paced to the client.
//! - this file: [`Limits`], the one object the front door calls.
//!
//! # How the front door uses it
//! ```ignore
//! // at start-up, after Config::validate:
//! let limits = Arc::new(Limits::from_config(&config)?);
//! // before accepting: connect to Redis (if it is the store), waiting at most a second
//! // (not reachable: one warning, and on_store_error applies until it answers)
//! limits.connect(Duration::from_secs(1)).await;
//! // per [[route]], when the route table is built:
//! let route_limits = limits.route(&route_config)?;      // RouteLimits
//! // per request, after identify and route, before the queue (stage 8):
//! let outcome = limits.check(&route_limits, &view).await; // view: impl RequestView
//! if let Some(refusal) = &outcome.refusal {
//!     // status refusal.status, x-weir-error refusal.class, Retry-After
//!     // refusal.retry_after_secs, plus outcome.headers (RateLimit-Policy, RateLimit)
//!     return reject(refusal, &outcome.headers);
//! }
//! // outcome.zone() and outcome.delayed go to the access log; keep `outcome` (it holds
//! // the limit_conn slots) alive until the response body is done or the client left:
//! let guard = outcome.into_guard();
//! let body = route_limits.pace(body);                     // limit_rate / limit_rate_after
//! // admin /metrics:
//! limits.render_metrics(&mut text);
//! ```
//! [`Limits::check`] waits out a `limit_req` delay itself (outside the queue, holding no
//! worker and no `limit_conn` slot, as NGINX takes its `limit_conn` slot after the delay);
//! race it against the client watch to drop a request whose client left (dropping the
//! future is safe: nothing is held yet). [`Limits::decide`] and [`Limits::acquire_conn`] are
//! the two halves for a caller that wants to sleep itself.
//!
//! # Semantics
//! Zones of a route are checked in the route's order, NGINX's way (see [`limit_req`]);
//! zones with `dry_run = true` form their own list, checked after the enforcing ones
//! admit, as NGINX's `limit_req_dry_run on` would check them: they count and report
//! ([`Outcome::dry_run`]) but never refuse or delay. A zone whose key renders empty does not
//! apply. With the Redis store, a failing Redis gives every request of the failing check
//! `on_store_error`'s verdict: admitted (`allow`, and holding no `limit_conn` slot), or
//! refused by the first enforcing zone of the check (`deny`: a `limit_req` zone answers
//! `rate-limited` with Retry-After 1, a `limit_conn` zone `conn-limited`). A request whose
//! `limit_req` check already failed does not try Redis again for its `limit_conn` slots:
//! one request waits at most one store timeout.
//!
//! # Memory
//! A remembered key costs about 40 bytes in the memory store whatever its length (a 64-bit
//! hash of it is kept, not the key); 1,000,000 keys measured 43 MB of RSS
//! (`cargo test -p weir-limits --test memory_per_key -- --ignored --nocapture`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod key;
pub mod limit_conn;
pub mod limit_rate;
pub mod limit_req;
pub mod memory;
pub mod redis_conn;
pub mod redis_store;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use weir_config::{Config, OnStoreError, Rate, RouteConfig};
use weir_errors::ErrorClass;

pub use key::{KeyTemplate, RequestView, SimpleRequest};
pub use limit_conn::{ConnGuard, ConnZone};
pub use limit_rate::RateLimitedBody;
pub use limit_req::{Decision, DelayMode, Rule, Verdict};
pub use redis_conn::{ConnCheck, Lease};
pub use redis_store::{RedisOptions, StoreError, StoreHealth};

/// A configuration weir-limits cannot use (only before `Config::validate` passed, or a
/// route naming an unknown zone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A zone's settings.
    #[error("{key}: {reason}")]
    Invalid {
        /// The config key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> LimitsError {
    LimitsError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

#[derive(Debug, Default)]
struct Counters([AtomicU64; 6]);

impl Counters {
    const REQ: [&'static str; 6] = [
        "admitted",
        "delayed",
        "refused",
        "dry_run_delayed",
        "dry_run_refused",
        "store_error",
    ];
    const CONN: [&'static str; 4] = ["admitted", "refused", "dry_run_refused", "store_error"];
    fn add(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct ReqZone {
    name: Arc<str>,
    key: KeyTemplate,
    rate: Rate,
    rule: Rule,
    status: StatusCode,
    dry_run: bool,
    memory: memory::MemoryZone,
    counters: Counters,
}

#[derive(Debug)]
struct ConnZoneEntry {
    name: Arc<str>,
    key: KeyTemplate,
    zone: Arc<ConnZone>,
    max: u64,
    status: StatusCode,
    dry_run: bool,
    counters: Counters,
}

#[derive(Debug)]
enum Store {
    Memory,
    Redis(Box<redis_store::RedisStore>),
}

/// Every limit of a configuration; built once, shared by all connections.
#[derive(Debug)]
pub struct Limits {
    req: Vec<ReqZone>,
    conn: Vec<ConnZoneEntry>,
    store: Store,
    on_store_error: OnStoreError,
    health: StoreHealth,
    fallback: [AtomicU64; 2],
    epoch: tokio::time::Instant,
}

/// The limits of one `[[route]]`: indices of its zones, and its `limit_rate`.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    req: Box<[usize]>,
    conn: Box<[usize]>,
    rate: u64,
    rate_after: u64,
}

impl RouteLimits {
    /// No zone and no limit_rate: [`Limits::check`] admits at once.
    pub fn is_empty(&self) -> bool {
        self.req.is_empty() && self.conn.is_empty() && self.rate == 0
    }

    /// `limit_rate` and `limit_rate_after` in bytes (rate 0: none).
    pub fn limit_rate(&self) -> (u64, u64) {
        (self.rate, self.rate_after)
    }

    /// The response body, paced by the route's `limit_rate` (as is when it has none).
    pub fn pace<B>(&self, body: B) -> RateLimitedBody<B> {
        RateLimitedBody::new(body, self.rate, self.rate_after)
    }
}

/// A refused request: answer it with `status`, `x-weir-error: class`, Retry-After when
/// given, and [`Outcome::headers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `rate-limited` or `conn-limited`.
    pub class: ErrorClass,
    /// The zone that refused it.
    pub zone: Arc<str>,
    /// The zone's status (default 429).
    pub status: StatusCode,
    /// Whole seconds until the bucket would admit it (limit_req), at least 1.
    pub retry_after_secs: Option<u64>,
    /// `on_store_error = "deny"` refused it because Redis did not answer.
    pub store_error: bool,
}

impl Refusal {
    /// A line for the answer's body and the log.
    pub fn message(&self) -> String {
        match (self.class, self.store_error) {
            (_, true) => format!(
                "refused: the limits store did not answer and on_store_error is \"deny\" (zone {})",
                self.zone
            ),
            (ErrorClass::ConnLimited, _) => format!(
                "too many requests in progress for this client (limit_conn zone {})",
                self.zone
            ),
            _ => format!(
                "too many requests (limit_req zone {}); retry after {} s",
                self.zone,
                self.retry_after_secs.unwrap_or(1)
            ),
        }
    }
}

/// What a dry-run zone would have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The zone (`limit_req` or `limit_conn`).
    pub zone: Arc<str>,
    /// What it would have done: [`Verdict::Delay`] or [`Verdict::Refuse`].
    pub would: Verdict,
}

/// The limits' answer for one request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Refused: answer it and do not queue it.
    pub refusal: Option<Refusal>,
    /// It was delayed (by [`Limits::check`]) or is to be delayed (by the caller of
    /// [`Limits::decide`]) this long, by this zone.
    pub delayed: Option<(Arc<str>, Duration)>,
    /// What dry-run zones would have done (empty when nothing).
    pub dry_run: Vec<DryRun>,
    /// Headers for the answer: `RateLimit-Policy` and `RateLimit` of the deciding zone
    /// (on a refused or delayed request; not built for admitted ones, to keep the check cheap), and
    /// `Retry-After` on a refusal.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Redis did not answer for this request (`on_store_error` applied).
    pub store_error: bool,
    guards: Vec<ConnGuard>,
    lease: Option<redis_conn::Lease>,
    /// `on_store_error = "allow"` was counted for this request already.
    fell_back: bool,
}

/// The `limit_conn` slots of a request (in memory, or a lease in Redis); dropping it
/// frees them (a Redis lease in the background: dropping never waits).
#[derive(Debug, Default)]
pub struct ConnGuards(
    #[allow(dead_code)] Vec<ConnGuard>,
    #[allow(dead_code)] Option<redis_conn::Lease>,
);

impl ConnGuards {
    /// Holds no slot.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_none()
    }
}

impl Outcome {
    /// The zone for the access log: the one that refused, else the one that delayed.
    pub fn zone(&self) -> Option<&str> {
        self.refusal
            .as_ref()
            .map(|r| &*r.zone)
            .or(self.delayed.as_ref().map(|d| &*d.0))
    }

    /// Refused?
    pub fn is_refused(&self) -> bool {
        self.refusal.is_some()
    }

    /// The `limit_conn` slots, to hold until the response is done.
    pub fn into_guard(self) -> ConnGuards {
        ConnGuards(self.guards, self.lease)
    }
}

fn clock_ms(epoch: tokio::time::Instant) -> u64 {
    // NGINX's clock is milliseconds since boot: an uncharged new bucket (last = 0) is far
    // in the past. Start ours a long way from 0 for the same effect.
    1_000_000_000 + epoch.elapsed().as_millis() as u64
}

struct MemGroup<'a> {
    zones: &'a [&'a ReqZone],
    hashes: &'a [u64],
    now: u64,
}

impl limit_req::Buckets for MemGroup<'_> {
    fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Option<limit_req::Bucket>) -> R) -> R {
        let z = self.zones[i];
        z.memory.with(self.hashes[i], &z.rule, self.now, f)
    }
}

impl Limits {
    /// Builds the zones of a validated configuration (`[limits] store` a Redis URL: the
    /// connection is made by [`Limits::connect`], or else on the first check, from the
    /// tokio runtime).
    pub fn from_config(cfg: &Config) -> Result<Limits, LimitsError> {
        Limits::from_config_with(cfg, RedisOptions::default())
    }

    /// [`Limits::from_config`] with the Redis store's internal knobs.
    pub fn from_config_with(cfg: &Config, redis: RedisOptions) -> Result<Limits, LimitsError> {
        let status = |key: &str, s: u16| {
            StatusCode::from_u16(s)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| invalid(key, format!("{s} is not 400 to 599")))
        };
        let mut req = Vec::new();
        for (name, z) in &cfg.limit_req {
            let k = |s: &str| format!("limit_req.{name}.{s}");
            let rate = z.parsed_rate().map_err(|e| invalid(k("rate"), e))?;
            let mode = match (z.nodelay, z.delay) {
                (true, None) => DelayMode::NoDelay,
                (false, Some(n)) => DelayMode::After(n),
                (false, None) => DelayMode::All,
                (true, Some(_)) => return Err(invalid(k("delay"), "delay and nodelay together")),
            };
            req.push(ReqZone {
                name: name.as_str().into(),
                key: z
                    .key
                    .parse()
                    .map_err(|e: key::KeyError| invalid(k("key"), e.to_string()))?,
                rate,
                rule: Rule::new(rate, z.burst, mode),
                status: status(&k("status"), z.status)?,
                dry_run: z.dry_run,
                memory: memory::MemoryZone::new(if cfg.limits.redis_url().is_some() {
                    1
                } else {
                    z.max_keys
                }),
                counters: Counters::default(),
            });
        }
        let mut conn = Vec::new();
        for (name, z) in &cfg.limit_conn {
            let k = |s: &str| format!("limit_conn.{name}.{s}");
            if z.max == 0 {
                return Err(invalid(k("max"), "must be at least 1"));
            }
            conn.push(ConnZoneEntry {
                name: name.as_str().into(),
                key: z
                    .key
                    .parse()
                    .map_err(|e: key::KeyError| invalid(k("key"), e.to_string()))?,
                zone: ConnZone::new(z.max),
                max: z.max,
                status: status(&k("status"), z.status)?,
                dry_run: z.dry_run,
                counters: Counters::default(),
            });
        }
        let store = match cfg.limits.redis_url() {
            None => Store::Memory,
            Some(url) => Store::Redis(Box::new(
                redis_store::RedisStore::new(url, redis)
                    .map_err(|e| invalid("limits.store", e.to_string()))?,
            )),
        };
        Ok(Limits {
            req,
            conn,
            store,
            on_store_error: cfg.limits.on_store_error,
            health: StoreHealth::default(),
            fallback: Default::default(),
            epoch: tokio::time::Instant::now(),
        })
    }

    /// No zone at all.
    pub fn is_empty(&self) -> bool {
        self.req.is_empty() && self.conn.is_empty()
    }

    /// The limits of a `[[route]]`.
    pub fn route(&self, route: &RouteConfig) -> Result<RouteLimits, LimitsError> {
        let mut r = self.zones(&route.limit_req, &route.limit_conn)?;
        r.rate = route.limit_rate.map_or(0, |s| s.bytes());
        r.rate_after = route.limit_rate_after.map_or(0, |s| s.bytes());
        Ok(r)
    }

    /// Limits of the named zones (no limit_rate).
    pub fn zones(
        &self,
        limit_req: &[String],
        limit_conn: &[String],
    ) -> Result<RouteLimits, LimitsError> {
        let find = |names: &[String], all: Vec<&Arc<str>>, what: &str| {
            names
                .iter()
                .map(|n| {
                    all.iter()
                        .position(|z| ***z == **n)
                        .ok_or_else(|| invalid(what, format!("zone {n:?} is not defined")))
                })
                .collect::<Result<Box<[usize]>, _>>()
        };
        Ok(RouteLimits {
            req: find(
                limit_req,
                self.req.iter().map(|z| &z.name).collect(),
                "limit_req",
            )?,
            conn: find(
                limit_conn,
                self.conn.iter().map(|z| &z.name).collect(),
                "limit_conn",
            )?,
            rate: 0,
            rate_after: 0,
        })
    }

    /// Connects to the store before serving: with Redis, waits at most `within` for a
    /// connection (and loads the scripts), so the first requests do not get
    /// `on_store_error` while it is being made. `true` when connected (always with the
    /// memory store). Not reachable: one warning (the outage starts, and is logged only
    /// once), `on_store_error` applies until Redis answers, and the connection keeps
    /// being retried in the background with the usual backoff.
    pub async fn connect(&self, within: Duration) -> bool {
        let Store::Redis(r) = &self.store else {
            return true;
        };
        match r.connect(within).await {
            Ok(()) => {
                tracing::info!("limits store (Redis) connected: zones are shared");
                true
            }
            Err(e) => {
                self.health.failed_at_start(&e, self.policy(), within);
                false
            }
        }
    }

    fn policy(&self) -> &'static str {
        match self.on_store_error {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }

    /// Requests of this instance holding shared `limit_conn` slots in Redis (0 with the
    /// memory store).
    pub fn shared_conn_leases(&self) -> usize {
        match &self.store {
            Store::Redis(r) => r.live_leases(),
            Store::Memory => 0,
        }
    }

    /// The store's health (Redis outages and errors).
    pub fn store_health(&self) -> &StoreHealth {
        &self.health
    }

    /// Checks a request: its `limit_req` zones (waiting out a delay), then its
    /// `limit_conn` zones. See the crate doc.
    pub async fn check(&self, route: &RouteLimits, req: &impl RequestView) -> Outcome {
        let mut out = self.decide(route, req).await;
        if out.refusal.is_some() {
            return out;
        }
        if let Some((_, d)) = &out.delayed {
            tokio::time::sleep(*d).await;
        }
        self.acquire_conn(route, req, &mut out).await;
        out
    }

    /// The `limit_req` half of [`Limits::check`]: charges the buckets and says whether
    /// to refuse or how long to delay, without waiting.
    pub async fn decide(&self, route: &RouteLimits, req: &impl RequestView) -> Outcome {
        let mut out = Outcome::default();
        if route.req.is_empty() {
            return out;
        }
        let mut enforcing: Vec<(&ReqZone, String)> = Vec::new();
        let mut dry: Vec<(&ReqZone, String)> = Vec::new();
        for &i in route.req.iter() {
            let z = &self.req[i];
            let k = z.key.eval(req);
            // NGINX: an empty key is not limited, nor one over 65535 bytes
            if k.is_empty() || k.len() > 65535 {
                continue;
            }
            if z.dry_run {
                dry.push((z, k))
            } else {
                enforcing.push((z, k))
            }
        }
        if !enforcing.is_empty() {
            match self.run(&enforcing).await {
                Ok(d) => self.apply(&enforcing, &d, &mut out),
                Err(()) => {
                    out.store_error = true;
                    let z = enforcing[0].0;
                    z.counters.add(5);
                    if self.on_store_error == OnStoreError::Deny {
                        self.fallback[1].fetch_add(1, Ordering::Relaxed);
                        out.headers
                            .push((RETRY_AFTER, HeaderValue::from_static("1")));
                        out.refusal = Some(Refusal {
                            class: ErrorClass::RateLimited,
                            zone: z.name.clone(),
                            status: z.status,
                            retry_after_secs: Some(1),
                            store_error: true,
                        });
                        return out;
                    }
                    self.fallback[0].fetch_add(1, Ordering::Relaxed);
                    out.fell_back = true;
                }
            }
            if out.refusal.is_some() {
                return out;
            }
        }
        if !dry.is_empty() {
            if let Ok(d) = self.run(&dry).await {
                if let Some(i) = d.zone {
                    let z = dry[i].0;
                    match d.verdict {
                        Verdict::Admit => z.counters.add(0),
                        Verdict::Delay(_) => z.counters.add(3),
                        Verdict::Refuse { .. } => z.counters.add(4),
                    }
                    if d.verdict != Verdict::Admit {
                        out.dry_run.push(DryRun {
                            zone: z.name.clone(),
                            would: d.verdict,
                        });
                    }
                }
            } else {
                out.store_error = true;
            }
        }
        out
    }

    async fn run(&self, group: &[(&ReqZone, String)]) -> Result<Decision, ()> {
        let rules: Vec<Rule> = group.iter().map(|(z, _)| z.rule).collect();
        match &self.store {
            Store::Memory => {
                let zones: Vec<&ReqZone> = group.iter().map(|g| g.0).collect();
                let hashes: Vec<u64> = group.iter().map(|(z, k)| z.memory.hash_key(k)).collect();
                let now = clock_ms(self.epoch);
                let mut g = MemGroup {
                    zones: &zones,
                    hashes: &hashes,
                    now,
                };
                Ok(limit_req::check(&mut g, &rules, || now))
            }
            Store::Redis(r) => {
                let args: Vec<(&str, &str, Rule)> = group
                    .iter()
                    .map(|(z, k)| (&*z.name, k.as_str(), z.rule))
                    .collect();
                match r.check(&args).await {
                    Ok(d) => {
                        self.health.succeeded();
                        Ok(d)
                    }
                    Err(e) => {
                        self.health.failed(&e, self.policy());
                        Err(())
                    }
                }
            }
        }
    }

    fn apply(&self, group: &[(&ReqZone, String)], d: &Decision, out: &mut Outcome) {
        let Some(i) = d.zone else { return };
        let z = group[i].0;
        // The RateLimit headers go on refusals (and delayed requests); building them for
        // every admitted request would cost more than the check itself.
        if d.verdict != Verdict::Admit {
            let (policy, rl) = limit_req::ratelimit_headers(&z.name, z.rate, &z.rule, d);
            if let (Ok(p), Ok(r)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&rl)) {
                out.headers.push((RATELIMIT_POLICY.clone(), p));
                out.headers.push((RATELIMIT.clone(), r));
            }
        }
        match d.verdict {
            Verdict::Admit => z.counters.add(0),
            Verdict::Delay(dur) => {
                z.counters.add(1);
                out.delayed = Some((z.name.clone(), dur));
            }
            Verdict::Refuse { retry_after } => {
                z.counters.add(2);
                let secs = retry_after.as_secs().max(1);
                out.headers.push((RETRY_AFTER, HeaderValue::from(secs)));
                out.refusal = Some(Refusal {
                    class: ErrorClass::RateLimited,
                    zone: z.name.clone(),
                    status: z.status,
                    retry_after_secs: Some(secs),
                    store_error: false,
                });
            }
        }
    }

    /// The `limit_conn` half of [`Limits::check`]: takes a slot in each of the route's
    /// zones, or sets `out.refusal` (and takes none). With the Redis store the slots are
    /// leases in Redis (one script for all the zones, bounded by the store's timeout, and
    /// `on_store_error` when it fails); cancel-safe either way.
    pub async fn acquire_conn(
        &self,
        route: &RouteLimits,
        req: &impl RequestView,
        out: &mut Outcome,
    ) {
        match &self.store {
            Store::Memory => self.acquire_conn_memory(route, req, out),
            Store::Redis(r) => self.acquire_conn_redis(r, route, req, out).await,
        }
    }

    fn acquire_conn_memory(&self, route: &RouteLimits, req: &impl RequestView, out: &mut Outcome) {
        for &i in route.conn.iter() {
            let z = &self.conn[i];
            let k = z.key.eval(req);
            if k.is_empty() || k.len() > 65535 {
                continue;
            }
            match z.zone.try_acquire(&k) {
                Some(g) => {
                    z.counters.add(0);
                    out.guards.push(g);
                }
                None if z.dry_run => self.conn_dry_refused(z, out),
                None => {
                    out.guards.clear();
                    self.conn_refused(z, out);
                    return;
                }
            }
        }
    }

    async fn acquire_conn_redis(
        &self,
        r: &redis_store::RedisStore,
        route: &RouteLimits,
        req: &impl RequestView,
        out: &mut Outcome,
    ) {
        let mut zones: Vec<(&ConnZoneEntry, String)> = Vec::new();
        for &i in route.conn.iter() {
            let z = &self.conn[i];
            let k = z.key.eval(req);
            if !(k.is_empty() || k.len() > 65535) {
                zones.push((z, k));
            }
        }
        if zones.is_empty() {
            return;
        }
        if out.store_error {
            // this request's limit_req check just failed: do not wait on Redis twice
            self.conn_store_error(&zones, out);
            return;
        }
        let checks: Vec<ConnCheck<'_>> = zones
            .iter()
            .map(|(z, k)| ConnCheck {
                zone: &z.name,
                key: k,
                max: z.max,
                dry_run: z.dry_run,
            })
            .collect();
        match r.acquire(&checks).await {
            Ok(a) => {
                self.health.succeeded();
                for ((z, _), room) in zones.iter().zip(&a.room) {
                    match (room, z.dry_run) {
                        (true, _) => z.counters.add(0),
                        (false, true) => self.conn_dry_refused(z, out),
                        (false, false) => {
                            self.conn_refused(z, out);
                            return;
                        }
                    }
                }
                out.lease = a.lease;
            }
            Err(e) => {
                self.health.failed(&e, self.policy());
                self.conn_store_error(&zones, out);
            }
        }
    }

    fn conn_dry_refused(&self, z: &ConnZoneEntry, out: &mut Outcome) {
        z.counters.add(2);
        out.dry_run.push(DryRun {
            zone: z.name.clone(),
            would: Verdict::Refuse {
                retry_after: Duration::ZERO,
            },
        });
    }

    fn conn_refused(&self, z: &ConnZoneEntry, out: &mut Outcome) {
        z.counters.add(1);
        out.refusal = Some(Refusal {
            class: ErrorClass::ConnLimited,
            zone: z.name.clone(),
            status: z.status,
            retry_after_secs: None,
            store_error: false,
        });
    }

    /// Redis did not answer for the request's `limit_conn` zones: `on_store_error`.
    fn conn_store_error(&self, zones: &[(&ConnZoneEntry, String)], out: &mut Outcome) {
        out.store_error = true;
        // dry-run zones never refuse: only an enforcing zone gets the verdict
        let Some((z, _)) = zones.iter().find(|(z, _)| !z.dry_run) else {
            return;
        };
        z.counters.add(3);
        match self.on_store_error {
            OnStoreError::Allow => {
                if !out.fell_back {
                    self.fallback[0].fetch_add(1, Ordering::Relaxed);
                    out.fell_back = true;
                }
            }
            OnStoreError::Deny => {
                self.fallback[1].fetch_add(1, Ordering::Relaxed);
                out.refusal = Some(Refusal {
                    class: ErrorClass::ConnLimited,
                    zone: z.name.clone(),
                    status: z.status,
                    retry_after_secs: None,
                    store_error: true,
                });
            }
        }
    }

    /// Counters as (metric, zone or kind, outcome, value), for tests and custom exporters.
    pub fn counters(&self) -> Vec<(&'static str, Arc<str>, &'static str, u64)> {
        let mut v = Vec::new();
        for z in &self.req {
            for (i, o) in Counters::REQ.iter().enumerate() {
                v.push((
                    "weir_limit_req_total",
                    z.name.clone(),
                    *o,
                    z.counters.get(i),
                ));
            }
        }
        for z in &self.conn {
            for (i, o) in Counters::CONN.iter().enumerate() {
                v.push((
                    "weir_limit_conn_total",
                    z.name.clone(),
                    *o,
                    z.counters.get(i),
                ));
            }
        }
        v
    }

    /// Appends the limits' metrics in Prometheus text format:
    /// `weir_limit_req_total{zone,outcome}` (the zone that decided the request's outcome:
    /// admitted, delayed, refused, dry_run_delayed, dry_run_refused, store_error),
    /// `weir_limit_conn_total{zone,outcome}` (admitted, refused, dry_run_refused,
    /// store_error), `weir_limit_req_keys{zone}` (memory store),
    /// and with Redis `weir_limits_store_up`, `weir_limits_store_errors_total{kind}`,
    /// `weir_limits_store_outages_total`, `weir_limits_store_fallback_total{verdict}`,
    /// `weir_limits_store_calls_total` and `weir_limits_store_checks_total` (batching).
    pub fn render_metrics(&self, out: &mut String) {
        if self.is_empty() {
            return;
        }
        if !self.req.is_empty() {
            out.push_str("# HELP weir_limit_req_total Requests by the limit_req zone that decided their outcome.\n# TYPE weir_limit_req_total counter\n");
            for z in &self.req {
                for (i, o) in Counters::REQ.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "weir_limit_req_total{{zone=\"{}\",outcome=\"{o}\"}} {}",
                        z.name,
                        z.counters.get(i)
                    );
                }
            }
            if matches!(self.store, Store::Memory) {
                out.push_str("# HELP weir_limit_req_keys Keys remembered by a limit_req zone (memory store).\n# TYPE weir_limit_req_keys gauge\n");
                for z in &self.req {
                    let _ = writeln!(
                        out,
                        "weir_limit_req_keys{{zone=\"{}\"}} {}",
                        z.name,
                        z.memory.len()
                    );
                }
            }
        }
        if !self.conn.is_empty() {
            out.push_str("# HELP weir_limit_conn_total Requests checked by a limit_conn zone, by outcome.\n# TYPE weir_limit_conn_total counter\n");
            for z in &self.conn {
                for (i, o) in Counters::CONN.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "weir_limit_conn_total{{zone=\"{}\",outcome=\"{o}\"}} {}",
                        z.name,
                        z.counters.get(i)
                    );
                }
            }
        }
        if matches!(self.store, Store::Redis(_)) {
            let h = &self.health;
            let _ = writeln!(out, "# HELP weir_limits_store_up Whether the last check reached Redis.\n# TYPE weir_limits_store_up gauge\nweir_limits_store_up {}", u8::from(!h.is_down()));
            out.push_str("# HELP weir_limits_store_errors_total Checks Redis did not answer, by kind.\n# TYPE weir_limits_store_errors_total counter\n");
            for (k, n) in h.errors() {
                let _ = writeln!(out, "weir_limits_store_errors_total{{kind=\"{k}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP weir_limits_store_outages_total Runs of Redis failures.\n# TYPE weir_limits_store_outages_total counter\nweir_limits_store_outages_total {}", h.outages());
            if let Store::Redis(r) = &self.store {
                let (calls, checks) = r.sent.get();
                let _ = writeln!(out, "# HELP weir_limits_store_calls_total Script calls sent for limit_req checks (batches).\n# TYPE weir_limits_store_calls_total counter\nweir_limits_store_calls_total {calls}");
                let _ = writeln!(out, "# HELP weir_limits_store_checks_total limit_req checks sent to Redis; over weir_limits_store_calls_total, the batch size.\n# TYPE weir_limits_store_checks_total counter\nweir_limits_store_checks_total {checks}");
            }
            out.push_str("# HELP weir_limits_store_fallback_total Requests given on_store_error's verdict.\n# TYPE weir_limits_store_fallback_total counter\n");
            for (i, v) in ["allow", "deny"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_limits_store_fallback_total{{verdict=\"{v}\"}} {}",
                    self.fallback[i].load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;

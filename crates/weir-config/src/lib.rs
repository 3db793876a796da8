//! `weir.toml`: one serde tree, units that read the way NGINX and uWSGI users write them,
//! and validation that names the key and the reason.
//!
//! # Layout
//! - [`units`]: [`Duration`](units::Seconds)-like values ("250ms", "30s", a bare number of
//!   seconds as uWSGI's `harakiri = 30`), sizes ("16KiB", "16k", "200M"), listen addresses
//!   (`HOST:PORT` or `unix:PATH`).
//! - [`template`]: NGINX-style key templates (`"$remote_addr:$uri"`), parsed once for
//!   validation here and evaluation in weir-limits.
//! - [`static_files`]: `[[static]]`, directories the front door serves itself.
//! - this file: the sections (`[server]`, `[app]`, `[queue]`, `[limit_req.NAME]`,
//!   `[limit_conn.NAME]`, `[limits]`, `[cache]`), [`Config::load`], [`Config::validate`].
//! - [`error_map`]: `[[error_map]]` and `[errors]` (app exceptions to statuses).
//! - [`tls`]: `[tls]` and `[[tls.sni]]`, the TLS listeners' certificates.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: a missing key takes its
//! default, an unknown one is an error that names it (the shape of pingora's
//! `ServerConf`). The binary merges command-line flags over the file, then calls
//! [`Config::validate`]; a [`ConfigError`] maps to exit status 2.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compression;
pub mod error_map;
pub mod static_files;
pub mod template;
pub mod tls;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use compression::{Algorithm, CompressionConfig};
pub use error_map::{ErrorMapEntry, ErrorsConfig, MappedError};
pub use static_files::StaticConfig;
pub use template::{parse_template, Segment, Var};
pub use tls::{SniConfig, TlsConfig};
pub use units::{ListenAddr, Rate, Seconds, Size};

/// A configuration that cannot be used. Its message names the key and says what to do.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// The key, as `section.key` (e.g. `app.workers`).
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole `weir.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and the whole-request settings.
    pub server: ServerConfig,
    /// The TLS listeners' certificates (`[tls]`, [`tls`]).
    pub tls: TlsConfig,
    /// The managed WSGI app and its worker pool.
    pub app: AppConfig,
    /// An external app server instead of `[app]` (uWSGI over uwsgi, Gunicorn over HTTP).
    pub upstream: Option<UpstreamConfig>,
    /// The dispatch queue in front of the workers.
    pub queue: QueueConfig,
    /// Per path-prefix overrides (`[[route]]`).
    pub route: Vec<RouteConfig>,
    /// The admin listener (`/metrics`, `/livez`, `/readyz`).
    pub admin: AdminConfig,
    /// Request-rate zones (`[limit_req.NAME]`, NGINX's `limit_req_zone`), by name.
    pub limit_req: BTreeMap<String, LimitReqConfig>,
    /// Concurrent-request zones (`[limit_conn.NAME]`, NGINX's `limit_conn_zone`), by name.
    pub limit_conn: BTreeMap<String, LimitConnConfig>,
    /// Where the zones keep their state (`[limits]`).
    pub limits: LimitsConfig,
    /// The response cache's storage (`[cache]`); absent: nothing is cached. Which routes
    /// are cached, and how, is each route's `[route.cache]`.
    pub cache: Option<CacheConfig>,
    /// Response compression (`[compression]`, NGINX's `gzip`); absent: nothing is
    /// compressed.
    pub compression: Option<CompressionConfig>,
    /// Directories the front door serves itself (`[[static]]`, [`static_files`]).
    #[serde(rename = "static")]
    pub statics: Vec<StaticConfig>,
    /// App exceptions answered with a chosen status and class (`[[error_map]]`, see
    /// [`error_map`]).
    pub error_map: Vec<ErrorMapEntry>,
    /// `[errors]`: the error map's presets (`mysql`).
    pub errors: ErrorsConfig,
}

/// The status a limit answers with unless its zone says otherwise (NGINX's is 503).
pub const DEFAULT_LIMIT_STATUS: u16 = 429;

/// `[limit_req.NAME]`: a leaky bucket per key, as NGINX's `limit_req_zone` with the
/// `limit_req` parameters (`burst`, `nodelay`, `delay`) and `limit_req_status`,
/// `limit_req_dry_run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitReqConfig {
    /// The key template (`"$remote_addr"`); an empty value is not limited.
    pub key: String,
    /// `"10r/s"` or `"600r/m"` ([`LimitReqConfig::parsed_rate`]).
    pub rate: String,
    /// Requests beyond the rate that are still accepted (delayed, or at once with
    /// `nodelay`).
    pub burst: u64,
    /// Serve the burst at once instead of pacing it.
    pub nodelay: bool,
    /// NGINX's two-stage limiting: the first `delay` excess requests at once, the rest of
    /// the burst delayed.
    pub delay: Option<u64>,
    /// The status of a refused request.
    pub status: u16,
    /// Count and log what would be refused or delayed, but admit everything.
    pub dry_run: bool,
    /// Most keys remembered; the least recently used go first (the zone's size).
    pub max_keys: usize,
}

impl Default for LimitReqConfig {
    fn default() -> Self {
        LimitReqConfig {
            key: String::new(),
            rate: String::new(),
            burst: 0,
            nodelay: false,
            delay: None,
            status: DEFAULT_LIMIT_STATUS,
            dry_run: false,
            max_keys: 100_000,
        }
    }
}

impl LimitReqConfig {
    /// The rate, parsed (an error only before [`Config::validate`] passed).
    pub fn parsed_rate(&self) -> Result<Rate, String> {
        units::parse_rate(&self.rate)
    }
}

/// `[limit_conn.NAME]`: requests in progress per key, as NGINX's `limit_conn_zone` and
/// `limit_conn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConnConfig {
    /// The key template; an empty value is not limited.
    pub key: String,
    /// Most requests in progress per key.
    pub max: u64,
    /// The status of a refused request.
    pub status: u16,
    /// Count and log what would be refused, but admit everything.
    pub dry_run: bool,
}

impl Default for LimitConnConfig {
    fn default() -> Self {
        LimitConnConfig {
            key: String::new(),
            max: 0,
            status: DEFAULT_LIMIT_STATUS,
            dry_run: false,
        }
    }
}

/// `[limits] on_store_error`: what a request gets while the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Admit it (availability first).
    #[default]
    Allow,
    /// Refuse it as its zone would (protection first).
    Deny,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `"memory"` (this instance only) or a Redis URL (zones shared by every instance).
    pub store: String,
    /// What a request gets while Redis does not answer.
    pub on_store_error: OnStoreError,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            store: "memory".into(),
            on_store_error: OnStoreError::Allow,
        }
    }
}

impl LimitsConfig {
    /// The Redis URL, or `None` for the memory store.
    pub fn redis_url(&self) -> Option<&str> {
        (self.store != "memory").then_some(self.store.as_str())
    }
}

/// `[[route]]`: overrides for requests whose path starts with `path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix ("/reports"); the longest matching prefix wins.
    pub path: String,
    /// At most this many workers busy on this route at once; the rest wait in the queue.
    pub max_concurrency: Option<usize>,
    /// Deadline for the whole request on this route (overrides `server.request_timeout`).
    pub request_timeout: Option<Seconds>,
    /// Harakiri on this route (overrides `app.harakiri`).
    pub harakiri: Option<Seconds>,
    /// `[limit_req.NAME]` zones that apply (all must admit).
    pub limit_req: Vec<String>,
    /// `[limit_conn.NAME]` zones that apply.
    pub limit_conn: Vec<String>,
    /// Bytes per second to the client for each response (NGINX's `limit_rate`; 0: none).
    pub limit_rate: Option<Size>,
    /// The first bytes of each response at full speed (NGINX's `limit_rate_after`).
    pub limit_rate_after: Option<Size>,
    /// Cache this route's responses (`[route.cache]`; needs a `[cache]` section).
    pub cache: Option<RouteCacheConfig>,
    /// Buffer the answers (the default, `true`): read ahead of the client into memory and
    /// a temp file so the worker is freed. `false`: streamed answers (server-sent events,
    /// downloads that must start at once) go through as the app yields them, the worker
    /// held until the client takes them (NGINX's `proxy_buffering off`).
    pub buffering: Option<bool>,
}

/// `[cache]`: where cached responses are kept, as NGINX's `uwsgi_cache_path` (`keys_zone`,
/// `max_size`). A memory tier always; a disk tier and a shared Redis tier when set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes the in-memory tier holds at most (the least recently used go first).
    pub memory: Size,
    /// A directory for a second tier that survives restarts (absolute). Unset: no disk
    /// tier.
    pub disk: Option<PathBuf>,
    /// Bytes the disk tier holds at most (NGINX's `max_size`); only with `disk`
    /// ([`CacheConfig::disk_max_bytes`]).
    pub disk_max_size: Option<Size>,
    /// A Redis URL for a tier shared by several weir instances (as `[limits] store`).
    /// Unset: no shared tier.
    pub store: Option<String>,
}

impl CacheConfig {
    /// `memory` when unset.
    pub const DEFAULT_MEMORY: Size = Size::from_bytes(256 << 20);
    /// `disk_max_size` when `disk` is set and it is not.
    pub const DEFAULT_DISK_MAX_SIZE: Size = Size::from_bytes(10 << 30);
    /// The least `memory` (and `disk_max_size`) accepted.
    pub const MIN_MEMORY: Size = Size::from_bytes(1 << 20);

    /// The disk tier's bound in bytes: `disk_max_size`, or 10 GiB when unset (meaningful
    /// only when `disk` is set).
    pub fn disk_max_bytes(&self) -> u64 {
        self.disk_max_size
            .unwrap_or(Self::DEFAULT_DISK_MAX_SIZE)
            .bytes()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: Self::DEFAULT_MEMORY,
            disk: None,
            disk_max_size: None,
            store: None,
        }
    }
}

/// `[route.cache]`: how a route's responses are cached, as NGINX's `uwsgi_cache_*`
/// directives in its `location`. Only GET and HEAD are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// How long a response is fresh by its status (`"200"`, or `"any"` for every status
    /// not listed), used when the response carries no freshness of its own
    /// (`uwsgi_cache_valid`); 0: not stored. A status not listed, with no `"any"`, is not
    /// stored unless the response gives its own freshness. See
    /// [`RouteCacheConfig::valid_for`].
    pub valid: BTreeMap<String, Seconds>,
    /// The key template an entry is stored under (`uwsgi_cache_key`); the variables of
    /// the `[limit_req]` keys.
    pub key: String,
    /// Store a response only once its key has been requested this many times
    /// (`uwsgi_cache_min_uses`).
    pub min_uses: u64,
    /// One request fills a missing entry; the others for its key wait for it
    /// (`uwsgi_cache_lock`).
    pub lock: bool,
    /// How long the others wait; then they go to the app themselves, and their answers
    /// are not stored (`uwsgi_cache_lock_timeout`).
    pub lock_timeout: Seconds,
    /// When an expired entry may be served instead (`uwsgi_cache_use_stale`); empty: never.
    pub use_stale: Vec<UseStale>,
    /// An expired entry is served stale while one background request refreshes it
    /// (`uwsgi_cache_background_update`; with [`UseStale::Updating`]).
    pub background_update: bool,
    /// Key templates; when any is non-empty and not `"0"` the request goes to the app (its
    /// answer may still be stored) (`uwsgi_cache_bypass`).
    pub bypass: Vec<String>,
    /// Key templates; when any is non-empty and not `"0"` the answer is not stored
    /// (`uwsgi_no_cache`).
    pub no_cache: Vec<String>,
    /// Refresh an expired entry with a conditional request (`If-None-Match`,
    /// `If-Modified-Since`) (`uwsgi_cache_revalidate`).
    pub revalidate: bool,
}

impl RouteCacheConfig {
    /// `key` when unset (NGINX's `proxy_cache_key` default, `$scheme$proxy_host$request_uri`,
    /// with the request's host).
    pub const DEFAULT_KEY: &'static str = "$scheme$host$request_uri";

    /// How long a response of `status` is fresh when it gives no freshness of its own:
    /// its own code's entry in `valid`, else `"any"`'s, else `None` (not stored). A zero
    /// duration means: not stored.
    pub fn valid_for(&self, status: u16) -> Option<Duration> {
        self.valid
            .get(status.to_string().as_str())
            .or_else(|| self.valid.get("any"))
            .map(|s| s.as_duration())
    }
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            valid: BTreeMap::new(),
            key: Self::DEFAULT_KEY.to_owned(),
            min_uses: 1,
            lock: false,
            lock_timeout: Seconds::from_secs(5),
            use_stale: Vec::new(),
            background_update: false,
            bypass: Vec::new(),
            no_cache: Vec::new(),
            revalidate: false,
        }
    }
}

/// `[route.cache] use_stale`: when an expired entry may be served, as NGINX's
/// `uwsgi_cache_use_stale` (whose `off` is an empty list here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UseStale {
    /// `"error"`: the app or upstream could not be reached or failed the request.
    Error,
    /// `"timeout"`: the app or upstream timed out.
    Timeout,
    /// `"invalid_header"`: the app's response head was invalid.
    InvalidHeader,
    /// `"updating"`: the entry is being refreshed by another request.
    Updating,
    /// `"http_500"`: the app answered 500.
    Http500,
    /// `"http_502"`: the app answered 502.
    Http502,
    /// `"http_503"`: the app answered 503.
    Http503,
    /// `"http_504"`: the app answered 504.
    Http504,
    /// `"http_403"`: the app answered 403.
    Http403,
    /// `"http_404"`: the app answered 404.
    Http404,
    /// `"http_429"`: the app answered 429.
    Http429,
}

impl UseStale {
    /// Every value, in the order of [`UseStale::ACCEPTED`].
    pub const ALL: [UseStale; 11] = [
        UseStale::Error,
        UseStale::Timeout,
        UseStale::InvalidHeader,
        UseStale::Updating,
        UseStale::Http500,
        UseStale::Http502,
        UseStale::Http503,
        UseStale::Http504,
        UseStale::Http403,
        UseStale::Http404,
        UseStale::Http429,
    ];

    /// The accepted values, for messages.
    pub const ACCEPTED: &'static str = "\"error\", \"timeout\", \"invalid_header\", \"updating\", \"http_500\", \"http_502\", \"http_503\", \"http_504\", \"http_403\", \"http_404\", \"http_429\"";

    /// As written in weir.toml (`"http_500"`).
    pub fn as_str(self) -> &'static str {
        match self {
            UseStale::Error => "error",
            UseStale::Timeout => "timeout",
            UseStale::InvalidHeader => "invalid_header",
            UseStale::Updating => "updating",
            UseStale::Http500 => "http_500",
            UseStale::Http502 => "http_502",
            UseStale::Http503 => "http_503",
            UseStale::Http504 => "http_504",
            UseStale::Http403 => "http_403",
            UseStale::Http404 => "http_404",
            UseStale::Http429 => "http_429",
        }
    }

    /// The app's status this value is about (`http_500`: 500); `None` for the others.
    pub fn status(self) -> Option<u16> {
        Some(match self {
            UseStale::Http500 => 500,
            UseStale::Http502 => 502,
            UseStale::Http503 => 503,
            UseStale::Http504 => 504,
            UseStale::Http403 => 403,
            UseStale::Http404 => 404,
            UseStale::Http429 => 429,
            UseStale::Error | UseStale::Timeout | UseStale::InvalidHeader | UseStale::Updating => {
                return None
            }
        })
    }
}

impl std::fmt::Display for UseStale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UseStale {
    type Err = String;

    /// A value as written in weir.toml; the message names the key and the accepted values.
    fn from_str(s: &str) -> Result<UseStale, String> {
        UseStale::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let hint = if s == "off" {
                    " (for none, leave the list empty: use_stale = [])"
                } else {
                    ""
                };
                format!(
                    "invalid value {s:?} in route.cache.use_stale: use {}{hint}",
                    UseStale::ACCEPTED
                )
            })
    }
}

impl<'de> Deserialize<'de> for UseStale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UseStale, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How weir talks to an external upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// The uwsgi binary protocol (uWSGI's `socket`), as NGINX's `uwsgi_pass`.
    #[default]
    Uwsgi,
    /// HTTP/1.1 (Gunicorn, Granian, any HTTP app server), as NGINX's `proxy_pass`.
    Http,
}

/// `[upstream]`: an external app server (instead of `[app]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Servers, `HOST:PORT` or `unix:PATH`.
    pub servers: Vec<ListenAddr>,
    /// "uwsgi" or "http".
    pub protocol: UpstreamProtocol,
    /// Most requests in flight to one server (NGINX's `max_conns`); the rest wait in the
    /// queue (`[queue]`, NGINX Plus's `queue`).
    pub max_conns: usize,
    /// Connecting longer than this: try the next server, else 502 `upstream-connect`.
    pub connect_timeout: Seconds,
    /// Longest pause while sending the request (NGINX's `uwsgi_send_timeout`).
    pub send_timeout: Seconds,
    /// Longest pause while reading the response (NGINX's `uwsgi_read_timeout`); then
    /// 504 `upstream-timeout`.
    pub read_timeout: Seconds,
    /// Try another server when one cannot be reached (only for idempotent requests, and
    /// only before any of the request was sent).
    pub next_upstream: bool,
    /// Failures within `fail_timeout` that mark a server down (NGINX's `max_fails`).
    pub max_fails: u32,
    /// How long a server stays down, and the window for counting failures.
    pub fail_timeout: Seconds,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            protocol: UpstreamProtocol::Uwsgi,
            max_conns: 16,
            connect_timeout: Seconds::from_secs(1),
            send_timeout: Seconds::from_secs(30),
            read_timeout: Seconds::from_secs(60),
            next_upstream: true,
            max_fails: 1,
            fail_timeout: Seconds::from_secs(10),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin endpoints listen. Off when unset; give it a loopback address or a
    /// Unix socket: it is never served on the public listeners.
    pub listen: Option<ListenAddr>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP/1.1 listeners (`HOST:PORT` or `unix:PATH`). Default `127.0.0.1:8000` when no
    /// listener of any kind is configured.
    pub listen: Vec<ListenAddr>,
    /// uwsgi-protocol listeners, for a real NGINX's `uwsgi_pass` (the uWSGI `socket` option).
    pub uwsgi_listen: Vec<ListenAddr>,
    /// TLS listeners (NGINX's `listen ... ssl`): HTTP/2 and HTTP/1.1, chosen by ALPN, with
    /// the certificates of `[tls]`.
    pub tls_listen: Vec<ListenAddr>,
    /// HTTP/2 without TLS on the `listen` addresses, for a client that knows the server
    /// speaks it (h2c with prior knowledge, as a balancer to its backends); HTTP/1.1 is
    /// still served there. NGINX's `listen ... http2` without `ssl`.
    pub h2c: bool,
    /// Most HTTP/2 streams (requests) open at once on one connection (NGINX's
    /// `http2_max_concurrent_streams`); more are refused by the protocol (REFUSED_STREAM).
    pub http2_max_concurrent_streams: u32,
    /// listen(2) backlog for every listener (NGINX's `listen ... backlog=`).
    pub backlog: u32,
    /// Threads of the master's event loop (default 2). With prefetch the workers go on to
    /// their next request as soon as the master has read new ones from the clients, so the
    /// master's promptness, not its cost, sets the pace: two threads cost the same CPU per
    /// request as one (bench/RESULTS.md) and keep the workers fed on a busy machine. 1 runs
    /// everything on one thread.
    pub threads: usize,
    /// How long a binary upgrade (SIGUSR2) waits for the new master's workers to be ready
    /// before it stops the new master and keeps serving (docs/deploy.md).
    pub upgrade_timeout: Seconds,
    /// Deadline for a whole request, from its arrival. Its remaining budget reaches the
    /// app as `environ["weir.deadline"]`; a request past it is not started (504
    /// `deadline`). Unset: no deadline.
    pub request_timeout: Option<Seconds>,
    /// Largest request head (request line and headers); larger: 431 (NGINX's
    /// `large_client_header_buffers`).
    pub max_header_size: Size,
    /// Largest request body; larger: 413 (NGINX's `client_max_body_size`).
    pub max_body_size: Size,
    /// How long a client may take to send its request head (NGINX's
    /// `client_header_timeout`): slow clients cannot hold connections (slowloris).
    pub client_header_timeout: Seconds,
    /// How long a kept-alive connection may wait for its next request to begin (NGINX's
    /// `keepalive_timeout`); the head then has `client_header_timeout`. On HTTP/2, how
    /// long a connection may have no open stream. 0: HTTP/1 answers say
    /// `Connection: close`, and an idle HTTP/2 connection is closed after
    /// `client_header_timeout`.
    pub keepalive_timeout: Seconds,
    /// How long a client may take to send a buffered request body
    /// (`client_body_timeout`); then 408.
    pub client_body_timeout: Seconds,
    /// Peers whose X-Forwarded-For, X-Forwarded-Proto and X-Request-ID are believed
    /// (addresses or CIDR ranges, as NGINX's `set_real_ip_from`).
    pub trusted_proxies: Vec<String>,
    /// Access log: "stdout", "stderr", "off", or a file path. One JSON line per request.
    pub access_log: String,
    /// Lines gathered in memory before they are written, in one call (NGINX's
    /// `access_log ... buffer=`). 0: every line written at once.
    pub access_log_buffer: Size,
    /// With `access_log_buffer`: the longest a line waits in it (NGINX's `flush=`).
    pub access_log_flush: Seconds,
    /// Memory a response may be buffered in (NGINX's `proxy_buffers`, counted in bytes):
    /// past it, the rest of a streamed answer spills to a temp file.
    pub response_buffer: Size,
    /// Memory every response together may be buffered in; past it, answers spill.
    pub response_buffers_total: Size,
    /// Where the temp files of spilled answers are made (unlinked at once). Unset: the
    /// system's temp directory (`TMPDIR`, else /tmp).
    pub temp_path: Option<PathBuf>,
    /// Bytes one response may have on disk (NGINX's `proxy_max_temp_file_size`); past
    /// memory and this, the worker is read only as fast as the client takes it. 0: no temp
    /// files.
    pub max_temp_file_size: Size,
    /// A client that takes no byte of its answer for this long is dropped (NGINX's
    /// `send_timeout`), logged `client-timeout`.
    pub send_timeout: Seconds,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Vec::new(),
            uwsgi_listen: Vec::new(),
            tls_listen: Vec::new(),
            h2c: false,
            http2_max_concurrent_streams: 100,
            backlog: 1024,
            threads: 2,
            upgrade_timeout: Seconds::from_secs(60),
            request_timeout: None,
            max_header_size: Size::from_bytes(32 * 1024),
            max_body_size: Size::from_bytes(10 << 20),
            client_header_timeout: Seconds::from_secs(10),
            keepalive_timeout: Seconds::from_secs(75),
            client_body_timeout: Seconds::from_secs(30),
            trusted_proxies: Vec::new(),
            access_log: "stdout".to_owned(),
            access_log_buffer: Size::from_bytes(0),
            access_log_flush: Seconds::from_secs(1),
            response_buffer: Size::from_bytes(256 << 10),
            response_buffers_total: Size::from_bytes(64 << 20),
            temp_path: None,
            max_temp_file_size: Size::from_bytes(1 << 30),
            send_timeout: Seconds::from_secs(60),
        }
    }
}

/// `[app]`: the WSGI app weir runs on its own workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// `MODULE:CALLABLE` (uWSGI's `module`); CALLABLE defaults to `application`.
    pub module: Option<String>,
    /// Directory to change into and import from (uWSGI's `chdir`).
    pub chdir: Option<PathBuf>,
    /// A virtualenv whose site-packages hold the app's dependencies (uWSGI's `virtualenv`).
    pub virtualenv: Option<PathBuf>,
    /// Number of worker processes (uWSGI's `processes`).
    pub workers: usize,
    /// A request running longer than this is ended by killing its worker; the client gets
    /// 504 `harakiri`. Unset: no limit.
    pub harakiri: Option<Seconds>,
    /// Recycle a worker after this many requests (0: never).
    pub max_requests: u64,
    /// Add up to this many requests, at random per worker, to `max_requests`, so workers
    /// do not all recycle at once (Gunicorn's `max_requests_jitter`).
    pub max_requests_jitter: u64,
    /// Recycle a worker, between requests, once its resident memory is over this.
    pub reload_on_rss: Option<Size>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT/SIGQUIT and SIGHUP.
    pub graceful_timeout: Seconds,
    /// How long a new worker may take to import the app and say it is ready.
    pub startup_timeout: Seconds,
    /// `module:function` run in a worker for `/readyz` (e.g. a database ping).
    pub ready_check: Option<String>,
    /// Import the app once in a zygote process and fork the workers from it (Gunicorn's
    /// `--preload`; uWSGI's default, which `--lazy-apps` turns off). Workers share the
    /// imported app's memory copy-on-write and a respawn is a fork; whatever the import
    /// opened (connections, threads, random state) is shared or lost across the fork.
    /// [`Preload::Auto`] (the default) forks only when the import left no sockets, no
    /// files open for writing at an offset and no threads behind.
    pub preload: Preload,
    /// When every worker is busy, write the next waiting request behind a busy worker's
    /// current one, so the worker goes on without sleeping; the master takes it back and
    /// serves it elsewhere when another worker frees first while that one is on a slow
    /// request, or when that worker dies. `false`: requests go only to idle workers.
    pub prefetch: bool,
}

/// `[app] preload`: `true`, `false` or `"auto"`; the flag `--preload [on|off|auto]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preload {
    /// Fork from the zygote when the import left no open sockets, no files open for
    /// writing at an offset (an SQLite database) and no threads, and the system can fork
    /// them; otherwise every worker of that generation imports the app itself (with a
    /// warning).
    #[default]
    Auto,
    /// Always fork (findings are only warned about).
    On,
    /// Never: every worker imports the app itself.
    Off,
}

impl Preload {
    /// The accepted values, for messages.
    pub const ACCEPTED: &'static str = "true, false or \"auto\"";

    /// As written in weir.toml.
    pub fn as_toml(self) -> &'static str {
        match self {
            Preload::Auto => "\"auto\"",
            Preload::On => "true",
            Preload::Off => "false",
        }
    }
}

impl std::str::FromStr for Preload {
    type Err = String;

    /// The flag's values: `auto`, `on`, `off` (also `true`/`false`).
    fn from_str(s: &str) -> Result<Preload, String> {
        match s {
            "auto" => Ok(Preload::Auto),
            "on" | "true" => Ok(Preload::On),
            "off" | "false" => Ok(Preload::Off),
            _ => Err(format!("{s:?} is not a preload mode; use auto, on or off")),
        }
    }
}

impl<'de> Deserialize<'de> for Preload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Preload, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Preload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "app.preload = {}", Preload::ACCEPTED)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Preload, E> {
                Ok(if v { Preload::On } else { Preload::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Preload, E> {
                match v {
                    "auto" => Ok(Preload::Auto),
                    _ => Err(E::custom(format!(
                        "invalid value {v:?} for app.preload: use {}",
                        Preload::ACCEPTED
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            module: None,
            chdir: None,
            virtualenv: None,
            workers: 2,
            harakiri: None,
            max_requests: 0,
            max_requests_jitter: 0,
            reload_on_rss: None,
            graceful_timeout: Seconds::from_secs(30),
            startup_timeout: Seconds::from_secs(60),
            ready_check: None,
            preload: Preload::Auto,
            prefetch: true,
        }
    }
}

/// `[queue]`: requests waiting for an idle worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Most requests waiting at once; the next one gets 503 `queue-full` at once.
    /// Default: 64 per worker, so a burst far above capacity is answered fast instead of
    /// piling up in a kernel queue.
    pub max_size: Option<usize>,
    /// Longest wait for a worker; then 503 `queue-timeout`.
    pub timeout: Seconds,
    /// Retry-After (seconds) sent with queue rejections.
    pub retry_after: u64,
    /// CoDel-style shedding: when the queue's delay has stayed above `target` for
    /// `interval`, requests that waited longer than `target` are refused (503
    /// `queue-timeout`) and the newest are served first (`lifo`), so admitted requests
    /// stay fast under overload.
    pub codel: bool,
    /// The delay target, fixed for every route (admission's, and CoDel's shedding
    /// target); absent: admission's is `target_factor` times the mean time a request of
    /// the same route holds a worker, at least `min_target` (each route judged by its
    /// own), and CoDel's 4 times the mean over every route, at least 500ms.
    pub target: Option<Seconds>,
    /// The automatic delay target's multiple of a route's mean service time.
    pub target_factor: u32,
    /// The automatic delay target's floor.
    pub min_target: Seconds,
    /// Admission at arrival: a request whose expected wait (the work ahead of it over
    /// the workers) is beyond its budget (its route's target, the timeout, its deadline)
    /// is refused at once, 503 `queue-full`.
    pub admission: bool,
    /// While new demand outruns the workers (more arrives than they finish, retries of
    /// refused requests not counted), admission holds each arrival to its route's mean
    /// service time (at least 1 ms) instead of the delay target: a short queue, fast
    /// 503s for the excess. On by default (docs/config.md).
    pub rate_overload: bool,
    /// How long the queue's delay must stay above the target before requests are shed.
    pub interval: Seconds,
    /// While overloaded, serve the newest request first (adaptive LIFO): the
    /// oldest are the likeliest to be given up on by their clients.
    pub lifo: bool,
    /// Fair queueing: a key template (`"$remote_addr"`); waiting requests are served
    /// round-robin across its values. Off when unset.
    pub fair_key: Option<String>,
    /// With `fair_key`: most requests of one key waiting at once.
    pub per_key_max: Option<usize>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_size: None,
            timeout: Seconds::from_secs(10),
            retry_after: 1,
            codel: true,
            target: None,
            target_factor: 2,
            min_target: Seconds::from_duration(std::time::Duration::from_millis(50)),
            admission: true,
            rate_overload: true,
            interval: Seconds::from_secs(1),
            lifo: true,
            fair_key: None,
            per_key_max: None,
        }
    }
}

impl QueueConfig {
    /// The effective queue bound for `workers` workers (or upstream connections).
    pub fn effective_max_size(&self, workers: usize) -> usize {
        self.max_size.unwrap_or(64 * workers.max(1))
    }
}

impl Config {
    /// Reads and parses a file (no validation: flags are merged first).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })
    }

    /// Fills defaults that depend on other keys (the default listener).
    pub fn apply_defaults(&mut self) {
        if self.server.listen.is_empty()
            && self.server.uwsgi_listen.is_empty()
            && self.server.tls_listen.is_empty()
        {
            self.server
                .listen
                .push(ListenAddr::Tcp("127.0.0.1:8000".into()));
        }
    }

    /// Checks ranges and cross-key rules. The first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let app = &self.app;
        match (&app.module, &self.upstream) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    "app.module",
                    "no WSGI app given: pass --app MODULE:CALLABLE or set [app] module (or [upstream] servers for an external app server)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "upstream",
                    "[upstream] and [app] module are both set: weir either runs the app itself or fronts an external server; remove one",
                ))
            }
            (Some(m), None) => validate_app_spec(m)?,
            (None, Some(u)) => {
                if u.servers.is_empty() {
                    return Err(ConfigError::invalid("upstream.servers", "list at least one server (HOST:PORT or unix:PATH)"));
                }
                if u.max_conns == 0 {
                    return Err(ConfigError::invalid("upstream.max_conns", "must be at least 1: the queue in front of it handles the excess"));
                }
                for (k, v) in [("upstream.connect_timeout", u.connect_timeout), ("upstream.send_timeout", u.send_timeout), ("upstream.read_timeout", u.read_timeout), ("upstream.fail_timeout", u.fail_timeout)] {
                    if v.is_zero() {
                        return Err(ConfigError::invalid(k, "must be more than 0"));
                    }
                }
                if u.max_fails == 0 {
                    return Err(ConfigError::invalid("upstream.max_fails", "must be at least 1"));
                }
            }
        }
        if app.workers == 0 || app.workers > 1024 {
            return Err(ConfigError::invalid(
                "app.workers",
                format!("{} is out of range: use 1 to 1024", app.workers),
            ));
        }
        if let Some(h) = app.harakiri {
            if h.is_zero() {
                return Err(ConfigError::invalid(
                    "app.harakiri",
                    "must be more than 0 (leave it unset for no limit)",
                ));
            }
        }
        if let Some(dir) = &app.chdir {
            if !dir.is_dir() {
                return Err(ConfigError::invalid(
                    "app.chdir",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(dir) = &app.virtualenv {
            if !dir.join("lib").is_dir() {
                return Err(ConfigError::invalid(
                    "app.virtualenv",
                    format!("{} has no lib/ folder: is it a virtualenv?", dir.display()),
                ));
            }
        }
        if let Some(check) = &app.ready_check {
            if !check.contains(':') {
                return Err(ConfigError::invalid(
                    "app.ready_check",
                    format!("{check:?} is not module:function"),
                ));
            }
        }
        if app.startup_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "app.startup_timeout",
                "must be more than 0",
            ));
        }
        if self.server.threads == 0 || self.server.threads > 64 {
            return Err(ConfigError::invalid(
                "server.threads",
                format!("{} is out of range: use 1 to 64", self.server.threads),
            ));
        }
        if self.server.backlog == 0 {
            return Err(ConfigError::invalid(
                "server.backlog",
                "must be more than 0",
            ));
        }
        if self.queue.max_size == Some(0) {
            return Err(ConfigError::invalid(
                "queue.max_size",
                "0 would refuse every request that finds no idle worker; use at least 1",
            ));
        }
        if self.queue.timeout.is_zero() {
            return Err(ConfigError::invalid("queue.timeout", "must be more than 0"));
        }
        if self.queue.interval.is_zero() {
            return Err(ConfigError::invalid(
                "queue.interval",
                "must be more than 0 (set queue.codel = false to turn shedding off)",
            ));
        }
        if self.queue.target_factor == 0 {
            return Err(ConfigError::invalid(
                "queue.target_factor",
                "must be at least 1 (the target is this many times a route's service time)",
            ));
        }
        if self.queue.min_target.is_zero() || self.queue.min_target >= self.queue.timeout {
            return Err(ConfigError::invalid(
                "queue.min_target",
                format!(
                    "must be more than 0 and shorter than queue.timeout ({}); it is {}",
                    self.queue.timeout, self.queue.min_target
                ),
            ));
        }
        if let Some(t) = self.queue.target {
            if t.is_zero() || t >= self.queue.timeout {
                return Err(ConfigError::invalid(
                    "queue.target",
                    format!(
                        "must be more than 0 and shorter than queue.timeout ({}); it is {t}",
                        self.queue.timeout
                    ),
                ));
            }
        }
        let srv = &self.server;
        if srv.max_header_size.bytes() < 1024 {
            return Err(ConfigError::invalid(
                "server.max_header_size",
                "must be at least 1KiB",
            ));
        }
        for p in &srv.trusted_proxies {
            units::parse_cidr(p).map_err(|e| ConfigError::invalid("server.trusted_proxies", e))?;
        }
        if srv.access_log_buffer.bytes() > 16 << 20 {
            return Err(ConfigError::invalid(
                "server.access_log_buffer",
                "must be at most 16MiB (64KiB is plenty: it is written whenever it fills)",
            ));
        }
        if srv.access_log_buffer.bytes() > 0 && srv.access_log_flush.is_zero() {
            return Err(ConfigError::invalid(
                "server.access_log_flush",
                "must be more than 0 with access_log_buffer: it bounds how late a line is written",
            ));
        }
        if srv.response_buffer.bytes() < 4096 {
            return Err(ConfigError::invalid(
                "server.response_buffer",
                "must be at least 4KiB",
            ));
        }
        if srv.response_buffers_total < srv.response_buffer {
            return Err(ConfigError::invalid(
                "server.response_buffers_total",
                format!(
                    "{} bytes is less than server.response_buffer ({} bytes)",
                    srv.response_buffers_total.bytes(),
                    srv.response_buffer.bytes()
                ),
            ));
        }
        if srv.send_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.send_timeout",
                "must be more than 0",
            ));
        }
        if srv.upgrade_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.upgrade_timeout",
                "must be more than 0",
            ));
        }
        if let Some(dir) = &srv.temp_path {
            if !dir.is_dir() {
                return Err(ConfigError::invalid(
                    "server.temp_path",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(t) = srv.request_timeout {
            if t.is_zero() {
                return Err(ConfigError::invalid(
                    "server.request_timeout",
                    "must be more than 0 (leave it unset for none)",
                ));
            }
        }
        check_chain(
            "app.harakiri",
            app.harakiri,
            "server.request_timeout",
            srv.request_timeout,
        )?;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.route.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if !r.path.starts_with('/') {
                return Err(ConfigError::invalid(
                    key("path"),
                    format!("{:?} must start with /", r.path),
                ));
            }
            if !seen.insert(r.path.as_str()) {
                return Err(ConfigError::invalid(
                    key("path"),
                    format!("{:?} appears twice", r.path),
                ));
            }
            if r.max_concurrency == Some(0) {
                return Err(ConfigError::invalid(
                    key("max_concurrency"),
                    "must be at least 1",
                ));
            }
            if let Some(m) = r.max_concurrency {
                if m > app.workers {
                    return Err(ConfigError::invalid(
                        key("max_concurrency"),
                        format!(
                            "{m} is more than app.workers ({}), so it would never limit anything",
                            app.workers
                        ),
                    ));
                }
            }
            let timeout = r.request_timeout.or(srv.request_timeout);
            let timeout_key = if r.request_timeout.is_some() {
                key("request_timeout")
            } else {
                "server.request_timeout".into()
            };
            let harakiri = r.harakiri.or(app.harakiri);
            let harakiri_key = if r.harakiri.is_some() {
                key("harakiri")
            } else {
                "app.harakiri".into()
            };
            check_chain(&harakiri_key, harakiri, &timeout_key, timeout)?;
        }
        self.validate_limits()?;
        self.validate_cache()?;
        if let Some(c) = &self.compression {
            c.validate()?;
        }
        static_files::validate(&self.statics)?;
        self.validate_error_map()?;
        self.tls.validate(!self.server.tls_listen.is_empty())?;
        let streams = self.server.http2_max_concurrent_streams;
        if streams == 0 || streams > 10_000 {
            return Err(ConfigError::invalid(
                "server.http2_max_concurrent_streams",
                format!("{streams} is out of range: use 1 to 10000 (NGINX's default is 128, weir's 100)"),
            ));
        }
        if self.server.h2c && self.server.listen.is_empty() {
            return Err(ConfigError::invalid(
                "server.h2c",
                "h2c is HTTP/2 on the plain `listen` addresses, and none is set: add one, or remove h2c (TLS listeners speak HTTP/2 anyway)",
            ));
        }
        if let Some(ListenAddr::Tcp(a)) = &self.admin.listen {
            if self
                .server
                .listen
                .iter()
                .chain(&self.server.uwsgi_listen)
                .chain(&self.server.tls_listen)
                .any(|l| l == self.admin.listen.as_ref().expect("matched Some"))
            {
                return Err(ConfigError::invalid(
                    "admin.listen",
                    format!(
                        "{a} is also a public listener; the admin endpoints must have their own"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `[limit_req.*]`, `[limit_conn.*]`, `[limits]`, the routes' zones and limit_rate,
    /// `[queue] fair_key`/`per_key_max`.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        const MAX: u64 = 1_000_000_000;
        for (name, z) in &self.limit_req {
            let key = |k: &str| format!("limit_req.{name}.{k}");
            check_zone_name(&format!("limit_req.{name}"), name)?;
            check_key_template(&key("key"), &z.key)?;
            z.parsed_rate()
                .map_err(|e| ConfigError::invalid(key("rate"), e))?;
            if z.burst > MAX {
                return Err(ConfigError::invalid(
                    key("burst"),
                    format!("{} is out of range: use 0 to {MAX}", z.burst),
                ));
            }
            if let Some(d) = z.delay {
                if z.nodelay {
                    return Err(ConfigError::invalid(
                        key("delay"),
                        "delay and nodelay together: nodelay serves the whole burst at once, delay = N only the first N; keep one",
                    ));
                }
                if d == 0 || d > MAX {
                    return Err(ConfigError::invalid(
                        key("delay"),
                        format!("{d} is out of range: use 1 to {MAX} (leave it out to delay all excess requests, or set nodelay = true to delay none)"),
                    ));
                }
            }
            check_status(&key("status"), z.status)?;
            if z.max_keys == 0 || z.max_keys > 100_000_000 {
                return Err(ConfigError::invalid(
                    key("max_keys"),
                    format!("{} is out of range: use 1 to 100000000", z.max_keys),
                ));
            }
        }
        for (name, z) in &self.limit_conn {
            let key = |k: &str| format!("limit_conn.{name}.{k}");
            check_zone_name(&format!("limit_conn.{name}"), name)?;
            check_key_template(&key("key"), &z.key)?;
            if z.max == 0 || z.max > MAX {
                return Err(ConfigError::invalid(
                    key("max"),
                    format!("{} is out of range: give the most requests in progress per key, 1 to {MAX}", z.max),
                ));
            }
            check_status(&key("status"), z.status)?;
        }
        if let Some(url) = self.limits.redis_url() {
            units::check_redis_url(url).map_err(|e| {
                ConfigError::invalid(
                    "limits.store",
                    format!("{e}; or \"memory\" for this instance alone"),
                )
            })?;
        }
        for (i, r) in self.route.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            for (list, zones, defined) in [
                (
                    "limit_req",
                    &r.limit_req,
                    self.limit_req.keys().collect::<Vec<_>>(),
                ),
                (
                    "limit_conn",
                    &r.limit_conn,
                    self.limit_conn.keys().collect::<Vec<_>>(),
                ),
            ] {
                for (j, z) in zones.iter().enumerate() {
                    if !defined.contains(&z) {
                        return Err(ConfigError::invalid(
                            key(list),
                            format!("zone {z:?} is not defined: add a [{list}.{z}] section, or remove it from the list (defined: {defined:?})"),
                        ));
                    }
                    if zones[..j].contains(z) {
                        return Err(ConfigError::invalid(
                            key(list),
                            format!("zone {z:?} is listed twice"),
                        ));
                    }
                }
            }
            if r.limit_rate_after.is_some() && r.limit_rate.is_none() {
                return Err(ConfigError::invalid(
                    key("limit_rate_after"),
                    "has no effect without limit_rate: set limit_rate (bytes per second) too, or remove it",
                ));
            }
        }
        let q = &self.queue;
        if let Some(k) = &q.fair_key {
            check_key_template("queue.fair_key", k)?;
        }
        match (q.per_key_max, &q.fair_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "queue.per_key_max",
                    "applies only with queue.fair_key: set fair_key (e.g. \"$remote_addr\") or remove per_key_max",
                ))
            }
            (Some(0), Some(_)) => {
                return Err(ConfigError::invalid("queue.per_key_max", "must be at least 1"))
            }
            _ => {}
        }
        Ok(())
    }
}

impl Config {
    /// `[cache]` and every route's `[route.cache]`. The disk directory is not looked at
    /// here: the cache checks it can write there when it starts.
    fn validate_cache(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cache {
            if c.memory < CacheConfig::MIN_MEMORY {
                return Err(ConfigError::invalid(
                    "cache.memory",
                    format!("{} bytes is too small: below 1MiB the memory tier would hold hardly a response and evict on almost every store; use at least \"1MiB\" (default \"256MiB\")", c.memory.bytes()),
                ));
            }
            match (&c.disk, c.disk_max_size) {
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        "cache.disk_max_size",
                        "bounds the disk tier, which is off: set cache.disk to a directory, or remove disk_max_size",
                    ))
                }
                (Some(dir), _) if !dir.is_absolute() => {
                    return Err(ConfigError::invalid(
                        "cache.disk",
                        format!("{dir:?} is relative: give an absolute directory (e.g. \"/var/cache/weir\"), so it does not depend on where weir was started"),
                    ))
                }
                (Some(_), Some(m)) if m < CacheConfig::MIN_MEMORY => {
                    return Err(ConfigError::invalid(
                        "cache.disk_max_size",
                        format!("{} bytes is too small: use at least \"1MiB\" (default \"10GiB\"), or remove cache.disk for no disk tier", m.bytes()),
                    ))
                }
                _ => {}
            }
            if let Some(url) = &c.store {
                units::check_redis_url(url).map_err(|e| {
                    ConfigError::invalid(
                        "cache.store",
                        format!("{e}; or remove it for no shared tier"),
                    )
                })?;
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            let Some(rc) = &r.cache else { continue };
            let key = |k: &str| format!("route[{i}].cache{k}");
            if self.cache.is_none() {
                return Err(ConfigError::invalid(
                    key(""),
                    "there is no [cache] section to store the responses in: add a [cache] section (e.g. memory = \"256MiB\"), or remove this route's [route.cache]",
                ));
            }
            for status in rc.valid.keys() {
                let is_status = status.len() == 3
                    && status
                        .parse::<u16>()
                        .is_ok_and(|n| (100..=599).contains(&n));
                if !is_status && status != "any" {
                    return Err(ConfigError::invalid(
                        key(&format!(".valid.{status}")),
                        format!("{status:?} is not a status: use a code from \"100\" to \"599\", or \"any\" for every status not listed (e.g. valid = {{ \"200\" = \"10m\", \"any\" = \"1m\" }})"),
                    ));
                }
            }
            check_key_template(&key(".key"), &rc.key)?;
            if rc.min_uses == 0 {
                return Err(ConfigError::invalid(
                    key(".min_uses"),
                    "must be at least 1 (1, the default, stores a response the first time its key is requested)",
                ));
            }
            if rc.lock && rc.lock_timeout.is_zero() {
                return Err(ConfigError::invalid(
                    key(".lock_timeout"),
                    "must be more than 0 with lock = true: it is how long a request waits for another to fill the entry (default \"5s\"); or set lock = false",
                ));
            }
            for (list, items) in [("bypass", &rc.bypass), ("no_cache", &rc.no_cache)] {
                for (j, t) in items.iter().enumerate() {
                    check_key_template(&key(&format!(".{list}[{j}]")), t)?;
                }
            }
        }
        Ok(())
    }
}

/// A zone's name goes into headers (RateLimit-Policy), metrics labels and Redis keys.
fn check_zone_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ConfigError::invalid(
            key,
            format!("zone name {name:?}: use 1 to 64 letters, digits, _ or -"),
        ));
    }
    Ok(())
}

fn check_key_template(key: &str, t: &str) -> Result<(), ConfigError> {
    if t.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!(
                "missing: give the key template, e.g. \"$remote_addr\" (variables: {})",
                Var::ACCEPTED
            ),
        ));
    }
    template::parse_template(t)
        .map(drop)
        .map_err(|e| ConfigError::invalid(key, e))
}

fn check_status(key: &str, status: u16) -> Result<(), ConfigError> {
    if !(400..=599).contains(&status) {
        return Err(ConfigError::invalid(
            key,
            format!("{status} is not an error status: use 400 to 599 (default {DEFAULT_LIMIT_STATUS}; NGINX uses 503)"),
        ));
    }
    Ok(())
}

/// Timeouts form one chain (client > front door > worker > database): a worker limit
/// longer than the request's deadline would let work go on after the client got its 504.
fn check_chain(
    inner_key: &str,
    inner: Option<Seconds>,
    outer_key: &str,
    outer: Option<Seconds>,
) -> Result<(), ConfigError> {
    if let (Some(i), Some(o)) = (inner, outer) {
        if i > o {
            return Err(ConfigError::invalid(
                inner_key,
                format!("{i} is longer than {outer_key} ({o}): a worker would go on after the request's deadline; make {inner_key} at most {o}"),
            ));
        }
    }
    Ok(())
}

fn validate_app_spec(spec: &str) -> Result<(), ConfigError> {
    let (module, callable) = spec.split_once(':').unwrap_or((spec, "application"));
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                let mut c = part.chars();
                matches!(c.next(), Some(ch) if ch == '_' || ch.is_alphabetic())
                    && c.all(|ch| ch == '_' || ch.is_alphanumeric())
            })
    };
    if !ident(module) || !ident(callable) {
        return Err(ConfigError::invalid(
            "app.module",
            format!("{spec:?} is not MODULE:CALLABLE (e.g. app:app or mypkg.wsgi:application)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("weir.toml"))
    }

    #[test]
    fn response_buffering_defaults_are_safe_and_checked() {
        let c = parse("[app]\nmodule = \"app:app\"\n").unwrap();
        let srv = &c.server;
        assert_eq!(srv.response_buffer.bytes(), 256 << 10);
        assert_eq!(srv.response_buffers_total.bytes(), 64 << 20);
        assert_eq!(srv.max_temp_file_size.bytes(), 1 << 30);
        assert_eq!(srv.send_timeout.as_duration(), Duration::from_secs(60));
        assert_eq!(srv.upgrade_timeout.as_duration(), Duration::from_secs(60));
        assert!(srv.temp_path.is_none());
        c.validate().unwrap();
        for (text, key) in [
            ("response_buffer = \"1KiB\"", "server.response_buffer"),
            (
                "response_buffers_total = \"128KiB\"",
                "server.response_buffers_total",
            ),
            ("send_timeout = \"0s\"", "server.send_timeout"),
            ("upgrade_timeout = \"0s\"", "server.upgrade_timeout"),
            ("temp_path = \"/nonexistent/weir\"", "server.temp_path"),
        ] {
            let c = parse(&format!("[server]\n{text}\n[app]\nmodule = \"app:app\"\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = parse(
            "[app]\nmodule = \"app:app\"\n[[route]]\npath = \"/events\"\nbuffering = false\n",
        )
        .unwrap();
        assert_eq!(c.route[0].buffering, Some(false));
    }

    #[test]
    fn defaults_and_full_file() {
        let mut c = parse(
            r#"
            [server]
            listen = ["127.0.0.1:9000", "unix:/tmp/w.sock"]
            uwsgi_listen = ["unix:/tmp/u.sock"]
            [app]
            module = "app:app"
            workers = 4
            harakiri = 30
            max_requests = 1000
            max_requests_jitter = 50
            reload_on_rss = "200MiB"
            graceful_timeout = "5s"
            [queue]
            max_size = 10
            timeout = "250ms"
            "#,
        )
        .unwrap();
        c.apply_defaults();
        c.validate().unwrap();
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.app.harakiri.unwrap().as_duration().as_secs(), 30);
        assert_eq!(c.app.reload_on_rss.unwrap().bytes(), 200 << 20);
        assert_eq!(c.queue.timeout.as_duration().as_millis(), 250);
    }

    #[test]
    fn harakiri_longer_than_deadline_is_refused_naming_both() {
        let mut c =
            parse("[server]\nrequest_timeout = \"5s\"\n[app]\nmodule = \"a:b\"\nharakiri = 10\n")
                .unwrap();
        c.apply_defaults();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("app.harakiri") && e.contains("server.request_timeout"),
            "{e}"
        );
        let mut c = parse("[app]\nmodule = \"a:b\"\nworkers = 4\n[[route]]\npath = \"/slow\"\nmax_concurrency = 2\nharakiri = 3\nrequest_timeout = 2\n").unwrap();
        c.apply_defaults();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("route[0].harakiri") && e.contains("route[0].request_timeout"),
            "{e}"
        );
    }

    #[test]
    fn queue_shedding_keys() {
        let mut c = parse("[app]\nmodule = \"a:b\"\n[queue]\ntarget = \"50ms\"\ninterval = \"500ms\"\nlifo = false\n").unwrap();
        c.apply_defaults();
        c.validate().unwrap();
        assert!(c.queue.codel && !c.queue.lifo);
        assert_eq!(c.queue.target.unwrap().as_duration().as_millis(), 50);
        let d = QueueConfig::default();
        assert!(d.admission && d.rate_overload && d.target_factor == 2);
        assert_eq!(d.min_target.as_duration().as_millis(), 50);
        let c = parse("[app]\nmodule = \"a:b\"\n[queue]\nadmission = false\nrate_overload = false\ntarget_factor = 4\nmin_target = \"500ms\"\n").unwrap();
        assert!(!c.queue.admission && !c.queue.rate_overload && c.queue.target_factor == 4);
        for (toml, key) in [
            ("target = \"20s\"", "queue.target"),
            ("target = \"0s\"", "queue.target"),
            ("interval = 0", "queue.interval"),
            ("target_factor = 0", "queue.target_factor"),
            ("min_target = \"0s\"", "queue.min_target"),
            ("min_target = \"10s\"", "queue.min_target"),
        ] {
            let mut c = parse(&format!("[app]\nmodule = \"a:b\"\n[queue]\n{toml}\n")).unwrap();
            c.apply_defaults();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn preload_is_true_false_or_auto_by_default() {
        let c = parse("[app]\nmodule = \"a:b\"\n").unwrap();
        assert_eq!(c.app.preload, Preload::Auto);
        for (v, want) in [
            ("true", Preload::On),
            ("false", Preload::Off),
            ("\"auto\"", Preload::Auto),
        ] {
            let c = parse(&format!("[app]\nmodule = \"a:b\"\npreload = {v}\n")).unwrap();
            assert_eq!(c.app.preload, want, "{v}");
            assert_eq!(want.as_toml(), v);
        }
        for v in ["\"yes\"", "1", "\"on\""] {
            let e = parse(&format!("[app]\nmodule = \"a:b\"\npreload = {v}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("app.preload"), "{v}: {e}");
            assert!(e.contains(Preload::ACCEPTED), "{v}: {e}");
        }
        assert_eq!("on".parse(), Ok(Preload::On));
        assert_eq!("off".parse(), Ok(Preload::Off));
        assert_eq!("auto".parse(), Ok(Preload::Auto));
        assert!("yes".parse::<Preload>().is_err());
    }

    const ISSUE_14: &str = r#"
[app]
module = "app:app"

[limit_req.per_ip]              # a zone, as limit_req_zone
key = "$remote_addr"
rate = "10r/s"                  # or "600r/m"
burst = 20                      # default 0
nodelay = true                  # or `delay = 8`
status = 429                    # default 429 (NGINX's default is 503)
dry_run = false                 # count and log, never refuse
max_keys = 100000               # memory bound

[limit_conn.per_ip]
key = "$remote_addr"
max = 10                        # requests in progress per key (limit_conn)
status = 429

[[route]]
path = "/"                      # a route with path "/" covers every request
limit_req = ["per_ip"]          # several zones may apply; all must admit
limit_conn = ["per_ip"]
limit_rate = "100k"             # bytes per second to the client for each response
limit_rate_after = "1m"         # the first bytes at full speed

[limits]
store = "memory"                # or "redis://127.0.0.1:6379/0"
on_store_error = "allow"        # or "deny"
"#;

    fn validated(s: &str) -> Result<Config, ConfigError> {
        let mut c = parse(s)?;
        c.apply_defaults();
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn issue_14_limits_parse() {
        let c = validated(ISSUE_14).unwrap();
        let z = &c.limit_req["per_ip"];
        assert_eq!(z.parsed_rate().unwrap().per_sec_x1000(), 10_000);
        assert_eq!(
            (z.burst, z.nodelay, z.delay, z.status, z.dry_run, z.max_keys),
            (20, true, None, 429, false, 100_000)
        );
        let lc = &c.limit_conn["per_ip"];
        assert_eq!((lc.max, lc.status, lc.dry_run), (10, 429, false));
        let r = &c.route[0];
        assert_eq!(r.limit_req, ["per_ip"]);
        assert_eq!(r.limit_conn, ["per_ip"]);
        assert_eq!(r.limit_rate.unwrap().bytes(), 100 * 1024);
        assert_eq!(r.limit_rate_after.unwrap().bytes(), 1 << 20);
        assert_eq!(c.limits.redis_url(), None);
        assert_eq!(c.limits.on_store_error, OnStoreError::Allow);
        let c = validated(
            &ISSUE_14
                .replace("\"memory\"", "\"redis://127.0.0.1:6379/0\"")
                .replace("\"allow\"", "\"deny\""),
        )
        .unwrap();
        assert_eq!(c.limits.redis_url(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(c.limits.on_store_error, OnStoreError::Deny);
        // defaults
        let c = validated("[app]\nmodule = \"a:b\"\n[limit_req.z]\nkey = \"$uri\"\nrate = \"600r/m\"\n[limit_conn.c]\nkey = \"$host\"\nmax = 1\n").unwrap();
        let z = &c.limit_req["z"];
        assert_eq!(
            (z.burst, z.nodelay, z.delay, z.status, z.dry_run, z.max_keys),
            (0, false, None, 429, false, 100_000)
        );
        assert_eq!(c.limit_conn["c"].status, 429);
        assert!(c.queue.fair_key.is_none() && c.queue.per_key_max.is_none());
    }

    #[test]
    fn limits_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "key = \"$remote_addr\"",
                "key = \"$remote_adr\"",
                "limit_req.per_ip.key",
            ),
            (
                "rate = \"10r/s\"",
                "rate = \"10 per second\"",
                "limit_req.per_ip.rate",
            ),
            (
                "rate = \"10r/s\"",
                "rate = \"10r/h\"",
                "limit_req.per_ip.rate",
            ),
            (
                "limit_req = [\"per_ip\"]",
                "limit_req = [\"per_ip\", \"nope\"]",
                "route[0].limit_req",
            ),
            (
                "limit_conn = [\"per_ip\"]",
                "limit_conn = [\"other\"]",
                "route[0].limit_conn",
            ),
            (
                "nodelay = true ",
                "nodelay = true\ndelay = 8 ",
                "limit_req.per_ip.delay",
            ),
            (
                "\"memory\"",
                "\"redis://127.0.0.1:notaport/0\"",
                "limits.store",
            ),
            ("\"memory\"", "\"mem\"", "limits.store"),
            (
                "status = 429                    # default",
                "status = 200 #",
                "limit_req.per_ip.status",
            ),
            (
                "max = 10                        # requests in progress per key (limit_conn)\nstatus = 429",
                "max = 10\nstatus = 600",
                "limit_conn.per_ip.status",
            ),
            ("max = 10", "max = 0", "limit_conn.per_ip.max"),
            (
                "max_keys = 100000",
                "max_keys = 0",
                "limit_req.per_ip.max_keys",
            ),
            ("limit_rate = \"100k\"", "", "route[0].limit_rate_after"),
            (
                "[limit_conn.per_ip]\nkey = \"$remote_addr\"",
                "[limit_conn.per_ip]\nkey = \"\"",
                "limit_conn.per_ip.key",
            ),
        ];
        for (from, to, want) in cases {
            assert!(ISSUE_14.contains(from), "{from}");
            let text = ISSUE_14.replacen(from, to, 1);
            let e = validated(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        // an unknown variable is named in the message
        let e = validated(&ISSUE_14.replace(
            "key = \"$remote_addr\"\nrate",
            "key = \"$remote_addr:$urx\"\nrate",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("$urx"), "{e}");
    }

    const CACHE: &str = r#"
[app]
module = "app:app"

[cache]
memory = "256MiB"                       # in-memory tier, bounded by bytes
disk = "/var/cache/weir"                # optional second tier that survives restarts...
disk_max_size = "10GiB"                 # ...bounded by bytes
store = "redis://127.0.0.1:6379/1"      # optional shared tier for several weir instances

[[route]]
path = "/items"
[route.cache]
valid = { "200" = "10s", "404" = "1s" } # used when the response carries no freshness of its own
key = "$scheme$host$request_uri"        # the default; NGINX variables as in limit_req keys
min_uses = 1                            # store only after this many requests for the key
lock = true                             # one request fills a missing entry; others wait for it
lock_timeout = "5s"                     # then they go to the app themselves, uncached
use_stale = ["error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504"]
background_update = true                # an expired entry is refreshed by one background request
bypass = ["$cookie_nocache", "$arg_nocache"]   # any non-empty, non-"0": go to the app, may store
no_cache = ["$arg_nostore"]             # any non-empty, non-"0": do not store the answer
revalidate = true                       # refresh expired entries with If-None-Match/If-Modified-Since
"#;

    #[test]
    fn cache_parses() {
        let c = validated(CACHE).unwrap();
        let cc = c.cache.as_ref().unwrap();
        assert_eq!(cc.memory.bytes(), 256 << 20);
        assert_eq!(cc.disk.as_deref(), Some(Path::new("/var/cache/weir")));
        assert_eq!(cc.disk_max_bytes(), 10 << 30);
        assert_eq!(cc.store.as_deref(), Some("redis://127.0.0.1:6379/1"));
        let rc = c.route[0].cache.as_ref().unwrap();
        assert_eq!(rc.valid_for(200), Some(Duration::from_secs(10)));
        assert_eq!(rc.valid_for(404), Some(Duration::from_secs(1)));
        assert_eq!(rc.valid_for(500), None);
        assert_eq!(rc.key, "$scheme$host$request_uri");
        assert_eq!(rc.min_uses, 1);
        assert!(rc.lock && rc.background_update && rc.revalidate);
        assert_eq!(rc.lock_timeout, Seconds::from_secs(5));
        use UseStale::*;
        assert_eq!(
            rc.use_stale,
            [Error, Timeout, Updating, Http500, Http502, Http503, Http504]
        );
        assert_eq!(rc.bypass, ["$cookie_nocache", "$arg_nocache"]);
        assert_eq!(rc.no_cache, ["$arg_nostore"]);
        // defaults
        let c = validated("[app]\nmodule = \"a:b\"\n[cache]\n[[route]]\npath = \"/\"\n[route.cache]\nvalid = { \"200\" = \"1m\", any = 0 }\n").unwrap();
        let cc = c.cache.as_ref().unwrap();
        assert_eq!(cc.memory.bytes(), 256 << 20);
        assert!(cc.disk.is_none() && cc.disk_max_size.is_none() && cc.store.is_none());
        let rc = c.route[0].cache.as_ref().unwrap();
        assert_eq!(rc.key, RouteCacheConfig::DEFAULT_KEY);
        assert_eq!(
            (rc.min_uses, rc.lock, rc.background_update, rc.revalidate),
            (1, false, false, false)
        );
        assert_eq!(rc.lock_timeout, Seconds::from_secs(5));
        assert!(rc.use_stale.is_empty() && rc.bypass.is_empty() && rc.no_cache.is_empty());
        assert_eq!(rc.valid_for(200), Some(Duration::from_secs(60)));
        assert_eq!(rc.valid_for(302), Some(Duration::ZERO));
        // a disk tier without a size gets 10GiB
        let c = validated(&CACHE.replace("disk_max_size = \"10GiB\"", "")).unwrap();
        assert_eq!(c.cache.unwrap().disk_max_bytes(), 10 << 30);
        // no [cache]: no cache
        assert!(validated("[app]\nmodule = \"a:b\"\n")
            .unwrap()
            .cache
            .is_none());
    }

    #[test]
    fn use_stale_values() {
        for v in UseStale::ALL {
            assert_eq!(v.as_str().parse(), Ok(v));
            assert!(UseStale::ACCEPTED.contains(&format!("\"{v}\"")), "{v}");
            assert_eq!(
                v.status().map(|s| format!("http_{s}")),
                v.as_str()
                    .starts_with("http_")
                    .then(|| v.as_str().to_owned())
            );
        }
        for bad in ["\"off\"", "\"http_418\"", "\"Error\""] {
            let e = validated(&CACHE.replace("\"updating\"", bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("use_stale"), "{bad}: {e}");
            assert!(e.contains(UseStale::ACCEPTED), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn cache_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("\"256MiB\"", "\"10 parsecs\"", "memory"),
            ("\"256MiB\"", "\"512KiB\"", "cache.memory"),
            (
                "\"200\" = \"10s\"",
                "\"2000\" = \"10s\"",
                "route[0].cache.valid.2000",
            ),
            (
                "\"404\" = \"1s\"",
                "abc = \"1s\"",
                "route[0].cache.valid.abc",
            ),
            (
                "\"404\" = \"1s\"",
                "\"099\" = \"1s\"",
                "route[0].cache.valid.099",
            ),
            ("[cache]", "[cachex]", "cachex"),
            ("disk = \"/var/cache/weir\"", "", "cache.disk_max_size"),
            ("\"/var/cache/weir\"", "\"var/cache/weir\"", "cache.disk"),
            ("\"10GiB\"", "0", "cache.disk_max_size"),
            (
                "\"redis://127.0.0.1:6379/1\"",
                "\"redis://127.0.0.1:notaport/1\"",
                "cache.store",
            ),
            (
                "\"redis://127.0.0.1:6379/1\"",
                "\"127.0.0.1:6379\"",
                "cache.store",
            ),
            (
                "key = \"$scheme$host$request_uri\"",
                "key = \"$scheme$hots\"",
                "route[0].cache.key",
            ),
            (
                "key = \"$scheme$host$request_uri\"",
                "key = \"\"",
                "route[0].cache.key",
            ),
            ("\"$arg_nocache\"", "\"$args\"", "route[0].cache.bypass[1]"),
            ("\"$arg_nostore\"", "\"\"", "route[0].cache.no_cache[0]"),
            ("min_uses = 1 ", "min_uses = 0 ", "route[0].cache.min_uses"),
            (
                "lock_timeout = \"5s\"",
                "lock_timeout = 0",
                "route[0].cache.lock_timeout",
            ),
            (
                "revalidate = true",
                "revalidate = true\nmax_age = 3",
                "max_age",
            ),
        ];
        for (from, to, want) in cases {
            assert!(CACHE.contains(from), "{from}");
            let text = CACHE.replacen(from, to, 1);
            let e = validated(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        // lock_timeout = 0 is fine without lock
        validated(
            &CACHE
                .replace("lock = true", "lock = false")
                .replace("\"5s\"", "0"),
        )
        .unwrap();
        // a route cache without [cache]
        let start = CACHE.find("[cache]").unwrap();
        let end = CACHE.find("[[route]]").unwrap();
        let text = format!("{}{}", &CACHE[..start], &CACHE[end..]);
        let e = validated(&text).unwrap_err().to_string();
        assert!(
            e.contains("route[0].cache:") && e.contains("add a [cache] section"),
            "{e}"
        );
    }

    #[test]
    fn fair_queue_keys() {
        let c = validated(
            "[app]\nmodule = \"a:b\"\n[queue]\nfair_key = \"$remote_addr\"\nper_key_max = 8\n",
        )
        .unwrap();
        assert_eq!(c.queue.fair_key.as_deref(), Some("$remote_addr"));
        assert_eq!(c.queue.per_key_max, Some(8));
        for (toml, want) in [
            ("per_key_max = 8", "queue.per_key_max"),
            (
                "fair_key = \"$remote_addr\"\nper_key_max = 0",
                "queue.per_key_max",
            ),
            ("fair_key = \"$client\"", "queue.fair_key"),
        ] {
            let e = validated(&format!("[app]\nmodule = \"a:b\"\n[queue]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[app]\nworkerz = 3\n").unwrap_err().to_string();
        assert!(e.contains("workerz"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("[app]\nharakiri = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("harakiri"), "{e}");
        let mut c = parse("[app]\nmodule = \"app:app\"\nworkers = 0\n").unwrap();
        c.apply_defaults();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("app.workers"));
        let mut c = parse("[app]\nmodule = \"not a module\"\n").unwrap();
        c.apply_defaults();
        assert!(c.validate().unwrap_err().to_string().contains("app.module"));
    }
}

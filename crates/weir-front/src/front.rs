//! What every connection of the front door shares: [`Front`] (the backend, the routes,
//! the limits and timeouts of `[server]`, the access log). See docs/architecture.md for the
//! request path these serve.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
pub use crate::backend::Backend;
use crate::identity::TrustedProxies;
use crate::route::Routes;

/// Everything the handler needs, shared by every connection.
#[derive(Debug)]
pub struct Front {
    /// Where requests go.
    pub backend: Backend,
    /// Per-route limits and timeouts.
    pub routes: Routes,
    /// `limit_req`, `limit_conn` and the queue's fairness key.
    pub limits: crate::limit::FrontLimits,
    /// The response cache (`[cache]`).
    pub cache: Option<crate::cache::FrontCache>,
    /// Response compression (`[compression]`; the HTTP listener only).
    pub compression: Option<crate::compression::Compression>,
    /// Directories served by the front door (`[[static]]`).
    pub statics: Option<crate::static_files::FrontStatic>,
    /// Trusted proxies.
    pub trusted: TrustedProxies,
    /// Access log and metrics.
    pub log: Arc<AccessLog>,
    /// Retry-After seconds for 503s.
    pub retry_after: u64,
    /// `[server] max_header_size`.
    pub max_header_size: usize,
    /// `[server] max_body_size`.
    pub max_body_size: u64,
    /// `[server] client_header_timeout`.
    pub header_timeout: Duration,
    /// `[server] keepalive_timeout`: how long a kept-alive connection may wait for its
    /// next request (0: no keep-alive on HTTP/1).
    pub keepalive_timeout: Duration,
    /// `[server] client_body_timeout`.
    pub body_timeout: Duration,
    /// `[server] send_timeout`: a client that takes no byte for this long is dropped.
    pub send_timeout: Duration,
    /// Bounded response buffering (`[server] response_buffer`, `response_buffers_total`,
    /// `temp_path`, `max_temp_file_size`): the spools of streamed answers.
    pub spool: weir_response::Spooler,
    /// The TLS listeners' certificates and settings (`[tls]`), when there are any.
    pub tls: Option<crate::tls::Tls>,
    /// `[server] h2c`: HTTP/2 with prior knowledge on the plain HTTP listeners.
    pub h2c: bool,
    /// `[server] http2_max_concurrent_streams`.
    pub http2_max_concurrent_streams: u32,
    /// Whether `[app] ready_check` is set.
    pub has_ready_check: bool,
    /// The last ready_check result: (when, passed, message).
    pub last_ready: std::sync::Mutex<Option<(Instant, bool, String)>>,
    /// With `[queue] rate_overload`: the peer addresses whose connection just ended after a
    /// refusal, so that a client reconnecting after its 503 is seen retrying
    /// (`environ::ClientRefusals`).
    pub client_refusals: Option<crate::environ::ClientRefusals>,
    /// With `[queue] rate_overload`: the client addresses (`REMOTE_ADDR`, as the front
    /// server names them) whose request through the uwsgi listener the queue just
    /// refused. The front server opens a connection per request, so neither a client's own
    /// connection nor its hang-up is seen: a request from that address within the retry
    /// window is taken for the client's retry (`environ::ClientRefusals`).
    pub uwsgi_refusals: Option<crate::environ::ClientRefusals>,
}

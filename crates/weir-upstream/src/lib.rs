//! External upstreams: weir's front door before a real uWSGI (uwsgi protocol) or a real
//! Gunicorn (HTTP/1.1), as NGINX's `uwsgi_pass` / `proxy_pass` with an `upstream` block.
//!
//! # Layout
//! - this file: [`Upstream`], the servers, the queue in front of them (NGINX Plus's
//!   `max_conns` + `queue`: the front door's one admission queue, a `weir_queue::Slots`
//!   of every server's connections, with the pool's bound, timeout and CoDel), server choice (round robin over healthy servers with a free
//!   connection), `next_upstream`, passive health (`max_fails`, `fail_timeout`).
//! - [`error`]: [`UpstreamError`] and its attribution classes.
//! - `uwsgi`: one request over the uwsgi protocol (the response ends when the server
//!   closes the connection, as uWSGI does).
//! - `http`: one request over HTTP/1.1 (hyper's client connection).
//!
//! One connection per request, as NGINX does by default with uwsgi and with HTTP/1.0
//! upstreams; Gunicorn's sync workers close after each response anyway.
//!
//! Request bodies reach an upstream whole (they are buffered by the front door first).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
mod http;
mod uwsgi;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;
use weir_config::{ListenAddr, UpstreamConfig, UpstreamProtocol};
use weir_queue::{QueuePlace, QueuePolicy, SlotPermit, Slots};
use weir_response::ResponseBody;

pub use error::UpstreamError;

/// What to send.
#[derive(Debug)]
pub enum UpstreamRequest {
    /// A uwsgi packet (vars) and the body.
    Uwsgi {
        /// The packet.
        packet: Vec<u8>,
        /// The body (CONTENT_LENGTH bytes).
        body: Bytes,
    },
    /// An HTTP request (head already carries X-Forwarded-* and X-Request-ID).
    Http(::http::Request<Bytes>),
}

struct Server {
    addr: ListenAddr,
    conns: Arc<Semaphore>,
    fails: AtomicU32,
    /// Start of the failure window, and until when the server is down.
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    window_start: Option<Instant>,
    down_until: Option<Instant>,
}

impl Server {
    fn is_down(&self, now: Instant) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .down_until
            .is_some_and(|t| t > now)
    }

    fn failed(&self, max_fails: u32, fail_timeout: Duration) {
        let now = Instant::now();
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.window_start.is_none_or(|s| now - s > fail_timeout) {
            h.window_start = Some(now);
            self.fails.store(0, Ordering::Relaxed);
        }
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= max_fails {
            h.down_until = Some(now + fail_timeout);
            warn!(server = %self.addr, fails = n, "upstream server marked down for {fail_timeout:?}");
        }
    }

    fn succeeded(&self) {
        if self.fails.swap(0, Ordering::Relaxed) != 0 {
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            h.down_until = None;
            h.window_start = None;
        }
    }
}

/// A connected stream to a server.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The upstream group.
pub struct Upstream {
    servers: Vec<Server>,
    config: UpstreamConfig,
    /// Total connections across servers: what the queue waits on (its admission).
    admission: Arc<Slots>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|s| s.addr.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("protocol", &self.config.protocol)
            .finish()
    }
}

/// Chunks in flight to a client that reads an upstream's answer without a spool (a route
/// with `buffering = false`): the upstream is paced by the client beyond them. A chunk is
/// one read: up to 16 KiB from a uwsgi upstream, one of hyper's frames (its read buffer,
/// a few hundred KiB at most) from an HTTP one.
pub(crate) const CHANNEL_CHUNKS: usize = 4;

/// Permits held while a request is at a server (released when its body is done).
pub(crate) struct Held {
    _admission: SlotPermit,
    _conn: OwnedSemaphorePermit,
    /// The caller's (a route's concurrency slot): held as long as the connection, to the
    /// end of the response body, as for a managed worker.
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

impl Upstream {
    /// From config; `policy` is `[queue]`'s.
    pub fn new(config: UpstreamConfig, policy: QueuePolicy) -> Upstream {
        let servers: Vec<Server> = config
            .servers
            .iter()
            .map(|a| Server {
                addr: a.clone(),
                conns: Arc::new(Semaphore::new(config.max_conns)),
                fails: AtomicU32::new(0),
                health: Mutex::new(Health::default()),
            })
            .collect();
        let total = config.max_conns * servers.len();
        Upstream {
            servers,
            admission: Slots::new(total, policy),
            next: AtomicUsize::new(0),
            config,
        }
    }

    /// The protocol.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.config.protocol
    }

    /// The queue's decisions (refused at arrival or after waiting, predicted vs actual
    /// waits), for metrics.
    pub fn queue_stats(&self) -> &weir_queue::QueueStats {
        self.admission.stats()
    }

    /// Requests waiting now: for a connection, and for a route's slot in front of the
    /// queue ([`Upstream::enter_queue`]).
    pub fn queued(&self) -> usize {
        self.admission.waiting()
    }

    /// Holds a place in the queue for a request waiting in front of it (for its route's
    /// slot): it counts against the bound and in the depth until dropped.
    pub fn enter_queue(&self) -> Result<QueuePlace, UpstreamError> {
        Ok(self.admission.enter_queue()?)
    }

    /// Sends one request: waits (bounded) for a free connection slot, picks a server,
    /// and tries the next one when a server cannot be reached (if allowed).
    pub async fn dispatch(
        &self,
        req: UpstreamRequest,
        idempotent: bool,
        deadline: Option<Instant>,
        fair_key: u64,
        mut hold: Option<Box<dyn std::any::Any + Send>>,
        spool: Option<weir_response::Spooler>,
    ) -> Result<::http::Response<ResponseBody>, UpstreamError> {
        let admitted = self.admit(deadline, fair_key).await?;
        let mut admitted = Some(admitted);
        let mut tried = vec![false; self.servers.len()];
        let mut last_err = None;
        loop {
            let Some((i, conn_permit)) = self.pick(&tried, deadline).await? else {
                return Err(last_err.expect("a pick fails only after a tried server failed"));
            };
            tried[i] = true;
            let server = &self.servers[i];
            let admission = admitted
                .take()
                .expect("the admission permit is given back on retry");
            match self.connect(server).await {
                Ok(conn) => {
                    let held = Held {
                        _admission: admission,
                        _conn: conn_permit,
                        _hold: hold.take(),
                    };
                    let result = match &req {
                        UpstreamRequest::Uwsgi { packet, body } => {
                            let spool = spool.clone();
                            uwsgi::exchange(conn, packet, body, &self.config, held, spool).await
                        }
                        UpstreamRequest::Http(r) => {
                            http::exchange(conn, r, &self.config, held, spool.clone()).await
                        }
                    };
                    match &result {
                        Ok(_) => server.succeeded(),
                        Err(UpstreamError::Timeout { .. })
                        | Err(UpstreamError::Protocol { .. }) => server.failed(
                            self.config.max_fails,
                            self.config.fail_timeout.as_duration(),
                        ),
                        Err(_) => {}
                    }
                    return result.map_err(|e| e.at(&server.addr));
                }
                Err(e) => {
                    drop((admission, conn_permit));
                    server.failed(
                        self.config.max_fails,
                        self.config.fail_timeout.as_duration(),
                    );
                    let e = e.at(&server.addr);
                    warn!("{e}");
                    let can_retry =
                        self.config.next_upstream && idempotent && tried.iter().any(|t| !t);
                    if !can_retry {
                        return Err(e);
                    }
                    last_err = Some(e);
                    // Be admitted again for the next try (given back just above).
                    admitted = Some(self.admit(deadline, fair_key).await?);
                }
            }
        }
    }

    async fn admit(
        &self,
        deadline: Option<Instant>,
        fair_key: u64,
    ) -> Result<SlotPermit, UpstreamError> {
        Ok(self.admission.acquire(deadline, fair_key).await?)
    }

    /// Round robin over servers not yet tried: healthy ones with a free connection
    /// first; if every server is down, down ones too (NGINX does the same rather than
    /// refusing everything).
    async fn pick(
        &self,
        tried: &[bool],
        deadline: Option<Instant>,
    ) -> Result<Option<(usize, OwnedSemaphorePermit)>, UpstreamError> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let order: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| !tried[i])
            .collect();
        if order.is_empty() {
            return Ok(None);
        }
        let healthy: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| !self.servers[i].is_down(now))
            .collect();
        let candidates = if healthy.is_empty() { order } else { healthy };
        for &i in &candidates {
            if let Ok(p) = self.servers[i].conns.clone().try_acquire_owned() {
                return Ok(Some((i, p)));
            }
        }
        // The admission let us in but the healthy servers are full (a down server's share of
        // the admission is unusable): wait on the first candidate.
        let i = candidates[0];
        let timeout = self.admission.policy().timeout;
        let wait = deadline.map_or(timeout, |d| d.saturating_duration_since(now).min(timeout));
        match tokio::time::timeout(wait, self.servers[i].conns.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some((i, p))),
            _ => Err(UpstreamError::QueueTimeout(wait)),
        }
    }

    async fn connect(&self, server: &Server) -> Result<Conn, UpstreamError> {
        let limit = self.config.connect_timeout.as_duration();
        let fut = async {
            match &server.addr {
                ListenAddr::Tcp(a) => {
                    let s = TcpStream::connect(a.as_str()).await?;
                    s.set_nodelay(true)?;
                    Ok(Conn::Tcp(s))
                }
                ListenAddr::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).await?)),
            }
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(UpstreamError::Connect {
                server: String::new(),
                source: e,
            }),
            Err(_) => Err(UpstreamError::Connect {
                server: String::new(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within connect_timeout ({limit:?})"),
                ),
            }),
        }
    }
}

/// Is a method idempotent (RFC 9110 9.2.2)?
pub fn is_idempotent(m: &::http::Method) -> bool {
    use ::http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

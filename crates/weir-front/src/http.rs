//! An HTTP/1.1 connection (hyper) and the request handler. The handler runs the stages
//! of the request path in order; each either passes the request on or ends it with a
//! [`Rejection`]:
//!
//! identity -> route -> body (limits, buffering) -> packet -> route slot -> worker
//! (queue) -> response head; the access log line is written when the body is done.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_errors::ErrorClass;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;
use weir_config::UpstreamProtocol;
use weir_pool::{DispatchError, Pool, RequestBody, ResponseBody, WorkerRequest};
use weir_upstream::{is_idempotent, Upstream, UpstreamRequest};

use crate::access_log::{AccessLog, Logged, Record};
use crate::conn_io::ClientWatch;
use crate::environ::{self, BodyLength, ConnInfo, Facts};
use crate::gate::{GatedIo, RefusalLog};
use crate::identity::{identify, Identity, TrustedProxies};
use crate::rejection::{wants_json, Rejection};
use crate::route::{Route, RouteWait, Routes};

/// Request bodies up to this size are read whole before a worker is taken, so a slow
/// upload never holds a worker (NGINX's request buffering); larger ones stream.
pub const BODY_BUFFER_LIMIT: u64 = 1 << 20;

/// Where requests go.
#[derive(Debug)]
pub enum Backend {
    /// weir's own workers.
    Workers(Pool),
    /// An external app server.
    Upstream(Arc<Upstream>),
}

/// One request ready for a backend.
#[derive(Debug)]
pub struct Job<'a> {
    /// Its method (retries depend on it).
    pub method: &'a http::Method,
    /// What the backend is sent.
    pub work: Work,
    /// Its body.
    pub body: RequestBody,
}

/// What a backend is sent.
#[derive(Debug)]
pub enum Work {
    /// A uwsgi packet (workers, uwsgi upstreams).
    Packet(Vec<u8>),
    /// An HTTP request head (HTTP upstreams).
    Http(http::request::Parts),
}

/// Everything the handler needs, shared by every connection.
#[derive(Debug)]
pub struct Front {
    /// Where requests go.
    pub backend: Backend,
    /// Per-route limits and timeouts.
    pub routes: Routes,
    /// Trusted proxies.
    pub trusted: TrustedProxies,
    /// Access log and metrics.
    pub log: Arc<AccessLog>,
    /// Retry-After seconds for 503s.
    pub retry_after: u64,
    /// Longest wait for a route slot (the queue timeout).
    pub queue_timeout: Duration,
    /// `[server] max_header_size`.
    pub max_header_size: usize,
    /// `[server] max_body_size`.
    pub max_body_size: u64,
    /// `[server] client_header_timeout`.
    pub header_timeout: Duration,
    /// `[server] client_body_timeout`.
    pub body_timeout: Duration,
    /// Whether `[app] ready_check` is set.
    pub has_ready_check: bool,
    /// The last ready_check result: (when, passed, message).
    pub last_ready: std::sync::Mutex<Option<(Instant, bool, String)>>,
}

/// Serves one HTTP/1.1 connection until the client closes it or the drain signal asks
/// it to finish its current request and close.
pub async fn serve_connection<S>(
    io: S,
    conn: ConnInfo,
    front: Arc<Front>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.header_timeout)
        .max_buf_size(front.max_header_size.max(8192))
        // The gate ends hyper's input after the last good request when it refuses the
        // next one; hyper must still answer the good one. Clients that really leave are
        // seen by the ClientWatch.
        .half_close(true)
        .keep_alive(true);
    let conn = Arc::new(conn);
    let peer = conn.peer.map(|p| p.ip());
    let log = front.log.clone();
    let io = GatedIo::new(
        io,
        front.max_header_size,
        RefusalLog {
            log: log.clone(),
            peer,
        },
    );
    let svc = service_fn(move |req| handle(front.clone(), conn.clone(), req));
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(connection);
    let draining = tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                log_refusal(&log, peer, &e);
                debug!("connection ended: {e}");
            }
            false
        }
        _ = drain.wait_for(|d| *d) => true,
    };
    if draining {
        connection.as_mut().graceful_shutdown();
        if let Err(e) = connection.as_mut().await {
            debug!("connection ended while draining: {e}");
        }
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A request hyper refused itself (it could not be parsed, or its head was too large):
/// hyper has already answered 400 or 431 and closed; weir still logs and counts it.
fn log_refusal(log: &Arc<AccessLog>, peer: Option<std::net::IpAddr>, e: &hyper::Error) {
    let class = if e.is_parse_too_large() {
        ErrorClass::HeaderTooLarge
    } else if e.is_parse() {
        ErrorClass::BadRequest
    } else {
        return;
    };
    let mut rec = Record::new(&crate::request_id::make(), peer, "", "");
    rec.status = class.status().as_u16();
    rec.class = Some(class);
    log.refused(rec);
}

/// One request: never fails at the hyper level; every failure is an answer.
pub async fn handle(
    front: Arc<Front>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Logged>, Infallible> {
    let (parts, body) = req.into_parts();
    let id = identify(&parts.headers, conn.peer.map(|p| p.ip()), &front.trusted);
    let rec = Record::new(
        &id.request_id,
        id.client,
        parts.method.as_str(),
        parts.uri.path(),
    );
    let json = wants_json(parts.headers.get(ACCEPT).map(HeaderValue::as_bytes));
    // If hyper drops this future (the client went away mid-request), the guard still
    // writes the request's log line, as 499 `client-closed`.
    let mut guard = DropGuard {
        log: &front.log,
        rec: Some(rec),
    };
    let rec = guard.rec.as_mut().expect("set just above");
    let result = stages(&front, &conn, &id, parts, body, rec).await;
    let mut rec = guard.rec.take().expect("taken only here");
    let mut resp = match result.and_then(attribute_worker_answer) {
        Ok(resp) => resp,
        Err(rej) => {
            rec.class = Some(rej.class);
            rej.respond(&id.request_id, json)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id.request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(front.log.wrap(resp, rec))
}

async fn stages(
    front: &Front,
    conn: &ConnInfo,
    id: &Identity,
    parts: Parts,
    body: Incoming,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, Rejection> {
    check_head(front, &parts)?;
    let route = front.routes.find(parts.uri.path());
    let deadline = route.request_timeout.map(|t| rec.arrived + t);
    let deadline_unix = route.request_timeout.map(|t| {
        (rec.time + t)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    });

    let (length, body) = read_body(front, &parts, body).await?;

    if let Backend::Upstream(u) = &front.backend {
        if u.protocol() == UpstreamProtocol::Http {
            let head = forwarded_head(parts, conn, id);
            let method = head.method.clone();
            return dispatch(
                front,
                &conn.watch,
                route,
                deadline,
                Job {
                    method: &method,
                    work: Work::Http(head),
                    body,
                },
                rec,
            )
            .await;
        }
    }
    let mut packet = Vec::with_capacity(1024);
    let facts = Facts {
        client: id.client,
        scheme: id.scheme,
        request_id: &id.request_id,
        deadline_unix,
    };
    environ::encode(&mut packet, &parts, conn, length, facts)
        .map_err(|e| Rejection::new(ErrorClass::HeaderTooLarge, e.to_string()))?;
    dispatch(
        front,
        &conn.watch,
        route,
        deadline,
        Job {
            method: &parts.method,
            work: Work::Packet(packet),
            body,
        },
        rec,
    )
    .await
}

/// The request head for an HTTP upstream: hop-by-hop headers dropped, and
/// X-Forwarded-For / -Proto and X-Request-ID set as NGINX's `proxy_set_header` lines
/// usually do.
fn forwarded_head(mut parts: Parts, conn: &ConnInfo, id: &Identity) -> Parts {
    for h in weir_pool::HOP_BY_HOP {
        parts.headers.remove(h);
    }
    let trusted_chain = id.client != conn.peer.map(|p| p.ip());
    let mut xff = String::new();
    if trusted_chain {
        if let Some(v) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            xff.push_str(v);
            xff.push_str(", ");
        }
    }
    match conn.peer {
        Some(p) => xff.push_str(&p.ip().to_string()),
        None => xff.push_str("unix"),
    }
    let h = &mut parts.headers;
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(id.scheme));
    if let Ok(v) = HeaderValue::from_str(&id.request_id) {
        h.insert("x-request-id", v);
    }
    parts
}

/// The route slot, the worker, the response head: shared by the HTTP and uwsgi listeners.
pub async fn dispatch(
    front: &Front,
    watch: &ClientWatch,
    route: &Route,
    deadline: Option<Instant>,
    job: Job<'_>,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, Rejection> {
    let Job { method, work, body } = job;
    let queued_at = Instant::now();
    rec.queue_started = Some(queued_at);
    let reject = |e: DispatchError| Rejection::from_dispatch(&e, front.retry_after);
    // Waiting for a route slot is waiting in the queue: it counts against the queue's
    // bound and depth. A client that leaves meanwhile is dropped here.
    let admit = async {
        let _in_queue = match (&front.backend, route.must_wait()) {
            (Backend::Workers(pool), true) => Some(pool.enter_queue().map_err(reject)?),
            _ => None,
        };
        route
            .admit(front.queue_timeout, deadline)
            .await
            .map_err(|w| match w {
                RouteWait::Timeout(d) => reject(DispatchError::QueueTimeout(d)),
                RouteWait::Deadline => reject(DispatchError::DeadlineExceeded),
            })
    };
    let permit = tokio::select! {
        biased;
        p = admit => p,
        () = watch.gone() => Err(client_gone()),
    };
    let permit = match permit {
        Ok(p) => p,
        Err(r) => {
            rec.queued = queued_at.elapsed();
            return Err(r);
        }
    };
    let pool = match &front.backend {
        Backend::Workers(pool) => pool,
        Backend::Upstream(u) => {
            rec.queued = queued_at.elapsed();
            let started = Instant::now();
            let body = match body {
                RequestBody::Empty => Bytes::new(),
                RequestBody::Full(b) => b,
                RequestBody::Stream { body, .. } => {
                    body.collect().await.map(|c| c.to_bytes()).map_err(|e| {
                        Rejection::new(
                            ErrorClass::BadRequest,
                            format!("the request body could not be read: {e}"),
                        )
                    })?
                }
            };
            let req = match work {
                Work::Packet(packet) => UpstreamRequest::Uwsgi { packet, body },
                Work::Http(head) => UpstreamRequest::Http(Request::from_parts(head, body)),
            };
            let resp = u.dispatch(req, is_idempotent(method), deadline).await;
            drop(permit);
            rec.worker = started.elapsed();
            return resp.map_err(|e| Rejection::from_upstream(&e, front.retry_after));
        }
    };
    let Work::Packet(packet) = work else {
        unreachable!("an HTTP head is built only for HTTP upstreams")
    };
    let req = WorkerRequest {
        packet,
        body,
        harakiri: route.harakiri,
        deadline,
        hold: permit.map(|p| Box::new(p) as Box<dyn std::any::Any + Send>),
        body_timeout: front.body_timeout,
        service: Some(route.service.clone()),
    };
    // Waiting for a worker: likewise. The worker that frees starts the request itself.
    let started = tokio::select! {
        biased;
        s = pool.submit(req) => s.map_err(reject),
        () = watch.gone() => Err(client_gone()),
    };
    rec.queued = queued_at.elapsed();
    let started = started?;
    let at = Instant::now();
    // A request written behind a busy worker's current one has not started yet: if its
    // client leaves now, dropping `started` takes it back, so it is never run.
    let resp = if started.is_offered() {
        tokio::select! {
            biased;
            r = started.response() => r,
            () = watch.gone() => {
                rec.worker = at.elapsed();
                return Err(client_gone());
            }
        }
    } else {
        started.response().await
    };
    rec.worker = at.elapsed();
    // An offered request waited until its worker started it (or until its wait ran out).
    match &resp {
        Ok(r) => {
            if let Some(weir_pool::StartedAt(t)) = r.extensions().get() {
                rec.queued = t.saturating_duration_since(queued_at);
                rec.worker = t.elapsed();
            }
        }
        Err(DispatchError::QueueTimeout(_) | DispatchError::QueueShed { .. }) => {
            rec.queued = queued_at.elapsed();
            rec.worker = Duration::ZERO;
        }
        Err(_) => {}
    }
    resp.map_err(reject)
}

/// A worker's own answers (the app raised before its response started; a prefetched
/// request whose deadline passed before the worker got to it; a packet it could not read)
/// carry `x-weir-error`; they get the same body as every weir-made answer (JSON or text,
/// with the request id) and their class reaches the log, so the contract holds whichever
/// part of weir answered.
pub fn attribute_worker_answer(
    resp: Response<ResponseBody>,
) -> Result<Response<ResponseBody>, Rejection> {
    let Some(class) = resp
        .headers()
        .get("x-weir-error")
        .and_then(|v| ErrorClass::from_name(v.as_bytes()))
    else {
        return Ok(resp);
    };
    let message = match class {
        ErrorClass::AppException => "the app raised an exception before starting its response; the traceback is in weir's log under this request id".to_string(),
        ErrorClass::Deadline => weir_pool::DispatchError::DeadlineExceeded.to_string(),
        ErrorClass::BadRequest => "the worker could not read the request".to_string(),
        other => format!("the worker answered {other}"),
    };
    Err(Rejection::new(class, message))
}

/// `max_header_size` counted on the parsed head (the framing gate counts the raw bytes;
/// Content-Length with Transfer-Encoding and the other framing checks are the gate's, see
/// `crate::gate`).
fn check_head(front: &Front, parts: &Parts) -> Result<(), Rejection> {
    let h = &parts.headers;
    let size = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12
        + h.iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2;
    if size > front.max_header_size {
        return Err(Rejection::new(
            ErrorClass::HeaderTooLarge,
            format!(
                "the request head is {size} bytes, over max_header_size ({})",
                front.max_header_size
            ),
        )
        .closing());
    }
    Ok(())
}

/// Logs a request whose handler was dropped before it produced a response.
struct DropGuard<'a> {
    log: &'a Arc<AccessLog>,
    rec: Option<Record>,
}

impl Drop for DropGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            let r = client_gone();
            rec.class = Some(r.class);
            rec.status = r.status().as_u16();
            self.log.abandoned(rec);
        }
    }
}

/// The client closed its connection while its request waited: NGINX's 499, for the log
/// and metrics only (nobody reads the answer).
fn client_gone() -> Rejection {
    Rejection::new(
        ErrorClass::ClientClosed,
        "the client closed the connection while the request waited for a worker",
    )
}

fn too_large(max: u64) -> Rejection {
    Rejection::new(
        ErrorClass::BodyTooLarge,
        format!("the request body is over max_body_size ({max} bytes)"),
    )
}

/// The body stage: limits, then small bodies read whole (a chunked body read whole gets
/// a CONTENT_LENGTH, as NGINX does), large ones streamed.
async fn read_body(
    front: &Front,
    parts: &Parts,
    body: Incoming,
) -> Result<(BodyLength, RequestBody), Rejection> {
    let max = front.max_body_size;
    let chunked = parts.headers.contains_key(TRANSFER_ENCODING);
    let declared = body.size_hint().exact().filter(|_| !chunked);
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    if !chunked
        && (declared == Some(0)
            || (declared.is_none() && !parts.headers.contains_key(CONTENT_LENGTH)))
        && body.is_end_stream()
    {
        return Ok((BodyLength::None, RequestBody::Empty));
    }
    if let Some(n) = declared {
        if n > BODY_BUFFER_LIMIT {
            let limited = Limited::new(body, max as usize).map_err(|e| e as BoxError);
            return Ok((
                BodyLength::Known(n),
                RequestBody::Stream {
                    body: Box::pin(limited),
                    framed: false,
                },
            ));
        }
    }
    // Read up to the buffer limit, within client_body_timeout.
    let mut body = body;
    let mut buf = BytesMut::new();
    let read = tokio::time::timeout(front.body_timeout, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Rejection::new(
                    ErrorClass::BadRequest,
                    format!("malformed request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > max {
                    return Err(too_large(max));
                }
                if buf.len() as u64 > BODY_BUFFER_LIMIT {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .await
    .map_err(|_| {
        Rejection::new(
            ErrorClass::ClientTimeout,
            format!(
                "the request body did not arrive within client_body_timeout ({:?})",
                front.body_timeout
            ),
        )
    })??;
    let first = buf.freeze();
    if read {
        let len = first.len() as u64;
        return Ok((
            if len == 0 && !chunked {
                BodyLength::None
            } else {
                BodyLength::Known(len)
            },
            if len == 0 {
                RequestBody::Empty
            } else {
                RequestBody::Full(first)
            },
        ));
    }
    // Larger than the buffer and of unknown length: stream the rest in frames.
    let rest = Limited::new(body, (max as usize).saturating_sub(first.len()));
    Ok((
        BodyLength::Chunked,
        RequestBody::Stream {
            body: Box::pin(Prefixed {
                first: Some(first),
                rest,
            }),
            framed: true,
        },
    ))
}

/// A body whose first bytes were already read.
struct Prefixed {
    first: Option<Bytes>,
    rest: Limited<Incoming>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Now as unix seconds (for deadlines computed outside [`handle`]).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

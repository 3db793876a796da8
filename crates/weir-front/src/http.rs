//! An HTTP/1.1 connection (hyper) and the request handler (also HTTP/2's, per stream:
//! [`crate::http2`]). The handler runs the stages
//! of the request path in order; each either passes the request on or ends it with a
//! [`Rejection`]:
//!
//! identity ([`crate::identity`]) -> head checks -> route ([`crate::route`]) -> limits
//! ([`crate::limit`]) -> static files ([`crate::static_files`]: answered here) -> cache
//! ([`crate::cache`]) -> body ([`crate::request_body`]: limits, buffering) -> packet ([`crate::environ`]) -> route
//! slot, queue, worker or upstream ([`crate::dispatch`]) -> response head; the access log
//! line is written when the body is done ([`crate::access_log`]).

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use weir_errors::ErrorClass;

use http::header::{HeaderValue, ACCEPT, ACCEPT_ENCODING};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;
use weir_config::UpstreamProtocol;
use weir_pool::ResponseBody;

use crate::access_log::{AccessLog, Logged, Record};
use crate::cache::{self, Before};
use crate::dispatch::{answer, client_gone, dispatch, reply, Job, Work};
use crate::environ::{self, ConnInfo, Facts};
use crate::front::{Backend, Front};
use crate::gate::{GatedIo, RefusalLog};
use crate::identity::{identify, Identity};
use crate::rejection::{wants_json, Rejection};
use crate::request_body::read_body;
/// How long a kept-alive client may send nothing after an answer before its connection
/// is parked: hyper's connection and its buffers are let go, and the next request gets a
/// new one (see [`crate::gate`]). A client sending its requests back to back keeps its
/// hyper connection; one that pauses (a browser, an idle pool) costs about 2 KiB.
const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a request head already on its way when the drain begins still has to come
/// whole (within `client_header_timeout` too) before the connection closes.
const DRAIN_HEAD_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The service future, boxed: hyper can then hand the connection back between requests
/// (`poll_without_shutdown` wants an `Unpin` future).
type Handling = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Logged>, Infallible>> + Send>,
>;

/// Serves one HTTP/1.1 connection until the client closes it or the drain signal asks
/// it to finish its current request and close. hyper serves the connection only while
/// there is a request to serve: a whole head is read by the gate first, and a client idle
/// at a request boundary for [`PARK_AFTER`] is parked without hyper (the gate's module
/// doc).
pub fn serve_connection<S>(
    io: S,
    conn: ConnInfo,
    front: Arc<Front>,
    mut drain: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set up here, not in the future: the connection's task is sized by what the future
    // holds across its waits (a parked connection keeps it for as long as it lives), so
    // it holds no copy of its arguments and no hyper builder (made per hyper connection).
    let conn = Arc::new(conn);
    let peer = conn.peer.map(|p| p.ip());
    let log = front.log.clone();
    let hung_up = front.client_refusals.is_some().then(|| HungUp {
        front: front.clone(),
        conn: conn.clone(),
    });
    let header_timeout = front.header_timeout;
    // A parked connection has been idle for PARK_AFTER already.
    let keepalive_wait = front.keepalive_timeout.saturating_sub(PARK_AFTER);
    // Set when the client took nothing for send_timeout: the connection is dropped and
    // the request it was answering is logged `client-timeout`.
    let stalled = Arc::new(AtomicBool::new(false));
    // Set when an answer says `Connection: close`: hyper closes after it, and so does
    // the connection (it is not parked).
    let close_after = Arc::new(AtomicBool::new(false));
    let mut io = GatedIo::new(
        io,
        front.max_header_size,
        RefusalLog {
            log: log.clone(),
            peer,
        },
    )
    .send_timeout(front.send_timeout, stalled.clone())
    .park_after(PARK_AFTER);
    let svc = {
        let close_after = close_after.clone();
        let front = front.clone();
        service_fn(move |req| -> Handling {
            let (front, conn, stalled) = (front.clone(), conn.clone(), stalled.clone());
            let close_after = close_after.clone();
            Box::pin(async move {
                let mut resp = handle(front, conn, req).await;
                if let Ok(r) = &mut resp {
                    if r.headers()
                        .get(http::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
                    {
                        close_after.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    r.body_mut().mark_send_timeout(stalled);
                }
                resp
            })
        })
    };
    async move {
        let _hung_up = hung_up;
        let mut first = true;
        loop {
            // A kept-alive connection waits keepalive_timeout for its next request to begin
            // (NGINX's); a new one has client_header_timeout for its whole first head.
            if !first {
                let began = tokio::select! {
                    r = tokio::time::timeout(keepalive_wait, io.first_byte()) => r,
                    _ = drain.wait_for(|d| *d) => break,
                };
                match waited(began, "no new request within keepalive_timeout") {
                    Waited::Go => {}
                    Waited::Close => break,
                    Waited::Gone => return,
                }
            }
            // A whole request head, read without hyper, within client_header_timeout. A
            // request already on its way when the drain begins (a new connection's first,
            // accepted just before; a kept-alive one's whose first byte came) is still
            // read and answered (by the workers, or `503 shutting-down` once they take no
            // new work): the head gets DRAIN_HEAD_GRACE more, then the connection
            // closes. Only a kept-alive connection idle at a request boundary closes at
            // once (above), as NGINX's do.
            first = false;
            let head = tokio::select! {
                r = tokio::time::timeout(header_timeout, io.next_head()) => r,
                () = async {
                    let _ = drain.wait_for(|d| *d).await;
                    tokio::time::sleep(DRAIN_HEAD_GRACE).await;
                } => break,
            };
            match waited(head, "no whole request head within client_header_timeout") {
                Waited::Go => {}
                Waited::Close => break,
                Waited::Gone => return,
            }
            io.unpark();
            let mut connection =
                Box::new(http1_builder(&front).serve_connection(TokioIo::new(io), svc.clone()));
            // The connection first: hyper must have read the head the gate holds before a
            // drain's graceful shutdown, or it takes the connection for idle and closes it
            // with the request unanswered.
            let done = tokio::select! {
                biased;
                r = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => Some(r),
                _ = drain.wait_for(|d| *d) => None,
            };
            let draining = done.is_none();
            let done = match done {
                Some(r) => r,
                None => {
                    // Draining: the request in progress is answered, then the connection closes.
                    std::pin::Pin::new(&mut *connection).graceful_shutdown();
                    std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await
                }
            };
            if let Err(e) = done {
                log_refusal(&log, peer, &e);
                debug!("connection ended: {e}");
                return;
            }
            let parts = connection.into_parts();
            io = parts.io.into_inner();
            io.unread(&parts.read_buf);
            let again = io.parked()
                && io.keeps_alive()
                && !draining
                && !close_after.load(std::sync::atomic::Ordering::Relaxed);
            if !again {
                break;
            }
        }
        // Closing: weir's own answer to a refused head first, then the end of output, then a
        // moment of lingering (the gate's shutdown).
        use tokio::io::AsyncWriteExt as _;
        if let Err(e) = io.shutdown().await {
            debug!("connection shutdown: {e}");
        }
    }
}

/// With `[queue] rate_overload`: a connection that ends within the retry window of a
/// refusal on it notes its client's address, so that the client's next connection is
/// taken for a reconnect to retry, not new demand (`environ::ClientRefusals`).
struct HungUp {
    front: Arc<Front>,
    conn: Arc<ConnInfo>,
}

impl Drop for HungUp {
    fn drop(&mut self) {
        let (Some(refusals), Some(peer)) = (&self.front.client_refusals, self.conn.peer) else {
            return;
        };
        let now = Instant::now();
        if self.conn.refused.is_retry(now) {
            refusals.mark(peer.ip(), now);
        }
    }
}

/// hyper's HTTP/1 connection settings, for each hyper connection a client gets.
fn http1_builder(front: &Front) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.header_timeout)
        .max_buf_size(front.max_header_size.max(8192))
        // The gate ends hyper's input after the last good request when it refuses the
        // next one, or when the client is idle; hyper must still answer the request in
        // progress. Clients that really leave are seen by the ClientWatch.
        .half_close(true)
        // `keepalive_timeout = 0`: every answer says `Connection: close` (NGINX's).
        .keep_alive(!front.keepalive_timeout.is_zero());
    builder
}

/// What a connection does after waiting for its client.
enum Waited {
    /// Something came: go on.
    Go,
    /// Close it (weir's answer to a refused head first): the client closed, a head was
    /// refused, or the wait timed out.
    Close,
    /// The connection failed: nothing more to write.
    Gone,
}

/// Reads the outcome of a bounded wait for the client; `late` is logged on a timeout.
fn waited(r: Result<std::io::Result<bool>, tokio::time::error::Elapsed>, late: &str) -> Waited {
    match r {
        Ok(Ok(true)) => Waited::Go,
        Ok(Ok(false)) => Waited::Close,
        Ok(Err(e)) => {
            debug!("connection ended: {e}");
            Waited::Gone
        }
        Err(_) => {
            debug!("{late}: closing");
            Waited::Close
        }
    }
}

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
    let mut id = identify(&parts.headers, conn.peer.map(|p| p.ip()), &front.trusted);
    if conn.tls {
        id.scheme = "https";
    }
    let mut rec = Record::new(
        &id.request_id,
        id.client,
        parts.method.as_str(),
        parts.uri.path(),
    );
    rec.protocol = match parts.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let json = wants_json(parts.headers.get(ACCEPT).map(HeaderValue::as_bytes));
    // For the compression stage, after the others have taken the request.
    let negotiation = front.compression.as_ref().map(|_| {
        (
            parts.method.clone(),
            parts.headers.get(ACCEPT_ENCODING).cloned(),
        )
    });
    // If hyper drops this future (the client went away mid-request), the guard still
    // writes the request's log line, as 499 `client-closed`.
    let mut guard = DropGuard {
        log: &front.log,
        rec: Some(rec),
    };
    let rec = guard.rec.as_mut().expect("set just above");
    let mut result = stages(&front, &conn, &id, parts, body, rec).await;
    if result.as_ref().is_err_and(Rejection::is_queue_refusal) {
        conn.refused.mark(Instant::now());
    }
    let rec = guard.rec.take().expect("taken only here");
    if let Some(update) = result
        .as_mut()
        .ok()
        .and_then(|r| r.extensions_mut().remove::<cache::BackgroundUpdate>())
    {
        let (front, conn, id) = (front.clone(), conn.clone(), id.clone());
        tokio::spawn(async move { background_update(front, &conn, id, update).await });
    }
    let mut rec = rec;
    let resp = answer(result, &id.request_id, json, &mut rec);
    // Compression: after the cache's response side (the cache keeps the identity body),
    // before the log's wrapping (the log counts the bytes sent).
    Ok(match (&front.compression, negotiation) {
        (Some(c), Some((method, ae))) => front.log.wrap(c.apply(&method, ae.as_ref(), resp), rec),
        _ => front.log.wrap(resp, rec),
    })
}

async fn stages(
    front: &Front,
    conn: &ConnInfo,
    id: &Identity,
    mut parts: Parts,
    body: Incoming,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, Rejection> {
    check_head(front, &parts)?;
    let route = front.routes.find(parts.uri.path());

    // The limits come before the body is read: a refused request's upload is not taken.
    let mut fair_key = 0;
    if front.limits.applies(route) {
        let view = crate::limit::HttpView::new(&parts, id.client, id.scheme);
        crate::limit::check(front, route, &view, &conn.watch, rec).await?;
        fair_key = front.limits.fair_key(&view);
    }

    // Static files: answered here from their directory, never by a worker.
    if let Some(st) = &front.statics {
        if let Some(mount) = st.find(parts.uri.path()) {
            rec.static_file = true;
            return crate::static_files::serve(st, mount, &parts, &id.request_id).await;
        }
    }

    // The cache: a fresh entry answers here; otherwise a plan for the response.
    let mut plan = None;
    let mut invalidate = None;
    if let (Some(fc), Some(rc)) = (&front.cache, &route.cache) {
        let keys = rc.keys(&crate::limit::HttpView::new(&parts, id.client, id.scheme));
        match cache::before(fc, rc, &mut parts, keys, rec).await {
            Before::Answer(resp) => return Ok(resp),
            Before::Forward(p) => plan = Some(p),
            Before::Pass { invalidate: k } => invalidate = k,
        }
    }

    let (length, body) = read_body(front, &parts, body).await?;
    let result = forward(front, conn, id, route, parts, length, body, fair_key, rec).await;
    if let Some(fc) = &front.cache {
        if let Some(plan) = plan {
            return cache::after(fc, plan, result, rec);
        }
        if let (Some(key), Ok(resp)) = (invalidate, &result) {
            cache::invalidate(fc, key, resp.status()).await;
        }
    }
    result
}

/// The request's way to its backend: a uwsgi packet for the workers or a uwsgi upstream,
/// the request head for an HTTP upstream; then dispatch.
#[allow(clippy::too_many_arguments)]
async fn forward(
    front: &Front,
    conn: &ConnInfo,
    id: &Identity,
    route: &crate::route::Route,
    parts: Parts,
    length: environ::BodyLength,
    body: weir_pool::RequestBody,
    fair_key: u64,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, Rejection> {
    let deadline = route.request_timeout.map(|t| rec.arrived + t);
    // A retry: on the connection just refused, or the first request of a new connection
    // from an address whose connection just closed after a refusal (with rate overload
    // on; environ::ClientRefusals).
    let retry = conn.refused.is_retry(rec.arrived)
        || front.client_refusals.as_ref().is_some_and(|refusals| {
            conn.refused.first_request()
                && conn
                    .peer
                    .is_some_and(|p| refusals.is_retry(p.ip(), rec.arrived))
        });
    let deadline_unix = route.request_timeout.map(|t| {
        (rec.time + t)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    });
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
                    fair_key,
                    retry,
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
            fair_key,
            retry,
        },
        rec,
    )
    .await
}

/// A background update (`background_update`): the request for the expired entry, sent
/// after its client was answered with the stale copy, with no client to watch; its log
/// line carries the client request's id with `-update`.
async fn background_update(
    front: Arc<Front>,
    conn: &ConnInfo,
    id: Identity,
    update: cache::BackgroundUpdate,
) {
    let Some((parts, plan)) = update.take() else {
        return;
    };
    let Some(fc) = &front.cache else { return };
    let conn = ConnInfo {
        peer: conn.peer,
        local: conn.local,
        watch: crate::conn_io::ClientWatch::None,
        tls: conn.tls,
        refused: Default::default(),
    };
    let request_id = format!("{}-update", id.request_id);
    let mut rec = Record::new(&request_id, id.client, "GET", parts.uri.path());
    let route = front.routes.find(parts.uri.path());
    let body = weir_pool::RequestBody::Empty;
    let result = forward(
        &front,
        &conn,
        &id,
        route,
        parts,
        environ::BodyLength::None,
        body,
        0,
        &mut rec,
    )
    .await;
    let result = cache::after(fc, plan, result, &mut rec);
    // Read to its end: a streamed answer is stored when it is whole, and the log line is
    // written when the body is done.
    let resp = reply(&front.log, result, &request_id, false, rec);
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
}

/// The request head for an HTTP upstream: hop-by-hop headers dropped, and
/// X-Forwarded-For / -Proto and X-Request-ID set as NGINX's `proxy_set_header` lines
/// usually do.
fn forwarded_head(mut parts: Parts, conn: &ConnInfo, id: &Identity) -> Parts {
    for h in weir_http1::HOP_BY_HOP {
        parts.headers.remove(h);
    }
    // An HTTP/2 request goes on as HTTP/1.1, its :authority as the Host header.
    if parts.version == http::Version::HTTP_2 {
        parts.version = http::Version::HTTP_11;
        if !parts.headers.contains_key(http::header::HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(http::header::HOST, v);
            }
        }
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

/// Now as unix seconds (for deadlines computed outside [`handle`]).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

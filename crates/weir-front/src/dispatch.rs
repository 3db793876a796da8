//! The dispatch stage of the request path, shared by the HTTP and uwsgi listeners: the
//! route's concurrency slot, the queue, and a backend (a worker of the pool, or an
//! external upstream), up to the response head; then the attribution of a worker's own
//! error answers. A client that leaves while its request waits ends it here (499).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::BodyExt;
use weir_errors::ErrorClass;
use weir_pool::{DispatchError, RequestBody, ResponseBody, WorkerRequest};
use weir_upstream::{is_idempotent, UpstreamRequest};

use crate::access_log::{AccessLog, Logged, Record};
use crate::conn_io::ClientWatch;
use crate::front::{Backend, Front};
use crate::rejection::Rejection;
use crate::route::{Route, RouteWait};

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
            // The route's slot is held to the end of the response body, as for a worker.
            let hold = permit.map(|p| Box::new(p) as Box<dyn std::any::Any + Send>);
            let resp = u.dispatch(req, is_idempotent(method), deadline, hold).await;
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

/// The client closed its connection while its request waited: NGINX's 499, for the log
/// and metrics only (nobody reads the answer).
pub(crate) fn client_gone() -> Rejection {
    Rejection::new(
        ErrorClass::ClientClosed,
        "the client closed the connection while the request waited for a worker",
    )
}

/// The tail every request ends in, on either listener: a worker's own error answers
/// attributed, a rejection turned into weir's answer (its class in the log record), the
/// request id on the response, and the response wrapped so its access log line is written
/// when its body is done.
pub fn reply(
    log: &Arc<AccessLog>,
    result: Result<Response<ResponseBody>, Rejection>,
    request_id: &str,
    wants_json: bool,
    mut rec: Record,
) -> Response<Logged> {
    let mut resp = match result.and_then(attribute_worker_answer) {
        Ok(resp) => resp,
        Err(rej) => {
            rec.class = Some(rej.class);
            rej.respond(request_id, wants_json)
        }
    };
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    log.wrap(resp, rec)
}

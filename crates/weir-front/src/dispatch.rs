//! The admission and dispatch stages of the request path, shared by the HTTP and uwsgi
//! listeners: the route's concurrency slot (waiting in the admission queue), then the
//! backend (`backend::Dispatch`: a worker of the pool, or an external upstream), up to the
//! response head; then the attribution of a worker's own error answers and the one reply
//! tail. A client that leaves while its request waits ends it here (499).

use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::Response;
use weir_errors::ErrorClass;
use weir_pool::{DispatchError, RequestBody, ResponseBody};

use crate::access_log::{AccessLog, Logged, Record};
use crate::backend::{Admitted, Dispatch};
use crate::conn_io::ClientWatch;
use crate::front::Front;
use crate::rejection::Rejection;
use crate::route::Route;

/// One request ready for a backend.
#[derive(Debug)]
pub struct Job<'a> {
    /// Its method (retries depend on it).
    pub method: &'a http::Method,
    /// What the backend is sent.
    pub work: Work,
    /// Its body.
    pub body: RequestBody,
    /// Its fairness key (`[queue] fair_key`, hashed; 0 when fair queueing is off).
    pub fair_key: u64,
    /// Its client's retry of a request the queue refused a moment ago on the same
    /// connection (`environ::LastRefusal`): not new demand.
    pub retry: bool,
}

/// What a backend is sent.
#[derive(Debug)]
pub enum Work {
    /// A uwsgi packet (workers, uwsgi upstreams).
    Packet(Vec<u8>),
    /// An HTTP request head (HTTP upstreams).
    Http(http::request::Parts),
}

/// The admission stage and the backend, up to the response head; shared by the HTTP and
/// uwsgi listeners.
pub async fn dispatch(
    front: &Front,
    watch: &ClientWatch,
    route: &Route,
    deadline: Option<Instant>,
    job: Job<'_>,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, Rejection> {
    let queued_at = Instant::now();
    rec.queue_started = Some(queued_at);
    // Waiting for a route slot is waiting in the queue: it counts against the backend
    // queue's bound and depth. A client that leaves meanwhile is dropped here.
    let admit = async {
        let _in_queue = match route.must_wait() {
            true => Some(front.backend.enter_queue(front)?),
            false => None,
        };
        route
            .admit(deadline, job.fair_key)
            .await
            .map_err(|r| Rejection::from_dispatch(&DispatchError::from(r), front.retry_after))
    };
    let hold = tokio::select! {
        biased;
        p = admit => p,
        () = watch.gone() => Err(client_gone()),
    };
    let hold = match hold {
        Ok(p) => p,
        Err(r) => {
            rec.queued = queued_at.elapsed();
            return Err(r);
        }
    };
    front
        .log
        .metrics
        .backend_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let admitted = Admitted {
        route,
        deadline,
        job,
        hold,
        queued_at,
    };
    front.backend.send(front, watch, admitted, rec).await
}

/// A worker's own answers (the app raised before its response started; a prefetched
/// request whose deadline passed before the worker got to it; a packet it could not read)
/// carry `x-weir-error`; they get the same body as every weir-made answer (JSON or text,
/// with the request id) and their class reaches the log, so the contract holds whichever
/// part of weir answered. The answers to app exceptions the error map matched
/// (`ErrorClass::mapped`) bring their status and Retry-After in the head too.
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
        ErrorClass::DbConflict => "the database refused the request's transaction (a lock conflict); retrying may succeed".to_string(),
        ErrorClass::DbUnavailable => "the app's database is unavailable".to_string(),
        ErrorClass::DbTimeout => "a database statement ran out of time".to_string(),
        ErrorClass::AppMapped => "the app raised an exception that weir's error map answers with this status; the traceback is in weir's log under this request id".to_string(),
        other => format!("the worker answered {other}"),
    };
    let mut rej = Rejection::new(class, message);
    if class.mapped() {
        // The error map's entry chose the status and Retry-After; the worker's head
        // carries them (weir-worker's `mapped_response`).
        let s = resp.status();
        if s.is_client_error() || s.is_server_error() {
            rej.status = Some(s);
        }
        rej.retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
    }
    Err(rej)
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
    let resp = answer(result, request_id, wants_json, &mut rec);
    log.wrap(resp, rec)
}

/// [`reply`] without the access log's wrapping, for a listener with a step between the
/// two (the HTTP listener's compression): the worker's own error answers attributed, a
/// rejection turned into weir's answer (its class in `rec`), the request id set.
pub fn answer(
    result: Result<Response<ResponseBody>, Rejection>,
    request_id: &str,
    wants_json: bool,
    rec: &mut Record,
) -> Response<ResponseBody> {
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
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn worker_answer(status: u16, headers: &[(&str, &str)]) -> Response<ResponseBody> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(ResponseBody::full("x")).unwrap()
    }

    #[test]
    fn mapped_answers_keep_their_status_and_retry_after() {
        let rej = attribute_worker_answer(worker_answer(
            409,
            &[("x-weir-error", "db-conflict"), ("retry-after", "2")],
        ))
        .unwrap_err();
        assert_eq!(rej.class, ErrorClass::DbConflict);
        assert_eq!(rej.status(), StatusCode::CONFLICT);
        assert_eq!(rej.retry_after, Some(2));
        let resp = rej.respond("rid", true);
        assert_eq!(resp.headers()["x-weir-error"], "db-conflict");
        assert_eq!(resp.headers()["retry-after"], "2");

        // an entry's own status and Retry-After on app-mapped
        let rej = attribute_worker_answer(worker_answer(
            418,
            &[("x-weir-error", "app-mapped"), ("retry-after", "5")],
        ))
        .unwrap_err();
        assert_eq!(rej.status().as_u16(), 418);
        assert_eq!(rej.retry_after, Some(5));

        // no Retry-After from the worker: none
        let rej = attribute_worker_answer(worker_answer(504, &[("x-weir-error", "db-timeout")]))
            .unwrap_err();
        assert_eq!(rej.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(rej.retry_after, None);

        // a status that is no error is not taken: the class's
        let rej =
            attribute_worker_answer(worker_answer(200, &[("x-weir-error", "db-unavailable")]))
                .unwrap_err();
        assert_eq!(rej.status(), StatusCode::SERVICE_UNAVAILABLE);

        // the other classes keep theirs, whatever the head says
        let rej = attribute_worker_answer(worker_answer(
            418,
            &[("x-weir-error", "app-exception"), ("retry-after", "3")],
        ))
        .unwrap_err();
        assert_eq!(rej.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rej.retry_after, None);

        assert!(attribute_worker_answer(worker_answer(409, &[])).is_ok());
    }
}

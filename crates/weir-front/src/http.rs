//! An HTTP/1.1 connection (hyper) and the request handler: identity, packet, body,
//! dispatch, and the one place a failure becomes a [`Rejection`].

use std::convert::Infallible;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;
use weir_pool::{Pool, RequestBody, ResponseBody, WorkerRequest};

use crate::environ::{self, BodyLength, ConnInfo};
use crate::rejection::{wants_json, Rejection};
use crate::request_id;

/// Request bodies up to this size are read whole before a worker is taken, so a slow
/// upload never holds a worker (NGINX's request buffering); larger ones stream.
pub const BODY_BUFFER_LIMIT: u64 = 1 << 20;

/// What the handler needs, shared by every connection.
#[derive(Debug)]
pub struct Front {
    /// The worker pool.
    pub pool: Pool,
    /// Harakiri for every request.
    pub harakiri: Option<Duration>,
    /// Retry-After seconds for 503s.
    pub retry_after: u64,
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
    let conn = Arc::new(conn);
    let svc = service_fn(move |req| handle(front.clone(), conn.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(connection);
    let draining = tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
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

/// One request: never fails at the hyper level; every failure is an answer.
pub async fn handle(
    front: Arc<Front>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let rid = request_id::make();
    let json = wants_json(parts.headers.get(ACCEPT).map(HeaderValue::as_bytes));
    let reject = |r: Rejection| Ok(r.respond(&rid, json));

    let chunked = parts.headers.contains_key(TRANSFER_ENCODING);
    let exact = body.size_hint().exact();
    let (length, body) = match (chunked, exact) {
        (false, Some(0)) | (false, None) if body.is_end_stream() => {
            (BodyLength::None, RequestBody::Empty)
        }
        (false, Some(n)) if n <= BODY_BUFFER_LIMIT => match body.collect().await {
            Ok(c) => {
                let b: Bytes = c.to_bytes();
                (BodyLength::Known(b.len() as u64), RequestBody::Full(b))
            }
            Err(e) => {
                return reject(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("the request body could not be read: {e}"),
                ))
            }
        },
        (false, Some(n)) => (
            BodyLength::Known(n),
            RequestBody::Stream {
                body: Box::pin(body.map_err(|e| Box::new(e) as BoxError)),
                framed: false,
            },
        ),
        _ => (
            BodyLength::Chunked,
            RequestBody::Stream {
                body: Box::pin(body.map_err(|e| Box::new(e) as BoxError)),
                framed: true,
            },
        ),
    };

    let mut packet = Vec::with_capacity(1024);
    if let Err(e) = environ::encode(&mut packet, &parts, &conn, length, &rid, None) {
        return reject(Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-too-large",
            e.to_string(),
        ));
    }
    let request = WorkerRequest {
        packet,
        body,
        harakiri: front.harakiri,
        deadline: None,
    };
    match front.pool.dispatch(request).await {
        Ok(mut resp) => {
            if let Ok(v) = HeaderValue::from_str(&rid) {
                resp.headers_mut().insert("x-request-id", v);
            }
            Ok(resp)
        }
        Err(e) => reject(Rejection::from_dispatch(&e, front.retry_after)),
    }
}

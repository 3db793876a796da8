//! The admin listener: `/metrics` (Prometheus text), `/livez` (the process is up),
//! `/readyz` (a worker is ready and, when `[app] ready_check` is set, that check passes
//! in a worker). Served only on `[admin] listen`, never on the public listeners.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use weir_pool::ResponseBody;

use crate::http::{Backend, Front};

/// Serves one admin connection.
pub async fn serve_connection<S>(io: S, front: Arc<Front>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(front.clone(), req));
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    // A failed admin connection only concerns that scraper.
    let _ = b.serve_connection(TokioIo::new(io), svc).await;
}

fn text(
    status: StatusCode,
    body: impl Into<String>,
    ctype: &'static str,
) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn handle(
    front: Arc<Front>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            front.log.metrics.render(&front.backend),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/livez" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => {
            let pool = match &front.backend {
                Backend::Workers(p) => p,
                Backend::Upstream(_) => {
                    return Ok(text(StatusCode::OK, "ready (external upstream)\n", PLAIN))
                }
            };
            let st = pool.stats();
            let up = st.idle.load(Ordering::Relaxed) + st.busy.load(Ordering::Relaxed);
            if up == 0 {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no worker is up\n",
                    PLAIN,
                )
            } else if !front.has_ready_check {
                text(StatusCode::OK, format!("ready: {up} workers up\n"), PLAIN)
            } else {
                match pool.ready_check(Duration::from_secs(2)).await {
                    Ok((200, body)) => {
                        text(StatusCode::OK, format!("ready: {}\n", body.trim()), PLAIN)
                    }
                    Ok((code, body)) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: ready_check answered {code}: {}\n", body.trim()),
                        PLAIN,
                    ),
                    Err(e) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: could not run ready_check: {e}\n"),
                        PLAIN,
                    ),
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /metrics /livez /readyz\n",
            PLAIN,
        ),
    })
}

//! The admin listener: `/metrics` (Prometheus text), `/livez` (the process is up),
//! `/readyz` (a worker is ready and, when `[app] ready_check` is set, that check passes
//! in a worker). Served only on `[admin] listen`, never on the public listeners.
//!
//! Its refusals follow the error contract as every answer weir makes: `/readyz` when not
//! ready is `not-ready` (503, Retry-After), an unknown path `not-found` (404), each with
//! `x-weir-error`, a request id and the JSON or text body of [`Rejection`].

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use weir_pool::ResponseBody;

use crate::front::{Backend, Front};
use crate::rejection::{wants_json, Rejection};
use weir_errors::ErrorClass;

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
    let json = wants_json(
        req.headers()
            .get(http::header::ACCEPT)
            .map(|v| v.as_bytes()),
    );
    let refuse = |class: ErrorClass, message: String| {
        Rejection::new(class, message)
            .retry(front.retry_after)
            .respond(&crate::request_id::make(), json)
    };
    if req.uri().path() == "/cache/purge" {
        return Ok(match purge(&front, req).await {
            Ok(r) => r,
            Err((class, message)) => refuse(class, message),
        });
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut out = front.log.metrics.render(&front.backend);
            front.limits.limits.render_metrics(&mut out);
            if let Some(c) = &front.cache {
                c.render_metrics(&front.routes, &mut out);
            }
            if let Some(s) = &front.statics {
                s.render_metrics(&mut out);
            }
            spool_metrics(&front.spool, &mut out);
            text(
                StatusCode::OK,
                out,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
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
                refuse(ErrorClass::NotReady, "not ready: no worker is up".into())
            } else if !front.has_ready_check {
                text(StatusCode::OK, format!("ready: {up} workers up\n"), PLAIN)
            } else {
                match ready_check(&front, pool).await {
                    Ok(ready) => text(StatusCode::OK, ready, PLAIN),
                    Err(why) => refuse(ErrorClass::NotReady, why),
                }
            }
        }
        path => refuse(
            ErrorClass::NotFound,
            format!("the admin listener has no {path}; its endpoints are /metrics /livez /readyz /cache/purge"),
        ),
    })
}

/// `POST /cache/purge` with `{"key": "..."}`, `{"prefix": "/items"}` or
/// `{"tag": "product-42"}`: removes those entries from every tier of this instance and
/// Redis, and tells the other instances; answers how many went.
async fn purge(
    front: &Front,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, (ErrorClass, String)> {
    const USAGE: &str = r#"send POST /cache/purge with a JSON body: {"key": "<cache key>"}, {"prefix": "/path"} or {"tag": "<tag>"}"#;
    let Some(cache) = &front.cache else {
        return Err((
            ErrorClass::NotFound,
            "there is no cache to purge: the configuration has no [cache] section".into(),
        ));
    };
    if req.method() != http::Method::POST {
        return Err((
            ErrorClass::MethodNotAllowed,
            format!("{} /cache/purge: {USAGE}", req.method()),
        ));
    }
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| {
            (
                ErrorClass::BadRequest,
                format!("cannot read the purge request: {e}; {USAGE}"),
            )
        })?
        .to_bytes();
    let what: weir_cache::Purge = serde_json::from_slice(&body).map_err(|e| {
        (
            ErrorClass::BadRequest,
            format!("the purge request is not understood ({e}); {USAGE}"),
        )
    })?;
    let gone = cache.tiers.purge(&what).await;
    let out = serde_json::json!({
        "purged": gone.entries(),
        "tiers": gone,
    });
    tracing::info!(purge = ?what, purged = gone.entries(), "cache purge");
    Ok(text(StatusCode::OK, format!("{out}\n"), "application/json"))
}

/// Runs the app's ready check in an idle worker: `Ok` with the ready answer's text, or
/// `Err` with why it is not ready. When every worker is busy the pool is working, not
/// broken: the last result stands (a loaded instance must not leave the load balancer and
/// push its load onto the others).
async fn ready_check(front: &Front, pool: &weir_pool::Pool) -> Result<String, String> {
    let result = match pool.ready_check(Duration::from_millis(500)).await {
        Ok((200, body)) => Some((true, body.trim().to_owned())),
        Ok((code, body)) => Some((
            false,
            format!("ready_check answered {code}: {}", body.trim()),
        )),
        Err(
            weir_pool::DispatchError::QueueTimeout(_)
            | weir_pool::DispatchError::QueueShed { .. }
            | weir_pool::DispatchError::QueuePredicted(_)
            | weir_pool::DispatchError::DeadlineExceeded,
        ) => None,
        Err(e) => Some((false, format!("could not run ready_check: {e}"))),
    };
    let mut last = front.last_ready.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Some((ok, msg)) => {
            *last = Some((Instant::now(), ok, msg.clone()));
            if ok {
                Ok(format!("ready: {msg}\n"))
            } else {
                Err(format!("not ready: {msg}"))
            }
        }
        None => match &*last {
            Some((at, true, msg)) => Ok(format!(
                "ready: every worker is busy; the last check passed {:.0?} ago: {msg}\n",
                at.elapsed()
            )),
            Some((at, false, msg)) => Err(format!(
                "not ready: every worker is busy and the last check failed {:.0?} ago: {msg}",
                at.elapsed()
            )),
            None => {
                Ok("ready: every worker is busy (serving requests); no check has run yet\n".into())
            }
        },
    }
}

/// The response spools' metrics (`[server] response_buffer`, `response_buffers_total`,
/// `temp_path`).
fn spool_metrics(spool: &weir_response::Spooler, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP weir_response_buffer_memory_bytes Bytes of streamed answers held in memory for slow clients now (bounded by response_buffers_total).\n# TYPE weir_response_buffer_memory_bytes gauge\nweir_response_buffer_memory_bytes {}\n# HELP weir_response_buffer_temp_files Temporary files holding streamed answers now.\n# TYPE weir_response_buffer_temp_files gauge\nweir_response_buffer_temp_files {}\n# HELP weir_response_buffer_spilled_bytes_total Bytes of streamed answers written to temporary files.\n# TYPE weir_response_buffer_spilled_bytes_total counter\nweir_response_buffer_spilled_bytes_total {}",
        spool.memory_in_use(),
        spool.temp_files(),
        spool.spilled_bytes()
    );
}

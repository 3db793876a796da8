//! One request over HTTP/1.1 with hyper's client connection.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use weir_config::UpstreamConfig;
use weir_http1::HOP_BY_HOP;
use weir_response::{BodyError, BodySink, ResponseBody, Spooler};

use crate::{Conn, Held, UpstreamError, CHANNEL_CHUNKS};

pub(crate) async fn exchange(
    conn: Conn,
    req: &Request<Bytes>,
    cfg: &UpstreamConfig,
    held: Held,
    spool: Option<Spooler>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    match conn {
        Conn::Tcp(s) => run(s, req, cfg, held, spool).await,
        Conn::Unix(s) => run(s, req, cfg, held, spool).await,
    }
}

async fn run<S>(
    s: S,
    req: &Request<Bytes>,
    cfg: &UpstreamConfig,
    held: Held,
    spool: Option<Spooler>,
) -> Result<Response<ResponseBody>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| UpstreamError::protocol(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        // Ends with the response (or the error the request future reports).
        let _ = connection.await;
    });
    let mut out = Request::new(Full::new(req.body().clone()));
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    // The body is already buffered and small next to socket buffers, so the wait for the
    // response head is the read timeout (NGINX's proxy_read_timeout counts from the
    // request being written, too).
    let limit = cfg.read_timeout.as_duration();
    let resp = match tokio::time::timeout(limit, sender.send_request(out)).await {
        Err(_) => return Err(UpstreamError::timeout("reading the response")),
        Ok(Err(e)) => return Err(UpstreamError::protocol(e.to_string())),
        Ok(Ok(r)) => r,
    };
    let (mut parts, mut body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    let read_timeout = cfg.read_timeout.as_duration();
    let (mut sink, body_out) = BodySink::open(spool.as_ref(), CHANNEL_CHUNKS);
    tokio::spawn(async move {
        // The connection is held until the body is read: into the spool (freed as soon
        // as it is all there), or, without one, as the client takes it.
        let _held = held;
        let _sender = sender;
        loop {
            match tokio::time::timeout(read_timeout, body.frame()).await {
                Err(_) => {
                    let e = BodyError::WorkerEnded(weir_errors::ErrorClass::UpstreamTimeout);
                    return sink.fail(e).await;
                }
                Ok(None) => return sink.finish().await,
                Ok(Some(Err(_))) => {
                    let e = BodyError::WorkerEnded(weir_errors::ErrorClass::UpstreamProtocol);
                    return sink.fail(e).await;
                }
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        if !d.is_empty() && sink.send(d).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(Response::from_parts(parts, body_out))
}

//! One request over the uwsgi protocol: the packet and body out, an HTTP head and the
//! body back, the end of the body being the end of the connection (uWSGI's way).

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_config::UpstreamConfig;
use weir_response::{parse_head, BodyError, ResponseBody};
use weir_uwsgi::head;

use crate::{Conn, Held, UpstreamError};

const MAX_HEAD: usize = 64 * 1024;

pub(crate) async fn exchange(
    conn: Conn,
    packet: &[u8],
    body: &Bytes,
    cfg: &UpstreamConfig,
    held: Held,
) -> Result<Response<ResponseBody>, UpstreamError> {
    match conn {
        Conn::Tcp(s) => run(s, packet, body, cfg, held).await,
        Conn::Unix(s) => run(s, packet, body, cfg, held).await,
    }
}

async fn run<S>(
    mut s: S,
    packet: &[u8],
    body: &Bytes,
    cfg: &UpstreamConfig,
    held: Held,
) -> Result<Response<ResponseBody>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let send = async {
        if body.len() <= 64 * 1024 {
            // One write: the server may answer (and close) before it reads a body.
            let mut all = Vec::with_capacity(packet.len() + body.len());
            all.extend_from_slice(packet);
            all.extend_from_slice(body);
            s.write_all(&all).await?;
        } else {
            s.write_all(packet).await?;
            s.write_all(body).await?;
        }
        s.flush().await
    };
    // A failed send is not yet a failure: a server that answered without reading the
    // whole body (and closed) has its answer waiting in our socket.
    let send_error = match tokio::time::timeout(cfg.send_timeout.as_duration(), send).await {
        Err(_) => return Err(UpstreamError::timeout("sending the request")),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => None,
    };
    let failed = |what: String| match &send_error {
        Some(e) => UpstreamError::protocol(format!("connection failed while sending: {e}")),
        None => UpstreamError::protocol(what),
    };
    let read_timeout = cfg.read_timeout.as_duration();
    let mut buf = BytesMut::with_capacity(8192);
    let head_len = loop {
        if let Some(n) = head::find_end(&buf) {
            break n;
        }
        if buf.len() > MAX_HEAD {
            return Err(UpstreamError::protocol(format!(
                "response head over {MAX_HEAD} bytes"
            )));
        }
        match tokio::time::timeout(read_timeout, s.read_buf(&mut buf)).await {
            Err(_) => return Err(UpstreamError::timeout("reading the response")),
            Ok(Ok(0)) => return Err(failed("connection closed before a response head".into())),
            Ok(Err(e)) => return Err(failed(format!("read failed: {e}"))),
            Ok(Ok(_)) => {}
        }
    };
    let mut resp = parse_head(&buf[..head_len]).map_err(UpstreamError::protocol)?;
    buf.advance(head_len);
    let length: Option<usize> = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (tx, rx) = mpsc::channel(16);
    *resp.body_mut() = ResponseBody::Stream(rx);
    tokio::spawn(async move {
        let _held = held;
        let mut remaining = length;
        let mut buf = buf;
        loop {
            if !buf.is_empty() {
                let take = remaining.map_or(buf.len(), |r| r.min(buf.len()));
                let chunk = buf.split_to(take).freeze();
                if let Some(r) = remaining.as_mut() {
                    *r -= take;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // client gone: closing the connection ends the upstream's work
                }
            }
            if remaining == Some(0) {
                let _ = tx.send(Ok(Bytes::new())).await;
                return;
            }
            buf.reserve(16 * 1024);
            match tokio::time::timeout(read_timeout, s.read_buf(&mut buf)).await {
                Err(_) => {
                    let _ = tx
                        .send(Err(BodyError::WorkerEnded(
                            weir_errors::ErrorClass::UpstreamTimeout,
                        )))
                        .await;
                    return;
                }
                Ok(Ok(0)) if remaining.is_none() => {
                    let _ = tx.send(Ok(Bytes::new())).await;
                    return;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // Closed before Content-Length bytes: a cut body.
                    let _ = tx
                        .send(Err(BodyError::WorkerEnded(
                            weir_errors::ErrorClass::UpstreamProtocol,
                        )))
                        .await;
                    return;
                }
                Ok(Ok(_)) => {}
            }
        }
    });
    Ok(resp)
}

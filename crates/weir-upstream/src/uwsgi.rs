//! One request over the uwsgi protocol: the packet and body out, an HTTP head and the
//! body back, the end of the body being the end of the connection (uWSGI's way).

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_config::UpstreamConfig;
use weir_response::{parse_head, BodyError, BodySink, ResponseBody, Spooler};
use weir_uwsgi::head;

use crate::{Conn, Held, UpstreamError, CHANNEL_CHUNKS};

const MAX_HEAD: usize = 64 * 1024;

pub(crate) async fn exchange(
    conn: Conn,
    packet: &[u8],
    body: &Bytes,
    cfg: &UpstreamConfig,
    held: Held,
    spool: Option<Spooler>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    match conn {
        Conn::Tcp(s) => run(s, packet, body, cfg, held, spool).await,
        Conn::Unix(s) => run(s, packet, body, cfg, held, spool).await,
    }
}

async fn run<S>(
    mut s: S,
    packet: &[u8],
    body: &Bytes,
    cfg: &UpstreamConfig,
    held: Held,
    spool: Option<Spooler>,
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
    let (mut sink, body_out) = BodySink::open(spool.as_ref(), CHANNEL_CHUNKS);
    *resp.body_mut() = body_out;
    tokio::spawn(async move {
        // The connection is held until the body is read: into the spool (freed as soon
        // as it is all there), or, without one, as the client takes it.
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
                if sink.send(chunk).await.is_err() {
                    return; // client gone: closing the connection ends the upstream's work
                }
            }
            if remaining == Some(0) {
                return sink.finish().await;
            }
            buf.reserve(16 * 1024);
            match tokio::time::timeout(read_timeout, s.read_buf(&mut buf)).await {
                Err(_) => {
                    let e = BodyError::WorkerEnded(weir_errors::ErrorClass::UpstreamTimeout);
                    return sink.fail(e).await;
                }
                Ok(Ok(0)) if remaining.is_none() => return sink.finish().await,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // Closed before Content-Length bytes: a cut body.
                    let e = BodyError::WorkerEnded(weir_errors::ErrorClass::UpstreamProtocol);
                    return sink.fail(e).await;
                }
                Ok(Ok(_)) => {}
            }
        }
    });
    Ok(resp)
}

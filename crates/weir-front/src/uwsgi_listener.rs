//! The uwsgi-protocol listener: a real NGINX `uwsgi_pass`es here as it would to uWSGI.
//! One request per connection (NGINX does not keep uwsgi connections alive); the
//! response is a plain HTTP/1.1 head and the body, ended by closing the connection.

use std::sync::Arc;
use weir_errors::ErrorClass;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};
use weir_pool::RequestBody;

use crate::access_log::{Logged, Record};
use weir_uwsgi::packet::{self, Builder, DecodeError, MODIFIER_WSGI};

use crate::conn_io::ClientWatch;
use crate::dispatch::reply;
use crate::front::Front;
use crate::rejection::{wants_json, Rejection};
use crate::request_id;

/// Serves one uwsgi connection.
pub async fn serve_connection<S>(mut io: S, watch: ClientWatch, front: Arc<Front>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(4096);
    let used = loop {
        match packet::decode(&buf) {
            Ok((_, used)) => break used,
            Err(DecodeError::Incomplete { needed }) => {
                buf.reserve(needed.saturating_sub(buf.len()).max(1024));
                match io.read_buf(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        debug!("uwsgi read: {e}");
                        return;
                    }
                }
            }
            Err(e) => {
                warn!("closing uwsgi connection: {e}");
                let rid = request_id::make();
                let r = Rejection::new(ErrorClass::BadRequest, e.to_string());
                let rec = Record::new(&rid, None, "", "");
                write_response(&mut io, reply(&front.log, Err(r), &rid, false, rec)).await;
                return;
            }
        }
    };
    let mut head = buf.split_to(used);
    let (pkt, _) = packet::decode(&head).expect("decoded above from the same bytes");
    let var_str = |k: &[u8]| pkt.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let path = var_str(b"PATH_INFO").unwrap_or_else(|| "/".into());
    let client = var_str(b"REMOTE_ADDR").and_then(|a| a.parse().ok());
    let json = wants_json(pkt.get(b"HTTP_ACCEPT"));
    let rid = pkt
        .get(b"HTTP_X_REQUEST_ID")
        .filter(|id| request_id::is_well_formed(id))
        .map(|id| String::from_utf8_lossy(id).into_owned())
        .unwrap_or_else(request_id::make);
    let method = http::Method::from_bytes(pkt.get(b"REQUEST_METHOD").unwrap_or(b"GET"))
        .unwrap_or(http::Method::GET);
    let mut rec = Record::new(
        &rid,
        client,
        &var_str(b"REQUEST_METHOD").unwrap_or_default(),
        &path,
    );
    // The protocol NGINX's client spoke (NGINX's `$server_protocol`).
    rec.protocol = match pkt.get(b"SERVER_PROTOCOL") {
        Some(b"HTTP/2.0") => "HTTP/2.0",
        Some(b"HTTP/1.0") => "HTTP/1.0",
        Some(b"HTTP/3.0") => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    let route = front.routes.find(&path);
    let mut fair_key = 0;
    let deadline = route.request_timeout.map(|t| rec.arrived + t);
    let length: u64 = pkt
        .get(b"CONTENT_LENGTH")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let refused = if pkt.modifier1 != MODIFIER_WSGI || length > front.max_body_size {
        Some(if length > front.max_body_size {
            Rejection::new(
                ErrorClass::BodyTooLarge,
                format!(
                    "the request body is over max_body_size ({} bytes)",
                    front.max_body_size
                ),
            )
        } else {
            Rejection::new(
                ErrorClass::BadRequest,
                format!("uwsgi modifier1 {} is not WSGI (0)", pkt.modifier1),
            )
        })
    } else if !front.limits.applies(route) {
        None
    } else {
        // The limits, as on the HTTP listener (before the body is taken).
        let view = crate::limit::UwsgiView::new(&pkt);
        let checked = crate::limit::check(&front, route, &view, &watch, &mut rec).await;
        fair_key = front.limits.fair_key(&view);
        checked.err()
    };
    if let Some(r) = refused {
        // Read what NGINX is still sending (within a bound) before answering: closing
        // on unread bytes resets the connection, and NGINX would turn the 413 into a 502.
        let drain = async {
            let mut left = length.saturating_sub(buf.len() as u64);
            let mut sink = vec![0u8; 64 * 1024];
            while left > 0 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n as u64),
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        write_response(&mut io, reply(&front.log, Err(r), &rid, json, rec)).await;
        return;
    }
    // Re-encode: the vars NGINX sent, minus any WEIR_* a client could have smuggled in
    // through uwsgi_param, plus the request id.
    let mut out = Vec::with_capacity(head.len() + 64);
    let mut b = Builder::new(&mut out, MODIFIER_WSGI, 0);
    let mut result = Ok(());
    for (k, v) in pkt.vars() {
        if !k.starts_with(b"WEIR_") && k != b"HTTP_X_REQUEST_ID" {
            if let Err(e) = b.var(k, v) {
                result = Err(e);
                break;
            }
        }
    }
    let result = result
        .and_then(|_| b.var(b"HTTP_X_REQUEST_ID", rid.as_bytes()).map(|_| ()))
        .and_then(|_| b.var(b"WEIR_REQUEST_ID", rid.as_bytes()).map(|_| ()))
        .and_then(|_| match route.request_timeout {
            Some(t) => b
                .var(
                    b"WEIR_DEADLINE",
                    format!("{:.6}", crate::http::unix_now() + t.as_secs_f64()).as_bytes(),
                )
                .map(|_| ()),
            None => Ok(()),
        })
        .and_then(|_| b.finish());
    if let Err(e) = result {
        let r = Rejection::new(ErrorClass::HeaderTooLarge, e.to_string());
        write_response(&mut io, reply(&front.log, Err(r), &rid, json, rec)).await;
        return;
    }
    head.clear();
    // The body: what came with the packet, then the rest.
    let mut body = buf;
    while (body.len() as u64) < length {
        body.reserve((length as usize - body.len()).min(1 << 20));
        match io.read_buf(&mut body).await {
            Ok(0) | Err(_) => return, // NGINX gave up; nobody to answer.
            Ok(_) => {}
        }
    }
    body.truncate(length as usize);
    let body = if length == 0 {
        RequestBody::Empty
    } else {
        RequestBody::Full(body.freeze())
    };
    // A client's retry of a request just refused is not new demand (rate overload). The
    // front server's connection is this request's alone, so the client is told by its
    // address (environ::ClientRefusals).
    let retry = match (&front.uwsgi_refusals, client) {
        (Some(refusals), Some(ip)) => refusals.is_retry(ip, rec.arrived),
        _ => false,
    };
    let result = crate::dispatch::dispatch(
        &front,
        &watch,
        route,
        deadline,
        crate::dispatch::Job {
            method: &method,
            work: crate::dispatch::Work::Packet(out),
            body,
            fair_key,
            retry,
        },
        &mut rec,
    )
    .await;
    if let (Some(refusals), Some(ip), Err(r)) = (&front.uwsgi_refusals, client, &result) {
        if r.is_queue_refusal() {
            refusals.mark(ip, std::time::Instant::now());
        }
    }
    write_response(&mut io, reply(&front.log, result, &rid, json, rec)).await;
}

/// Writes a response as uWSGI does: status line, headers, blank line, body; the end of
/// the body is the end of the connection. A failing body cuts the connection.
async fn write_response<S: AsyncWrite + Unpin>(io: &mut S, resp: Response<Logged>) {
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if io.write_all(&out).await.is_err() {
        return;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    let data: Bytes = data;
                    if io.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            // Cut: NGINX sees a short body and logs "upstream prematurely closed".
            Err(_) => return,
        }
    }
    let _ = io.shutdown().await;
}

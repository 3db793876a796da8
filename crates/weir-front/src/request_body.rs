//! The body stage of the request path: `max_body_size` and `client_body_timeout`, then
//! small bodies read whole before a worker is taken (so a slow upload never holds one, as
//! NGINX's request buffering), larger ones streamed to the worker as they arrive.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use weir_errors::ErrorClass;
use weir_pool::RequestBody;

use crate::environ::BodyLength;
use crate::front::Front;
use crate::rejection::Rejection;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Request bodies up to this size are read whole before a worker is taken, so a slow
/// upload never holds a worker (NGINX's request buffering); larger ones stream.
pub const BODY_BUFFER_LIMIT: u64 = 1 << 20;

fn too_large(max: u64) -> Rejection {
    Rejection::new(
        ErrorClass::BodyTooLarge,
        format!("the request body is over max_body_size ({max} bytes)"),
    )
}

/// The body stage: limits, then small bodies read whole (a chunked body read whole gets
/// a CONTENT_LENGTH, as NGINX does), large ones streamed.
pub(crate) async fn read_body(
    front: &Front,
    parts: &Parts,
    body: Incoming,
) -> Result<(BodyLength, RequestBody), Rejection> {
    let max = front.max_body_size;
    let chunked = parts.headers.contains_key(TRANSFER_ENCODING);
    let declared = body.size_hint().exact().filter(|_| !chunked);
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    if !chunked
        && (declared == Some(0)
            || (declared.is_none() && !parts.headers.contains_key(CONTENT_LENGTH)))
        && body.is_end_stream()
    {
        return Ok((BodyLength::None, RequestBody::Empty));
    }
    if let Some(n) = declared {
        if n > BODY_BUFFER_LIMIT {
            let limited = Limited::new(body, max as usize).map_err(|e| e as BoxError);
            return Ok((
                BodyLength::Known(n),
                RequestBody::Stream {
                    body: Box::pin(limited),
                    framed: false,
                },
            ));
        }
    }
    // Read up to the buffer limit, within client_body_timeout.
    let mut body = body;
    let mut buf = BytesMut::new();
    let read = tokio::time::timeout(front.body_timeout, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Rejection::new(
                    ErrorClass::BadRequest,
                    format!("malformed request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > max {
                    return Err(too_large(max));
                }
                if buf.len() as u64 > BODY_BUFFER_LIMIT {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .await
    .map_err(|_| {
        Rejection::new(
            ErrorClass::ClientTimeout,
            format!(
                "the request body did not arrive within client_body_timeout ({:?})",
                front.body_timeout
            ),
        )
    })??;
    let first = buf.freeze();
    if read {
        let len = first.len() as u64;
        return Ok((
            if len == 0 && !chunked {
                BodyLength::None
            } else {
                BodyLength::Known(len)
            },
            if len == 0 {
                RequestBody::Empty
            } else {
                RequestBody::Full(first)
            },
        ));
    }
    // Larger than the buffer and of unknown length: stream the rest in frames.
    let rest = Limited::new(body, (max as usize).saturating_sub(first.len()));
    Ok((
        BodyLength::Chunked,
        RequestBody::Stream {
            body: Box::pin(Prefixed {
                first: Some(first),
                rest,
            }),
            framed: true,
        },
    ))
}

/// A body whose first bytes were already read.
struct Prefixed {
    first: Option<Bytes>,
    rest: Limited<Incoming>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

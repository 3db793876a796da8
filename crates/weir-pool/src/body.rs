//! The response body a dispatch hands to a listener: the whole body when the worker's
//! answer arrived at once (the common case: one read, no channel), or a stream of chunks
//! while the worker is still producing them (generators, big files).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::sync::mpsc;

/// Why a streamed body ended early: the client's connection must be cut, not closed as if
/// the body were complete.
#[derive(Debug, Error, Clone)]
pub enum BodyError {
    /// The app raised after its response had started.
    #[error("the app failed after the response started")]
    AppAborted,
    /// The worker died or was killed (harakiri) mid-body.
    #[error("the worker ended mid-body: {0}")]
    WorkerEnded(&'static str),
}

/// A response body.
#[derive(Debug)]
pub enum ResponseBody {
    /// No body.
    Empty,
    /// The whole body, sent as one frame.
    Full(Option<Bytes>),
    /// Chunks as the worker sends them. An empty chunk marks the normal end; a channel
    /// that closes without it means the worker ended mid-body, and the body fails (so
    /// the listener cuts the connection instead of presenting a truncated body as whole).
    Stream(mpsc::Receiver<Result<Bytes, BodyError>>),
}

impl ResponseBody {
    /// A whole body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ResponseBody::Empty
        } else {
            ResponseBody::Full(Some(b))
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match this {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                    *this = ResponseBody::Empty;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    *this = ResponseBody::Empty;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(None) => {
                    *this = ResponseBody::Empty;
                    Poll::Ready(Some(Err(BodyError::WorkerEnded("worker-died"))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Stream(_) => SizeHint::default(),
        }
    }
}

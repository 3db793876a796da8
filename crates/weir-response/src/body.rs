//! The response body a dispatch hands to a listener: the whole body when the worker's
//! answer arrived at once (the common case: one read, no channel), or a stream of chunks
//! while the worker is still producing them (generators, big files): through a spool
//! (`Spooled`, bounded buffering in memory then a temp file, see [`crate::spool`]) or, on a
//! route with `buffering = false` and from external upstreams, a small channel (`Stream`).
//!
//! A stream that fails is cut only after what came before the failure has been flushed:
//! hyper's connection writes a response's head and chunks into its buffer while the body
//! has frames ready and flushes when the body is pending, and a body error drops the
//! connection with that buffer. So the error is held back one turn (`Failing`): the body
//! returns pending once, hyper flushes, and the client sees the head and the partial body
//! before the connection closes (an app that raised right after its first chunk otherwise
//! gave the client nothing at all, a race that depended on when the chunk arrived).

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
    WorkerEnded(weir_errors::ErrorClass),
    /// The response's temp file could not be written or read (see [`crate::spool`]).
    #[error("the response's temp file failed: {0}")]
    TempFile(String),
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
    /// The same, through a spool (bounded buffering: memory, then a temp file; see
    /// [`crate::spool`]): the backend was read ahead of the client.
    Spooled(crate::spool::SpoolReader),
    /// A stream that failed: the error, returned at the next poll (see the module doc).
    Failing(Option<BodyError>),
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

    /// A streamed body's next chunk as a frame: an empty chunk is the normal end, a
    /// source gone without it a failure.
    fn chunk(
        &mut self,
        next: Poll<Option<Result<Bytes, BodyError>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match next {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                *self = ResponseBody::Empty;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => self.fail_next_turn(e, cx),
            Poll::Ready(None) => self.fail_next_turn(
                BodyError::WorkerEnded(weir_errors::ErrorClass::WorkerDied),
                cx,
            ),
        }
    }

    /// Holds `e` back one turn: pending now (woken at once), the error at the next poll.
    fn fail_next_turn(
        &mut self,
        e: BodyError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        *self = ResponseBody::Failing(Some(e));
        cx.waker().wake_by_ref();
        Poll::Pending
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
            ResponseBody::Stream(rx) => {
                let next = rx.poll_recv(cx);
                this.chunk(next, cx)
            }
            ResponseBody::Spooled(rx) => {
                let next = rx.poll_recv(cx);
                this.chunk(next, cx)
            }
            ResponseBody::Failing(e) => {
                let e = e.take();
                *this = ResponseBody::Empty;
                Poll::Ready(e.map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Stream(_) | ResponseBody::Spooled(_) | ResponseBody::Failing(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Stream(_) | ResponseBody::Spooled(_) | ResponseBody::Failing(_) => {
                SizeHint::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(
        body: &mut ResponseBody,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(body).poll_frame(cx)
    }

    /// The chunks before a failure, then one pending turn (woken at once, so the listener
    /// flushes them), then the failure, then the end.
    fn fails_after_a_flush_turn(last: Option<BodyError>, want: &str) {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"partial-"))).unwrap();
        match last {
            Some(e) => tx.try_send(Err(e)).unwrap(),
            None => drop(tx),
        }
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut body = ResponseBody::Stream(rx);
        match poll(&mut body, &mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap(), "partial-"),
            other => panic!("expected the chunk, got {other:?}"),
        }
        assert!(
            poll(&mut body, &mut cx).is_pending(),
            "the failure must wait a turn"
        );
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "and wake the task for it"
        );
        match poll(&mut body, &mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.to_string(), want),
            other => panic!("expected the failure, got {other:?}"),
        }
        assert!(matches!(poll(&mut body, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn an_app_failure_mid_body_comes_after_a_flush_turn() {
        fails_after_a_flush_turn(
            Some(BodyError::AppAborted),
            "the app failed after the response started",
        );
    }

    #[test]
    fn a_worker_gone_mid_body_comes_after_a_flush_turn() {
        fails_after_a_flush_turn(None, "the worker ended mid-body: worker-died");
    }
}

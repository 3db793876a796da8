//! A streamed body's way from a backend to the client: through a spool (buffering on, the
//! default: read ahead of the client, bounded, see [`crate::spool`]) or a small channel
//! (`buffering = false`: the backend paced by the client). Shared by the worker exchange
//! and the upstreams, so both buffer the same way.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::body::{BodyError, ResponseBody};
use crate::spool::{SpoolError, SpoolWriter, Spooler};

/// The producing end of a streamed body.
#[derive(Debug)]
pub enum BodySink {
    /// Through a spool.
    Spool(SpoolWriter),
    /// Through a channel of a few chunks.
    Channel(mpsc::Sender<Result<Bytes, BodyError>>),
}

/// Why a chunk was not taken: nobody reads the body any more (the client left, or its temp
/// file failed and the body is cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl BodySink {
    /// A sink and the body the client reads: spooled by `spooler`, or, with `None`, a
    /// channel of `chunks` chunks.
    pub fn open(spooler: Option<&Spooler>, chunks: usize) -> (BodySink, ResponseBody) {
        match spooler {
            Some(s) => {
                let (w, r) = s.spool();
                (BodySink::Spool(w), ResponseBody::Spooled(r))
            }
            None => {
                let (tx, rx) = mpsc::channel(chunks.max(1));
                (BodySink::Channel(tx), ResponseBody::Stream(rx))
            }
        }
    }

    /// Passes a chunk on (waiting while the spool is full or the channel is).
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), Gone> {
        match self {
            BodySink::Spool(w) => match w.send(chunk).await {
                Ok(()) => Ok(()),
                Err(SpoolError::Gone) => Err(Gone),
                Err(SpoolError::Io(e)) => {
                    tracing::error!("response temp file failed, the response is cut: {e}");
                    Err(Gone)
                }
            },
            BodySink::Channel(tx) => tx.send(Ok(chunk)).await.map_err(|_| Gone),
        }
    }

    /// The body's normal end.
    pub async fn finish(self) {
        match self {
            BodySink::Spool(w) => w.finish(),
            BodySink::Channel(tx) => {
                let _ = tx.send(Ok(Bytes::new())).await;
            }
        }
    }

    /// The body failed after what was sent.
    pub async fn fail(self, e: BodyError) {
        match self {
            BodySink::Spool(w) => w.fail(e),
            BodySink::Channel(tx) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    }
}

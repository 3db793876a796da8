//! A request on its way to a worker, as the pool and the exchange both see it: the
//! request ([`WorkerRequest`], its [`RequestBody`]), where its answer goes (`HeadReply`),
//! and, for one offered behind a busy worker that became current before its claim was
//! known, `ClaimPending`. Kept apart from `pool` and `exchange` so neither defines a type
//! the other needs: the pool starts exchanges, an exchange gives its worker back through
//! the pool's `Lease`, and these types are what passes between them.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use tokio::sync::oneshot;

use crate::error::DispatchError;
use weir_response::ResponseBody;

/// A streamed request body.
pub type BodyStream =
    Pin<Box<dyn Body<Data = Bytes, Error = Box<dyn std::error::Error + Send + Sync>> + Send>>;

/// The body of a request, as the listener has it.
pub enum RequestBody {
    /// No body.
    Empty,
    /// The whole body, already read (its length is the packet's CONTENT_LENGTH).
    Full(Bytes),
    /// A body still arriving. `framed` when its length is unknown (chunked): it is sent
    /// in frames and the packet says `WEIR_BODY=chunked`; otherwise raw, CONTENT_LENGTH
    /// bytes.
    Stream {
        /// The source.
        body: BodyStream,
        /// Whether to frame it.
        framed: bool,
    },
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            RequestBody::Stream { framed, .. } => write!(f, "Stream {{ framed: {framed} }}"),
        }
    }
}

/// One request for a worker.
#[derive(Debug)]
pub struct WorkerRequest {
    /// The encoded uwsgi packet (vars).
    pub packet: Vec<u8>,
    /// Its body.
    pub body: RequestBody,
    /// Kill the worker if the request runs longer.
    pub harakiri: Option<Duration>,
    /// Not started after this instant; a request still running then is ended like a
    /// harakiri (the worker is killed) but answered as `deadline`.
    pub deadline: Option<Instant>,
    /// Held until the exchange ends (a route's concurrency permit).
    pub hold: Option<Box<dyn std::any::Any + Send>>,
    /// Longest pause between two pieces of a streamed request body.
    pub body_timeout: Duration,
    /// The typical service time of the request's route: what the pool judges a wait
    /// behind this request by (prefetch), updated when it ends. `None`: the pool's own.
    pub service: Option<std::sync::Arc<crate::ServiceTime>>,
    /// Its fairness key (`[queue] fair_key`, hashed; 0 when fair queueing is off): waiting
    /// requests are served round robin across keys.
    pub fair_key: u64,
    /// The spool a streamed answer goes through (bounded buffering: memory, then a temp
    /// file, then backpressure); `None` on a route with `buffering = false`: chunks go
    /// through as the app yields them, the worker held until the client takes them.
    pub spool: Option<weir_response::Spooler>,
    /// A client's retry of a request refused a moment ago on the same connection: not
    /// new demand (`weir_queue::demand`).
    pub retry: bool,
}

pub(crate) type HeadReply = oneshot::Sender<Result<Response<ResponseBody>, DispatchError>>;

/// Request bodies up to this size go in the same write as the packet.
pub(crate) const INLINE_BODY: usize = 64 * 1024;

/// An offered request that became its worker's current one when the answer before it was
/// read: the worker has most likely started it, but only its claim word says so for sure.
#[derive(Debug)]
pub(crate) struct ClaimPending {
    /// The offer's key (what its submitter withdraws).
    pub(crate) key: u64,
    /// Its claim sequence number on the worker.
    pub(crate) seq: u64,
    pub(crate) claim: std::sync::Arc<weir_claim::ClaimWords>,
    /// When it began waiting.
    pub(crate) since: Instant,
    /// The length of its own packet (what is written behind it follows).
    pub(crate) own_len: usize,
    /// When its wait ends, should it go back to the queue.
    pub(crate) expires: weir_queue::Expiry,
}

//! One request on one worker. Runs in its own task that owns the [`Lease`], so the worker
//! always ends at a request boundary (or is killed) whatever the client does.
//!
//! The request body is written while the response is read: a worker may answer before it
//! has read its input (and drains it afterwards), so writing first could deadlock on a
//! full socket buffer.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use weir_uwsgi::frame::{self, Prefix};
use weir_uwsgi::head;

use crate::error::{ClientBodyError, DispatchError};
use crate::pool::{Lease, Pool};
use crate::request::{ClaimPending, HeadReply, RequestBody, WorkerRequest};
use crate::slot::RestartReason;
use weir_response::{BodyError, BodySink, ResponseBody, Spooler};

/// How an exchange ended early.
enum Ended {
    Harakiri(Duration),
    Deadline,
    Died,
    Protocol(String),
    /// The client's request body failed mid-way: the worker waits for bytes that will
    /// never come.
    ClientBody(ClientBodyError),
}

/// See `run`: how long a request whose deadline passed before its exchange started gets.
const LATE_START_GRACE: Duration = Duration::from_millis(500);

/// Where the answer goes: first the head (with the body, or the body's sink), then, when
/// the body streams, its chunks through the sink.
struct Reply {
    head: Option<HeadReply>,
    /// Where a streamed body's chunks go; `None` before the body streams and once the
    /// client is gone. Kept here (not in `read_response`) so that a worker killed mid-body
    /// (harakiri) cuts the client's body only after the kill (`Reply::fail`).
    sink: Option<BodySink>,
    /// The spool a streamed body goes through (`None`: the route has `buffering = false`).
    spool: Option<Spooler>,
    /// When the request started on its worker, for a request that was offered (its wait
    /// ended then, not when its submitter was told): put on the head as [`StartedAt`].
    started_at: Option<Instant>,
}

/// Chunks of a streamed body on a route with `buffering = false` in flight at most: the
/// worker is held until the client takes them.
const UNBUFFERED_CHUNKS: usize = 4;

/// The most body bytes read from the worker before they are handed on: a worker's frame
/// can be 16 MiB (weir-uwsgi's `MAX_FRAME_LEN`), so frames are passed on in pieces.
const PIECE: usize = 64 * 1024;

impl Reply {
    /// Sends a chunk to the client's body; once the client is gone, chunks are dropped and
    /// the worker's answer is read to its end so the worker stays usable.
    async fn send(&mut self, chunk: Bytes) {
        if let Some(sink) = &mut self.sink {
            if sink.send(chunk).await.is_err() {
                self.sink = None;
            }
        }
    }
}

/// On the response head of a request that was offered behind a busy worker (prefetch):
/// when it started on its worker, which is when its wait in the queue ended.
#[derive(Debug, Clone, Copy)]
pub struct StartedAt(pub Instant);

impl Reply {
    /// Sends the response head (once); `false` when nobody waits for it any more.
    fn answer(&mut self, mut response: Response<ResponseBody>) -> bool {
        let Some(tx) = self.head.take() else {
            return false;
        };
        if let Some(at) = self.started_at {
            response.extensions_mut().insert(StartedAt(at));
        }
        tx.send(Ok(response)).is_ok()
    }

    /// Tells the caller how the exchange failed: an error status before the head, a cut
    /// body after it.
    fn fail(&mut self, end: &Ended) {
        if let Some(tx) = self.head.take() {
            let err = match end {
                Ended::Harakiri(d) => DispatchError::Harakiri(*d),
                Ended::Deadline => DispatchError::DeadlineExceeded,
                Ended::Died => DispatchError::WorkerDied,
                Ended::ClientBody(k) => DispatchError::ClientBody(*k),
                Ended::Protocol(m) => DispatchError::Protocol(m.clone()),
            };
            // The client may be gone; nobody to tell then.
            let _ = tx.send(Err(err));
        }
        // After the head: dropping the sink without the end marker makes the body fail,
        // so the client's connection is cut rather than ended as if whole.
        self.sink = None;
    }
}

/// Runs one exchange; `sent` bytes of the packet were already written. `claim_pending`: the
/// request was offered to this worker and may not have been started by it yet (see
/// [`ClaimPending`]). `started_at`: the request was offered, and started then (see
/// [`StartedAt`]).
pub(crate) async fn run(
    mut lease: Lease,
    req: WorkerRequest,
    reply: HeadReply,
    sent: usize,
    claim_pending: Option<ClaimPending>,
    started_at: Option<Instant>,
) {
    let WorkerRequest {
        mut packet,
        body,
        harakiri,
        deadline,
        hold,
        body_timeout,
        service,
        fair_key,
        spool,
        retry,
    } = req;
    let mut out = Reply {
        head: Some(reply),
        sink: None,
        spool,
        started_at,
    };
    // The worker's limit is harakiri or the request's deadline, whichever comes first. A
    // request whose deadline has passed before its exchange starts was offered behind
    // another (prefetch) and taken by its worker: if the worker took it late, it answers
    // 504 `deadline` itself at once; if it took it in time, it runs, and is ended like any
    // request still running at its deadline, after a short grace for that answer to come.
    let now = Instant::now();
    let by_deadline = deadline.map(|d| d.checked_duration_since(now).unwrap_or(LATE_START_GRACE));
    let limit = match (harakiri, by_deadline) {
        (Some(h), Some(d)) if d < h => Some((d, Ended::Deadline)),
        (Some(h), _) => Some((h, Ended::Harakiri(h))),
        (None, Some(d)) => Some((d, Ended::Deadline)),
        (None, None) => None,
    };
    let result = {
        let fut = exchange(&mut lease, &mut packet, body, body_timeout, sent, &mut out);
        match limit {
            Some((limit, ended)) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(ended),
            },
            None => fut.await,
        }
    };
    if let Err(end) = result {
        // An offered request its worker never started (it died, or was killed, between
        // its previous answer and this request's claim) goes back to the queue's front,
        // ahead of the ones offered behind it, as they do: it never ran. One whose head
        // came was started.
        let requeue = match (claim_pending, out.head.take()) {
            (Some(u), Some(head)) if lease.pool.take_back(&u.claim, u.seq) => {
                packet.truncate(u.own_len);
                let req = WorkerRequest {
                    packet,
                    body: RequestBody::Empty,
                    harakiri,
                    deadline,
                    hold,
                    body_timeout,
                    service,
                    fair_key,
                    spool: out.spool.take(),
                    retry,
                };
                Some((u, req, head))
            }
            (_, head) => {
                out.head = head;
                None
            }
        };
        let reason = match end {
            Ended::Harakiri(_) => RestartReason::Harakiri,
            Ended::Deadline => RestartReason::Deadline,
            Ended::Died => RestartReason::Crash,
            Ended::Protocol(_) => RestartReason::Protocol,
            Ended::ClientBody(_) => RestartReason::ClientAbort,
        };
        if let Ended::Protocol(m) = &end {
            tracing::error!(pid = lease.pid(), "worker protocol error: {m}");
        }
        lease.poison(reason);
        if let Some((u, req, head)) = requeue {
            lease.requeue_first(u, req, head);
        }
        // Kill first (dropping the lease), then tell the client, so a 504 never waits
        // on a slow reader.
        drop(lease);
        out.fail(&end);
    }
}

async fn exchange(
    lease: &mut Lease,
    packet: &mut Vec<u8>,
    body: RequestBody,
    body_timeout: Duration,
    sent: usize,
    out: &mut Reply,
) -> Result<(), Ended> {
    let Lease { worker, pool, .. } = lease;
    let worker = worker
        .as_mut()
        .expect("a lease holds its worker until dropped");
    worker.served += 1;
    let holder = worker.id;
    let (mut rd, mut wr) = worker.stream.split();
    let rbuf = &mut worker.rbuf;
    match body {
        RequestBody::Empty => {
            // A write fails only when the worker is gone. What is left to write may be
            // only requests offered behind this one, this one having been written (and
            // perhaps answered) long before: what the worker wrote before it went is
            // still in the socket, so reading decides (the answer, or EOF: died).
            let written = wr
                .write_all(&packet[sent.min(packet.len())..])
                .await
                .is_ok();
            let cancel = written.then_some((&mut wr, &*pool, holder));
            read_response(&mut rd, rbuf, out, cancel).await
        }
        body => {
            // The write half is busy with the body: no CANCEL for these (rare) requests;
            // their answer is read to its end instead. A body that fails ends the
            // exchange at once (the worker waits for bytes that will never come).
            let write = write_body(&mut wr, std::mem::take(packet), body, body_timeout);
            let read = read_response(&mut rd, rbuf, out, None);
            tokio::pin!(write, read);
            let (mut wrote, mut answered) = (false, None);
            loop {
                tokio::select! {
                    w = &mut write, if !wrote => {
                        w?;
                        wrote = true;
                    }
                    r = &mut read, if answered.is_none() => {
                        r?;
                        answered = Some(());
                    }
                }
                if wrote && answered.is_some() {
                    return Ok(());
                }
            }
        }
    }
}

async fn write_body(
    wr: &mut WriteHalf<'_>,
    packet: Vec<u8>,
    body: RequestBody,
    body_timeout: Duration,
) -> Result<(), Ended> {
    wr.write_all(&packet).await.map_err(|_| Ended::Died)?;
    match body {
        RequestBody::Empty => Ok(()),
        RequestBody::Full(b) => wr.write_all(&b).await.map_err(|_| Ended::Died),
        RequestBody::Stream { mut body, framed } => {
            loop {
                let f = match tokio::time::timeout(body_timeout, body.frame()).await {
                    Err(_) => return Err(Ended::ClientBody(ClientBodyError::Timeout)),
                    Ok(None) => break,
                    Ok(Some(f)) => f,
                };
                let f = f.map_err(|e| {
                    Ended::ClientBody(if e.is::<http_body_util::LengthLimitError>() {
                        ClientBodyError::TooLarge
                    } else {
                        ClientBodyError::Closed
                    })
                })?;
                let Ok(data) = f.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                if framed {
                    for chunk in data.chunks(frame::MAX_FRAME_LEN) {
                        wr.write_all(&frame::data_prefix(chunk.len()))
                            .await
                            .map_err(|_| Ended::Died)?;
                        wr.write_all(chunk).await.map_err(|_| Ended::Died)?;
                    }
                } else {
                    wr.write_all(&data).await.map_err(|_| Ended::Died)?;
                }
            }
            if framed {
                wr.write_all(&frame::END).await.map_err(|_| Ended::Died)?;
            }
            Ok(())
        }
    }
}

/// Reads more bytes into `rbuf`; EOF means the worker died.
async fn fill(rd: &mut ReadHalf<'_>, rbuf: &mut bytes::BytesMut, want: usize) -> Result<(), Ended> {
    if rbuf.capacity() - rbuf.len() < want {
        rbuf.reserve(want.max(8 * 1024));
    }
    match rd.read_buf(rbuf).await {
        Ok(0) | Err(_) => Err(Ended::Died),
        Ok(_) => Ok(()),
    }
}

const MAX_HEAD: usize = 64 * 1024;
async fn read_response(
    rd: &mut ReadHalf<'_>,
    rbuf: &mut bytes::BytesMut,
    out: &mut Reply,
    mut cancel: Option<(&mut WriteHalf<'_>, &Pool, u64)>,
) -> Result<(), Ended> {
    let head_len = loop {
        if let Some(n) = head::find_end(rbuf) {
            break n;
        }
        if rbuf.len() > MAX_HEAD {
            return Err(Ended::Protocol(format!(
                "response head over {MAX_HEAD} bytes"
            )));
        }
        fill(rd, rbuf, 4096).await?;
    };
    let mut response = weir_response::parse_head(&rbuf[..head_len]).map_err(Ended::Protocol)?;
    rbuf.advance(head_len);

    // Fast path: the whole body is already buffered (one frame and END, as the worker
    // writes a small response in one go).
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        match frame::decode_prefix(rbuf) {
            Ok(Prefix::End) => {
                rbuf.advance(frame::PREFIX_LEN);
                let body = match chunks.len() {
                    0 => ResponseBody::Empty,
                    1 => ResponseBody::full(chunks.pop().expect("length checked")),
                    _ => ResponseBody::full(chunks.concat()),
                };
                *response.body_mut() = body;
                // A client gone is fine: the worker is back at a boundary anyway.
                out.answer(response);
                return Ok(());
            }
            Ok(Prefix::Data(n)) if rbuf.len() >= frame::PREFIX_LEN + n => {
                rbuf.advance(frame::PREFIX_LEN);
                chunks.push(rbuf.split_to(n).freeze());
            }
            Ok(Prefix::Abort) => {
                // The app failed before sending any byte of body but after the head.
                rbuf.advance(frame::PREFIX_LEN);
                let (tx, rx) = mpsc::channel(1);
                *response.body_mut() = ResponseBody::Stream(rx);
                for c in chunks {
                    let _ = tx.try_send(Ok(c));
                }
                out.answer(response);
                let _ = tx.send(Err(BodyError::AppAborted)).await;
                return Ok(());
            }
            Err(frame::FrameError::TooLong { len }) => {
                return Err(Ended::Protocol(format!("body frame of {len} bytes")))
            }
            // Incomplete, or a data frame not all here: stream from now on.
            _ => break,
        }
    }

    // The body streams: through the spool (read ahead of the client, bounded), or, with
    // `buffering = false`, through a small channel (the worker paced by the client).
    let (sink, body) = BodySink::open(out.spool.as_ref(), UNBUFFERED_CHUNKS);
    *response.body_mut() = body;
    if out.answer(response) {
        out.sink = Some(sink);
    }
    for c in chunks {
        out.send(c).await;
    }
    loop {
        let prefix = loop {
            match frame::decode_prefix(rbuf) {
                Ok(p) => break p,
                Err(frame::FrameError::Incomplete { needed }) => fill(rd, rbuf, needed).await?,
                Err(frame::FrameError::TooLong { len }) => {
                    return Err(Ended::Protocol(format!("body frame of {len} bytes")))
                }
            }
        };
        rbuf.advance(frame::PREFIX_LEN);
        match prefix {
            Prefix::End => {
                if let Some(sink) = out.sink.take() {
                    sink.finish().await;
                }
                return Ok(());
            }
            Prefix::Abort => {
                if let Some(sink) = out.sink.take() {
                    sink.fail(BodyError::AppAborted).await;
                }
                return Ok(());
            }
            Prefix::Data(n) => {
                // In pieces of at most PIECE bytes: a frame is never held whole.
                let mut left = n;
                while left > 0 {
                    let piece = left.min(PIECE);
                    while rbuf.len() < piece {
                        let need = piece - rbuf.len();
                        fill(rd, rbuf, need).await?;
                    }
                    let data = rbuf.split_to(piece).freeze();
                    left -= piece;
                    let had_client = out.sink.is_some();
                    out.send(data).await;
                    if had_client && out.sink.is_none() {
                        // The client went away: ask the worker to stop the app's iterable
                        // (it answers with ABORT), instead of running it to its end.
                        // Requests offered behind this one are taken back first (served
                        // elsewhere), so the worker can look past them to the CANCEL. If
                        // the worker already took one, it has ended this response (it is
                        // all in the socket): no CANCEL then, the rest is read to its end.
                        let cancel = cancel
                            .take()
                            .filter(|(_, pool, holder)| pool.revoke_offers_for_cancel(*holder));
                        if let Some((wr, _, _)) = cancel {
                            let mut c = Vec::with_capacity(4);
                            weir_uwsgi::packet::encode_control(
                                &mut c,
                                weir_uwsgi::packet::MODIFIER_CANCEL,
                            );
                            wr.write_all(&c).await.map_err(|_| Ended::Died)?;
                        }
                    }
                }
            }
        }
    }
}

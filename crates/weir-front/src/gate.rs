//! The framing gate: the client's bytes pass through [`weir_http1::RequestFramer`] before
//! hyper reads them, so a request hyper would refuse by itself, or would read differently
//! from what the client meant (Content-Length with Transfer-Encoding), is refused by weir
//! with its own answer: status, `x-weir-error`, request id, the access log line and the
//! metrics (the error contract: docs/architecture.md, docs/errors.md), and never reaches a worker.
//!
//! hyper is given only checked bytes. On a refusal in a request head, hyper sees the end
//! of the stream right after the last good request; it finishes answering that one (the
//! connection is served with `half_close`, so an end of input does not cut a response
//! short) and shuts the connection down, and the shutdown writes weir's answer first. A
//! refusal inside a chunked body is different: that request was already handed on, so its
//! body read fails with the reason and the handler answers 400 as for any bad body.
//!
//! After weir's own answer, or when hyper closes in the middle of a request (an early
//! 413, say), the gate reads and drops what the client still sends for a moment before
//! closing (NGINX's `lingering_close`): closing a socket with unread input sends a reset,
//! which can destroy the answer before the client reads it.
//!
//! Parking (issue: memory per connection). hyper's HTTP/1 connection holds about 16 KiB
//! of buffers for as long as it lives, so it lives only while a request does: the gate
//! reads a whole request head before hyper is made ([`GatedIo::next_head`]: a slowloris
//! client costs the gate's few bytes, not hyper's), and when the client has sent nothing
//! for [`GatedIo::park_after`] at a request boundary, the gate ends hyper's input. hyper
//! (with `half_close`) finishes the answer in progress and returns the connection
//! ([`GatedIo::parked`]), which then waits for its next request without hyper, as NGINX
//! frees a kept-alive connection's buffers. A client that keeps sending never waits that
//! long, and keeps its hyper connection.
//!
//! The write side enforces `[server] send_timeout` (NGINX's): a write that makes no
//! progress for that long (the client takes nothing) fails, so hyper drops the connection
//! and with it the response body, its buffered memory and its temp file; the connection's
//! `stalled` flag marks the request's log line `client-timeout`.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use weir_http1::{Limits, Refusal, RequestFramer, Step};

use crate::access_log::{AccessLog, Record};
use crate::rejection::{wants_json, Rejection};

/// Longest time spent draining a refused client's input before closing.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes drained from a refused client before closing.
const LINGER_BYTES: usize = 4 << 20;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 << 10;

/// Where refusals are logged and counted.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    /// The access log and metrics.
    pub log: Arc<AccessLog>,
    /// The client's address.
    pub peer: Option<IpAddr>,
}

/// A client connection with the framing gate in its read path.
#[derive(Debug)]
pub struct GatedIo<S> {
    io: S,
    framer: RequestFramer,
    /// Read from the client, not yet given to hyper; the first `checked` bytes passed.
    pending: BytesMut,
    checked: usize,
    /// hyper gets the end of input once the checked bytes are gone.
    stopped: bool,
    /// A refusal inside a body: hyper's read fails with it once the checked bytes are gone.
    body_error: Option<Box<weir_http1::FramingError>>,
    /// weir's own answer, written before the shutdown, and how much of it is written.
    answer: Vec<u8>,
    answer_at: usize,
    /// Where the answer's body begins (the access log's `bytes` count the body only).
    answer_body_at: usize,
    /// The refused request's log line, written once its answer is out (or the connection
    /// ended before), so that its `bytes` are the bytes sent.
    /// (Boxed, as the refusal below: a connection keeps this struct for its whole life.)
    refused: Option<Box<Record>>,
    refusals: RefusalLog,
    write_shut: bool,
    linger: Option<Pin<Box<Sleep>>>,
    lingered: usize,
    linger_done: bool,
    /// `[server] send_timeout`, the timer of the write that waits now (armed while a
    /// write makes no progress), and the flag set when it fires.
    send_timeout: Option<Duration>,
    stall: Option<Pin<Box<Sleep>>>,
    stall_armed: bool,
    stalled: Arc<AtomicBool>,
    /// Parking: how long the client may send nothing at a request boundary before
    /// hyper's input is ended, the timer (armed while at rest), and whether it ended.
    park_after: Option<Duration>,
    park_timer: Option<Pin<Box<Sleep>>>,
    park_deadline: tokio::time::Instant,
    park_armed: bool,
    parked: bool,
}

impl<S> GatedIo<S> {
    /// Gates `io`; heads over `max_head` bytes are refused with 431.
    pub fn new(io: S, max_head: usize, refusals: RefusalLog) -> Self {
        GatedIo {
            io,
            framer: RequestFramer::new(Limits { max_head }),
            pending: BytesMut::new(),
            checked: 0,
            stopped: false,
            body_error: None,
            answer: Vec::new(),
            answer_at: 0,
            answer_body_at: 0,
            refused: None,
            refusals,
            write_shut: false,
            linger: None,
            lingered: 0,
            linger_done: false,
            send_timeout: None,
            stall: None,
            stall_armed: false,
            stalled: Arc::new(AtomicBool::new(false)),
            park_after: None,
            park_timer: None,
            park_deadline: tokio::time::Instant::now(),
            park_armed: false,
            parked: false,
        }
    }

    /// Ends hyper's input when the client has sent nothing for `after` at a request
    /// boundary (see the module doc): hyper then finishes and gives the connection back.
    pub fn park_after(mut self, after: Duration) -> Self {
        self.park_after = Some(after);
        self
    }

    /// Did the gate end hyper's input because the client was idle (rather than because
    /// it closed, or a request was refused)?
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// May another request follow on this connection? Not after the client closed, a
    /// refusal, or the connection's last request (`Connection: close`, HTTP/1.0).
    pub fn keeps_alive(&self) -> bool {
        !self.stopped && self.framer.at_boundary() && !self.framer.at_end()
    }

    /// Before a new hyper connection takes this one: its input is open again.
    pub fn unpark(&mut self) {
        self.parked = false;
        self.park_armed = false;
    }

    /// Bytes hyper read and did not use (they passed the gate already): they are the
    /// next hyper connection's first.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut b = BytesMut::with_capacity(bytes.len() + self.pending.len());
        b.extend_from_slice(bytes);
        b.extend_from_slice(&self.pending);
        self.pending = b;
        self.checked += bytes.len();
    }

    /// At rest at a boundary: has the client sent nothing for `park_after`? The timer is
    /// reset only when its deadline is less than half the wait away, so a busy
    /// connection costs a clock read per request, not a timer update.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(after) = self.park_after else {
            return false;
        };
        let now = tokio::time::Instant::now();
        let timer = self
            .park_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now + after)));
        if !self.park_armed {
            if self.park_deadline < now + after / 2 {
                self.park_deadline = now + after;
                timer.as_mut().reset(self.park_deadline);
            }
            self.park_armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            // Parked: the timer goes too (a parked connection holds as little as it can).
            self.park_timer = None;
            self.park_armed = false;
            return true;
        }
        false
    }

    /// Drops the connection when a write makes no progress for `limit` (the client takes
    /// nothing), setting `stalled` first.
    pub fn send_timeout(mut self, limit: Duration, stalled: Arc<AtomicBool>) -> Self {
        self.send_timeout = Some(limit);
        self.stalled = stalled;
        self
    }

    /// A write returned: progress (the timer is disarmed) or pending (the timer runs; once
    /// it fires, the write fails with `TimedOut`).
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.send_timeout else {
            return r;
        };
        if r.is_ready() {
            self.stall_armed = false;
            return r;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stall_armed {
            timer.as_mut().reset(deadline);
            self.stall_armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {limit:?} (send_timeout)"),
            )));
        }
        Poll::Pending
    }

    /// Runs the framer over the unchecked bytes.
    fn check(&mut self) {
        while self.checked < self.pending.len() && !self.stopped {
            match self.framer.step(&self.pending[self.checked..]) {
                Step::Pass(n) => self.checked += n,
                Step::More => break,
                Step::End => self.stopped = true,
                Step::Refuse(r) => {
                    self.stopped = true;
                    if r.in_body {
                        self.body_error = Some(Box::new(r.error));
                    } else {
                        self.refuse(r);
                    }
                }
            }
        }
    }

    /// Logs a refused head and prepares the answer.
    fn refuse(&mut self, r: Refusal) {
        let id = crate::request_id::make();
        let head = r.head.unwrap_or_default();
        let rejection = Rejection::new(r.error.class(), r.error.to_string()).closing();
        let json = wants_json(head.accept.as_deref());
        self.answer = rejection.to_http1(&id, json, head.method == "HEAD");
        self.answer_body_at = self
            .answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.answer.len(), |i| i + 4);
        let mut rec = Record::new(&id, self.refusals.peer, &head.method, &head.path);
        rec.status = rejection.status().as_u16();
        rec.class = Some(rejection.class);
        self.refused = Some(Box::new(rec));
    }

    /// Writes the refused request's log line (once): the body bytes written so far, and
    /// whether the answer was cut short.
    fn log_refused(&mut self) {
        if let Some(rec) = self.refused.take() {
            let bytes = self.answer_at.saturating_sub(self.answer_body_at) as u64;
            let cut = self.answer_at < self.answer.len();
            self.refusals.log.refused_answered(*rec, bytes, cut);
        }
    }

    /// Drain the client's input before closing?
    fn should_linger(&self) -> bool {
        !self.answer.is_empty() || !self.framer.at_boundary() || self.checked < self.pending.len()
    }
}

impl<S: AsyncRead + Unpin> GatedIo<S> {
    /// One read from the client, through the framer: `Ready` when something came (or the
    /// client closed: `stopped`), `Pending` when nothing is there.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Read into uninitialized stack memory (nothing is zeroed), then keep only what
        // came. When the client has nothing to send, a `pending` left empty gives back
        // its memory: an idle keep-alive or TLS connection holds no read buffer of the
        // gate's.
        let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut rb = ReadBuf::uninit(&mut tmp);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if self.pending.is_empty() && self.pending.capacity() > 0 {
                    self.pending = BytesMut::new();
                }
                return Poll::Pending;
            }
            Poll::Ready(r) => r?,
        }
        if rb.filled().is_empty() {
            // The client closed: an unfinished head is dropped, as hyper would.
            self.stopped = true;
        } else {
            self.pending.extend_from_slice(rb.filled());
            self.check();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads until a whole request head has passed the framer (true), or there will be
    /// none: the client closed or a head was refused (false; the refusal's answer is
    /// written by the shutdown).
    pub fn poll_next_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.checked > 0 {
                return Poll::Ready(Ok(true));
            }
            if self.stopped || self.body_error.is_some() {
                return Poll::Ready(Ok(false));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Waits until the client has sent something (true), or there will be nothing: it
    /// closed (false). A kept-alive connection's idle wait (`keepalive_timeout`) ends
    /// here; the head that follows has `client_header_timeout`.
    pub async fn first_byte(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.stopped || self.body_error.is_some() {
                return Poll::Ready(Ok(false));
            }
            ready!(self.poll_fill(cx))?;
        })
        .await
    }

    /// [`GatedIo::poll_next_head`] as a future.
    pub async fn next_head(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_next_head(cx)).await
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.checked > 0 {
                let n = this.checked.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.body_error.take() {
                // hyper fails this request's body read with the reason.
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, *e)));
            }
            if this.stopped || this.parked {
                return Poll::Ready(Ok(()));
            }
            match this.poll_fill(cx) {
                Poll::Ready(r) => {
                    r?;
                    this.park_armed = false;
                }
                Poll::Pending => {
                    if this.framer.at_boundary() && this.poll_park(cx) {
                        this.parked = true;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GatedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.answer_at < this.answer.len() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.answer[this.answer_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.answer_at += n;
        }
        this.log_refused();
        if !this.write_shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.write_shut = true;
        }
        if this.linger_done || !this.should_linger() {
            return Poll::Ready(Ok(()));
        }
        let timer = this
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER_TIME)));
        let mut scratch = [0u8; 4096];
        while this.lingered < LINGER_BYTES && timer.as_mut().poll(cx).is_pending() {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    this.lingered += rb.filled().len();
                }
                Poll::Ready(_) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        this.linger_done = true;
        Poll::Ready(Ok(()))
    }
}

impl<S> Drop for GatedIo<S> {
    fn drop(&mut self) {
        // The connection ended before the answer was all written (the client left).
        self.log_refused();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Sink;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gated(
        io: tokio::io::DuplexStream,
        flag: &Arc<AtomicBool>,
    ) -> GatedIo<tokio::io::DuplexStream> {
        let refusals = RefusalLog {
            log: Arc::new(AccessLog::new(Sink::Off)),
            peer: None,
        };
        GatedIo::new(io, 1024, refusals).send_timeout(Duration::from_secs(1), flag.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_for_send_timeout_fails_and_marks_the_connection() {
        let (server, _client) = tokio::io::duplex(16);
        let flag = Arc::new(AtomicBool::new(false));
        let mut io = gated(server, &flag);
        io.write_all(&[0; 16]).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let e = io.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert!(flag.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_that_keeps_taking_bytes_is_not_dropped() {
        let (server, mut client) = tokio::io::duplex(16);
        let flag = Arc::new(AtomicBool::new(false));
        let mut io = gated(server, &flag);
        // The client takes 8 bytes every 900 ms: each write waits less than send_timeout,
        // though the whole answer takes far longer.
        let reader = tokio::spawn(async move {
            let mut buf = [0; 8];
            let mut got = 0;
            while got < 256 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            got
        });
        let t0 = tokio::time::Instant::now();
        io.write_all(&[0; 256]).await.unwrap();
        assert!(t0.elapsed() > Duration::from_secs(20));
        assert!(!flag.load(Ordering::Acquire));
        assert_eq!(reader.await.unwrap(), 256);
    }

    fn parking(io: tokio::io::DuplexStream) -> GatedIo<tokio::io::DuplexStream> {
        let flag = Arc::new(AtomicBool::new(false));
        gated(io, &flag).park_after(Duration::from_millis(250))
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_read_whole_before_anything_is_given_on() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut io = parking(server);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let wait = tokio::time::timeout(Duration::from_secs(5), io.next_head()).await;
        assert!(wait.is_err(), "half a head is not a head");
        client.write_all(b"st: x\r\n\r\n").await.unwrap();
        assert!(io.next_head().await.unwrap());
        let mut got = [0; 64];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        // The client closes: no next head.
        drop(client);
        assert!(!io.next_head().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_at_a_boundary_is_parked_after_the_wait() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut io = parking(server);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(io.next_head().await.unwrap());
        let mut got = [0; 64];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(n, 27);
        // At the boundary with nothing more: hyper's input ends after park_after.
        let t0 = tokio::time::Instant::now();
        assert_eq!(io.read(&mut got).await.unwrap(), 0);
        assert_eq!(t0.elapsed(), Duration::from_millis(250));
        assert!(io.parked() && io.keeps_alive());
        // The next request wakes it: a new hyper connection reads it.
        io.unpark();
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(io.next_head().await.unwrap());
        let n = io.read(&mut got).await.unwrap();
        assert!(got[..n].starts_with(b"GET /b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_never_parked_and_a_last_request_does_not_keep_alive() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut io = parking(server);
        client
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nab",
            )
            .await
            .unwrap();
        assert!(io.next_head().await.unwrap());
        let mut got = [0; 128];
        let mut n = 0;
        while !got[..n].ends_with(b"ab") {
            n += io.read(&mut got[n..]).await.unwrap();
        }
        // Mid-body: the read waits for the client however long it takes.
        let slow = tokio::time::timeout(Duration::from_secs(5), io.read(&mut got[n..])).await;
        assert!(slow.is_err());
        client.write_all(b"cd").await.unwrap();
        let m = io.read(&mut got[n..]).await.unwrap();
        assert_eq!(&got[n..n + m], b"cd");
        assert!(!io.keeps_alive(), "Connection: close was the last request");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_hyper_did_not_use_come_first_next_time() {
        let (server, _client) = tokio::io::duplex(1024);
        let mut io = parking(server);
        io.unread(b"GET /next HTTP/1.1\r\n\r\n");
        assert!(io.next_head().await.unwrap());
        let mut got = [0; 64];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET /next HTTP/1.1\r\n\r\n");
    }
}

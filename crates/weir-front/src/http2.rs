//! An HTTP/2 connection (hyper's, on the `h2` crate): on TLS listeners when the client
//! chose `h2` by ALPN, and on plain listeners with `[server] h2c = true` when the client
//! opens with the HTTP/2 preface (prior knowledge; [`sniff_h2c`]). Each stream is one
//! request through the same handler as HTTP/1.1 ([`crate::http::handle`]): identity,
//! limits, cache, queue, deadlines, the error contract and the access log line hold per
//! stream.
//!
//! What differs from HTTP/1.1:
//! - The framing gate ([`crate::gate`]) is not in the path: it exists for HTTP/1's text
//!   framing (Content-Length against Transfer-Encoding, bare LF...), which HTTP/2 does not
//!   have. The `h2` crate checks HTTP/2's framing itself (a DATA length against
//!   content-length, pseudo-headers, connection-specific headers: the stream is reset).
//!   `max_header_size` is checked per stream by the handler (431 `header-too-large`, as
//!   on HTTP/1.1); the decoded header list is bounded at twice that by the `h2` crate
//!   (SETTINGS_MAX_HEADER_LIST_SIZE, which also ends a CONTINUATION flood).
//! - A stream the client resets (RST_STREAM) drops its handler, as a client that leaves
//!   an HTTP/1.1 connection does: a request still queued never starts, one in a worker
//!   frees it the same way, and the line is logged 499 `client-closed`.
//! - Floods: `max_concurrent_streams` (`[server] http2_max_concurrent_streams`) bounds the
//!   open streams; the `h2` crate bounds streams reset before they are accepted
//!   (`max_pending_accept_reset_streams`), streams it had to reset for protocol errors
//!   (`max_local_error_reset_streams`), and answers PING and SETTINGS one at a time (it
//!   stops reading while an answer is not written, so a flood costs no memory). On top,
//!   [`ResetBudget`] counts streams the client resets after they were handed to weir (the
//!   rapid-reset attack, CVE-2023-44487, resets them as soon as they are opened): past
//!   the budget the connection gets GOAWAY and closes.
//! - `[server] send_timeout`: a client that stops opening its flow-control window (it
//!   may still answer PINGs) leaves hyper nothing to send, so no write ever stalls; hyper
//!   just stops polling the response body. Each body reports its polls
//!   ([`StreamProgress`]); a body that has data to give (its last poll was not waiting on
//!   the backend) and has not been polled for `send_timeout` ends the connection, as
//!   NGINX's send_timeout ends an HTTP/2 connection, and its line says `client-timeout`.
//! - `[server] keepalive_timeout` (NGINX's, on HTTP/2 too): a connection with no open
//!   stream (a stream is open from its headers until its response body is done or
//!   dropped) for that long gets GOAWAY ([`Idle`]); a client that does not answer the
//!   GOAWAY's PING is closed `client_header_timeout` later.
//! - The drain: GOAWAY (`graceful_shutdown`), open streams finish.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::environ::ConnInfo;
use crate::front::Front;

/// The client connection preface of HTTP/2 (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams reset by the client that a connection may have at once beyond the refill.
const RESET_BURST: f64 = 200.0;
/// Resets per second a connection earns back.
const RESET_RATE: f64 = 50.0;

/// Streams the client resets after weir took them: a token bucket of [`RESET_BURST`]
/// refilled at [`RESET_RATE`] a second. A browser resets a few streams when a page
/// changes; a rapid-reset attacker resets every stream it opens, thousands a second.
#[derive(Debug)]
pub struct ResetBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for ResetBudget {
    fn default() -> Self {
        ResetBudget {
            tokens: RESET_BURST,
            at: None,
        }
    }
}

impl ResetBudget {
    /// Counts one reset at `now`; false once the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * RESET_RATE;
            self.tokens = (self.tokens + earned).min(RESET_BURST);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the streams of one connection share: the reset budget and the signal that it is
/// spent.
#[derive(Debug, Default)]
struct Resets {
    budget: Mutex<ResetBudget>,
    spent: Notify,
}

/// Set while a stream's handler runs; dropped unfinished (the stream was reset or the
/// connection went), it counts a reset.
struct StreamGuard {
    resets: Arc<Resets>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ok = self
            .resets
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(Instant::now());
        if !ok {
            self.resets.spent.notify_one();
        }
    }
}

/// One response body's polls, for the connection's send_timeout (module doc). A poll
/// only counts and sets flags (no clock read on the response path); the connection's
/// watcher notes when the count last moved.
#[derive(Debug, Default)]
pub struct StreamProgress {
    /// Polls so far.
    polls: std::sync::atomic::AtomicU64,
    /// The last poll found nothing ready (the backend is slow, not the client).
    waiting: std::sync::atomic::AtomicBool,
    /// The body ended.
    done: std::sync::atomic::AtomicBool,
    /// The stream is open while its body lives.
    _open: Option<OpenStream>,
}

impl StreamProgress {
    /// A poll of the body: `pending` when nothing was ready, `ended` at its end.
    pub fn polled(&self, pending: bool, ended: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.polls.fetch_add(1, Relaxed);
        self.waiting.store(pending, Relaxed);
        if ended {
            self.done.store(true, Relaxed);
        }
    }
}

/// Whether a connection has open streams, and since when it has had none: for
/// `keepalive_timeout` (module doc).
#[derive(Debug)]
struct Idle {
    epoch: tokio::time::Instant,
    open: std::sync::atomic::AtomicUsize,
    /// When the last stream closed (ms since `epoch`; 0: the connection's start).
    since_ms: std::sync::atomic::AtomicU64,
}

impl Idle {
    fn new() -> Idle {
        Idle {
            epoch: tokio::time::Instant::now(),
            open: std::sync::atomic::AtomicUsize::new(0),
            since_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A stream opens: it counts until the guard (then its response body) is dropped.
    fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenStream(self.clone())
    }

    /// Resolves once the connection has had no open stream for `limit`. One timer per
    /// connection, set to when the limit would be reached and checked again then.
    async fn reached(&self, limit: Duration) {
        use std::sync::atomic::Ordering::Acquire;
        loop {
            let wait = if self.open.load(Acquire) > 0 {
                limit
            } else {
                let since = Duration::from_millis(self.since_ms.load(Acquire));
                let idle = self.epoch.elapsed().saturating_sub(since);
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One open stream of a connection ([`Idle`]).
#[derive(Debug)]
struct OpenStream(Arc<Idle>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::{AcqRel, Release};
        let now = self.0.epoch.elapsed().as_millis() as u64;
        // The time first: a watcher that sees no stream open also sees when it closed.
        self.0.since_ms.fetch_max(now, Release);
        self.0.open.fetch_sub(1, AcqRel);
    }
}

/// The watcher's view of one body: the poll count it last saw, and since when (ms since
/// the connection's start) the body has had data to give without being polled.
#[derive(Debug)]
struct Watched {
    body: std::sync::Weak<StreamProgress>,
    polls: u64,
    since_ms: u64,
}

impl Watched {
    /// Looked at `now_ms`: has the body had data to give, unpolled, for `limit`?
    fn stalled(&mut self, now_ms: u64, limit: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(p) = self.body.upgrade() else {
            return false;
        };
        let polls = p.polls.load(Relaxed);
        if polls != self.polls || p.waiting.load(Relaxed) || p.done.load(Relaxed) {
            self.polls = polls;
            self.since_ms = now_ms;
            return false;
        }
        now_ms.saturating_sub(self.since_ms) >= limit.as_millis() as u64
    }
}

/// The response bodies of one connection, watched for send_timeout.
#[derive(Debug)]
struct Progress {
    epoch: Instant,
    bodies: Mutex<Vec<Watched>>,
}

impl Progress {
    fn watch(&self, open: OpenStream) -> Arc<StreamProgress> {
        let p = Arc::new(StreamProgress {
            _open: Some(open),
            ..StreamProgress::default()
        });
        let since_ms = self.epoch.elapsed().as_millis() as u64;
        let mut b = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|w| w.body.strong_count() > 0);
        b.push(Watched {
            body: Arc::downgrade(&p),
            polls: 0,
            since_ms,
        });
        p
    }

    /// Whether a body has stalled for `limit`, looked at `now_ms`.
    fn any_stalled(&self, now_ms: u64, limit: Duration) -> bool {
        let mut b = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        // Every body is looked at (each notes its count), not just up to the first stall.
        b.iter_mut()
            .fold(false, |any, w| w.stalled(now_ms, limit) | any)
    }

    /// Resolves when a body has stalled for `limit` (checked every quarter of it).
    async fn stall(&self, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            if self.any_stalled(self.epoch.elapsed().as_millis() as u64, limit) {
                return;
            }
        }
    }
}

/// Serves one HTTP/2 connection until the client closes it, the drain asks it to finish
/// (GOAWAY, open streams go on), or its reset budget is spent (GOAWAY).
pub async fn serve_connection<S>(
    io: S,
    conn: ConnInfo,
    front: Arc<Front>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    let header_list = (front.max_header_size.saturating_mul(2)).min(u32::MAX as usize) as u32;
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(front.http2_max_concurrent_streams)
        .max_header_list_size(header_list)
        // Streams the client resets before hyper takes them (h2's default is 20).
        .max_pending_accept_reset_streams(Some(20))
        // Streams h2 had to reset because the client broke the protocol.
        .max_local_error_reset_streams(Some(256))
        // A peer that stops answering PINGs is dropped (it cannot hold the connection).
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    // On HTTP/2 hyper reads the connection all the time, so it sees a client that leaves
    // and drops its streams' handlers: no socket watch per request.
    let mut conn = conn;
    conn.watch = crate::conn_io::ClientWatch::None;
    let conn = Arc::new(conn);
    let resets = Arc::new(Resets::default());
    let send_timeout = front.send_timeout;
    let progress = Arc::new(Progress {
        epoch: Instant::now(),
        bodies: Mutex::new(Vec::new()),
    });
    // Set when send_timeout ends the connection: its streams' lines say client-timeout.
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // keepalive_timeout: a connection with no open stream for that long gets GOAWAY.
    let idle = Arc::new(Idle::new());
    let idle_close_wait = front.header_timeout;
    let idle_limit = if front.keepalive_timeout.is_zero() {
        front.header_timeout
    } else {
        front.keepalive_timeout
    };
    let svc = {
        let (resets, progress, stalled) = (resets.clone(), progress.clone(), stalled.clone());
        let idle = idle.clone();
        service_fn(move |req| {
            let (front, conn) = (front.clone(), conn.clone());
            let (progress, stalled) = (progress.clone(), stalled.clone());
            let guard = StreamGuard {
                resets: resets.clone(),
                done: false,
            };
            let open = idle.open();
            async move {
                // The whole guard moves in (not only the field written below).
                let mut guard = guard;
                let mut resp = crate::http::handle(front, conn, req).await;
                guard.done = true;
                if let Ok(r) = &mut resp {
                    r.body_mut().watch_progress(progress.watch(open));
                    r.body_mut().mark_send_timeout(stalled);
                }
                resp
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(connection);
    let why = tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                debug!("HTTP/2 connection ended: {e}");
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => "draining",
        () = idle.reached(idle_limit) => "idle",
        () = resets.spent.notified() => "reset budget spent",
        () = progress.stall(send_timeout) => {
            stalled.store(true, std::sync::atomic::Ordering::Release);
            debug!("HTTP/2 client took nothing for {send_timeout:?} (send_timeout): closing");
            return;
        }
    };
    if why == "idle" {
        debug!("HTTP/2 connection without a stream for {idle_limit:?} (keepalive_timeout): GOAWAY");
    } else if why != "draining" {
        warn!(
            "HTTP/2 client resets streams faster than {RESET_RATE}/s (rapid reset, CVE-2023-44487): GOAWAY and close"
        );
    }
    connection.as_mut().graceful_shutdown();
    // An idle connection has no stream to finish: a client that does not answer the
    // GOAWAY's PING is not waited for longer than a request head may take.
    let bound = if why == "idle" {
        idle_close_wait
    } else {
        Duration::MAX
    };
    match tokio::time::timeout(bound, connection.as_mut()).await {
        Ok(Err(e)) => debug!("HTTP/2 connection ended after GOAWAY: {e}"),
        Ok(Ok(())) => {}
        Err(_) => debug!("HTTP/2 client did not answer GOAWAY within {bound:?}: closing"),
    }
}

/// The first bytes of a connection on a plain listener with `h2c`: whether they are the
/// HTTP/2 preface, and the bytes read (given back to whichever protocol serves it).
/// Reads no more than the preface's length, and stops at the first read that differs.
pub async fn sniff_h2c<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: Duration,
) -> io::Result<(bool, Vec<u8>)> {
    let mut got = Vec::with_capacity(PREFACE.len());
    let read = async {
        let mut buf = [0u8; 24];
        while got.len() < PREFACE.len() {
            let want = PREFACE.len() - got.len();
            let n = io.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if !PREFACE.starts_with(&got) {
                break;
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r?,
        // Slow: HTTP/1.1's own header timeout takes over with what was read.
        Err(_) => return Ok((false, got)),
    }
    Ok((got == PREFACE, got))
}

/// A stream with bytes already read put back in front of it.
#[derive(Debug)]
pub struct Rewind<S> {
    head: Vec<u8>,
    at: usize,
    io: S,
}

impl<S> Rewind<S> {
    /// `head` is read first, then `io`.
    pub fn new(head: Vec<u8>, io: S) -> Self {
        Rewind { head, at: 0, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves a plain connection on a listener with `h2c`: HTTP/2 when it opens with the
/// preface, else HTTP/1.1 (through the framing gate) with the bytes read given back.
pub async fn serve_plain<S>(
    mut io: S,
    conn: ConnInfo,
    front: Arc<Front>,
    drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (h2, head) = match sniff_h2c(&mut io, front.header_timeout).await {
        Ok(x) => x,
        Err(e) => {
            debug!("connection ended before its first request: {e}");
            return;
        }
    };
    let io = Rewind::new(head, io);
    if h2 {
        serve_connection(io, conn, front, drain).await;
    } else {
        crate::http::serve_connection(io, conn, front, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_with_data_not_polled_for_send_timeout_is_stalled() {
        let progress = Progress {
            epoch: Instant::now(),
            bodies: Mutex::new(Vec::new()),
        };
        let limit = Duration::from_secs(1);
        let idle = Arc::new(Idle::new());
        let p = progress.watch(idle.open());
        assert!(!progress.any_stalled(999, limit));
        assert!(progress.any_stalled(1000, limit), "never polled: stalled");
        // A poll moves the count: the limit runs from when the watcher saw it move.
        p.polled(false, false);
        assert!(!progress.any_stalled(1500, limit));
        assert!(!progress.any_stalled(2499, limit));
        assert!(progress.any_stalled(2500, limit));
        // Waiting on the backend is not the client's stall.
        p.polled(true, false);
        assert!(!progress.any_stalled(9000, limit));
        assert!(!progress.any_stalled(20_000, limit));
        // An ended body never is; a dropped one is forgotten.
        p.polled(false, true);
        assert!(!progress.any_stalled(40_000, limit));
        drop(p);
        assert!(!progress.any_stalled(60_000, limit));
        // A body watched since the start and never polled.
        let q = progress.watch(idle.open());
        assert!(progress.any_stalled(60_000, limit));
        drop(q);
    }

    /// keepalive_timeout on HTTP/2: counted from the connection's start, or from when its
    /// last open stream (its handler, then its response body) closed; never while one is
    /// open.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_no_stream_has_been_open_for_the_limit() {
        let limit = Duration::from_secs(75);
        let idle = Arc::new(Idle::new());
        let t0 = tokio::time::Instant::now();
        idle.reached(limit).await;
        assert_eq!(t0.elapsed(), limit, "no stream since the start");

        // A stream open for 200 s, then closed: idle 75 s after it closed.
        let idle = Arc::new(Idle::new());
        let t0 = tokio::time::Instant::now();
        let stream = idle.open();
        let progress = Progress {
            epoch: Instant::now(),
            bodies: Mutex::new(Vec::new()),
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            // the handler is done; the body carries the stream on
            let body = progress.watch(stream);
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(body);
        });
        idle.reached(limit).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(275));

        // Two streams overlapping: the later close counts.
        let idle = Arc::new(Idle::new());
        let t0 = tokio::time::Instant::now();
        let (a, b) = (idle.open(), idle.open());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(b);
            tokio::time::sleep(Duration::from_secs(70)).await;
            drop(a);
        });
        idle.reached(limit).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(155));
    }

    #[test]
    fn reset_budget_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = ResetBudget::default();
        for _ in 0..RESET_BURST as usize {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        // 100 ms later: 5 more.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert!(b.take(t1));
        }
        assert!(!b.take(t1));
        // A long pause refills up to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..RESET_BURST as usize {
            assert!(b.take(t2));
        }
        assert!(!b.take(t2));
    }

    #[tokio::test]
    async fn sniff_tells_the_preface_from_http1() {
        let mut h2 = tokio_test_io(PREFACE.iter().chain(b"rest").copied().collect());
        let (yes, head) = sniff_h2c(&mut h2, Duration::from_secs(1)).await.unwrap();
        assert!(yes);
        assert_eq!(head, PREFACE);
        let mut h1 = tokio_test_io(b"GET / HTTP/1.1\r\n\r\n".to_vec());
        let (yes, head) = sniff_h2c(&mut h1, Duration::from_secs(1)).await.unwrap();
        assert!(!yes);
        assert_eq!(
            head, b"GET / HTTP/1.1\r\n\r\n",
            "no more than the preface's length"
        );
        let mut short = tokio_test_io(b"PRI".to_vec());
        let (yes, head) = sniff_h2c(&mut short, Duration::from_secs(1)).await.unwrap();
        assert!(!yes);
        assert_eq!(head, b"PRI");
    }

    #[tokio::test]
    async fn rewind_gives_back_the_head_first() {
        let mut r = Rewind::new(b"ab".to_vec(), tokio_test_io(b"cd".to_vec()));
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcd");
    }

    fn tokio_test_io(bytes: Vec<u8>) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(bytes)
    }
}

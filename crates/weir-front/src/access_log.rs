//! One JSON line per request, written when the response body is done (so `bytes` and
//! `send_ms` are true), and the request metrics recorded at the same moment.
//!
//! Fields: `time` (arrival, RFC 3339 UTC), `id`, `client`, `method`, `path`, `status`,
//! `error` (weir's class, or null when the app answered), `bytes` (body bytes sent,
//! compressed when the compression stage compressed them),
//! `queue_ms` (waiting for a route slot and a worker), `worker_ms` (worker until the
//! response head), `send_ms` (head to last byte), `total_ms`, `cache` on a cached route
//! (what the cache did: hit, miss, expired, stale, updating, revalidated, bypass), `static`
//! (true) when a `[[static]]` file answered, and `aborted` when the body was cut.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use weir_errors::ErrorClass;

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use weir_limits::RateLimitedBody;
use weir_pool::BodyError;

use crate::compression::Encoded;

use crate::metrics::Metrics;

/// Where lines go.
#[derive(Debug)]
pub enum Sink {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to; reopened at its path on SIGUSR1 ([`AccessLog::reopen`]).
    File {
        /// Where it is.
        path: std::path::PathBuf,
        /// The file open now.
        file: Mutex<File>,
    },
}

impl Sink {
    /// From `[server] access_log`.
    pub fn open(spec: &str) -> std::io::Result<Sink> {
        Ok(match spec {
            "off" | "" => Sink::Off,
            "stdout" | "-" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File {
                path: path.into(),
                file: Mutex::new(Self::append_to(std::path::Path::new(path))?),
            },
        })
    }

    fn append_to(path: &std::path::Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// A file sink opens its path again (after a log rotation moved the file away):
    /// `Ok(Some(path))` when it did, `Ok(None)` for a sink that is not a file. On an error
    /// it keeps the file it had.
    fn reopen(&self) -> std::io::Result<Option<&std::path::Path>> {
        match self {
            Sink::File { path, file } => {
                let new = Self::append_to(path)?;
                *file.lock().unwrap_or_else(|p| p.into_inner()) = new;
                Ok(Some(path))
            }
            _ => Ok(None),
        }
    }

    fn write(&self, line: &[u8]) {
        // A full disk or a closed stdout must not fail requests: the line is lost.
        let _ = match self {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(line),
            Sink::Stderr => std::io::stderr().lock().write_all(line),
            Sink::File { file, .. } => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(line),
        };
    }
}

/// The access log and the metrics it feeds.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
    /// `[server] access_log_buffer`: lines gathered before they are written.
    buffer: Option<LineBuffer>,
    /// Request metrics.
    pub metrics: Metrics,
}

/// Lines gathered in memory and written in one call (NGINX's `access_log ... buffer=`):
/// when the next line would not fit, when [`AccessLog::flush`] is called (every
/// `access_log_flush`, and when weir stops), and never reordered (one lock, held while
/// writing).
#[derive(Debug)]
struct LineBuffer {
    capacity: usize,
    pending: Mutex<Vec<u8>>,
}

/// What is known of a request by the time its head is sent.
#[derive(Debug)]
pub struct Record {
    /// Arrival (wall clock).
    pub time: SystemTime,
    /// Arrival (monotonic).
    pub arrived: Instant,
    /// Request id.
    pub id: String,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// The protocol (`HTTP/1.1`, `HTTP/2.0`), as NGINX's `$server_protocol`.
    pub protocol: &'static str,
    /// Status.
    pub status: u16,
    /// weir's error class, `None` when the app answered.
    pub class: Option<ErrorClass>,
    /// Waiting for a route slot and a worker.
    pub queued: Duration,
    /// When the wait began (for a request abandoned while waiting).
    pub queue_started: Option<Instant>,
    /// In the worker until the head.
    pub worker: Duration,
    /// What a limit did to it (refused, delayed, or a dry-run zone's verdict).
    pub limit: Option<LimitNote>,
    /// Its `limit_conn` slots: held until its line is written (the body is done, or the
    /// client left).
    pub conn_slots: Option<weir_limits::ConnGuards>,
    /// Its route's `limit_rate` and `limit_rate_after` (bytes; rate 0: none).
    pub limit_rate: (u64, u64),
    /// What the cache did (a cached route only).
    pub cache: Option<crate::cache::Outcome>,
    /// Answered by the static stage (`[[static]]`), from a file.
    pub static_file: bool,
}

/// What a limit did to a request, for its log line: `zone` and `outcome`
/// (`refused`, `delayed`, `dry_run_refused`, `dry_run_delayed`, `store_error`), and the
/// delay it waited.
#[derive(Debug, Clone)]
pub struct LimitNote {
    /// The zone.
    pub zone: std::sync::Arc<str>,
    /// What it did.
    pub outcome: &'static str,
    /// The delay (limit_req without nodelay).
    pub delay: Duration,
}

impl Record {
    /// A record for a request that just arrived.
    pub fn new(id: &str, client: Option<IpAddr>, method: &str, path: &str) -> Record {
        Record {
            time: SystemTime::now(),
            arrived: Instant::now(),
            id: id.to_owned(),
            client,
            method: method.to_owned(),
            path: path.to_owned(),
            protocol: "HTTP/1.1",
            status: 0,
            class: None,
            queued: Duration::ZERO,
            queue_started: None,
            worker: Duration::ZERO,
            limit: None,
            conn_slots: None,
            limit_rate: (0, 0),
            cache: None,
            static_file: false,
        }
    }
}

impl AccessLog {
    /// A log writing to `sink`.
    pub fn new(sink: Sink) -> AccessLog {
        AccessLog {
            sink,
            buffer: None,
            metrics: Metrics::default(),
        }
    }

    /// Gathers lines up to `capacity` bytes before writing them (0: every line written
    /// at once). Whoever builds a buffered log calls [`AccessLog::flush`] on a timer and
    /// before the process exits.
    pub fn buffered(mut self, capacity: usize) -> AccessLog {
        self.buffer = (capacity > 0 && !matches!(self.sink, Sink::Off)).then(|| LineBuffer {
            capacity,
            pending: Mutex::new(Vec::with_capacity(capacity)),
        });
        self
    }

    /// Whether lines are gathered (and so must be flushed).
    pub fn is_buffered(&self) -> bool {
        self.buffer.is_some()
    }

    /// Writes the lines gathered so far.
    pub fn flush(&self) {
        if let Some(b) = &self.buffer {
            self.write_out(&mut b.pending.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Writes `pending` (under its lock, so lines keep their order) and empties it.
    fn write_out(&self, pending: &mut Vec<u8>) {
        if !pending.is_empty() {
            self.sink.write(pending);
            pending.clear();
        }
    }

    /// Writes what is gathered, then opens the log file again at its path (NGINX's
    /// `kill -USR1`, after logrotate moved it): `Ok(Some(path))` when it did, `Ok(None)`
    /// when the log is not a file. On an error the log goes on in the file it had.
    pub fn reopen(&self) -> std::io::Result<Option<&std::path::Path>> {
        self.flush();
        self.sink.reopen()
    }

    /// One line: gathered, or written at once.
    fn emit(&self, line: &[u8]) {
        let Some(b) = &self.buffer else {
            self.sink.write(line);
            return;
        };
        let mut pending = b.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + line.len() > b.capacity {
            self.write_out(&mut pending);
        }
        if line.len() > b.capacity {
            self.sink.write(line);
        } else {
            pending.extend_from_slice(line);
        }
    }

    /// Wraps a response so its line is written when the body is done.
    pub fn wrap(
        self: &Arc<Self>,
        resp: Response<impl Into<Encoded>>,
        mut rec: Record,
    ) -> Response<Logged> {
        rec.status = resp.status().as_u16();
        let head_at = Instant::now();
        // 499: the client left before its answer; whatever is written, nobody reads it.
        let gone = rec.status == 499;
        let (rate, after) = rec.limit_rate;
        let length = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        resp.map(|inner| Logged {
            inner: RateLimitedBody::new(inner.into(), rate, after),
            rec: Some(Box::new(rec)),
            bytes: 0,
            length,
            aborted: gone,
            head_at,
            log: self.clone(),
            send_timeout: None,
            stall: None,
        })
    }

    /// Logs a request that hyper refused before weir's handler saw it (hyper answered).
    pub fn refused(&self, rec: Record) {
        self.finish(&rec, 0, false, Instant::now());
    }

    /// Logs a request that the framing gate refused with its own answer, once that answer
    /// is written: `bytes` of its body went out, `aborted` when not all of it did.
    pub fn refused_answered(&self, rec: Record, bytes: u64, aborted: bool) {
        self.finish(&rec, bytes, aborted, Instant::now());
    }

    /// Logs a request that ended without a response (its handler was dropped).
    pub fn abandoned(&self, mut rec: Record) {
        if let (Some(t), true) = (rec.queue_started, rec.queued.is_zero()) {
            rec.queued = t.elapsed();
        }
        self.finish(&rec, 0, true, Instant::now());
    }

    fn finish(&self, rec: &Record, bytes: u64, aborted: bool, head_at: Instant) {
        let now = Instant::now();
        let total = now - rec.arrived;
        self.metrics
            .record(rec.status, rec.class, head_at - rec.arrived, rec.queued);
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut line = String::with_capacity(256);
        line.push_str("{\"time\":\"");
        line.push_str(&rfc3339(rec.time));
        line.push_str("\",\"id\":");
        line.push_str(&json_string(&rec.id));
        line.push_str(",\"client\":");
        match rec.client {
            Some(ip) => line.push_str(&json_string(&ip.to_string())),
            None => line.push_str("null"),
        }
        line.push_str(",\"method\":");
        line.push_str(&json_string(&rec.method));
        line.push_str(",\"path\":");
        line.push_str(&json_string(&rec.path));
        line.push_str(",\"protocol\":\"");
        line.push_str(rec.protocol);
        line.push_str(&format!("\",\"status\":{},\"error\":", rec.status));
        match rec.class {
            None => line.push_str("null"),
            Some(class) => {
                line.push_str(&json_string(class.as_str()));
                line.push_str(",\"origin\":");
                line.push_str(&json_string(class.origin().as_str()));
            }
        }
        line.push_str(&format!(
            ",\"bytes\":{bytes},\"queue_ms\":{:.3},\"worker_ms\":{:.3},\"send_ms\":{:.3},\"total_ms\":{:.3}",
            ms(rec.queued),
            ms(rec.worker),
            ms(now - head_at),
            ms(total)
        ));
        if let Some(l) = &rec.limit {
            line.push_str(",\"limit\":");
            line.push_str(&json_string(&l.zone));
            line.push_str(&format!(
                ",\"limit_outcome\":\"{}\",\"limit_delay_ms\":{:.3}",
                l.outcome,
                ms(l.delay)
            ));
        }
        if let Some(c) = rec.cache {
            line.push_str(",\"cache\":\"");
            line.push_str(c.as_str());
            line.push('"');
        }
        if rec.static_file {
            line.push_str(",\"static\":true");
        }
        if aborted {
            line.push_str(",\"aborted\":true");
        }
        line.push_str("}\n");
        self.emit(line.as_bytes());
    }
}

/// A response body that counts what it sends and logs the request when it is dropped.
#[derive(Debug)]
pub struct Logged {
    /// The response body, compressed by the compression stage (or as it was), paced by
    /// the route's `limit_rate` (as is without one): `bytes` counts what is sent.
    inner: RateLimitedBody<Encoded>,
    rec: Option<Box<Record>>,
    bytes: u64,
    /// The answer's Content-Length, if it has one. hyper stops polling a body once that
    /// many bytes are written, so such a body may never report its end: it is complete
    /// when `bytes` reaches this.
    length: Option<u64>,
    aborted: bool,
    head_at: Instant,
    log: Arc<AccessLog>,
    /// Set when the client was dropped by `send_timeout` (see `crate::gate`).
    send_timeout: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// On HTTP/2: when this body was last polled, for the connection's send_timeout
    /// (see `crate::http2`).
    stall: Option<Arc<crate::http2::StreamProgress>>,
}

impl Logged {
    /// The line says `client-timeout` if `flag` is set when the body is dropped (the
    /// connection's `send_timeout` fired).
    pub fn mark_send_timeout(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.send_timeout = Some(flag);
    }

    /// Reports each poll of this body to `progress` (an HTTP/2 stream's send_timeout).
    pub fn watch_progress(&mut self, progress: Arc<crate::http2::StreamProgress>) {
        self.stall = Some(progress);
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = &this.stall {
            p.polled(matches!(r, Poll::Pending), matches!(r, Poll::Ready(None)));
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.aborted = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            if let Some(f) = &self.send_timeout {
                if f.load(std::sync::atomic::Ordering::Acquire) && rec.class.is_none() {
                    rec.class = Some(ErrorClass::ClientTimeout);
                }
            }
            // A body dropped before its end (client gone) counts as aborted; one that sent
            // all of its Content-Length is complete even if its end was never polled.
            let complete =
                self.inner.is_end_stream() || self.length.is_some_and(|n| self.bytes >= n);
            let aborted = self.aborted || !complete;
            self.log.finish(&rec, self.bytes, aborted, self.head_at);
        }
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `2026-11-23T12:33:09.807Z` (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn time_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_437_189_807);
        assert_eq!(rfc3339(t), "2026-11-23T12:33:09.807Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn escapes() {
        assert_eq!(json_string("a\"b\n\\"), "\"a\\\"b\\u000a\\\\\"");
    }
    /// A buffered log writes nothing until the next line would not fit or it is flushed,
    /// keeps the lines' order, and writes a line larger than the buffer at once.
    #[test]
    fn a_buffered_log_writes_when_full_or_flushed_in_order() {
        let path = std::env::temp_dir().join(format!("weir-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::new(Sink::open(path.to_str().expect("utf-8 path")).expect("opens"))
            .buffered(16);
        let read = || std::fs::read_to_string(&path).expect("reads");
        assert!(log.is_buffered());
        log.emit(b"one 1\n");
        log.emit(b"two 22\n");
        assert_eq!(read(), "", "13 bytes fit in 16: nothing written yet");
        log.emit(b"three 3\n");
        assert_eq!(
            read(),
            "one 1\ntwo 22\n",
            "the third would not fit: the first two go"
        );
        log.emit(b"a line over sixteen bytes\n");
        assert_eq!(
            read(),
            "one 1\ntwo 22\nthree 3\na line over sixteen bytes\n"
        );
        log.emit(b"four\n");
        log.flush();
        log.flush();
        assert_eq!(
            read(),
            "one 1\ntwo 22\nthree 3\na line over sixteen bytes\nfour\n"
        );
        let _ = std::fs::remove_file(&path);
        assert!(!AccessLog::new(Sink::Off).buffered(16).is_buffered());
        assert!(!AccessLog::new(Sink::Stdout).buffered(0).is_buffered());
    }

    /// After a rotation moved the file away, reopen writes what was gathered to the moved
    /// file and the next lines to a new file at the path; a path that cannot be opened
    /// leaves the log on the file it had.
    #[test]
    fn reopen_follows_a_rotation_and_survives_a_bad_path() {
        let dir = std::env::temp_dir().join(format!("weir-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("access.log");
        let log = AccessLog::new(Sink::open(path.to_str().expect("utf-8")).expect("opens"))
            .buffered(1024);
        log.emit(b"before\n");
        std::fs::rename(&path, dir.join("access.log.1")).expect("rotate");
        assert_eq!(log.reopen().expect("reopens"), Some(path.as_path()));
        log.emit(b"after\n");
        log.flush();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("reads");
        assert_eq!(read(&dir.join("access.log.1")), "before\n");
        assert_eq!(read(&path), "after\n");
        // The path becomes a directory: reopen fails, lines still go to the open file.
        std::fs::rename(&path, dir.join("access.log.2")).expect("rotate");
        std::fs::create_dir(&path).expect("mkdir at the path");
        assert!(log.reopen().is_err());
        log.emit(b"still\n");
        log.flush();
        assert_eq!(read(&dir.join("access.log.2")), "after\nstill\n");
        assert_eq!(AccessLog::new(Sink::Stdout).reopen().expect("no-op"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

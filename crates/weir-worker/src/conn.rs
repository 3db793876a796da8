//! The worker's end of the master socket: a reusable read buffer, the request body reader
//! (CONTENT_LENGTH bytes or `weir_uwsgi::frame` frames), and the framed response writer.
//!
//! Everything here runs with the GIL held. Reads and writes are first tried without
//! blocking; only when the socket would block is the GIL released (`Python::detach`) for a
//! blocking call, so a busy worker pays no GIL hand-off per request.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use pyo3::Python;
use weir_uwsgi::{frame, packet};

use crate::sys;

/// modifier1 of the master's "stop the current response" control packet (no vars, no
/// answer): sent when the client went away mid-response, after the whole request body.
/// The worker looks for it between streamed chunks; at a packet boundary it is ignored.
pub const MODIFIER_CANCEL: u8 = 0xF2;

/// Read buffer size kept between requests (grown only for a large vars block).
pub const READ_BUF: usize = 16 * 1024;
/// Body bytes coalesced (list/tuple results) before a write.
const COALESCE_MAX: usize = 64 * 1024;
/// Reads at least this large go straight into the caller's buffer.
const DIRECT_READ_MIN: usize = 8 * 1024;

/// Where the current request's body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// CONTENT_LENGTH body: bytes not yet consumed.
    Length(u64),
    /// Chunked body: bytes left in the current data frame (0: a frame prefix is next).
    Chunked(usize),
    /// Fully consumed.
    End,
    /// The master aborted the body (an ABORT frame); the socket is in sync again.
    Aborted,
}

/// Why the connection cannot go on: the worker must exit non-zero.
#[derive(Debug)]
pub enum Fatal {
    /// Socket error or EOF in the middle of a packet or body.
    Io(io::Error),
    /// Body framing that cannot be followed (the stream is out of sync).
    Desync(String),
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::Io(e) => write!(f, "socket error: {e}"),
            Fatal::Desync(m) => write!(f, "request body framing broken: {m}"),
        }
    }
}

/// Response state of the current request.
#[derive(Debug, Default)]
pub struct Resp {
    /// The encoded head (valid once `started`).
    pub head: Vec<u8>,
    /// start_response was called (a head is set).
    pub started: bool,
    /// The head was written to the socket.
    pub head_sent: bool,
    /// The END (or ABORT) frame was written: nothing more goes out for this request.
    pub ended: bool,
    /// HEAD request: the body is never sent.
    pub head_request: bool,
    /// Status 1xx/204/304: the body is never sent.
    pub no_body_status: bool,
    /// The Content-Length header the app set, if any.
    pub content_length: Option<u64>,
    /// Body bytes accepted so far.
    pub sent: u64,
    /// Body bytes the app produced past its Content-Length (dropped).
    pub excess: u64,
}

impl Resp {
    fn no_body(&self) -> bool {
        self.head_request || self.no_body_status
    }
}

/// Outcome of [`Conn::finish`].
#[derive(Debug)]
pub enum Finished {
    /// END written (or had been).
    Ok,
    /// The app's body was shorter than its Content-Length and nothing was sent yet: the
    /// caller answers 500.
    ShortBeforeHead { declared: u64, sent: u64 },
    /// Shorter than Content-Length after the head went out: ABORT was written.
    ShortAborted { declared: u64, sent: u64 },
    /// The master cancelled the response: ABORT was written.
    Cancelled,
}

/// The socket plus buffers, shared (behind a mutex) by the request loop and the per-request
/// Python objects (`wsgi.input`, `start_response`).
#[derive(Debug)]
pub struct Conn {
    sock: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Request counter: Python objects of an earlier request compare it and go inert.
    pub seq: u64,
    pub body: Body,
    pub resp: Resp,
    /// Framed body bytes not yet written (head goes first, from `resp.head`).
    pending: Vec<u8>,
    /// Scratch for readline/read of chunked bodies.
    pub scratch: Vec<u8>,
    /// Set when the body stream is out of sync (the worker exits after the request).
    pub desync: Option<String>,
    /// Set when a write failed (the master is gone; the worker exits after the request).
    pub broken: Option<io::Error>,
    /// The master cancelled the current response (client gone).
    pub cancelled: bool,
    /// The claim word of prefetched requests, shared with the master (see weir-claim).
    claim: Option<weir_claim::ClaimWords>,
    /// Bytes of a revoked prefetched request still to discard before the next packet.
    skip: usize,
    /// The next request was won past its start-by time: answer 504 `deadline`, do not run.
    pub expired_next: bool,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "master closed the socket")
}

impl Conn {
    pub fn new(sock: UnixStream, claim: Option<weir_claim::ClaimWords>) -> Self {
        Conn {
            claim,
            skip: 0,
            expired_next: false,
            sock,
            buf: Vec::new(),
            start: 0,
            end: 0,
            seq: 0,
            body: Body::End,
            resp: Resp::default(),
            pending: Vec::new(),
            scratch: Vec::new(),
            desync: None,
            broken: None,
            cancelled: false,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads once into the free space after `end`. `Ok(0)` is EOF.
    fn fill(&mut self, py: Python<'_>, idle: bool) -> io::Result<usize> {
        let sock = &self.sock;
        let dst = &mut self.buf[self.end..];
        debug_assert!(!dst.is_empty());
        let n = read_some(py, sock, dst, idle)?;
        self.end += n;
        Ok(n)
    }

    /// Makes at least `n` bytes buffered. `Ok(false)`: EOF first (with `buffered()` < n).
    fn ensure(&mut self, py: Python<'_>, n: usize, idle: bool) -> io::Result<bool> {
        while self.buffered() < n {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < n {
                    self.buf.resize(n.max(READ_BUF), 0);
                }
            }
            if self.fill(py, idle && self.buffered() == 0)? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for the next whole packet. `Ok(None)`: EOF at a packet boundary. `Ok(Some(n))`:
    /// the packet is `self.packet_bytes(n)`; consume it with [`Conn::consume`].
    pub fn next_packet(&mut self, py: Python<'_>) -> Result<Option<usize>, Fatal> {
        if self.buf.is_empty() {
            self.buf.resize(READ_BUF, 0);
        }
        while self.skip > 0 {
            // A revoked prefetched request: the master wrote all of it, so this ends.
            if self.buffered() == 0 && !self.ensure(py, 1, false).map_err(Fatal::Io)? {
                return Err(Fatal::Io(eof()));
            }
            let n = self.skip.min(self.buffered());
            self.start += n;
            self.skip -= n;
        }
        if !self
            .ensure(py, packet::HEADER_LEN, true)
            .map_err(Fatal::Io)?
        {
            if self.buffered() == 0 {
                return Ok(None);
            }
            return Err(Fatal::Io(eof()));
        }
        let b = &self.buf[self.start..];
        let total = packet::HEADER_LEN + u16::from_le_bytes([b[1], b[2]]) as usize;
        if !self.ensure(py, total, false).map_err(Fatal::Io)? {
            return Err(Fatal::Io(eof()));
        }
        Ok(Some(total))
    }

    /// The buffered bytes of a packet found by [`Conn::next_packet`].
    pub fn packet_bytes(&self, total: usize) -> &[u8] {
        &self.buf[self.start..self.start + total]
    }

    /// Drops `n` buffered bytes (a packet).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.buffered());
        self.start += n;
    }

    /// Handles a CLAIM packet (consumed by the caller): `true` when this worker won the
    /// claim, and the request that follows is its next one (answered 504 `deadline`
    /// instead of run when it is past its start-by time: `expired_next`); `false` when the
    /// master revoked it, and its `len` bytes are skipped before the next packet.
    pub fn claim(&mut self, claim: packet::Claim) -> bool {
        // Without a claim word the master never offers; a CLAIM anyway is run as sent.
        let won = self.claim.as_ref().is_none_or(|w| w.take(claim.seq));
        if won {
            self.expired_next = claim.start_by != 0 && weir_claim::monotonic_ns() > claim.start_by;
        } else {
            self.skip = claim.len as usize;
        }
        won
    }

    /// Starts a new request: body framing and a fresh response state.
    pub fn begin(&mut self, body: Body, head_request: bool) {
        self.seq = self.seq.wrapping_add(1);
        self.body = body;
        let head = std::mem::take(&mut self.resp.head);
        self.resp = Resp {
            head,
            head_request,
            ..Resp::default()
        };
        self.resp.head.clear();
        self.pending.clear();
        self.cancelled = false;
    }

    /// Whether the master sent CANCEL for the current response. Looks (without blocking)
    /// only once the request body is consumed, so any byte that came is past the body.
    /// EOF counts as a cancel (nobody is reading any more).
    fn cancel_requested(&mut self) -> bool {
        if !matches!(self.body, Body::End | Body::Aborted | Body::Length(0)) {
            return false;
        }
        loop {
            if self.skip > 0 {
                // The rest of a revoked prefetched request (see below).
                let n = self.skip.min(self.buffered());
                self.start += n;
                self.skip -= n;
                if self.skip > 0 && !self.fill_nowait() {
                    return self.broken.is_some();
                }
                continue;
            }
            if self.buffered() < packet::HEADER_LEN && !self.fill_nowait() {
                return self.broken.is_some();
            }
            if self.buffered() < packet::HEADER_LEN {
                continue;
            }
            let b = &self.buf[self.start..self.end];
            if b[0] == MODIFIER_CANCEL && b[1] == 0 && b[2] == 0 {
                self.start += packet::HEADER_LEN;
                return true;
            }
            // A request prefetched behind this one: the master revokes it before it sends
            // CANCEL, so a CANCEL can only be behind a revoked one. Look past it.
            if b[0] != packet::MODIFIER_CLAIM {
                return false;
            }
            if self.buffered() < packet::CLAIM_LEN && !self.fill_nowait() {
                return self.broken.is_some();
            }
            let Ok(Some(claim)) = packet::decode_claim(&self.buf[self.start..self.end]) else {
                // Not all here yet (or malformed: the request loop reports that).
                return false;
            };
            let revoked = self.claim.as_ref().is_some_and(|w| w.is_revoked(claim.seq));
            if !revoked {
                return false;
            }
            self.start += packet::CLAIM_LEN;
            self.skip = claim.len as usize;
        }
    }

    /// Reads what is there without blocking, after compacting the buffer. `false` when
    /// nothing came (would block, or EOF: then `broken` is set).
    fn fill_nowait(&mut self) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < packet::CLAIM_LEN {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < packet::CLAIM_LEN {
            self.buf
                .resize(READ_BUF.max(self.end + packet::CLAIM_LEN), 0);
        }
        match sys::recv_nowait(self.sock.as_fd(), &mut self.buf[self.end..]) {
            Ok(0) => {
                self.broken = Some(eof());
                false
            }
            Ok(n) => {
                self.end += n;
                true
            }
            Err(_) => false,
        }
    }

    /// Moves past frame prefixes: the bytes left in the current body segment (0 at the end
    /// of the body). Does not need body bytes buffered.
    fn body_segment(&mut self, py: Python<'_>) -> io::Result<u64> {
        loop {
            match self.body {
                Body::End => return Ok(0),
                Body::Aborted => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client aborted the request body",
                    ))
                }
                Body::Length(0) => {
                    self.body = Body::End;
                    return Ok(0);
                }
                Body::Length(n) => return Ok(n),
                Body::Chunked(n) if n > 0 => return Ok(n as u64),
                Body::Chunked(_) => {
                    if !self.ensure(py, frame::PREFIX_LEN, false)? {
                        return Err(eof());
                    }
                    let prefix = frame::decode_prefix(&self.buf[self.start..self.end]);
                    match prefix {
                        Ok(frame::Prefix::Data(n)) => self.body = Body::Chunked(n),
                        Ok(frame::Prefix::End) => self.body = Body::End,
                        Ok(frame::Prefix::Abort) => self.body = Body::Aborted,
                        Err(e) => {
                            let msg = e.to_string();
                            self.desync = Some(msg.clone());
                            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                        }
                    }
                    self.start += frame::PREFIX_LEN;
                }
            }
        }
    }

    fn body_advance(&mut self, n: usize) {
        self.body = match self.body {
            Body::Length(r) => Body::Length(r - n as u64),
            Body::Chunked(r) => Body::Chunked(r - n),
            other => other,
        };
    }

    /// Body bytes available in the buffer right now (reading if none), at most `max`:
    /// `(offset, len)` into the buffer, len 0 at the end of the body. Consume with
    /// [`Conn::body_consume`].
    fn body_peek(&mut self, py: Python<'_>, max: usize) -> io::Result<(usize, usize)> {
        let seg = self.body_segment(py)?;
        if seg == 0 || max == 0 {
            return Ok((self.start, 0));
        }
        if self.buffered() == 0 && !self.ensure(py, 1, false)? {
            return Err(eof());
        }
        let n = (self.buffered() as u64).min(seg).min(max as u64) as usize;
        Ok((self.start, n))
    }

    fn body_consume(&mut self, n: usize) {
        self.start += n;
        self.body_advance(n);
    }

    /// Reads body bytes into `dst` (as many as are ready, at least one unless at the end).
    /// `Ok(0)`: end of body.
    pub fn body_read_into(&mut self, py: Python<'_>, dst: &mut [u8]) -> io::Result<usize> {
        let seg = self.body_segment(py)?;
        if seg == 0 || dst.is_empty() {
            return Ok(0);
        }
        let want = (dst.len() as u64).min(seg) as usize;
        if self.buffered() == 0 && want >= DIRECT_READ_MIN {
            let n = read_some(py, &self.sock, &mut dst[..want], false)?;
            if n == 0 {
                return Err(eof());
            }
            self.body_advance(n);
            return Ok(n);
        }
        let (at, n) = self.body_peek(py, want)?;
        dst[..n].copy_from_slice(&self.buf[at..at + n]);
        self.body_consume(n);
        Ok(n)
    }

    /// Fills `dst` completely from the body (for a CONTENT_LENGTH read of a known size).
    pub fn body_read_exact(&mut self, py: Python<'_>, dst: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < dst.len() {
            let n = self.body_read_into(py, &mut dst[done..])?;
            if n == 0 {
                return Err(eof());
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes of a CONTENT_LENGTH body still unread (`None` for a chunked body).
    pub fn body_remaining_known(&self) -> Option<u64> {
        match self.body {
            Body::Length(n) => Some(n),
            Body::End => Some(0),
            Body::Chunked(_) | Body::Aborted => None,
        }
    }

    /// Appends up to `max` body bytes to `self.scratch` (fewer at the end of the body).
    pub fn body_read_to_scratch(&mut self, py: Python<'_>, max: usize) -> io::Result<()> {
        let mut left = max;
        while left > 0 {
            let (at, n) = self.body_peek(py, left.min(1 << 20))?;
            if n == 0 {
                break;
            }
            self.scratch.extend_from_slice(&self.buf[at..at + n]);
            self.body_consume(n);
            left -= n;
        }
        Ok(())
    }

    /// Appends one line (through `\n`, at most `max` bytes) to `self.scratch`.
    pub fn body_readline_to_scratch(&mut self, py: Python<'_>, max: usize) -> io::Result<()> {
        let mut left = max;
        while left > 0 {
            let (at, n) = self.body_peek(py, left)?;
            if n == 0 {
                break;
            }
            let slice = &self.buf[at..at + n];
            match slice.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.scratch.extend_from_slice(&slice[..=i]);
                    self.body_consume(i + 1);
                    break;
                }
                None => {
                    self.scratch.extend_from_slice(slice);
                    self.body_consume(n);
                    left -= n;
                }
            }
        }
        Ok(())
    }

    /// Skips whatever body the app did not read, so the next packet starts in sync.
    pub fn drain_body(&mut self, py: Python<'_>) -> Result<(), Fatal> {
        if let Some(m) = &self.desync {
            return Err(Fatal::Desync(m.clone()));
        }
        loop {
            match self.body_peek(py, usize::MAX) {
                Ok((_, 0)) => return Ok(()),
                Ok((_, n)) => self.body_consume(n),
                Err(_) if self.body == Body::Aborted => return Ok(()),
                Err(e) => {
                    return Err(match self.desync.clone() {
                        Some(m) => Fatal::Desync(m),
                        None => Fatal::Io(e),
                    })
                }
            }
        }
    }

    /// Drops big buffers after a request so an idle worker stays small.
    pub fn shrink(&mut self) {
        if self.buf.len() > READ_BUF && self.buffered() <= READ_BUF {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(READ_BUF);
            self.buf.shrink_to_fit();
        }
        for v in [&mut self.pending, &mut self.scratch, &mut self.resp.head] {
            if v.capacity() > COALESCE_MAX {
                *v = Vec::new();
            }
        }
    }

    /// Writes all of `parts` (one gathering syscall when the socket has room). A failure is
    /// remembered in `self.broken`.
    pub fn send(&mut self, py: Python<'_>, parts: &[&[u8]]) -> io::Result<()> {
        if let Some(e) = &self.broken {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        let r = send_all(py, &self.sock, parts);
        if let Err(e) = &r {
            self.broken = Some(io::Error::new(e.kind(), e.to_string()));
        }
        r
    }

    /// One body chunk from the app. `flush`: write it now (streaming); otherwise it may be
    /// coalesced with later chunks. Returns whether more body is wanted (false once the body
    /// is complete: Content-Length reached, or a HEAD/no-body response).
    ///
    /// The caller checked `resp.started` for non-empty data.
    pub fn body_chunk(&mut self, py: Python<'_>, data: &[u8], flush: bool) -> io::Result<bool> {
        if self.cancelled {
            return Ok(false);
        }
        if self.resp.ended {
            if !self.resp.no_body() {
                self.resp.excess += data.len() as u64;
            }
            return Ok(false);
        }
        if data.is_empty() {
            return Ok(true);
        }
        if self.resp.no_body() {
            // The head is all that goes out; no need to look at more of the body.
            self.write_out(py, &[], true)?;
            return Ok(false);
        }
        let mut data = data;
        let mut complete = false;
        if let Some(cl) = self.resp.content_length {
            let left = cl - self.resp.sent;
            if data.len() as u64 >= left {
                if data.len() as u64 > left {
                    self.resp.excess += data.len() as u64 - left;
                    data = &data[..left as usize];
                }
                complete = true;
            }
        }
        if !flush && !complete && self.pending.len() + data.len() < COALESCE_MAX {
            self.resp.sent += data.len() as u64;
            frame::encode_data(&mut self.pending, data);
            return Ok(true);
        }
        if flush && !complete && self.cancel_requested() {
            self.cancelled = true;
            return Ok(false);
        }
        self.resp.sent += data.len() as u64;
        self.write_out(py, data, complete)?;
        Ok(!complete)
    }

    /// Writes [head if unsent][pending][data frames][END if `end`].
    fn write_out(&mut self, py: Python<'_>, data: &[u8], end: bool) -> io::Result<()> {
        let mut data = data;
        // Frames over MAX_FRAME_LEN: all but the last piece go out first.
        while data.len() > frame::MAX_FRAME_LEN {
            let (piece, rest) = data.split_at(frame::MAX_FRAME_LEN);
            self.write_parts(py, piece, false)?;
            data = rest;
        }
        self.write_parts(py, data, end)
    }

    fn write_parts(&mut self, py: Python<'_>, data: &[u8], end: bool) -> io::Result<()> {
        let prefix;
        let mut parts: [&[u8]; 5] = [&[]; 5];
        let mut n = 0;
        let head = std::mem::take(&mut self.resp.head);
        let pending = std::mem::take(&mut self.pending);
        if !self.resp.head_sent {
            parts[n] = &head;
            n += 1;
        }
        if !pending.is_empty() {
            parts[n] = &pending;
            n += 1;
        }
        if !data.is_empty() {
            prefix = frame::data_prefix(data.len());
            parts[n] = &prefix;
            parts[n + 1] = data;
            n += 2;
        }
        if end {
            parts[n] = &frame::END;
            n += 1;
        }
        let r = self.send(py, &parts[..n]);
        self.resp.head = head;
        self.pending = pending;
        self.pending.clear();
        self.resp.head_sent = true;
        if end {
            self.resp.ended = true;
        }
        r
    }

    /// The body ended because it reached the app's Content-Length (not cancelled, not
    /// aborted, not a response without a body): whatever the app yields now is excess.
    pub fn complete_by_length(&self) -> bool {
        self.resp.ended
            && !self.cancelled
            && !self.resp.no_body()
            && self.resp.content_length == Some(self.resp.sent)
    }

    /// Ends the body: writes what is pending and END (or ABORT when the app sent less than
    /// its Content-Length).
    pub fn finish(&mut self, py: Python<'_>) -> io::Result<Finished> {
        if self.resp.ended {
            return Ok(Finished::Ok);
        }
        if self.cancelled {
            self.abort(py)?;
            return Ok(Finished::Cancelled);
        }
        if let Some(cl) = self.resp.content_length {
            if !self.resp.no_body() && self.resp.sent < cl {
                let (declared, sent) = (cl, self.resp.sent);
                if !self.resp.head_sent {
                    return Ok(Finished::ShortBeforeHead { declared, sent });
                }
                self.abort(py)?;
                return Ok(Finished::ShortAborted { declared, sent });
            }
        }
        self.write_out(py, &[], true)?;
        Ok(Finished::Ok)
    }

    /// Ends a started response with ABORT (the app failed mid-body).
    pub fn abort(&mut self, py: Python<'_>) -> io::Result<()> {
        if self.resp.ended {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let head = std::mem::take(&mut self.resp.head);
        let head_part: &[u8] = if self.resp.head_sent { &[] } else { &head };
        debug_assert!(self.resp.head_sent || self.resp.started);
        let r = self.send(py, &[head_part, &pending, &frame::ABORT_FRAME]);
        self.resp.head = head;
        self.resp.head_sent = true;
        self.pending = pending;
        self.pending.clear();
        self.resp.ended = true;
        r
    }

    /// The worker's own error answer of `class` (its status, `x-weir-error`), replacing
    /// anything not yet sent. The caller checked `!resp.head_sent`.
    pub fn error_response(
        &mut self,
        py: Python<'_>,
        class: weir_errors::ErrorClass,
        body: &str,
    ) -> io::Result<()> {
        let s = class.status();
        let status = format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""));
        self.simple_response(py, &status, Some(class), body)
    }

    /// The worker's answer to an app exception the error map matched: the entry's
    /// `status`, `x-weir-error: <class>` and `Retry-After`, which the master reads back
    /// (weir-front's `attribute_worker_answer`). The caller checked `!resp.head_sent`.
    pub fn mapped_response(
        &mut self,
        py: Python<'_>,
        status: u16,
        class: weir_errors::ErrorClass,
        retry_after: Option<u64>,
    ) -> io::Result<()> {
        let s = http::StatusCode::from_u16(status).unwrap_or(class.status());
        let reason = s.canonical_reason().unwrap_or("Error");
        let line = format!("{} {reason}", s.as_u16());
        self.fixed_response(py, &line, Some(class), retry_after, reason)
    }

    /// Answers with a complete fixed response (errors, ready checks), replacing anything
    /// not yet sent; `error_tag`: the answer is the worker's own, of that class
    /// (`x-weir-error`). The caller checked `!resp.head_sent`.
    pub fn simple_response(
        &mut self,
        py: Python<'_>,
        status: &str,
        error_tag: Option<weir_errors::ErrorClass>,
        body: &str,
    ) -> io::Result<()> {
        self.fixed_response(py, status, error_tag, None, body)
    }

    /// [`Conn::simple_response`] with an optional Retry-After.
    fn fixed_response(
        &mut self,
        py: Python<'_>,
        status: &str,
        error_tag: Option<weir_errors::ErrorClass>,
        retry_after: Option<u64>,
        body: &str,
    ) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.pending);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(tag) = error_tag {
            out.extend_from_slice(b"x-weir-error: ");
            out.extend_from_slice(tag.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(s) = retry_after {
            out.extend_from_slice(b"Retry-After: ");
            out.extend_from_slice(s.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.resp.head_request {
            frame::encode_data(&mut out, body.as_bytes());
        }
        out.extend_from_slice(&frame::END);
        let r = self.send(py, &[&out]);
        out.clear();
        self.pending = out;
        self.resp.head_sent = true;
        self.resp.ended = true;
        r
    }
}

/// One read: without blocking first (unless `idle`), then with the GIL released.
fn read_some(py: Python<'_>, sock: &UnixStream, dst: &mut [u8], idle: bool) -> io::Result<usize> {
    if !idle {
        loop {
            match sys::recv_nowait(sock.as_fd(), dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        match py.detach(|| (&*sock).read(dst)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // A signal the app set a Python handler for: run it now, not at the next
                // request. If it raises (sys.exit in a SIGTERM handler), the worker ends.
                if let Err(err) = py.check_signals() {
                    return Err(io::Error::other(format!(
                        "a Python signal handler raised: {err}"
                    )));
                }
            }
            r => return r,
        }
    }
}

/// Writes every byte of `parts`: one non-blocking gathering write, then (only if the socket
/// is full) blocking writes of the rest with the GIL released.
fn send_all(py: Python<'_>, sock: &UnixStream, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total == 0 {
        return Ok(());
    }
    let mut iov = [IoSlice::new(&[]); 6];
    let mut k = 0;
    for p in parts.iter().filter(|p| !p.is_empty()).take(iov.len()) {
        iov[k] = IoSlice::new(p);
        k += 1;
    }
    debug_assert!(parts.iter().filter(|p| !p.is_empty()).count() <= iov.len());
    let mut written = loop {
        match sys::send_nowait(sock.as_fd(), &iov[..k]) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(e) => return Err(e),
        }
    };
    if written == total {
        return Ok(());
    }
    py.detach(|| {
        for p in parts {
            if written >= p.len() {
                written -= p.len();
                continue;
            }
            (&*sock).write_all(&p[written..])?;
            written = 0;
        }
        Ok(())
    })
}

//! A pure HTTP/1.1 request framing check: bytes in, verdicts out, no I/O.
//!
//! weir serves HTTP/1.1 with hyper, which parses each request and answers the ones it
//! cannot parse itself (a bare 400 or 431, without weir's `x-weir-error` and request id),
//! and applies RFC 9112 6.3 to a request with both Content-Length and Transfer-Encoding
//! (chunked wins, the length is dropped) instead of refusing it. weir's front door runs
//! this framer over the connection's bytes before hyper sees them: it decides, request by
//! request, where each one ends and whether it is acceptable, so every refusal is weir's
//! own answer and an ambiguous request never reaches a worker (NGINX refuses the same
//! shapes: "client sent Content-Length and Transfer-Encoding headers at the same time").
//!
//! [`RequestFramer::step`] takes the bytes not yet checked and says how many may pass
//! ([`Step::Pass`]), that it needs more ([`Step::More`]), that the connection's last
//! request has been framed ([`Step::End`]), or that the request is refused
//! ([`Step::Refuse`]). The head is parsed with `httparse` and the configuration hyper
//! uses, so both read a head the same way; the framer is stricter than hyper where the
//! two could disagree on where a message ends (chunk lines must end in CRLF, chunk data
//! must be followed by CRLF), so anything it passes is framed the same way by hyper.
//!
//! Written here because no crate frames a stream of requests (head, then a
//! Content-Length or chunked body, then the next head) without also owning the
//! connection: httparse parses one head, and hyper's own decoder is private.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::mem::MaybeUninit;
use weir_errors::ErrorClass;

/// hyper's default limit on the number of header fields (`h1_max_headers`); a head with
/// more is refused here (431) before hyper would refuse it.
pub const MAX_HEADERS: usize = 100;
/// hyper's limit on the request target (`MAX_URI_LEN`).
pub const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// The longest chunk-size line (size and extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Hop-by-hop header fields: the ones a hop owns, never passed from an app or an upstream
/// to the client (the front door frames every response itself). One list for every place
/// that drops them: the worker (PEP 3333 forbids an app to set them), a worker's or an
/// upstream's response head, and an HTTP upstream's request. It is RFC 9110 7.6.1's
/// (`Connection`, `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`,
/// and `Trailer`) joined with the list of RFC 2616 13.5.1 that wsgiref checks PEP 3333
/// apps against (`Proxy-Authenticate`, `Proxy-Authorization`, and `Trailers`, as spelled
/// there).
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// The framer's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `[server] max_header_size`: the longest request head (and trailer section).
    pub max_head: usize,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// httparse could not parse the head.
    #[error("the request head is not valid HTTP/1.1 ({0})")]
    Malformed(httparse::Error),
    /// The head is over the limit.
    #[error("the request head is over max_header_size ({max} bytes)")]
    HeadTooLarge {
        /// The limit.
        max: usize,
    },
    /// Too many header fields.
    #[error("the request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The request target is too long.
    #[error("the request target is longer than {MAX_URI_LEN} bytes")]
    UriTooLong,
    /// The request target is not a URI.
    #[error("the request target is not a valid URI")]
    BadUri,
    /// Transfer-Encoding in an HTTP/1.0 request.
    #[error("an HTTP/1.0 request cannot have Transfer-Encoding")]
    TransferEncodingInHttp10,
    /// Transfer-Encoding that does not end in chunked, or applies it twice: where the body
    /// ends cannot be known (RFC 9112 6.3: 400).
    #[error("Transfer-Encoding must end in chunked and apply it once")]
    TransferEncodingNotChunked,
    /// A transfer coding other than chunked (`gzip, chunked`): weir implements chunked
    /// alone (RFC 9112 6.1: 501; NGINX: "client sent unknown Transfer-Encoding").
    #[error("Transfer-Encoding {0:?} is not implemented: only chunked is")]
    UnknownTransferCoding(String),
    /// The CONNECT method: weir does not tunnel (NGINX answers 405 too).
    #[error("the CONNECT method is not allowed: weir does not tunnel")]
    ConnectMethod,
    /// The TRACE method: weir does not echo requests back (cross-site tracing; NGINX
    /// answers 405 too).
    #[error("the TRACE method is not allowed: weir does not echo requests back")]
    TraceMethod,
    /// A method that is not upper-case letters, `_` and `-` (NGINX: "client sent invalid
    /// method"; methods are case-sensitive, so `get` is not GET and no app serves it).
    #[error("invalid method {0:?}: methods are upper case (GET, POST, ...)")]
    BadMethod(String),
    /// A request target in asterisk form (`*`) on a method other than OPTIONS, or in
    /// authority form (`host:port`) on a method other than CONNECT (RFC 9112 3.2.3, 3.2.4).
    #[error("a request target in {form} form is not allowed with {method}")]
    TargetFormNotAllowed {
        /// The method.
        method: String,
        /// "asterisk" or "authority".
        form: &'static str,
    },
    /// Both framings at once: the request-smuggling shape.
    #[error(
        "the request has both Content-Length and Transfer-Encoding (ambiguous framing, \
         the request-smuggling shape)"
    )]
    ContentLengthAndTransferEncoding,
    /// Content-Length is not a decimal number.
    #[error("Content-Length is not a decimal number")]
    BadContentLength,
    /// Several Content-Length values that differ.
    #[error("the request's Content-Length values differ")]
    ConflictingContentLength,
    /// HTTP/1.1 without Host (RFC 9112 3.2).
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    /// More than one Host.
    #[error("the request has more than one Host header")]
    MultipleHost,
    /// A chunk-size line that is not hex digits, optional extensions, CRLF.
    #[error("a chunk-size line is malformed")]
    BadChunkSize,
    /// A chunk-size line over [`MAX_CHUNK_LINE`].
    #[error("a chunk-size line is longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF (the chunk is longer than its size said).
    #[error("chunk data is not followed by CRLF (the chunk is longer than its size)")]
    BadChunkEnd,
    /// A trailer line without CRLF, or a trailer section over the head limit.
    #[error("the chunked body's trailer section is malformed or over max_header_size")]
    BadTrailers,
}

impl FramingError {
    /// weir's error class (`x-weir-error`), which gives the status.
    pub fn class(&self) -> ErrorClass {
        match self {
            FramingError::HeadTooLarge { .. }
            | FramingError::TooManyHeaders
            | FramingError::UriTooLong => ErrorClass::HeaderTooLarge,
            FramingError::ConnectMethod | FramingError::TraceMethod => ErrorClass::MethodNotAllowed,
            FramingError::UnknownTransferCoding(_) => ErrorClass::NotImplemented,
            _ => ErrorClass::BadRequest,
        }
    }

    /// The HTTP status the client is answered with.
    pub fn status(&self) -> u16 {
        self.class().status().as_u16()
    }
}

/// What is known of a refused request's head (when its head could be parsed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedHead {
    /// The method.
    pub method: String,
    /// The request target's path (lossily decoded).
    pub path: String,
    /// The Accept header's value.
    pub accept: Option<Vec<u8>>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub error: FramingError,
    /// Found in a body: the request was already passed on, so whoever handles it answers
    /// (its body read fails); otherwise nothing of it was passed and the refuser answers.
    pub in_body: bool,
    /// The head, when it was parsed.
    pub head: Option<RefusedHead>,
}

/// The framer's verdict on the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This many bytes from the front of the input are checked and may be passed on
    /// (never zero); call again with the rest.
    Pass(usize),
    /// Nothing can be decided until more bytes arrive.
    More,
    /// The connection's last request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive) has been framed; whatever follows is not read.
    End,
    /// The request is refused; nothing more passes on this connection.
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body { left: u64 },
    ChunkSize,
    ChunkData { left: u64 },
    ChunkDataEnd,
    Trailers { seen: usize },
    End,
    Refused(Refusal),
}

/// Frames the requests of one connection.
#[derive(Debug, Clone)]
pub struct RequestFramer {
    limits: Limits,
    state: State,
    /// The current request is the connection's last.
    last: bool,
}

impl RequestFramer {
    /// A framer for a new connection.
    pub fn new(limits: Limits) -> Self {
        RequestFramer {
            limits,
            state: State::Head,
            last: false,
        }
    }

    /// Between requests (nothing of a request has been passed without its end).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head | State::End)
    }

    /// After the connection's last request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive): nothing more is accepted on it.
    pub fn at_end(&self) -> bool {
        matches!(self.state, State::End)
    }

    /// Checks the front of `input` (the bytes not yet passed).
    pub fn step(&mut self, input: &[u8]) -> Step {
        match self.state {
            State::Head => self.head(input),
            State::Body { left } => {
                if input.is_empty() {
                    return Step::More;
                }
                let n = left.min(input.len() as u64);
                self.state = State::Body { left: left - n };
                if left == n {
                    self.message_done();
                }
                Step::Pass(n as usize)
            }
            State::ChunkSize => self.chunk_size(input),
            State::ChunkData { left } => {
                if input.is_empty() {
                    return Step::More;
                }
                let n = left.min(input.len() as u64);
                self.state = if left == n {
                    State::ChunkDataEnd
                } else {
                    State::ChunkData { left: left - n }
                };
                Step::Pass(n as usize)
            }
            State::ChunkDataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Step::Pass(2)
                }
                [] | [b'\r'] => Step::More,
                _ => self.refuse(FramingError::BadChunkEnd, true, None),
            },
            State::Trailers { seen } => self.trailer_line(input, seen),
            State::End => Step::End,
            State::Refused(ref r) => Step::Refuse(r.clone()),
        }
    }

    fn refuse(&mut self, error: FramingError, in_body: bool, head: Option<RefusedHead>) -> Step {
        let r = Refusal {
            error,
            in_body,
            head,
        };
        self.state = State::Refused(r.clone());
        Step::Refuse(r)
    }

    fn message_done(&mut self) {
        self.state = if self.last { State::End } else { State::Head };
    }

    fn head(&mut self, input: &[u8]) -> Step {
        if input.is_empty() {
            return Step::More;
        }
        let max = self.limits.max_head;
        // Only the first max_head bytes are parsed, so the verdict on a head does not
        // depend on how much of what follows has arrived.
        let window = &input[..input.len().min(max)];
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            window,
            &mut storage,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if window.len() == max => {
                return self.refuse(FramingError::HeadTooLarge { max }, false, None)
            }
            Ok(httparse::Status::Partial) => return Step::More,
            Err(httparse::Error::TooManyHeaders) => {
                return self.refuse(FramingError::TooManyHeaders, false, None)
            }
            Err(e) => return self.refuse(FramingError::Malformed(e), false, None),
        };
        let method = req.method.unwrap_or_default();
        let target = req.path.unwrap_or_default();
        let http11 = req.version == Some(1);
        let framing = check_head(http11, target, req.headers)
            .and_then(|f| check_method_and_target(method, target).map(|()| f));
        match framing {
            Ok(f) => {
                self.last = f.last;
                self.state = if f.chunked {
                    State::ChunkSize
                } else if f.length > 0 {
                    State::Body { left: f.length }
                } else if f.last {
                    State::End
                } else {
                    State::Head
                };
                Step::Pass(len)
            }
            Err(e) => {
                let head = RefusedHead {
                    method: method.to_string(),
                    path: String::from_utf8_lossy(
                        target.split('?').next().unwrap_or_default().as_bytes(),
                    )
                    .into_owned(),
                    accept: req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("accept"))
                        .map(|h| h.value.to_vec()),
                };
                self.refuse(e, false, Some(head))
            }
        }
    }

    fn chunk_size(&mut self, input: &[u8]) -> Step {
        let window = &input[..input.len().min(MAX_CHUNK_LINE)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            if input.len() >= MAX_CHUNK_LINE {
                return self.refuse(FramingError::ChunkLineTooLong, true, None);
            }
            return Step::More;
        };
        match parse_chunk_size(&input[..lf]) {
            Some(0) => {
                self.state = State::Trailers { seen: 0 };
                Step::Pass(lf + 1)
            }
            Some(size) => {
                self.state = State::ChunkData { left: size };
                Step::Pass(lf + 1)
            }
            None => self.refuse(FramingError::BadChunkSize, true, None),
        }
    }

    fn trailer_line(&mut self, input: &[u8], seen: usize) -> Step {
        let room = self.limits.max_head.saturating_sub(seen);
        let window = &input[..input.len().min(room.saturating_add(1))];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            if input.len() > room {
                return self.refuse(FramingError::BadTrailers, true, None);
            }
            return Step::More;
        };
        if lf == 0 || input[lf - 1] != b'\r' {
            return self.refuse(FramingError::BadTrailers, true, None);
        }
        if lf == 1 {
            self.message_done();
        } else {
            self.state = State::Trailers {
                seen: seen + lf + 1,
            };
        }
        Step::Pass(lf + 1)
    }
}

/// How a checked request is framed.
struct Framing {
    chunked: bool,
    length: u64,
    last: bool,
}

fn check_head(
    http11: bool,
    target: &str,
    headers: &[httparse::Header<'_>],
) -> Result<Framing, FramingError> {
    if target.len() > MAX_URI_LEN {
        return Err(FramingError::UriTooLong);
    }
    if http::Uri::try_from(target.as_bytes()).is_err() {
        return Err(FramingError::BadUri);
    }
    let mut length: Option<u64> = None;
    let mut te_seen = false;
    let mut chunked = false;
    let mut chunked_count = 0;
    let mut unknown_coding: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http11 {
                return Err(FramingError::TransferEncodingInHttp10);
            }
            te_seen = true;
            let codings: Vec<&[u8]> = h.value.split(|&b| b == b',').map(trim).collect();
            chunked_count += codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count();
            // Empty list elements are allowed (RFC 9110 5.6.1) and name no coding.
            unknown_coding = unknown_coding.or_else(|| {
                codings
                    .iter()
                    .copied()
                    .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
            });
            // As hyper: the last Transfer-Encoding field decides.
            chunked = codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for item in h.value.split(|&b| b == b',') {
                let n = parse_decimal(trim(item)).ok_or(FramingError::BadContentLength)?;
                match length {
                    Some(prev) if prev != n => return Err(FramingError::ConflictingContentLength),
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // Where the body ends first (RFC 9112 6.3: 400 when chunked is not the final coding,
    // once), then whether weir can decode it (6.1: 501 for any other coding).
    if te_seen && (!chunked || chunked_count != 1) {
        return Err(FramingError::TransferEncodingNotChunked);
    }
    if let Some(c) = unknown_coding {
        return Err(FramingError::UnknownTransferCoding(
            String::from_utf8_lossy(c).into_owned(),
        ));
    }
    if te_seen && length.is_some() {
        return Err(FramingError::ContentLengthAndTransferEncoding);
    }
    if hosts > 1 {
        return Err(FramingError::MultipleHost);
    }
    if http11 && hosts == 0 {
        return Err(FramingError::MissingHost);
    }
    Ok(Framing {
        chunked: te_seen,
        length: length.unwrap_or(0),
        last: close || (!http11 && !keep_alive),
    })
}

/// The method and the form of the request target (after the framing checks, as NGINX
/// refuses CONNECT after reading the head): a method with anything but upper-case letters,
/// `_` and `-` is refused as NGINX refuses it (400); CONNECT (weir does not tunnel) and
/// TRACE (weir does not echo requests) are refused (405, as NGINX);
/// the asterisk form is for OPTIONS only (RFC 9112 3.2.4) and the authority form for
/// CONNECT only (3.2.3), so anything else must be an absolute path or an absolute URI.
fn check_method_and_target(method: &str, target: &str) -> Result<(), FramingError> {
    if !method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return Err(FramingError::BadMethod(method.to_owned()));
    }
    match method {
        "CONNECT" => return Err(FramingError::ConnectMethod),
        "TRACE" => return Err(FramingError::TraceMethod),
        _ => {}
    }
    let refused = if target == "*" {
        (method != "OPTIONS").then_some("asterisk")
    } else if target.starts_with('/') {
        None
    } else {
        // Not the origin form: the absolute form (`scheme://...`) is the only other one
        // allowed. http::Uri has accepted the target (check_head); it has a scheme only in
        // the absolute form, and only an authority in the authority form.
        match http::Uri::try_from(target) {
            Ok(u) if u.scheme().is_some() => None,
            _ => Some("authority"),
        }
    };
    match refused {
        None => Ok(()),
        Some(form) => Err(FramingError::TargetFormNotAllowed {
            method: method.to_owned(),
            form,
        }),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// `line` is a chunk-size line without its LF: hex digits, optional spaces or tabs,
/// optional `;` extensions (visible characters, spaces, tabs), then CR.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(rest.len())..];
    match rest.first() {
        None => Some(size),
        Some(b';')
            if rest[1..]
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) =>
        {
            Some(size)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer() -> RequestFramer {
        RequestFramer::new(Limits { max_head: 1024 })
    }

    /// Runs the framer over `input` as one connection: (bytes passed, how it ended).
    fn run(input: &[u8]) -> (usize, Step) {
        let mut f = framer();
        let mut at = 0;
        loop {
            match f.step(&input[at..]) {
                Step::Pass(n) => {
                    assert!(n > 0);
                    at += n;
                }
                s => return (at, s),
            }
        }
    }

    fn refused(input: &[u8]) -> FramingError {
        match run(input).1 {
            Step::Refuse(r) => r.error,
            s => panic!("not refused: {s:?}"),
        }
    }

    #[test]
    fn passes_a_pipeline_of_requests_whole() {
        let reqs: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n10 \r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n",
            b"GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n",
        ];
        let all = reqs.concat();
        assert_eq!(run(&all), (all.len(), Step::More));
    }

    #[test]
    fn stops_after_the_last_request() {
        let input = b"GET / HTTP/1.0\r\n\r\nGARBAGE";
        assert_eq!(run(input), (18, Step::End));
        let input =
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhiGARBAGE";
        assert_eq!(run(input).1, Step::End);
        let input = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        assert_eq!(run(input), (input.len(), Step::End));
    }

    #[test]
    fn refuses_ambiguous_and_malformed_heads() {
        use FramingError as E;
        let cases: &[(&[u8], E)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", E::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", E::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", E::ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", E::ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", E::TransferEncodingInHttp10),
            (b"GET / HTTP/1.1\r\n\r\n", E::MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", E::MultipleHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", E::Malformed(httparse::Error::HeaderName)),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", E::Malformed(httparse::Error::HeaderName)),
            (b"THIS IS NOT HTTP\r\n\r\n", E::Malformed(httparse::Error::Version)),
            (b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n", E::BadUri),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", E::UnknownTransferCoding("gzip".into())),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n", E::UnknownTransferCoding("identity".into())),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", E::TransferEncodingNotChunked),
            (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", E::ConnectMethod),
            (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", E::ConnectMethod),
            (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", E::TraceMethod),
            (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", E::BadMethod("get".into())),
            (b"G\xc3\x89T / HTTP/1.1\r\nHost: a\r\n\r\n", E::Malformed(httparse::Error::Token)),
            (b"M.SEARCH / HTTP/1.1\r\nHost: a\r\n\r\n", E::BadMethod("M.SEARCH".into())),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", E::TargetFormNotAllowed { method: "GET".into(), form: "asterisk" }),
            (b"GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", E::TargetFormNotAllowed { method: "GET".into(), form: "authority" }),
            (b"OPTIONS example.com HTTP/1.1\r\nHost: a\r\n\r\n", E::TargetFormNotAllowed { method: "OPTIONS".into(), form: "authority" }),
        ];
        for (input, want) in cases {
            assert_eq!(&refused(input), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn statuses_and_classes_as_nginx() {
        use FramingError as E;
        let cases = [
            (E::ConnectMethod, 405, "method-not-allowed"),
            (E::TraceMethod, 405, "method-not-allowed"),
            (E::BadMethod("get".into()), 400, "bad-request"),
            (
                E::UnknownTransferCoding("gzip".into()),
                501,
                "not-implemented",
            ),
            (
                E::TargetFormNotAllowed {
                    method: "GET".into(),
                    form: "asterisk",
                },
                400,
                "bad-request",
            ),
            (E::TransferEncodingNotChunked, 400, "bad-request"),
            (E::TooManyHeaders, 431, "header-too-large"),
        ];
        for (e, status, class) in cases {
            assert_eq!((e.status(), e.class().as_str()), (status, class), "{e}");
        }
    }

    #[test]
    fn allowed_target_forms_and_codings_pass() {
        let reqs: &[&[u8]] = &[
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a.example/p?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n",
            b"GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , Chunked\r\n\r\n0\r\n\r\n",
        ];
        for r in reqs {
            assert_eq!(
                run(r),
                (r.len(), Step::More),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
    }

    #[test]
    fn refuses_oversize_heads_at_once_or_in_pieces() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert_eq!(
            refused(big.as_bytes()),
            FramingError::HeadTooLarge { max: 1024 }
        );
        assert_eq!(
            refused(&big.as_bytes()[..1500]),
            FramingError::HeadTooLarge { max: 1024 }
        );
        let many: String = (0..101).map(|i| format!("X{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let mut f = RequestFramer::new(Limits { max_head: 1 << 20 });
        assert!(
            matches!(f.step(many.as_bytes()), Step::Refuse(r) if r.error == FramingError::TooManyHeaders)
        );
    }

    #[test]
    fn refuses_bad_chunks_inside_the_body() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for (body, want) in [
            (&b"zz\r\nhello\r\n0\r\n\r\n"[..], FramingError::BadChunkSize),
            (b"-5\r\nhello\r\n", FramingError::BadChunkSize),
            (b"fffffffffffffffff\r\n", FramingError::BadChunkSize),
            (b"5\nhello\r\n", FramingError::BadChunkSize),
            (b"5 x\r\nhello\r\n", FramingError::BadChunkSize),
            (b"3\r\nhello\r\n0\r\n\r\n", FramingError::BadChunkEnd),
            (b"0\r\nT: v\n\r\n", FramingError::BadTrailers),
        ] {
            let input = [&head[..], body].concat();
            match run(&input) {
                (n, Step::Refuse(r)) => {
                    assert_eq!(r.error, want, "{}", String::from_utf8_lossy(body));
                    assert!(r.in_body);
                    assert!(n >= head.len());
                }
                s => panic!("{}: {s:?}", String::from_utf8_lossy(body)),
            }
        }
        let long = [&head[..], &b"5;"[..], &[b'x'; MAX_CHUNK_LINE]].concat();
        assert_eq!(refused(&long), FramingError::ChunkLineTooLong);
    }

    #[test]
    fn refusal_keeps_what_was_known_of_the_head() {
        let input = b"POST /a/b?q=1 HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let Step::Refuse(r) = framer().step(input) else {
            panic!()
        };
        let head = r.head.unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/a/b"));
        assert_eq!(head.accept.as_deref(), Some(&b"application/json"[..]));
        assert!(!r.in_body);
    }

    #[test]
    fn byte_by_byte_is_the_same_as_at_once() {
        let input = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let mut f = framer();
        let (mut pending, mut passed) = (Vec::new(), 0);
        for &b in input.iter() {
            pending.push(b);
            while let Step::Pass(n) = f.step(&pending) {
                pending.drain(..n);
                passed += n;
            }
        }
        assert_eq!(passed, input.len());
        assert!(f.at_boundary());
    }
}

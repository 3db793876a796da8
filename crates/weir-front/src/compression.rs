//! The compression stage (`[compression]`, NGINX's `gzip` module with brotli and zstd
//! beside gzip): the last step of the HTTP listener's response side, after the cache's
//! (so the cache keeps one identity copy and each client gets its own coding) and before
//! the access log's wrapping (so the log's `bytes` and `limit_rate` count what is sent).
//!
//! [`Compression::apply`] decides per response:
//! - never touched: 1xx, 204, 206, 304; an answer that already has a `Content-Encoding`;
//!   `Cache-Control: no-transform`; a `Content-Type` not in `types` (`text/*` matches every
//!   `text/` type; parameters are ignored); a body known (Content-Length, or a whole body)
//!   to be shorter than `min_length`;
//! - otherwise the answer varies by Accept-Encoding: `Vary: Accept-Encoding` is added
//!   whether or not this client gets a coding (so a shared cache downstream keeps the
//!   variants apart, as NGINX's `gzip_vary on`), and the coding is [`negotiate`]d;
//! - compressed: `Content-Encoding` set, a strong ETag made weak (`W/`, as NGINX does: the
//!   bytes are not the app's), `Accept-Ranges` dropped, `Content-Length` set to the
//!   compressed length for a whole body up to [`INLINE_MAX`] (compressed in one call here)
//!   and removed otherwise (chunked);
//! - a HEAD answer gets the same headers as its GET would (without Content-Length) and no
//!   body work.
//!
//! A streamed body (or a whole one over [`INLINE_MAX`]) is compressed as it goes
//! ([`StreamEncoder`]): what the backend has produced is compressed, and flushed (gzip's
//! sync flush, brotli's and zstd's flush) whenever the backend has nothing more ready, so
//! a slow stream (server-sent events, a generator) reaches the client as promptly as it
//! would uncompressed, while a fast one is compressed in large blocks. `text/event-stream`
//! is therefore compressed like any `text/*` type.
//!
//! The codecs are the crates' own streaming writers into a `Vec` (flate2, brotli, zstd),
//! driven from `poll_frame`: no task, no channel, no async wrapper crate.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, ETAG, VARY,
};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use weir_config::{Algorithm, CompressionConfig};
use weir_pool::{BodyError, ResponseBody};

/// A whole body up to this size is compressed in one call (and sent with its
/// Content-Length); a larger one is compressed as it is sent, [`SLICE`] at a time.
pub const INLINE_MAX: usize = 256 << 10;
/// The most input compressed in one step of a stream.
const SLICE: usize = 64 << 10;
/// A stream's compressed output is handed on once it reaches this size even if more input
/// is ready.
const OUT_FRAME: usize = 32 << 10;

/// `[compression]`, ready to use.
#[derive(Debug, Clone)]
pub struct Compression {
    algorithms: Vec<Algorithm>,
    /// `types`, lower-cased: `text/` for `text/*`, else the whole type.
    types: Vec<String>,
    min_length: u64,
    levels: Levels,
}

#[derive(Debug, Clone, Copy)]
struct Levels {
    gzip: u32,
    br: u32,
    zstd: i32,
}

/// A response's body after the compression stage: as it was, or compressed as it goes.
#[derive(Debug)]
pub enum Encoded {
    /// As the backend (or weir) made it; also a whole body compressed in one call.
    Identity(ResponseBody),
    /// Compressed while it is sent.
    Stream(Box<StreamEncoder>),
}

impl From<ResponseBody> for Encoded {
    fn from(b: ResponseBody) -> Self {
        Encoded::Identity(b)
    }
}

impl Compression {
    /// From the validated section.
    pub fn new(c: &CompressionConfig) -> Compression {
        Compression {
            algorithms: c.algorithms.clone(),
            types: c
                .types
                .iter()
                .map(|t| {
                    let t = t.to_ascii_lowercase();
                    match t.strip_suffix('*') {
                        Some(prefix) => prefix.to_string(),
                        None => t,
                    }
                })
                .collect(),
            min_length: c.min_length.bytes(),
            levels: Levels {
                gzip: c.gzip_level,
                br: c.br_level,
                zstd: c.zstd_level,
            },
        }
    }

    /// The stage: decides for `resp` (the answer to a `method` request that sent
    /// `accept_encoding`) and compresses it when it should.
    pub fn apply(
        &self,
        method: &Method,
        accept_encoding: Option<&HeaderValue>,
        resp: Response<ResponseBody>,
    ) -> Response<Encoded> {
        let (mut parts, body) = resp.into_parts();
        if !self.eligible(parts.status, &parts.headers, &body) {
            return Response::from_parts(parts, Encoded::Identity(body));
        }
        add_vary(&mut parts.headers);
        let Some(alg) = accept_encoding.and_then(|v| negotiate(v.as_bytes(), &self.algorithms))
        else {
            return Response::from_parts(parts, Encoded::Identity(body));
        };
        let h = &mut parts.headers;
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(alg.as_str()));
        h.remove(ACCEPT_RANGES);
        h.remove(CONTENT_LENGTH);
        weaken_etag(h);
        if *method == Method::HEAD {
            return Response::from_parts(parts, Encoded::Identity(body));
        }
        // An answer from the response cache: its entry keeps one compressed copy per coding.
        let cached = parts.extensions.remove::<crate::cache::CachedBody>();
        let body = match body {
            ResponseBody::Full(Some(b)) if b.len() <= INLINE_MAX => {
                let z = match &cached {
                    Some(c) if c.0.body.as_ptr() == b.as_ptr() && c.0.body.len() == b.len() => {
                        c.0.encoded.get_or_make(alg as usize, || {
                            self.compress_whole(alg, &b).ok().map(Bytes::from)
                        })
                    }
                    _ => self.compress_whole(alg, &b).ok().map(Bytes::from),
                };
                match z.ok_or(()) {
                    Ok(z) => {
                        h.insert(CONTENT_LENGTH, HeaderValue::from(z.len()));
                        Encoded::Identity(ResponseBody::full(z))
                    }
                    // The codecs write to memory; they do not fail. Were one to, the
                    // answer would still be right uncompressed.
                    Err(_) => {
                        h.remove(CONTENT_ENCODING);
                        h.insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
                        Encoded::Identity(ResponseBody::Full(Some(b)))
                    }
                }
            }
            ResponseBody::Empty | ResponseBody::Full(None) => {
                // Nothing to compress but the coding's empty stream, which the header
                // promises.
                let z = self.compress_whole(alg, b"").unwrap_or_default();
                h.insert(CONTENT_LENGTH, HeaderValue::from(z.len()));
                Encoded::Identity(ResponseBody::full(z))
            }
            body => Encoded::Stream(Box::new(StreamEncoder::new(body, self.writer(alg)))),
        };
        Response::from_parts(parts, body)
    }

    /// Whether the answer may be compressed at all (whatever the client accepts).
    fn eligible(&self, status: StatusCode, h: &HeaderMap, body: &ResponseBody) -> bool {
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
        {
            return false;
        }
        if h.get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
        {
            return false;
        }
        if h.get_all(CACHE_CONTROL).iter().any(|v| {
            v.as_bytes().split(|&b| b == b',').any(|d| {
                let d = d.trim_ascii();
                d.eq_ignore_ascii_case(b"no-transform")
            })
        }) {
            return false;
        }
        let Some(ct) = h.get(CONTENT_TYPE) else {
            return false;
        };
        if !self.type_listed(ct.as_bytes()) {
            return false;
        }
        let known = match body {
            ResponseBody::Full(Some(b)) => Some(b.len() as u64),
            _ => h
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
        };
        known.is_none_or(|n| n >= self.min_length)
    }

    fn type_listed(&self, content_type: &[u8]) -> bool {
        let essence = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let Ok(essence) = std::str::from_utf8(essence) else {
            return false;
        };
        let essence = essence.to_ascii_lowercase();
        self.types.iter().any(|t| {
            if t.ends_with('/') {
                essence.starts_with(t.as_str()) && essence.len() > t.len()
            } else {
                essence == *t
            }
        })
    }

    fn writer(&self, alg: Algorithm) -> Writer {
        Writer::new(alg, self.levels)
    }

    /// A whole body in one call.
    fn compress_whole(&self, alg: Algorithm, b: &[u8]) -> std::io::Result<Vec<u8>> {
        if alg == Algorithm::Zstd {
            // One shot with the size known: zstd sizes its tables to the input.
            return zstd::bulk::compress(b, self.levels.zstd);
        }
        let mut w = self.writer(alg);
        w.write(b)?;
        w.finish()
    }
}

/// `Vary: Accept-Encoding`, unless the answer already varies by it (or by everything).
fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|f| {
            let f = f.trim_ascii();
            f == b"*" || f.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !present {
        h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// `"x"` becomes `W/"x"`: the compressed bytes are not those the app's ETag names.
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(v) = h.get(ETAG) {
        let b = v.as_bytes();
        if b.first() == Some(&b'"') {
            let mut weak = Vec::with_capacity(b.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(b);
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(ETAG, v);
            }
        }
    }
}

/// The coding to send for an `Accept-Encoding` value (RFC 9110 12.5.3), among `offered`
/// (the server's order of preference), or `None` for identity.
///
/// Each offered coding gets the q-value of its own entry (`x-gzip` counts as `gzip`), or
/// else of `*`, or else 0 (not acceptable); the highest q wins, and among equal ones the
/// first in `offered`. Identity wins instead when the client gives it explicitly a higher
/// q than the best coding (`gzip;q=0.5, identity`); when identity is refused
/// (`identity;q=0`, `*;q=0`) and no coding is acceptable, identity is still sent (RFC 9110
/// allows it; the client is better served than by a 406). Malformed entries are skipped,
/// and an empty value means identity only.
pub fn negotiate(accept: &[u8], offered: &[Algorithm]) -> Option<Algorithm> {
    let mut best: Option<(Algorithm, u16)> = None;
    let mut identity_q: Option<u16> = None;
    let mut star_q: Option<u16> = None;
    let mut explicit: Vec<(Algorithm, u16)> = Vec::with_capacity(3);
    for entry in accept.split(|&b| b == b',') {
        let mut parts = entry.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000u16);
        for p in parts {
            let p = p.trim_ascii();
            if let Some(v) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) {
                q = parse_q(v);
            }
        }
        let Some(q) = q else { continue };
        let c = |name: &str| coding.eq_ignore_ascii_case(name.as_bytes());
        if c("*") {
            star_q = Some(q);
        } else if c("identity") {
            identity_q = Some(q);
        } else if let Some(a) = offered
            .iter()
            .copied()
            .find(|a| c(a.as_str()) || (*a == Algorithm::Gzip && c("x-gzip")))
        {
            explicit.push((a, q));
        }
    }
    for &a in offered {
        let q = explicit
            .iter()
            .filter(|(e, _)| *e == a)
            .map(|&(_, q)| q)
            .max()
            .or(star_q)
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((a, q));
        }
    }
    let (a, q) = best?;
    match identity_q {
        Some(iq) if iq > q => None,
        _ => Some(a),
    }
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn parse_q(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.as_bytes().get(i).map_or(0, |d| (d - b'0') as u16);
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// One coding's streaming writer into memory.
enum Writer {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Writer::Gzip(_) => "Writer::Gzip",
            Writer::Br(_) => "Writer::Br",
            Writer::Zstd(_) => "Writer::Zstd",
        })
    }
}

impl Writer {
    fn new(alg: Algorithm, levels: Levels) -> Writer {
        match alg {
            Algorithm::Gzip => Writer::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip),
            )),
            // A 4 KiB buffer, a 4 MiB window (brotli's default lgwin 22).
            Algorithm::Br => Writer::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                levels.br,
                22,
            ))),
            Algorithm::Zstd => Writer::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)
                    .expect("zstd accepts every level validation lets through"),
            ),
        }
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Gzip(w) => w.write_all(b),
            Writer::Br(w) => w.write_all(b),
            Writer::Zstd(w) => w.write_all(b),
        }
    }

    /// Everything written so far made decodable by the client.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Gzip(w) => w.flush(),
            Writer::Br(w) => w.flush(),
            Writer::Zstd(w) => w.flush(),
        }
    }

    fn out(&mut self) -> &mut Vec<u8> {
        match self {
            Writer::Gzip(w) => w.get_mut(),
            Writer::Br(w) => w.get_mut(),
            Writer::Zstd(w) => w.get_mut(),
        }
    }

    /// The stream's end: what remains.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Writer::Gzip(w) => w.finish(),
            Writer::Br(w) => Ok(w.into_inner()),
            Writer::Zstd(w) => w.finish(),
        }
    }
}

/// A body compressed as it is sent (see the module doc).
#[derive(Debug)]
pub struct StreamEncoder {
    inner: ResponseBody,
    /// `None` once finished.
    writer: Option<Writer>,
    /// Input taken from `inner` and not yet compressed.
    input: Bytes,
    /// Compressed since the last flush.
    unflushed: bool,
    /// The backend's failure, handed on after what came before it is out (the same
    /// one-turn hold as `ResponseBody`'s, which this wrapper would otherwise undo).
    failure: Failure,
}

#[derive(Debug)]
enum Failure {
    None,
    /// Return pending once (woken at once), so the listener flushes.
    Hold(BodyError),
    /// Return it now.
    Now(BodyError),
}

impl StreamEncoder {
    fn new(inner: ResponseBody, writer: Writer) -> StreamEncoder {
        StreamEncoder {
            inner,
            writer: Some(writer),
            input: Bytes::new(),
            unflushed: false,
            failure: Failure::None,
        }
    }

    fn take_out(&mut self) -> Option<Bytes> {
        let out = self.writer.as_mut()?.out();
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(out)))
    }

    fn flush(&mut self) -> Option<Bytes> {
        if self.unflushed {
            self.unflushed = false;
            let w = self.writer.as_mut()?;
            if w.flush().is_err() {
                return None;
            }
        }
        self.take_out()
    }
}

fn codec_failure() -> BodyError {
    // Writing to memory does not fail; were it to, the client must see a cut, not a
    // body that looks whole.
    BodyError::WorkerEnded(weir_errors::ErrorClass::WorkerDied)
}

impl Body for StreamEncoder {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.failure, Failure::None) {
            Failure::None => {}
            Failure::Hold(e) => {
                this.failure = Failure::Now(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Failure::Now(e) => {
                this.writer = None;
                return Poll::Ready(Some(Err(e)));
            }
        }
        loop {
            let Some(w) = this.writer.as_mut() else {
                return Poll::Ready(None);
            };
            if !this.input.is_empty() {
                let n = this.input.len().min(SLICE);
                let slice = this.input.split_to(n);
                if w.write(&slice).is_err() {
                    this.writer = None;
                    return Poll::Ready(Some(Err(codec_failure())));
                }
                this.unflushed = true;
                if w.out().len() >= OUT_FRAME {
                    let out = this.take_out().expect("not empty");
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.input = data;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // What came before is sent (flushed), then a pending turn, then the
                    // failure.
                    this.failure = Failure::Hold(e);
                    if let Some(out) = this.flush() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    this.failure = match std::mem::replace(&mut this.failure, Failure::None) {
                        Failure::Hold(e) => Failure::Now(e),
                        other => other,
                    };
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let w = this.writer.take().expect("checked above");
                    return match w.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(_) => Poll::Ready(Some(Err(codec_failure()))),
                    };
                }
                Poll::Pending => {
                    // Nothing more is ready: what was compressed goes out now.
                    return match this.flush() {
                        Some(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.writer.is_none() && matches!(self.failure, Failure::None)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Body for Encoded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Encoded::Identity(b) => Pin::new(b).poll_frame(cx),
            Encoded::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Encoded::Identity(b) => b.is_end_stream(),
            Encoded::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Encoded::Identity(b) => b.size_hint(),
            Encoded::Stream(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use tokio::sync::mpsc;

    const ALL: [Algorithm; 3] = [Algorithm::Br, Algorithm::Zstd, Algorithm::Gzip];

    fn neg(ae: &str) -> Option<&'static str> {
        negotiate(ae.as_bytes(), &ALL).map(Algorithm::as_str)
    }

    #[test]
    fn negotiation_follows_rfc_9110() {
        // Equal q: the server's order.
        assert_eq!(neg("gzip, deflate, br, zstd"), Some("br"));
        assert_eq!(neg("gzip, zstd"), Some("zstd"));
        assert_eq!(neg("gzip"), Some("gzip"));
        assert_eq!(neg("x-gzip"), Some("gzip"));
        assert_eq!(neg("GZIP"), Some("gzip"));
        // The client's q-values come first.
        assert_eq!(neg("br;q=0.5, gzip"), Some("gzip"));
        assert_eq!(neg("br;q=0.5, gzip;q=0.8, zstd;q=0.1"), Some("gzip"));
        assert_eq!(neg("br; q=1.0, gzip;Q=1"), Some("br"));
        // q=0 refuses.
        assert_eq!(neg("br;q=0, gzip"), Some("gzip"));
        assert_eq!(neg("gzip;q=0"), None);
        assert_eq!(neg("gzip;q=0.000"), None);
        // `*` covers what is not named.
        assert_eq!(neg("*"), Some("br"));
        assert_eq!(neg("br;q=0, *"), Some("zstd"));
        assert_eq!(neg("*;q=0.5, gzip"), Some("gzip"));
        assert_eq!(neg("*;q=0"), None);
        // Identity.
        assert_eq!(neg("identity"), None);
        assert_eq!(neg(""), None);
        assert_eq!(neg("deflate"), None);
        assert_eq!(neg("gzip;q=0.5, identity"), None);
        assert_eq!(neg("gzip, identity;q=0.5"), Some("gzip"));
        assert_eq!(neg("gzip, identity;q=0"), Some("gzip"));
        assert_eq!(neg("identity;q=0, deflate"), None);
        // Malformed q-values drop their entry only.
        assert_eq!(neg("br;q=2, gzip"), Some("gzip"));
        assert_eq!(neg("br;q=0.1234, gzip;q=0.1"), Some("gzip"));
        assert_eq!(neg("br;q=abc"), None);
        assert_eq!(neg(" , ,gzip ,"), Some("gzip"));
        // Only what the server offers.
        assert_eq!(negotiate(b"br, zstd", &[Algorithm::Gzip]), None);
        assert_eq!(
            negotiate(b"br, gzip", &[Algorithm::Gzip, Algorithm::Br]),
            Some(Algorithm::Gzip)
        );
    }

    fn stage(algs: &[Algorithm]) -> Compression {
        Compression::new(&CompressionConfig {
            algorithms: algs.to_vec(),
            ..CompressionConfig::default()
        })
    }

    fn decode(alg: &str, z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match alg {
            "gzip" => {
                flate2::read::GzDecoder::new(z)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            "br" => {
                brotli::Decompressor::new(z, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            "zstd" => out = zstd::stream::decode_all(z).unwrap(),
            other => panic!("{other}"),
        }
        out
    }

    fn response(ct: &str, body: ResponseBody) -> Response<ResponseBody> {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        r
    }

    async fn collect(b: Encoded) -> (Vec<Bytes>, Option<BodyError>) {
        let mut b = std::pin::pin!(b);
        let mut frames = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await {
            match f {
                Ok(f) => frames.push(f.into_data().unwrap()),
                Err(e) => return (frames, Some(e)),
            }
        }
        (frames, None)
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"weir compresses text "[i % 21]).collect()
    }

    #[tokio::test]
    async fn a_whole_body_is_compressed_in_one_call_with_its_length() {
        for alg in ALL {
            let c = stage(&[alg]);
            let body = text(20_000);
            let mut resp = response("text/html; charset=utf-8", ResponseBody::full(body.clone()));
            resp.headers_mut()
                .insert(ETAG, HeaderValue::from_static("\"v1\""));
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            resp.headers_mut()
                .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            let ae = HeaderValue::from_static("gzip, br, zstd");
            let resp = c.apply(&Method::GET, Some(&ae), resp);
            let h = resp.headers();
            assert_eq!(h[CONTENT_ENCODING], alg.as_str());
            assert_eq!(h[VARY], "Accept-Encoding");
            assert_eq!(h[ETAG], "W/\"v1\"");
            assert!(h.get(ACCEPT_RANGES).is_none());
            let len: usize = h[CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
            assert!(matches!(resp.body(), Encoded::Identity(_)));
            let (frames, err) = collect(resp.into_body()).await;
            assert!(err.is_none());
            let z: Vec<u8> = frames.concat();
            assert_eq!(z.len(), len);
            assert!(z.len() < body.len() / 10, "{alg:?}: {}", z.len());
            assert_eq!(decode(alg.as_str(), &z), body);
        }
    }

    #[test]
    fn what_is_left_alone() {
        let c = stage(&ALL);
        let ae = HeaderValue::from_static("gzip");
        let big = || ResponseBody::full(text(4000));
        let unchanged = |resp: Response<ResponseBody>| {
            let r = c.apply(&Method::GET, Some(&ae), resp);
            assert!(r
                .headers()
                .get(CONTENT_ENCODING)
                .is_none_or(|v| v != "gzip"));
            r
        };
        // Types not listed; no type at all.
        let r = unchanged(response("image/png", big()));
        assert!(r.headers().get(VARY).is_none());
        unchanged(Response::new(big()));
        unchanged(response("text", big()));
        // Too short (a whole body, or a stream whose Content-Length says so).
        unchanged(response("text/plain", ResponseBody::full(text(1023))));
        let (_tx, rx) = mpsc::channel(1);
        let mut r = response("text/plain", ResponseBody::Stream(rx));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        unchanged(r);
        // Already encoded, no-transform, 206, 204, 304.
        let mut r = response("text/plain", big());
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(unchanged(r).headers()[CONTENT_ENCODING], "br");
        let mut r = response("text/plain", big());
        r.headers_mut().insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, No-Transform, max-age=60"),
        );
        unchanged(r);
        for s in [206, 204, 304] {
            let mut r = response("text/plain", big());
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            unchanged(r);
        }
        // No Accept-Encoding, or nothing acceptable: identity, but it varies.
        for ae in [None, Some(HeaderValue::from_static("deflate"))] {
            let r = c.apply(&Method::GET, ae.as_ref(), response("text/plain", big()));
            assert!(r.headers().get(CONTENT_ENCODING).is_none());
            assert_eq!(r.headers()[VARY], "Accept-Encoding");
        }
        // An existing Vary keeps its fields; one naming Accept-Encoding is not repeated.
        let mut r = response("application/json", big());
        r.headers_mut()
            .insert(VARY, HeaderValue::from_static("Cookie"));
        let r = c.apply(&Method::GET, Some(&ae), r);
        let v: Vec<_> = r.headers().get_all(VARY).iter().collect();
        assert_eq!(v, ["Cookie", "Accept-Encoding"]);
        let mut r = response("application/json", big());
        r.headers_mut()
            .insert(VARY, HeaderValue::from_static("accept-encoding, cookie"));
        let r = c.apply(&Method::GET, Some(&ae), r);
        assert_eq!(r.headers().get_all(VARY).iter().count(), 1);
        // Weak ETags stay as they are.
        let mut r = response("text/plain", big());
        r.headers_mut()
            .insert(ETAG, HeaderValue::from_static("W/\"x\""));
        let r = c.apply(&Method::GET, Some(&ae), r);
        assert_eq!(r.headers()[ETAG], "W/\"x\"");
    }

    #[test]
    fn a_head_answer_gets_the_get_headers() {
        let c = stage(&ALL);
        let ae = HeaderValue::from_static("gzip");
        let mut r = response("text/plain", ResponseBody::Empty);
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("5000"));
        let r = c.apply(&Method::HEAD, Some(&ae), r);
        assert_eq!(r.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers()[VARY], "Accept-Encoding");
        assert!(r.headers().get(CONTENT_LENGTH).is_none());
        assert!(matches!(r.body(), Encoded::Identity(ResponseBody::Empty)));
    }

    #[test]
    fn type_matching() {
        let c = Compression::new(&CompressionConfig {
            types: vec!["text/*".into(), "Application/JSON".into()],
            ..CompressionConfig::default()
        });
        assert!(c.type_listed(b"text/html"));
        assert!(c.type_listed(b"TEXT/Event-Stream"));
        assert!(c.type_listed(b"application/json; charset=utf-8"));
        assert!(c.type_listed(b"application/json;charset=utf-8"));
        assert!(!c.type_listed(b"text/"));
        assert!(!c.type_listed(b"application/jsonx"));
        assert!(!c.type_listed(b"textual/html"));
        assert!(!c.type_listed(b"image/svg+xml"));
    }

    /// A stream: each chunk is out (decodable) as soon as it came when nothing more was
    /// ready, and several ready chunks go out together.
    #[tokio::test]
    async fn a_stream_is_compressed_and_flushed_as_it_goes() {
        for alg in ALL {
            let c = stage(&[alg]);
            let (tx, rx) = mpsc::channel(8);
            let ae = HeaderValue::from_static(alg.as_str());
            let mut r = response("text/event-stream", ResponseBody::Stream(rx));
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from_static("100000"));
            let r = c.apply(&Method::GET, Some(&ae), r);
            assert_eq!(r.headers()[CONTENT_ENCODING], alg.as_str());
            assert!(r.headers().get(CONTENT_LENGTH).is_none());
            let mut body = std::pin::pin!(r.into_body());
            let mut sent = Vec::new();
            let mut got = Vec::new();
            for i in 0..3 {
                let chunk = format!("data: event {i} {}\n\n", "x".repeat(50));
                tx.send(Ok(Bytes::from(chunk.clone()))).await.unwrap();
                sent.extend_from_slice(chunk.as_bytes());
                let f = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
                    .await
                    .unwrap()
                    .unwrap();
                got.extend_from_slice(f.data_ref().unwrap());
                // Everything so far decodes, without the stream's end.
                let partial = partial_decode(alg.as_str(), &got);
                assert_eq!(partial, sent, "{alg:?} chunk {i}");
            }
            tx.send(Ok(Bytes::new())).await.unwrap();
            let mut rest = Vec::new();
            while let Some(f) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                rest.push(f.unwrap().into_data().unwrap());
            }
            assert!(body.is_end_stream());
            got.extend(rest.concat());
            assert_eq!(decode(alg.as_str(), &got), sent);
        }
    }

    fn partial_decode(alg: &str, z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut read = |r: &mut dyn Read| loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        };
        match alg {
            "gzip" => read(&mut flate2::read::GzDecoder::new(z)),
            "br" => read(&mut brotli::Decompressor::new(z, 4096)),
            "zstd" => read(&mut zstd::stream::read::Decoder::new(z).unwrap()),
            _ => unreachable!(),
        }
        out
    }

    /// A backend failure mid-stream: what came before is sent, then a pending turn, then
    /// the failure (the client's connection is cut, the body never looks whole).
    #[tokio::test]
    async fn a_failure_comes_after_what_came_before() {
        let c = stage(&[Algorithm::Gzip]);
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(Ok(Bytes::from(text(3000)))).unwrap();
        tx.try_send(Err(BodyError::AppAborted)).unwrap();
        let ae = HeaderValue::from_static("gzip");
        let r = c.apply(
            &Method::GET,
            Some(&ae),
            response("text/plain", ResponseBody::Stream(rx)),
        );
        let (frames, err) = collect(r.into_body()).await;
        assert!(matches!(err, Some(BodyError::AppAborted)));
        assert_eq!(partial_decode("gzip", &frames.concat()), text(3000));
    }

    /// A whole body over INLINE_MAX is compressed as it is sent, in several frames.
    #[tokio::test]
    async fn a_large_whole_body_is_streamed() {
        let c = stage(&[Algorithm::Gzip]);
        let body: Vec<u8> = (0..2_000_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect();
        let ae = HeaderValue::from_static("gzip");
        let r = c.apply(
            &Method::GET,
            Some(&ae),
            response("text/plain", ResponseBody::full(body.clone())),
        );
        assert!(r.headers().get(CONTENT_LENGTH).is_none());
        let (frames, err) = collect(r.into_body()).await;
        assert!(err.is_none());
        assert!(frames.len() > 2, "{} frames", frames.len());
        assert_eq!(decode("gzip", &frames.concat()), body);
    }

    /// The cost of compressing examples/shop's /items (about 17 KB of JSON) once per
    /// request, at the default levels and some others:
    /// `WEIR_ITEMS_JSON=/tmp/items.json cargo test --release -p weir-front compression_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn compression_cost() {
        let path = std::env::var("WEIR_ITEMS_JSON").expect("WEIR_ITEMS_JSON");
        let body = std::fs::read(path).unwrap();
        let n = 2000;
        for (alg, levels) in [
            (Algorithm::Gzip, [1, 6, 9]),
            (Algorithm::Br, [1, 4, 5]),
            (Algorithm::Zstd, [1, 3, 9]),
        ] {
            for level in levels {
                let cfg = CompressionConfig {
                    algorithms: vec![alg],
                    gzip_level: if alg == Algorithm::Gzip { level } else { 1 },
                    br_level: if alg == Algorithm::Br { level } else { 4 },
                    zstd_level: if alg == Algorithm::Zstd {
                        level as i32
                    } else {
                        3
                    },
                    ..CompressionConfig::default()
                };
                let c = Compression::new(&cfg);
                let t = std::time::Instant::now();
                let mut len = 0;
                for _ in 0..n {
                    len = c.compress_whole(alg, &body).unwrap().len();
                }
                let per = t.elapsed() / n;
                println!(
                    "{:>4} level {level}: {} -> {len} bytes ({:.1}%), {:?} per body",
                    alg.as_str(),
                    body.len(),
                    100.0 * len as f64 / body.len() as f64,
                    per
                );
            }
        }
    }
}

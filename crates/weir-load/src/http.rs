//! A minimal HTTP/1.1 client connection: write prebuilt request bytes, read one response
//! (head parsed with `httparse`; body skipped by `Content-Length`, chunked framing or
//! close), keep the connection for the next request when the server allows it.
//!
//! Why not hyper's client: a load generator sends the same few requests over and over and
//! throws the bodies away. hyper's `SendRequest` hands every request to a separate
//! connection task over a channel and builds a `Request`/`Response` pair around it; here a
//! request is one `write_all` of shared bytes and one parse, in the task that timed it, so
//! the time measured is the time on the wire plus as little of ours as possible, and one
//! core goes further (see bench/load/). hyper is still what the tests serve with.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A resolved place to connect to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// Why one request failed. The kinds are what the report counts.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be opened.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// Writing the request failed (reset, broken pipe).
    #[error("write: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed (reset).
    #[error("read: {0}")]
    Read(#[source] io::Error),
    /// The server closed the connection before a whole response. `early` is true when
    /// not one byte of the response had come, the usual sign of a keep-alive connection
    /// that the server closed while idle.
    #[error("connection closed before a full response")]
    Closed {
        /// No byte of the response arrived.
        early: bool,
    },
    /// The response could not be parsed.
    #[error("bad response: {0}")]
    Parse(String),
}

impl HttpError {
    /// The short name the report counts this error under.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "connect",
            HttpError::Write(_) | HttpError::Read(_) => "io",
            HttpError::Closed { .. } => "closed",
            HttpError::Parse(_) => "protocol",
        }
    }
}

/// What the report keeps of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `x-weir-error` class, when the response carries one.
    pub weir_error: Option<String>,
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One client connection with its read buffer.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// Requests completed on this connection.
    pub served: u64,
}

const READ_CHUNK: usize = 16 * 1024;

impl Conn {
    /// Opens a connection.
    pub async fn connect(ep: &Endpoint) -> Result<Conn, HttpError> {
        let io = match ep {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a).await.map_err(HttpError::Connect)?;
                // Requests are small and written whole; Nagle would only delay them.
                s.set_nodelay(true).map_err(HttpError::Connect)?;
                Io::Tcp(s)
            }
            Endpoint::Unix(p) => {
                Io::Unix(UnixStream::connect(p).await.map_err(HttpError::Connect)?)
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            served: 0,
        })
    }

    async fn fill(&mut self) -> Result<usize, HttpError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let r = match &mut self.io {
            Io::Tcp(s) => s.read_buf(&mut self.buf).await,
            Io::Unix(s) => s.read_buf(&mut self.buf).await,
        };
        r.map_err(HttpError::Read)
    }

    /// Sends `req` and reads its response. Returns the response and whether the
    /// connection can carry another request.
    pub async fn request(&mut self, req: &[u8], head: bool) -> Result<(Response, bool), HttpError> {
        let w = match &mut self.io {
            Io::Tcp(s) => s.write_all(req).await,
            Io::Unix(s) => s.write_all(req).await,
        };
        w.map_err(HttpError::Write)?;
        let mut got_any = !self.buf.is_empty();

        // The head; 1xx interim responses are skipped.
        let (status, body, keep) = loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let version = resp.version.unwrap_or(1);
                        let mut length = None;
                        let mut chunked = false;
                        let mut close = version == 0;
                        let mut weir_error = None;
                        for h in resp.headers.iter() {
                            let name = h.name;
                            if name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<u64>().ok());
                                length = Some(v.ok_or_else(|| {
                                    HttpError::Parse("bad content-length".into())
                                })?);
                            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = h.value.eq_ignore_ascii_case(b"chunked")
                                    || h.value.to_ascii_lowercase().ends_with(b"chunked");
                            } else if name.eq_ignore_ascii_case("connection") {
                                let v = h.value.to_ascii_lowercase();
                                if v.windows(5).any(|w| w == b"close") {
                                    close = true;
                                } else if v.windows(10).any(|w| w == b"keep-alive") {
                                    close = false;
                                }
                            } else if name.eq_ignore_ascii_case("x-weir-error") {
                                weir_error =
                                    Some(String::from_utf8_lossy(h.value).trim().to_string());
                            }
                        }
                        self.buf.advance(n);
                        if (100..200).contains(&status) && status != 101 {
                            continue;
                        }
                        let body = if head
                            || status == 204
                            || status == 304
                            || (100..200).contains(&status)
                        {
                            Body::None
                        } else if chunked {
                            Body::Chunked
                        } else if let Some(l) = length {
                            Body::Length(l)
                        } else {
                            Body::UntilClose
                        };
                        break (Response { status, weir_error }, body, !close);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(HttpError::Parse(e.to_string())),
                }
            }
            let n = match self.fill().await {
                // A reset before any byte of the answer: the server closed the connection
                // with the request unread (on a Unix socket, or a TCP RST), as a server
                // closing an idle kept-alive connection does when a request crosses its
                // close. The same as a clean early close: a client retries it.
                Err(HttpError::Read(e))
                    if !got_any && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(HttpError::Closed { early: true })
                }
                r => r?,
            };
            if n == 0 {
                return Err(HttpError::Closed { early: !got_any });
            }
            got_any = true;
        };

        let keep = match body {
            Body::None => keep,
            Body::Length(l) => {
                self.skip(l).await?;
                keep
            }
            Body::Chunked => {
                self.skip_chunked().await?;
                keep
            }
            Body::UntilClose => {
                self.buf.clear();
                while self.fill().await? != 0 {
                    self.buf.clear();
                }
                false
            }
        };
        self.served += 1;
        Ok((status, keep))
    }

    /// Discards `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> Result<(), HttpError> {
        loop {
            let take = (self.buf.len() as u64).min(n) as usize;
            self.buf.advance(take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Closed { early: false });
            }
        }
    }

    /// Reads up to and including the next CRLF; returns the line without it.
    async fn line(&mut self) -> Result<BytesMut, HttpError> {
        let mut from = 0;
        loop {
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(from + i);
                self.buf.advance(2);
                return Ok(line);
            }
            from = self.buf.len().saturating_sub(1);
            if self.buf.len() > 64 * 1024 {
                return Err(HttpError::Parse("chunk line too long".into()));
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Closed { early: false });
            }
        }
    }

    /// Discards a chunked body, trailers included.
    async fn skip_chunked(&mut self) -> Result<(), HttpError> {
        loop {
            let line = self.line().await?;
            let hex = line[..].split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(hex)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| HttpError::Parse("bad chunk size".into()))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(size + 2).await?;
        }
    }
}

enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

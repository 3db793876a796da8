//! The response every backend of the front door hands to a listener, whichever backend
//! made it (a weir worker, a uWSGI over uwsgi, an HTTP app server): [`ResponseBody`] (the
//! whole body, or a stream that fails only after what came before is flushed; a streamed
//! body's bounded buffering, [`spool`]) and
//! [`parse_head`] (an HTTP/1.x response head, as a worker, uWSGI or an HTTP server writes
//! it, into a response with its hop-by-hop fields dropped).
//!
//! A crate of its own so that the backends (weir-pool, weir-upstream) and the front door
//! share these without depending on each other. See docs/architecture.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod sink;
pub mod spool;

use http::{HeaderName, HeaderValue, Response, StatusCode};

pub use body::{BodyError, ResponseBody};
pub use sink::{BodySink, Gone};
pub use spool::{SpoolConfig, SpoolError, SpoolReader, SpoolWriter, Spooler};

/// Parses an HTTP/1.x response head (as a worker, uWSGI or any HTTP server writes it)
/// into a response with an empty body, dropping hop-by-hop headers.
pub fn parse_head(raw: &[u8]) -> Result<Response<ResponseBody>, String> {
    // uWSGI answers with the request's SERVER_PROTOCOL, `HTTP/2.0` for an HTTP/2 client (as
    // NGINX sends it); httparse reads HTTP/1.x only, and the version is not used.
    let owned;
    let raw = match raw
        .strip_prefix(b"HTTP/2.0 ")
        .or_else(|| raw.strip_prefix(b"HTTP/2 "))
    {
        Some(rest) => {
            owned = [b"HTTP/1.1 ".as_slice(), rest].concat();
            owned.as_slice()
        }
        None => raw,
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let mut big;
    let parsed = match parsed.parse(raw) {
        Ok(_) => parsed,
        Err(httparse::Error::TooManyHeaders) => {
            big = vec![httparse::EMPTY_HEADER; 1024];
            let mut p = httparse::Response::new(&mut big);
            p.parse(raw)
                .map_err(|e| format!("bad response head: {e}"))?;
            return build(p);
        }
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    build(parsed)
}

fn build(parsed: httparse::Response<'_, '_>) -> Result<Response<ResponseBody>, String> {
    let code = parsed.code.ok_or("response head without a status")?;
    let status = StatusCode::from_u16(code).map_err(|_| format!("bad status {code}"))?;
    let mut response = Response::new(ResponseBody::Empty);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        if weir_http1::HOP_BY_HOP
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("bad value for header {}", h.name))?;
        headers.append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_status_line_from_uwsgi_is_read() {
        for head in [
            &b"HTTP/2.0 201 Created\r\nx-a: 1\r\n\r\n"[..],
            b"HTTP/2 201 Created\r\nx-a: 1\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nx-a: 1\r\n\r\n",
        ] {
            let r = parse_head(head).unwrap();
            assert_eq!(r.status(), 201);
            assert_eq!(r.headers()["x-a"], "1");
        }
        assert!(parse_head(b"HTTP/3.0 200 OK\r\n\r\n").is_err());
    }
}

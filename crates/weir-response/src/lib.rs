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

//! Builds the PEP 3333 environ from a uwsgi packet: a copy of a prebuilt template dict (the
//! constant `wsgi.*` keys) plus the packet's vars as latin-1 `str`s, with `WEIR_*` vars
//! mapped to `weir.*` keys.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyString, PyTuple};
use weir_uwsgi::packet::Packet;

use crate::conn::Body;

/// At most this many distinct var names are kept as interned strings (header names come
/// from clients; the bound keeps a hostile mix from growing the cache).
const KEY_CACHE_MAX: usize = 512;

/// FxHash: a fast hash for short, trusted-size keys (the master built the packet).
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// Interned Python strings for var names (and a few low-cardinality values).
pub struct Strings {
    keys: HashMap<Box<[u8]>, Py<PyString>, BuildHasherDefault<Fx>>,
}

impl Strings {
    pub fn new() -> Self {
        Strings {
            keys: HashMap::default(),
        }
    }

    fn get<'py>(&mut self, py: Python<'py>, key: &[u8]) -> Bound<'py, PyString> {
        if let Some(s) = self.keys.get(key) {
            return s.bind(py).clone();
        }
        let s = latin1(py, key);
        if self.keys.len() < KEY_CACHE_MAX {
            let interned = PyString::intern(py, &s.to_string_lossy());
            self.keys.insert(key.into(), interned.clone().unbind());
            return interned;
        }
        s
    }
}

/// A latin-1 `str` of `v` (what PEP 3333 calls a "native string" for CGI values).
pub fn latin1<'py>(py: Python<'py>, v: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(v) {
        Ok(s) if v.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = v.iter().map(|&b| b as char).collect();
            PyString::new(py, &s)
        }
    }
}

/// The constant part of every environ.
pub fn template<'py>(
    py: Python<'py>,
    errors: Bound<'py, PyAny>,
    file_wrapper: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
    d.set_item("wsgi.url_scheme", PyString::intern(py, "http"))?;
    d.set_item("wsgi.multithread", false)?;
    d.set_item("wsgi.multiprocess", true)?;
    d.set_item("wsgi.run_once", false)?;
    d.set_item("wsgi.input_terminated", true)?;
    d.set_item("wsgi.errors", errors)?;
    d.set_item("wsgi.file_wrapper", file_wrapper)?;
    d.set_item("SCRIPT_NAME", PyString::intern(py, ""))?;
    d.set_item("QUERY_STRING", PyString::intern(py, ""))?;
    Ok(d)
}

/// What the request loop needs to know about a request besides its environ.
#[derive(Debug)]
pub struct ReqInfo {
    /// Body framing, or the reason it is unusable.
    pub body: Result<Body, String>,
    /// REQUEST_METHOD is HEAD.
    pub head_request: bool,
}

/// Fills `environ` (a copy of the template) from the packet's vars; writes the request id
/// (for logs) into `rid`.
pub fn fill<'py>(
    py: Python<'py>,
    strings: &mut Strings,
    environ: &Bound<'py, PyDict>,
    p: &Packet<'_>,
    rid: &mut String,
) -> PyResult<ReqInfo> {
    let mut content_length: Option<&[u8]> = None;
    let mut chunked = false;
    let mut head_request = false;
    let mut uwsgi_scheme: Option<&[u8]> = None;
    let mut https = false;
    rid.clear();
    for (k, v) in p.vars() {
        if let Some(weir) = k.strip_prefix(b"WEIR_") {
            match weir {
                b"REQUEST_ID" => {
                    let s = latin1(py, v);
                    rid.push_str(&s.to_string_lossy());
                    environ.set_item(pyo3::intern!(py, "weir.request_id"), s)?;
                }
                b"DEADLINE" => {
                    if let Some(t) = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                    {
                        environ
                            .set_item(pyo3::intern!(py, "weir.deadline"), PyFloat::new(py, t))?;
                    }
                }
                b"BODY" => chunked = v == b"chunked",
                _ => {}
            }
            continue;
        }
        match k {
            b"CONTENT_LENGTH" => content_length = Some(v),
            b"REQUEST_METHOD" => head_request = v == b"HEAD",
            b"UWSGI_SCHEME" => uwsgi_scheme = Some(v),
            b"HTTPS" => https = v.eq_ignore_ascii_case(b"on") || v == b"1",
            _ => {}
        }
        let before = environ.len();
        environ.set_item(strings.get(py, k), latin1(py, v))?;
        if environ.len() == before && k.starts_with(b"HTTP_") {
            // A repeated header sent as separate vars (nginx does): join its values.
            let sep: &[u8] = if k == b"HTTP_COOKIE" { b"; " } else { b", " };
            let mut joined = Vec::new();
            for (i, (_, v)) in p.vars().filter(|(k2, _)| *k2 == k).enumerate() {
                if i > 0 {
                    joined.extend_from_slice(sep);
                }
                joined.extend_from_slice(v);
            }
            environ.set_item(strings.get(py, k), latin1(py, &joined))?;
        }
    }
    if let Some(s) = uwsgi_scheme {
        environ.set_item(pyo3::intern!(py, "wsgi.url_scheme"), latin1(py, s))?;
    } else if https {
        environ.set_item(
            pyo3::intern!(py, "wsgi.url_scheme"),
            pyo3::intern!(py, "https"),
        )?;
    }
    if rid.is_empty() {
        rid.push('-');
    }
    let body = if chunked {
        Ok(Body::Chunked(0))
    } else {
        match content_length {
            None | Some(b"") => Ok(Body::Length(0)),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .map(Body::Length)
                .ok_or_else(|| format!("invalid CONTENT_LENGTH {:?}", String::from_utf8_lossy(v))),
        }
    };
    Ok(ReqInfo { body, head_request })
}

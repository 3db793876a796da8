//! The Python objects a WSGI app sees: `wsgi.input`, `start_response` (and its `write`),
//! `wsgi.errors` and `wsgi.file_wrapper`.

use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use pyo3::exceptions::{PyAssertionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::conn::Conn;

/// The connection, shared by the request loop and the request's Python objects.
#[derive(Debug)]
pub struct Shared {
    conn: Mutex<Conn>,
}

impl Shared {
    pub fn new(conn: Conn) -> Self {
        Shared {
            conn: Mutex::new(conn),
        }
    }

    /// For the request loop: waits (GIL released) if an app thread holds the connection.
    pub fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Conn> {
        loop {
            match self.conn.try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => py.detach(|| {
                    drop(self.conn.lock());
                }),
            }
        }
    }

    /// For app-facing calls: never waits (a second thread or a re-entrant call gets an error
    /// instead of a deadlock).
    fn try_lock(&self) -> PyResult<MutexGuard<'_, Conn>> {
        match self.conn.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "the request's connection is in use by another thread",
            )),
        }
    }
}

fn io_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// `size` arguments: None or negative mean "all".
fn size_arg(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match size {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) => {
            let n: i64 = s.extract()?;
            Ok(if n < 0 { None } else { Some(n as usize) })
        }
    }
}

/// `wsgi.input`: streams the request body from the socket, never past its end.
#[pyclass(frozen, module = "weir", name = "Input")]
pub struct Input {
    shared: Arc<Shared>,
    seq: u64,
}

impl Input {
    pub fn new(shared: Arc<Shared>, seq: u64) -> Self {
        Input { shared, seq }
    }

    /// The connection, or None when this object belongs to a finished request.
    fn conn(&self) -> PyResult<Option<MutexGuard<'_, Conn>>> {
        let c = self.shared.try_lock()?;
        Ok((c.seq == self.seq).then_some(c))
    }

    fn readline_inner<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let Some(mut c) = self.conn()? else {
            return Ok(PyBytes::new(py, b""));
        };
        c.scratch.clear();
        let r = c.body_readline_to_scratch(py, limit.unwrap_or(usize::MAX));
        let out = PyBytes::new(py, &c.scratch);
        c.scratch.clear();
        r.map_err(io_err)?;
        Ok(out)
    }
}

#[pymethods]
impl Input {
    /// read(size=-1): up to `size` bytes (all that is left when negative or None).
    #[pyo3(signature = (size=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let size = size_arg(size)?;
        let Some(mut c) = self.conn()? else {
            return Ok(PyBytes::new(py, b""));
        };
        if size == Some(0) {
            return Ok(PyBytes::new(py, b""));
        }
        if let Some(left) = c.body_remaining_known() {
            // CONTENT_LENGTH body: the size is known, read straight into the bytes object.
            let n = size.map_or(left, |s| (s as u64).min(left)) as usize;
            return PyBytes::new_with(py, n, |dst| c.body_read_exact(py, dst).map_err(io_err));
        }
        c.scratch.clear();
        let r = c.body_read_to_scratch(py, size.unwrap_or(usize::MAX));
        let out = PyBytes::new(py, &c.scratch);
        c.scratch.clear();
        r.map_err(io_err)?;
        Ok(out)
    }

    /// readline(size=-1): one line including its `\n`, at most `size` bytes.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size)?;
        self.readline_inner(py, limit)
    }

    /// readlines(hint=-1): lines until their total size reaches `hint` (all when <= 0).
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &self,
        py: Python<'py>,
        hint: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint)?.filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.readline_inner(py, None)?;
            let n = line.as_bytes().len();
            if n == 0 {
                break;
            }
            lines.append(line)?;
            total += n;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline_inner(py, None)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}

/// `start_response(status, headers, exc_info=None)`; its `write` method is the PEP 3333
/// `write()` callable.
#[pyclass(frozen, module = "weir", name = "StartResponse")]
pub struct StartResponse {
    shared: Arc<Shared>,
    seq: u64,
}

impl StartResponse {
    pub fn new(shared: Arc<Shared>, seq: u64) -> Self {
        StartResponse { shared, seq }
    }

    fn conn(&self) -> PyResult<MutexGuard<'_, Conn>> {
        let c = self.shared.try_lock()?;
        if c.seq != self.seq {
            return Err(PyRuntimeError::new_err(
                "start_response/write used after its request ended",
            ));
        }
        Ok(c)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends a str as latin-1 bytes; errors on chars over U+00FF or CR/LF/NUL.
fn push_latin1(out: &mut Vec<u8>, s: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    let s = s
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be str, not {}", type_name(s))))?;
    let s = s.to_cow()?;
    let start = out.len();
    if s.is_ascii() {
        out.extend_from_slice(s.as_bytes());
    } else {
        for ch in s.chars() {
            let c = ch as u32;
            if c > 0xFF {
                return Err(PyValueError::new_err(format!(
                    "{what} {s:?} is not latin-1 (PEP 3333 header values are ISO-8859-1)"
                )));
            }
            out.push(c as u8);
        }
    }
    if out[start..]
        .iter()
        .any(|&b| b == b'\r' || b == b'\n' || b == 0)
    {
        return Err(PyValueError::new_err(format!(
            "{what} {s:?} contains a control character (CR, LF or NUL)"
        )));
    }
    Ok(())
}

pub fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Validates status and headers and encodes the head into `out`. Returns the status code
/// and the Content-Length header's value.
fn encode_head(
    out: &mut Vec<u8>,
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
) -> PyResult<(u16, Option<u64>)> {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let s0 = out.len();
    push_latin1(out, status, "status")?;
    let st = &out[s0..];
    if st.len() < 4 || !st[..3].iter().all(u8::is_ascii_digit) || st[3] != b' ' {
        return Err(PyValueError::new_err(format!(
            "status must look like '200 OK', got {:?}",
            String::from_utf8_lossy(st)
        )));
    }
    let code = (st[0] - b'0') as u16 * 100 + (st[1] - b'0') as u16 * 10 + (st[2] - b'0') as u16;
    out.extend_from_slice(b"\r\n");

    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = headers.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = headers.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "headers must be a list of (name, value) tuples, not {}",
            type_name(headers)
        )));
    };
    let mut content_length: Option<u64> = None;
    for item in &items {
        let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
        let (name, value) = match pair {
            Some(t) => (t.get_item(0)?, t.get_item(1)?),
            None => match item.cast::<PyList>().ok().filter(|l| l.len() == 2) {
                Some(l) => (l.get_item(0)?, l.get_item(1)?),
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "each header must be a (name, value) tuple, got {}",
                        item.repr().map(|r| r.to_string()).unwrap_or_default()
                    )))
                }
            },
        };
        let line = out.len();
        push_latin1(out, &name, "header name")?;
        let n_end = out.len();
        let name_bytes = &out[line..n_end];
        if name_bytes.is_empty() || !name_bytes.iter().all(|&b| is_tchar(b)) {
            return Err(PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name_bytes)
            )));
        }
        let lower = name_bytes.to_ascii_lowercase();
        out.extend_from_slice(b": ");
        let v0 = out.len();
        push_latin1(out, &value, "header value")?;
        if weir_http1::HOP_BY_HOP
            .iter()
            .any(|h| h.as_bytes() == lower.as_slice())
        {
            // PEP 3333: apps must not send hop-by-hop headers; the front door owns them.
            out.truncate(line);
            continue;
        }
        if lower == b"x-weir-error" {
            // weir's error class is weir's to say: an app's own `x-weir-error` would make
            // the front door (and every client and dashboard after it) take the app's
            // answer for one of weir's refusals, so it is dropped like a hop-by-hop header.
            out.truncate(line);
            continue;
        }
        if lower == b"content-length" {
            let v = std::str::from_utf8(&out[v0..]).unwrap_or("").trim();
            let parsed = v
                .parse::<u64>()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()));
            match (parsed, content_length) {
                (None, _) => {
                    return Err(PyValueError::new_err(format!(
                        "invalid Content-Length {v:?}"
                    )))
                }
                (Some(a), Some(b)) if a != b => {
                    return Err(PyValueError::new_err("conflicting Content-Length headers"))
                }
                (Some(a), _) => content_length = Some(a),
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((code, content_length))
}

fn reraise(exc_info: &Bound<'_, PyAny>) -> PyErr {
    match exc_info.get_item(1) {
        Ok(v) if !v.is_none() => PyErr::from_value(v),
        _ => PyTypeError::new_err("exc_info must be a (type, value, traceback) tuple"),
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        let me = slf.get();
        {
            let mut c = me.conn()?;
            if c.resp.started {
                let Some(exc) = exc_info else {
                    return Err(PyAssertionError::new_err(
                        "start_response called a second time without exc_info",
                    ));
                };
                if c.resp.head_sent {
                    drop(c);
                    return Err(reraise(exc));
                }
            }
            let mut head = std::mem::take(&mut c.resp.head);
            let r = encode_head(&mut head, status, headers);
            c.resp.head = head;
            match r {
                Ok((code, cl)) => {
                    c.resp.started = true;
                    c.resp.no_body_status =
                        (100..200).contains(&code) || code == 204 || code == 304;
                    c.resp.content_length = cl;
                }
                Err(e) => {
                    c.resp.started = false;
                    c.resp.head.clear();
                    return Err(e);
                }
            }
        }
        slf.as_any().getattr(intern!(py, "write"))
    }

    /// The PEP 3333 `write(data)` callable: sends `data` at once.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data)))
        })?;
        let mut c = self.conn()?;
        if !c.resp.started {
            return Err(PyAssertionError::new_err(
                "write() called before start_response",
            ));
        }
        c.body_chunk(py, data.as_bytes(), true).map_err(io_err)?;
        if c.cancelled {
            return Err(PyOSError::new_err(
                "the client went away (the master cancelled the response)",
            ));
        }
        Ok(())
    }
}

/// Where `wsgi.errors` lines go: stderr, prefixed with the worker and request id.
#[derive(Debug)]
pub struct LogCtx {
    prefix_worker: String,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    rid: String,
    partial: String,
}

impl LogCtx {
    pub fn new(worker_id: u32) -> Self {
        LogCtx {
            prefix_worker: format!("weir worker {worker_id} request "),
            state: Mutex::new(LogState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a request: flushes an unfinished line of the previous one, sets the id.
    pub fn begin(&self, rid: &str) {
        let mut st = self.state();
        if !st.partial.is_empty() {
            self.flush_locked(&mut st);
        }
        st.rid.clear();
        st.rid.push_str(rid);
    }

    fn emit(&self, rid: &str, line: &str) {
        let mut s = String::with_capacity(self.prefix_worker.len() + rid.len() + line.len() + 3);
        s.push_str(&self.prefix_worker);
        s.push_str(rid);
        s.push_str(": ");
        s.push_str(line);
        s.push('\n');
        let _ = std::io::stderr().lock().write_all(s.as_bytes());
    }

    fn write(&self, text: &str) {
        let mut st = self.state();
        st.partial.push_str(text);
        while let Some(i) = st.partial.find('\n') {
            let line: String = st.partial.drain(..=i).collect();
            self.emit(&st.rid, line.trim_end_matches(['\n', '\r']));
        }
    }

    fn flush_locked(&self, st: &mut LogState) {
        if !st.partial.is_empty() {
            let line = std::mem::take(&mut st.partial);
            self.emit(&st.rid, &line);
        }
    }

    fn flush(&self) {
        let mut st = self.state();
        self.flush_locked(&mut st);
    }
}

/// `wsgi.errors`: a text stream onto stderr, each line prefixed with the request id.
#[pyclass(frozen, module = "weir", name = "Errors")]
pub struct Errors {
    ctx: Arc<LogCtx>,
}

impl Errors {
    pub fn new(ctx: Arc<LogCtx>) -> Self {
        Errors { ctx }
    }
}

#[pymethods]
impl Errors {
    fn write(&self, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(t) = s.cast::<PyString>() {
            self.ctx.write(&t.to_string_lossy());
            return t.len();
        }
        if let Ok(b) = s.cast::<PyBytes>() {
            self.ctx.write(&String::from_utf8_lossy(b.as_bytes()));
            return Ok(b.as_bytes().len());
        }
        Err(PyTypeError::new_err(format!(
            "wsgi.errors.write() takes str, not {}",
            type_name(s)
        )))
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        self.ctx.flush();
    }

    fn writable(&self) -> bool {
        true
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates `filelike.read(blksize)` until it
/// returns an empty value; `close()` closes the file.
#[pyclass(frozen, module = "weir", name = "FileWrapper")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> PyResult<Self> {
        if blksize == 0 {
            return Err(PyValueError::new_err("blksize must be positive"));
        }
        Ok(FileWrapper { filelike, blksize })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        Ok(data.is_truthy()?.then_some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(close) = self.filelike.bind(py).getattr_opt(intern!(py, "close"))? {
            close.call0()?;
        }
        Ok(())
    }

    #[getter]
    fn filelike(&self, py: Python<'_>) -> Py<PyAny> {
        self.filelike.clone_ref(py)
    }

    #[getter]
    fn blksize(&self) -> usize {
        self.blksize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_matches_weir_uwsgi() {
        Python::initialize();
        Python::attach(|py| {
            let status = PyString::new(py, "201 Created");
            let headers = PyList::new(
                py,
                [
                    PyTuple::new(py, ["Content-Type", "text/plain"]).unwrap(),
                    PyTuple::new(py, ["Connection", "close"]).unwrap(),
                    PyTuple::new(py, ["X-Weir-Error", "queue-full"]).unwrap(),
                    PyTuple::new(py, ["X-Latin", "caf\u{e9}"]).unwrap(),
                    PyTuple::new(py, ["Content-Length", "5"]).unwrap(),
                ],
            )
            .unwrap();
            let mut out = Vec::new();
            let (code, cl) = encode_head(&mut out, status.as_any(), headers.as_any()).unwrap();
            assert_eq!((code, cl), (201, Some(5)));
            let mut expect = Vec::new();
            weir_uwsgi::head::encode(
                &mut expect,
                b"201 Created",
                [
                    (&b"Content-Type"[..], &b"text/plain"[..]),
                    (&b"X-Latin"[..], &b"caf\xe9"[..]),
                    (&b"Content-Length"[..], &b"5"[..]),
                ],
            );
            assert_eq!(out, expect);
        });
    }

    #[test]
    fn bad_heads_are_refused() {
        Python::initialize();
        Python::attach(|py| {
            let ok = PyList::empty(py);
            let mut out = Vec::new();
            for bad in ["200", "OK 200", "2000 x", "200 a\r\nb"] {
                let s = PyString::new(py, bad);
                assert!(
                    encode_head(&mut out, s.as_any(), ok.as_any()).is_err(),
                    "{bad}"
                );
            }
            let s = PyString::new(py, "200 OK");
            for (n, v) in [("A\nB", "x"), ("X", "a\r\nb"), ("", "x"), ("X", "\u{20ac}")] {
                let h = PyList::new(py, [PyTuple::new(py, [n, v]).unwrap()]).unwrap();
                assert!(
                    encode_head(&mut out, s.as_any(), h.as_any()).is_err(),
                    "{n:?}"
                );
            }
            let h = PyList::new(py, [PyTuple::new(py, ["Content-Length", "x1"]).unwrap()]).unwrap();
            assert!(encode_head(&mut out, s.as_any(), h.as_any()).is_err());
        });
    }
}

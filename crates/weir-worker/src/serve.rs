//! The request loop: packet in, environ, app call, framed response out, body drained.

use std::process::ExitCode;
use std::sync::Arc;

use pyo3::exceptions::{PyAssertionError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use weir_errors::ErrorClass;
use weir_uwsgi::packet::{self, DecodeError};

use crate::conn::{Fatal, Finished, MODIFIER_CANCEL};
use crate::environ::{self, Strings};
use crate::wsgi::{self, Errors, FileWrapper, Input, LogCtx, Shared, StartResponse};
use crate::{format_err, log_line, Loaded, EXIT_FATAL};

/// Everything the loop keeps between requests.
pub struct Worker {
    id: u32,
    app: Py<PyAny>,
    ready_check: Option<Py<PyAny>>,
    format_exc: Py<PyAny>,
    /// boot.py's `ErrorMap` (`--error-map`).
    error_map: Option<Py<PyAny>>,
    template: Py<PyDict>,
    shared: Arc<Shared>,
    log: Arc<LogCtx>,
    strings: Strings,
    rid: String,
}

/// The error map's answer to an app exception: (status, class, Retry-After, the entry's
/// key).
struct Mapped {
    status: u16,
    class: ErrorClass,
    retry_after: Option<u64>,
    key: String,
}

/// Why a request's response could not be completed normally.
enum Failure {
    /// The app raised (or broke a WSGI rule): 500 or ABORT.
    App(PyErr),
    /// The socket broke: the worker exits after close().
    Io(std::io::Error),
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::App(e)
    }
}

impl Worker {
    pub(crate) fn new(
        py: Python<'_>,
        id: u32,
        loaded: Loaded,
        shared: Arc<Shared>,
    ) -> PyResult<Self> {
        let log = Arc::new(LogCtx::new(id));
        let errors = Bound::new(py, Errors::new(log.clone()))?;
        let fw = py.get_type::<FileWrapper>();
        let template = environ::template(py, errors.into_any(), fw.into_any())?.unbind();
        Ok(Worker {
            id,
            app: loaded.app,
            ready_check: loaded.ready_check,
            format_exc: loaded.format_exc,
            error_map: loaded.error_map,
            template,
            shared,
            log,
            strings: Strings::new(),
            rid: String::new(),
        })
    }

    fn fatal(&self, what: &Fatal) -> ExitCode {
        log_line(format_args!("weir worker {}: exiting: {what}", self.id));
        ExitCode::from(EXIT_FATAL)
    }

    /// Serves until EOF (exit 0) or a fatal error (exit 1).
    pub(crate) fn serve(&mut self, py: Python<'_>) -> ExitCode {
        loop {
            match self.one(py) {
                Ok(true) => {}
                Ok(false) => return ExitCode::SUCCESS,
                Err(f) => return self.fatal(&f),
            }
        }
    }

    /// One packet. `Ok(false)`: clean EOF.
    fn one(&mut self, py: Python<'_>) -> Result<bool, Fatal> {
        let shared = self.shared.clone();
        let mut c = shared.lock(py);
        let Some(total) = c.next_packet(py)? else {
            return Ok(false);
        };
        match packet::decode_claim(c.packet_bytes(total)) {
            Ok(None) => {}
            Ok(Some(claim)) => {
                // A prefetched request follows: run it only if the master did not take it
                // back (see weir-claim); either way the loop reads on.
                c.consume(total);
                c.claim(claim);
                return Ok(true);
            }
            Err(e) => return Err(Fatal::Desync(e.to_string())),
        }
        let expired = std::mem::take(&mut c.expired_next);
        let decoded = packet::decode(c.packet_bytes(total));
        let (modifier1, modifier2) = match &decoded {
            Ok((p, _)) => (p.modifier1, p.modifier2),
            Err(_) => (0, 0),
        };
        match decoded {
            Err(DecodeError::Incomplete { .. }) => {
                unreachable!("next_packet buffers whole packets")
            }
            Err(e) => {
                c.consume(total);
                c.begin(crate::conn::Body::End, false);
                log_line(format_args!("weir worker {}: bad request: {e}", self.id));
                bad_request(py, &mut c)?;
                return Ok(true);
            }
            Ok(_) if modifier1 == packet::MODIFIER_READY_CHECK => {
                c.consume(total);
                c.begin(crate::conn::Body::End, false);
                drop(c);
                let (status, body) = self.ready_check(py);
                let mut c = shared.lock(py);
                c.simple_response(py, status, None, &body)
                    .map_err(Fatal::Io)?;
                return Ok(true);
            }
            Ok(_) if modifier1 == MODIFIER_CANCEL => {
                // A cancel that crossed the end of its response: nothing to stop.
                c.consume(total);
                return Ok(true);
            }
            Ok(_) if modifier1 != packet::MODIFIER_WSGI => {
                c.consume(total);
                c.begin(crate::conn::Body::End, false);
                log_line(format_args!(
                    "weir worker {}: bad request: unknown modifier1 {modifier1} (modifier2 {modifier2})",
                    self.id
                ));
                bad_request(py, &mut c)?;
                return Ok(true);
            }
            Ok((p, _)) => {
                let environ = match self.template.bind(py).copy() {
                    Ok(e) => e,
                    Err(e) => return Err(Fatal::Desync(format!("environ copy failed: {e}"))),
                };
                let info = environ::fill(py, &mut self.strings, &environ, &p, &mut self.rid);
                c.consume(total);
                let info = match info {
                    Ok(i) => i,
                    Err(e) => {
                        // Only a MemoryError can get here; the body framing is unknown.
                        return Err(Fatal::Desync(format!("building environ failed: {e}")));
                    }
                };
                let body = match info.body {
                    Ok(b) => b,
                    Err(why) => {
                        c.begin(crate::conn::Body::End, info.head_request);
                        log_line(format_args!(
                            "weir worker {} request {}: bad request: {why}",
                            self.id, self.rid
                        ));
                        bad_request(py, &mut c)?;
                        return Ok(true);
                    }
                };
                c.begin(body, info.head_request);
                if expired {
                    // Prefetched, and its deadline passed while it waited behind the
                    // request before: answered as the master would, not run.
                    log_line(format_args!(
                        "weir worker {} request {}: not started: its deadline passed while it waited behind the worker's previous request",
                        self.id, self.rid
                    ));
                    c.error_response(
                        py,
                        ErrorClass::Deadline,
                        "the request's deadline passed before a worker started it",
                    )
                    .map_err(Fatal::Io)?;
                    c.drain_body(py)?;
                    return Ok(true);
                }
                let seq = c.seq;
                drop(c);
                self.log.begin(&self.rid);
                self.request(py, environ, seq)?;
            }
        }
        Ok(true)
    }

    fn log_exception(&self, py: Python<'_>, what: &str, err: &PyErr) {
        let text = format_err(py, &self.format_exc, err);
        log_line(format_args!(
            "weir worker {} request {}: exception {what}:\n{text}",
            self.id, self.rid
        ));
    }

    /// Runs the app for one request and answers it.
    fn request(
        &mut self,
        py: Python<'_>,
        environ: Bound<'_, PyDict>,
        seq: u64,
    ) -> Result<(), Fatal> {
        let shared = &self.shared;
        let setup = (|| -> PyResult<_> {
            environ.set_item(
                intern!(py, "wsgi.input"),
                Bound::new(py, Input::new(shared.clone(), seq))?,
            )?;
            let sr = Bound::new(py, StartResponse::new(shared.clone(), seq))?;
            Ok(sr)
        })();
        let result = setup.and_then(|sr| self.app.bind(py).call1((environ, sr)));
        let outcome = match &result {
            Ok(res) => self.send_body(py, res),
            Err(e) => Err(Failure::App(e.clone_ref(py))),
        };
        // Answer before close() and logging: the client should not wait for either.
        let mut app_error = None;
        let mut io_error = None;
        match outcome {
            Ok(()) => {}
            Err(Failure::Io(e)) => io_error = Some(e),
            Err(Failure::App(err)) => {
                let head_sent = shared.lock(py).resp.head_sent;
                // Matched before the lock is taken again: the map runs Python code.
                let mapped = if head_sent {
                    None
                } else {
                    self.match_error(py, &err)
                };
                let mut c = shared.lock(py);
                let r = match &mapped {
                    _ if c.resp.head_sent => c.abort(py),
                    Some(m) => c.mapped_response(py, m.status, m.class, m.retry_after),
                    None => c.error_response(py, ErrorClass::AppException, "Internal Server Error"),
                };
                drop(c);
                if let Err(e) = r {
                    io_error = Some(e);
                }
                app_error = Some((err, mapped));
            }
        }
        if let Ok(res) = &result {
            if let Err(e) = close_result(py, res) {
                self.log_exception(py, "in the response's close()", &e);
            }
        }
        drop(result);
        match app_error {
            None => {}
            Some((err, None)) => self.log_exception(py, "in the app", &err),
            Some((err, Some(m))) => {
                // The answer the map chose is not a failure of weir's: a warning, and the
                // worker goes on serving.
                let text = format_err(py, &self.format_exc, &err);
                log_line(format_args!(
                    "weir worker {} request {}: warning: exception in the app answered {} {} ({}):\n{text}",
                    self.id, self.rid, m.status, m.class, m.key
                ));
            }
        }
        let mut c = shared.lock(py);
        if c.resp.excess > 0 {
            // The client got exactly Content-Length bytes; the app has a bug to hear of.
            log_line(format_args!(
                "weir worker {} request {}: warning: the app's body is longer than its Content-Length ({} bytes): {} more bytes dropped",
                self.id,
                self.rid,
                c.resp.content_length.unwrap_or(0),
                c.resp.excess
            ));
        }
        if let Some(e) = io_error.or_else(|| c.broken.take()) {
            return Err(Fatal::Io(e));
        }
        c.drain_body(py)?;
        c.shrink();
        Ok(())
    }

    /// The error map's answer to `err`, if an entry matches it.
    fn match_error(&self, py: Python<'_>, err: &PyErr) -> Option<Mapped> {
        let map = self.error_map.as_ref()?;
        let found = map
            .bind(py)
            .call_method1(intern!(py, "match"), (err.value(py),))
            .and_then(|v| v.extract::<Option<(u16, String, Option<u64>, String)>>());
        match found {
            Ok(None) => None,
            Ok(Some((status, class, retry_after, key))) => {
                let class = ErrorClass::from_name(class.as_bytes()).filter(|c| c.mapped())?;
                Some(Mapped {
                    status,
                    class,
                    retry_after,
                    key,
                })
            }
            Err(e) => {
                // A bug of weir's, or an exception whose attributes raise: 500 as without
                // a map, and the reason in the log.
                self.log_exception(py, "while matching the error map", &e);
                None
            }
        }
    }

    /// Iterates the app's result and writes the body.
    fn send_body(&self, py: Python<'_>, res: &Bound<'_, PyAny>) -> Result<(), Failure> {
        // Once the body has reached the app's Content-Length, what the app yields next is
        // excess: counted (and logged by the caller), never sent. A list or tuple is read to
        // its end (no app code runs); an iterator is asked for one more item (as servers
        // that iterate to the end would; weir does not run it further).
        if let Ok(list) = res.cast::<PyList>() {
            self.send_items(py, list.iter())?;
        } else if let Ok(tuple) = res.cast::<PyTuple>() {
            self.send_items(py, tuple.iter())?;
        } else {
            // Anything else may be a generator: each chunk goes out as it comes.
            let mut items = res.try_iter()?;
            for item in items.by_ref() {
                if !self.chunk(py, &item?, true)? {
                    break;
                }
            }
            if self.complete_by_length(py) {
                if let Some(item) = items.next() {
                    self.chunk(py, &item?, true)?;
                }
            }
        }
        let mut c = self.shared.lock(py);
        if !c.resp.started {
            return Err(Failure::App(PyAssertionError::new_err(
                "the app returned without calling start_response",
            )));
        }
        match c.finish(py).map_err(Failure::Io)? {
            Finished::Ok => Ok(()),
            Finished::Cancelled => {
                drop(c);
                log_line(format_args!(
                    "weir worker {} request {}: response cancelled by the master (client gone)",
                    self.id, self.rid
                ));
                Ok(())
            }
            Finished::ShortBeforeHead { declared, sent }
            | Finished::ShortAborted { declared, sent } => {
                Err(Failure::App(PyAssertionError::new_err(format!(
                    "the app sent {sent} body bytes but its Content-Length is {declared}"
                ))))
            }
        }
    }

    /// The items of a list or tuple, complete already: coalesced into as few writes as
    /// possible, and read to the end once the body has reached its Content-Length (the
    /// excess is counted, never sent).
    fn send_items<'py>(
        &self,
        py: Python<'py>,
        mut items: impl Iterator<Item = Bound<'py, PyAny>>,
    ) -> Result<(), Failure> {
        for item in items.by_ref() {
            if !self.chunk(py, &item, false)? {
                break;
            }
        }
        if self.complete_by_length(py) {
            for item in items {
                self.chunk(py, &item, false)?;
            }
        }
        Ok(())
    }

    fn complete_by_length(&self, py: Python<'_>) -> bool {
        self.shared.lock(py).complete_by_length()
    }

    /// One body chunk; `Ok(false)` when no more body is wanted.
    fn chunk(&self, py: Python<'_>, item: &Bound<'_, PyAny>, flush: bool) -> Result<bool, Failure> {
        let bytes = item.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "the response iterable yielded {}, not bytes",
                wsgi::type_name(item)
            ))
        })?;
        let data = bytes.as_bytes();
        let mut c = self.shared.lock(py);
        if !data.is_empty() && !c.resp.started {
            return Err(Failure::App(PyAssertionError::new_err(
                "the response iterable yielded data before start_response was called",
            )));
        }
        c.body_chunk(py, data, flush).map_err(Failure::Io)
    }

    /// Runs the ready check: (status line, body).
    fn ready_check(&mut self, py: Python<'_>) -> (&'static str, String) {
        const OK: &str = "200 OK";
        const UNAVAILABLE: &str = "503 Service Unavailable";
        let Some(check) = &self.ready_check else {
            return (OK, "ok".into());
        };
        match check.bind(py).call0() {
            Ok(v) if v.is_none() => (OK, "ok".into()),
            Ok(v) => match v.is_truthy() {
                Ok(true) => (OK, "ok".into()),
                Ok(false) => (UNAVAILABLE, "ready check returned a false value".into()),
                Err(e) => (
                    UNAVAILABLE,
                    format!("ready check result: {}", short(&e.to_string())),
                ),
            },
            Err(e) => {
                self.rid.clear();
                self.rid.push_str("ready-check");
                self.log_exception(py, "in the ready check", &e);
                (
                    UNAVAILABLE,
                    format!("ready check raised {}", short(&e.to_string())),
                )
            }
        }
    }
}

/// First line of a message, at most 200 bytes.
fn short(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or("");
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

fn bad_request(py: Python<'_>, c: &mut crate::conn::Conn) -> Result<(), Fatal> {
    c.error_response(py, ErrorClass::BadRequest, "Bad Request")
        .map_err(Fatal::Io)
}

/// Calls `close()` on the app's result if it has one (PEP 3333: always).
fn close_result(py: Python<'_>, res: &Bound<'_, PyAny>) -> PyResult<()> {
    if res.is_exact_instance_of::<PyList>() || res.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    if let Some(close) = res.getattr_opt(intern!(py, "close"))? {
        close.call0()?;
    }
    Ok(())
}

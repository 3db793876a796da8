//! A weir worker process: embeds CPython (PyO3), imports a WSGI app once, and serves the
//! master's requests one at a time over the Unix stream socket that is its standard input.
//!
//! # Life
//! 1. Takes the socket from fd 0 (then points fd 0 at /dev/null, so app code reading stdin
//!    cannot touch the protocol), asks for SIGKILL when the parent dies, ignores SIGINT.
//! 2. Honours `--virtualenv` (its site-packages go first on `sys.path`) and `--chdir`
//!    (chdir, and the directory goes first on `sys.path`; without it the current directory
//!    does), imports `--app MODULE[:CALLABLE]` and `--ready-check MODULE:FUNCTION`.
//!    On failure: the traceback on stderr, exit [`EXIT_IMPORT_FAILED`].
//! 3. Gives the C heap's free pages back (`malloc_trim`: what the import freed), writes a
//!    READY control packet, logs one line, and serves (see `serve`):
//!    EOF at a packet boundary is a clean exit (0); a socket error, EOF inside a packet or
//!    body, or broken body framing exits [`EXIT_FATAL`].
//!
//! # What the master can rely on (beyond `weir_uwsgi`'s protocol overview)
//! - READY (`MODIFIER_READY`, no vars) is written once, after the app and the ready check
//!   imported, with the descriptor of the worker's claim words attached (`SCM_RIGHTS`; see
//!   weir-claim; none when the memfd could not be made, and then nothing is offered to this
//!   worker); then one log line `weir worker <id>: pid <pid> ready, app <app> imported in
//!   <ms> ms`.
//! - Every packet gets exactly one framed answer (head, data frames, END or ABORT), except
//!   [`MODIFIER_CANCEL`] and CLAIM, which never get one. Packets are handled strictly in order, so the
//!   master may write the next packet before the previous answer is read.
//! - The request body is read while the app runs and the rest is drained *after* the answer
//!   is written: the master must write the body concurrently with reading the response.
//!   A chunked body may end with ABORT (the client's upload failed): `wsgi.input` then
//!   raises `OSError` and the worker stays in sync. A CONTENT_LENGTH body cannot be cut
//!   short: the master must send all of it or kill the worker.
//! - Errors: a malformed vars block, an unknown modifier1 or a bad CONTENT_LENGTH gets
//!   `400 Bad Request` with `x-weir-error: bad-request` (the packet is assumed to carry no
//!   body); an app exception (or WSGI misuse) before the head was written gets
//!   `500 Internal Server Error` with `x-weir-error: app-exception` and the body
//!   `Internal Server Error`; after the head, ABORT. The worker goes on serving.
//! - The error map (`--error-map`, weir-config's `MappedError` list as JSON): its entries'
//!   classes are imported after the app (one that cannot be is an import failure, exit 3;
//!   a preset's are looked up among the modules already imported, never imported). An app
//!   exception before the head that an entry matches (isinstance, then `code` against
//!   `args[0]` or `errno`) gets the entry's status, `x-weir-error: <class>` (one of
//!   `ErrorClass::MAPPED`) and `Retry-After: <s>` when it has one, and its traceback is
//!   logged as `weir worker <id> request <rid>: warning: exception in the app answered
//!   <status> <class> (<key>):`. The worker goes on serving.
//!   `--check-error-map` only resolves the classes (with `--chdir`/`--virtualenv`, without
//!   the app) and exits 0, or [`EXIT_USAGE`] with one line naming the entry.
//! - The app's hop-by-hop headers (PEP 3333) and its own `x-weir-error` are dropped from
//!   its head: the class header is weir's alone.
//! - A response with a Content-Length header carries exactly that many body bytes: more is
//!   cut (and logged), fewer is a 500 (nothing sent yet) or ABORT. HEAD requests and
//!   1xx/204/304 statuses get the head and END, never data frames. Hop-by-hop headers
//!   (Connection, Keep-Alive, Transfer-Encoding, TE, Trailers, Upgrade, Proxy-Authenticate,
//!   Proxy-Authorization) from the app are dropped.
//! - END is written before the app result's `close()` runs (so the client is not kept
//!   waiting by teardown code); the next request simply waits in the socket meanwhile.
//! - A small response (head, one frame, END) is one `sendmsg`; a streamed generator's
//!   chunks each go out as they are produced.
//! - READY_CHECK (`MODIFIER_READY_CHECK`) answers `200 OK` body `ok` when the
//!   `--ready-check` function returns None or a truthy value (or there is none), else
//!   `503 Service Unavailable` with a one-line reason.
//! - CANCEL (`MODIFIER_CANCEL` = 0xF2, no vars): "the client is gone, stop". The master
//!   sends it only after the whole request body; the worker checks for it before each
//!   streamed chunk, then stops iterating, calls `close()` and writes ABORT. One that
//!   arrives after the response ended is read at the next packet boundary and ignored.
//! - CLAIM (`MODIFIER_CLAIM` = 0xF3, a 20-byte payload: claim sequence number, the length
//!   of the request that follows, its start-by time): the next request was offered behind
//!   the current one (`[app] prefetch`). The worker swaps its claim word from offered to
//!   taken and runs the request only if that won (past its start-by time it answers it
//!   `504` with `x-weir-error: deadline` instead, without calling the app); if the master
//!   revoked it first, the worker skips its `len` bytes. While streaming a response, the CANCEL check looks past a revoked CLAIM
//!   and its request (the master revokes before it sends CANCEL).
//! - Exit codes: 0 after EOF at a packet boundary, [`EXIT_IMPORT_FAILED`] (3) when the app
//!   or the ready check cannot be imported, [`EXIT_FATAL`] (1) on a socket error, EOF inside
//!   a packet or body, or broken request-body framing, [`EXIT_USAGE`] (2) when stdin is not
//!   a Unix socket.
//! - PR_SET_PDEATHSIG fires when the parent *thread* exits: spawn workers from a thread that
//!   lives as long as the master (not a `spawn_blocking` thread).
//!
//! # Preload: `weir worker --zygote`
//! With `[app] preload` (`"auto"`, the default, or `true`) the master starts one zygote per
//! generation instead: it imports the app as step 2 does, checks that forking is safe (no
//! sockets opened, no threads started by the import), then forks workers on request; a forked worker goes on from step 3
//! (its log line says `ready, forked from zygote <pid> in <us> us`). See `zygote`.
#![deny(unsafe_code)]

mod conn;
mod environ;
mod serve;
#[allow(unsafe_code)]
mod sys;
mod wsgi;
mod zygote;

pub use conn::MODIFIER_CANCEL;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// Exit status of a worker whose app failed to import (the master stops respawning).
pub const EXIT_IMPORT_FAILED: u8 = 3;
/// Exit status after a socket error or a broken body framing (the master respawns).
pub const EXIT_FATAL: u8 = 1;
/// Exit status when standard input is not a socket (started by hand, not by the master).
pub const EXIT_USAGE: u8 = 2;

/// How the master starts a worker: `weir worker --app M:C [--chdir D] [--virtualenv D] --id N`
/// (or the zygote: `weir worker --zygote --app ...`). The master<->worker socket (the
/// zygote's control socket) is the process's standard input.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// The WSGI app as MODULE:CALLABLE (CALLABLE defaults to `application`).
    #[arg(long)]
    pub app: String,
    /// Directory to change into (and put first on sys.path) before importing the app.
    #[arg(long)]
    pub chdir: Option<PathBuf>,
    /// A virtualenv whose site-packages hold the app's dependencies.
    #[arg(long)]
    pub virtualenv: Option<PathBuf>,
    /// The worker's slot number (for logs).
    #[arg(long, default_value_t = 0)]
    pub id: u32,
    /// Optional `module:function` ready check, run on the master's READY_CHECK request.
    #[arg(long)]
    pub ready_check: Option<String>,
    /// Be the zygote (`[app] preload`): import the app, then fork workers on the master's
    /// requests; standard input is the control socket (SOCK_SEQPACKET).
    #[arg(long)]
    pub zygote: bool,
    /// With --zygote (`[app] preload = "auto"`): when the import left open sockets or
    /// running threads, report them (NOT_FORK_SAFE) and exit 0 instead of forking; without
    /// it they are reported and the zygote forks anyway.
    #[arg(long, requires = "zygote")]
    pub if_fork_safe: bool,
    /// The error map (`[[error_map]]` and `[errors]`' presets) as JSON: weir-config's
    /// `MappedError` list, in matching order. Its classes are resolved after the app is
    /// imported; one that cannot be is an import failure (exit 3).
    #[arg(long)]
    pub error_map: Option<String>,
    /// Resolve --error-map's classes (after --virtualenv and --chdir, without importing
    /// the app), print what is wrong and exit: 0 when every class imports, 2 otherwise
    /// (`weir serve --check`). Standard input is not used.
    #[arg(long, requires = "error_map")]
    pub check_error_map: bool,
}

/// Writes one log line to stderr in a single write.
pub(crate) fn log_line(line: std::fmt::Arguments<'_>) {
    let mut s = line.to_string();
    s.push('\n');
    let _ = io::stderr().lock().write_all(s.as_bytes());
}

/// Takes the master socket from fd 0 and points fd 0 at /dev/null.
fn take_socket() -> io::Result<UnixStream> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let sock = UnixStream::from(fd);
    sock.local_addr().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "standard input is not a Unix socket ({e}); workers are started by `weir serve`"
            ),
        )
    })?;
    let null = File::open("/dev/null")?;
    sys::dup2(null.as_fd(), 0)?;
    Ok(sock)
}

/// Runs the worker until the master closes the socket.
pub fn main(opts: WorkerOptions) -> ExitCode {
    let id = opts.id;
    use_virtualenv_interpreter(&opts);
    if opts.check_error_map {
        Python::initialize();
        return Python::attach(|py| check_error_map(py, &opts));
    }
    let sock = match take_socket() {
        Ok(s) => s,
        Err(e) => {
            log_line(format_args!("weir worker {id}: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = sys::set_parent_death_signal() {
        log_line(format_args!(
            "weir worker {id}: PR_SET_PDEATHSIG failed: {e}"
        ));
    }
    for (sig, name) in sys::MASTER_SIGNALS {
        if let Err(e) = sys::ignore_signal(sig) {
            log_line(format_args!(
                "weir worker {id}: ignoring {name} failed: {e}"
            ));
        }
    }
    // Not pyo3's auto-initialize: that refuses a statically linked libpython (which is
    // what makes CPython fastest, see crates/weir/build.rs).
    Python::initialize();
    if opts.zygote {
        return Python::attach(|py| zygote::run(py, &opts, sock.into()));
    }
    Python::attach(|py| run(py, &opts, sock))
}

/// With `--virtualenv` pointing at a real virtualenv (a `pyvenv.cfg` and a `bin/python3`)
/// made for this interpreter's version, the interpreter starts as that virtualenv's python
/// would: `sys.prefix` is the virtualenv, `sys.executable` its `bin/python3`, and the
/// standard library is the one of the Python it was made from (`home` in `pyvenv.cfg`).
/// Without it the interpreter finds itself by looking up `python3` in `PATH`, which is
/// another Python's when the virtualenv is not activated. uWSGI's `virtualenv` sets the
/// interpreter's home for the same reason. boot.py's `activate` then adds nothing new.
fn use_virtualenv_interpreter(opts: &WorkerOptions) {
    let Some(venv) = &opts.virtualenv else { return };
    let Ok(venv) = std::path::absolute(venv) else {
        return;
    };
    let python = venv.join("bin").join("python3");
    let site = venv
        .join("lib")
        .join(format!("python{}", sys::python_version()))
        .join("site-packages");
    // Another version's virtualenv would give this interpreter a foreign standard library;
    // boot.py's `activate` says what is wrong with it instead.
    if venv.join("pyvenv.cfg").is_file() && python.exists() && site.is_dir() {
        sys::set_program_name(&python);
    }
}

/// The loaded app and the startup helpers.
struct Loaded {
    app: Py<PyAny>,
    ready_check: Option<Py<PyAny>>,
    format_exc: Py<PyAny>,
    /// boot.py's `ErrorMap` (`--error-map`), its classes resolved.
    error_map: Option<Py<PyAny>>,
}

/// Formats a Python exception with its traceback (falls back to its message).
pub(crate) fn format_err(py: Python<'_>, format_exc: &Py<PyAny>, err: &PyErr) -> String {
    let tb = err
        .traceback(py)
        .map(|t| t.into_any())
        .unwrap_or_else(|| py.None().into_bound(py));
    format_exc
        .bind(py)
        .call1((err.get_type(py), err.value(py), tb))
        .and_then(|s| s.extract::<String>())
        .unwrap_or_else(|_| err.to_string())
}

/// boot.py as module `_weir_boot`, with `--virtualenv` activated and `--chdir` (or the
/// current directory) first on `sys.path`; and its `format_exc`.
fn boot<'py>(
    py: Python<'py>,
    opts: &WorkerOptions,
) -> Result<(Bound<'py, PyModule>, Py<PyAny>), String> {
    let code = CString::new(include_str!("boot.py")).expect("no NUL in boot.py");
    let boot = PyModule::from_code(py, &code, c"weir_boot.py", c"_weir_boot")
        .map_err(|e| format!("startup helpers failed: {e}"))?;
    let format_exc = boot
        .getattr("format_exc")
        .map_err(|e| e.to_string())?
        .unbind();
    let fmt = |e: PyErr| format_err(py, &format_exc, &e);
    if let Some(venv) = &opts.virtualenv {
        boot.call_method1("activate", (venv,)).map_err(fmt)?;
    }
    let first = match &opts.chdir {
        Some(dir) => {
            std::env::set_current_dir(dir)
                .map_err(|e| format!("cannot chdir to {}: {e}", dir.display()))?;
            std::env::current_dir().unwrap_or_else(|_| dir.clone())
        }
        None => std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?,
    };
    boot.call_method1("put_first", (first,)).map_err(fmt)?;
    Ok((boot, format_exc))
}

/// boot.py's `ErrorMap` of `--error-map`: its entries' classes imported. Err: one line
/// that names the entry's key (`error_map[N].exception: ...`), or a traceback.
fn error_map(
    py: Python<'_>,
    boot: &Bound<'_, PyModule>,
    format_exc: &Py<PyAny>,
    spec: &str,
) -> Result<Py<PyAny>, String> {
    boot.call_method1("ErrorMap", (spec,))
        .map(Bound::unbind)
        .map_err(|e| {
            let named = boot
                .getattr("ErrorMapError")
                .is_ok_and(|t| e.get_type(py).is(&t));
            if named {
                e.value(py).to_string()
            } else {
                format!("error map: {}", format_err(py, format_exc, &e))
            }
        })
}

/// `weir worker --check-error-map` (`weir serve --check`): exit 0 when every
/// `[[error_map]]` class imports, 2 with one line naming the entry otherwise.
fn check_error_map(py: Python<'_>, opts: &WorkerOptions) -> ExitCode {
    let result = boot(py, opts).and_then(|(boot, format_exc)| {
        error_map(
            py,
            &boot,
            &format_exc,
            opts.error_map.as_deref().unwrap_or("[]"),
        )
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(msg) => {
            log_line(format_args!("weir: invalid config: {msg}"));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Imports the app (and the ready check, the error map's classes). Err: the whole
/// message for the log, after `weir worker <id>: ` or `weir zygote: `.
fn load(py: Python<'_>, opts: &WorkerOptions) -> Result<Loaded, String> {
    let prefix = |m: String| format!("cannot import app {}:\n{m}", opts.app);
    let (boot, format_exc) = boot(py, opts).map_err(prefix)?;
    let fmt = |e: PyErr| prefix(format_err(py, &format_exc, &e));
    let app = boot
        .call_method1("load", (&opts.app, "application"))
        .map_err(fmt)?
        .unbind();
    let ready_check = match &opts.ready_check {
        Some(spec) => Some(
            boot.call_method1("load", (spec, py.None()))
                .map_err(|e| {
                    prefix(format!(
                        "ready check {spec}: {}",
                        format_err(py, &format_exc, &e)
                    ))
                })?
                .unbind(),
        ),
        None => None,
    };
    // After the app: a class of its own modules is imported already.
    let error_map = match &opts.error_map {
        Some(spec) => Some(
            error_map(py, &boot, &format_exc, spec)
                .map_err(|m| format!("cannot start: invalid config: {m}"))?,
        ),
        None => None,
    };
    Ok(Loaded {
        app,
        ready_check,
        format_exc,
        error_map,
    })
}

fn run(py: Python<'_>, opts: &WorkerOptions, sock: UnixStream) -> ExitCode {
    let id = opts.id;
    let t0 = Instant::now();
    let loaded = match load(py, opts) {
        Ok(l) => l,
        Err(msg) => {
            log_line(format_args!("weir worker {id}: {msg}"));
            return ExitCode::from(EXIT_IMPORT_FAILED);
        }
    };
    let imported_ms = t0.elapsed().as_millis();
    // What the import freed stays resident otherwise (see `sys::trim_heap`).
    sys::trim_heap();
    let how = format!("app {} imported in {imported_ms} ms", opts.app);
    serve_loaded(py, id, loaded, sock, &how)
}

/// A worker whose app is loaded (imported here, or inherited from the zygote by fork):
/// READY on `sock`, one log line (`weir worker <id>: pid <pid> ready, <how>`), serve.
pub(crate) fn serve_loaded(
    py: Python<'_>,
    id: u32,
    loaded: Loaded,
    sock: UnixStream,
    how: &str,
) -> ExitCode {
    // The claim word of prefetched requests goes to the master with READY; without one
    // the master never prefetches to this worker (it still serves).
    let claim = match weir_claim::ClaimWords::create() {
        Ok(c) => Some(c),
        Err(e) => {
            log_line(format_args!(
                "weir worker {id}: no shared claim word ({e}); requests will not be prefetched to this worker"
            ));
            None
        }
    };
    let mut ready = Vec::new();
    weir_uwsgi::packet::encode_control(&mut ready, weir_uwsgi::packet::MODIFIER_READY);
    let sent = weir_fdpass::send_with_fd(
        sock.as_fd(),
        &ready,
        claim.as_ref().map(|c| c.fd()),
        weir_fdpass::Mode::Blocking,
    );
    if let Err(e) = sent {
        log_line(format_args!("weir worker {id}: cannot send READY: {e}"));
        return ExitCode::from(EXIT_FATAL);
    }
    let shared = Arc::new(wsgi::Shared::new(conn::Conn::new(sock, claim)));
    let mut worker = match serve::Worker::new(py, id, loaded, shared) {
        Ok(w) => w,
        Err(e) => {
            log_line(format_args!("weir worker {id}: setup failed: {e}"));
            return ExitCode::from(EXIT_FATAL);
        }
    };
    log_line(format_args!(
        "weir worker {id}: pid {} ready, {how}",
        std::process::id()
    ));
    worker.serve(py)
}

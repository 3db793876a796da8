//! `weir worker --zygote`: imports the app once, then forks ready-to-serve workers on the
//! master's request (`[app] preload`), so the workers share the imported app's memory
//! copy-on-write and a respawn is a fork (milliseconds) instead of an exec and an import.
//!
//! # Life
//! 1. Same setup as a worker (control socket from fd 0, PR_SET_PDEATHSIG: the zygote dies
//!    with the master, SIGINT ignored), then the same import ([`crate::load`]); on failure
//!    the traceback on stderr and exit [`EXIT_IMPORT_FAILED`], as a worker.
//! 2. Readies the memory the workers will share: `gc.collect()`, `gc.freeze()` (the
//!    collector then leaves the imported objects alone, so it does not dirty their pages in
//!    every worker), `malloc_trim`.
//! 3. Checks that forking is safe ([`fork_safety`]): threads besides the main one (they do
//!    not survive fork), and sockets and files written at an offset (an SQLite database)
//!    that the import opened (every worker would share them: /proc/self/fd before and
//!    after the import, each described by its address or path; append-only logs pass). Findings
//!    go to the master as NOT_FORK_SAFE {reason}; with `--if-fork-safe` (`preload =
//!    "auto"`) the zygote then exits 0 and the master execs the generation's workers.
//!    Otherwise it writes READY on the control socket.
//! 4. Loops, single-threaded, on `poll` over the control socket and a SIGCHLD signalfd:
//!    - FORK {slot} + a socket (`SCM_RIGHTS`): forks the interpreter
//!      ([`sys::fork_python`]: `PyOS_BeforeFork`/`AfterFork_*`, so `os.register_at_fork`
//!      hooks run). The child closes the control socket and the signalfd, restores the
//!      signal mask, takes the passed socket as its master socket and goes on exactly as
//!      a worker after its import (READY on that socket, then serve). The zygote closes its
//!      copy of the socket and answers FORKED {slot, pid} + a pidfd of the child
//!      (`pidfd_open`, so the master signals race-free), or FAILED {slot, errno}.
//!    - SIGCHLD: reaps every exited child (`waitpid(-1, WNOHANG)`) and reports EXITED
//!      {pid, wait status}, so the master can log how a worker died.
//!    - EOF on the control socket (the master let this generation go, or died): exit 0.
//!
//! Workers are children of the zygote but have no parent-death signal of their own: a
//! zygote that dies (or leaves after a reload) does not take serving workers with it. A
//! worker whose master died still exits, because its socket reads EOF.
//!
//! The messages are [`weir_uwsgi::zygote::Msg`]; the control socket is `SOCK_SEQPACKET`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Instant;

use pyo3::prelude::*;
use weir_fdpass::Mode;
use weir_uwsgi::zygote::{Msg, MAX_LEN};

use crate::sys::{self, Fork};
use crate::{log_line, WorkerOptions, EXIT_FATAL, EXIT_IMPORT_FAILED};

/// Runs the zygote; in a forked child, returns the worker's own exit status instead.
pub(crate) fn run(py: Python<'_>, opts: &WorkerOptions, ctl: OwnedFd) -> ExitCode {
    // Whatever is open now (the control socket, inherited descriptors) is not the app's.
    let before = open_shared_fds();
    let t0 = Instant::now();
    let loaded = match crate::load(py, opts) {
        Ok(l) => l,
        Err(msg) => {
            log_line(format_args!("weir zygote: {msg}"));
            return ExitCode::from(EXIT_IMPORT_FAILED);
        }
    };
    let imported_ms = t0.elapsed().as_millis();
    if let Err(e) = freeze(py) {
        log_line(format_args!(
            "weir zygote: gc.collect()/gc.freeze() failed: {e}"
        ));
    }
    // What the import freed stays resident otherwise (see `sys::trim_heap`).
    sys::trim_heap();
    if let Some(reason) = fork_safety(py, &before) {
        let msg = Msg::not_fork_safe(&reason);
        if let Err(e) = weir_fdpass::send_with_fd(ctl.as_fd(), &msg.encode(), None, Mode::Blocking)
        {
            log_line(format_args!("weir zygote: cannot send NOT_FORK_SAFE: {e}"));
            return ExitCode::from(EXIT_FATAL);
        }
        if opts.if_fork_safe {
            // The master logs the reason and execs this generation's workers.
            return ExitCode::SUCCESS;
        }
    }
    let (sigfd, mask) = match sys::sigchld_fd() {
        Ok(x) => x,
        Err(e) => {
            log_line(format_args!("weir zygote: cannot watch SIGCHLD: {e}"));
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let zpid = std::process::id();
    if let Err(e) =
        weir_fdpass::send_with_fd(ctl.as_fd(), &Msg::Ready.encode(), None, Mode::Blocking)
    {
        log_line(format_args!("weir zygote: cannot send READY: {e}"));
        return ExitCode::from(EXIT_FATAL);
    }
    log_line(format_args!(
        "weir zygote: pid {zpid} ready, app {} imported in {imported_ms} ms; workers are forked from here",
        opts.app
    ));
    let send = |m: Msg, fd: Option<&OwnedFd>| -> bool {
        match weir_fdpass::send_with_fd(
            ctl.as_fd(),
            &m.encode(),
            fd.map(|f| f.as_fd()),
            Mode::Blocking,
        ) {
            Ok(()) => true,
            Err(e) => {
                log_line(format_args!(
                    "weir zygote: cannot write to the master: {e}; exiting"
                ));
                false
            }
        }
    };
    let mut buf = [0u8; MAX_LEN + 1];
    loop {
        let [ctl_ready, sig_ready] = match sys::poll_readable([ctl.as_fd(), sigfd.as_fd()]) {
            Ok(r) => r,
            Err(e) => {
                log_line(format_args!("weir zygote: poll failed: {e}"));
                return ExitCode::from(EXIT_FATAL);
            }
        };
        if sig_ready {
            sys::drain_signalfd(sigfd.as_fd());
            loop {
                match sys::reap_one() {
                    Ok(Some((pid, status))) => {
                        if !send(Msg::Exited { pid, status }, None) {
                            return ExitCode::from(EXIT_FATAL);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log_line(format_args!("weir zygote: waitpid failed: {e}"));
                        break;
                    }
                }
            }
        }
        if !ctl_ready {
            continue;
        }
        let (n, fd) = match weir_fdpass::recv_with_fd(ctl.as_fd(), &mut buf, Mode::Blocking) {
            Ok(x) => x,
            Err(e) => {
                log_line(format_args!(
                    "weir zygote: cannot read from the master: {e}; exiting"
                ));
                return ExitCode::from(EXIT_FATAL);
            }
        };
        if n == 0 {
            // The master let this generation go (or died): the workers stay, we leave.
            return ExitCode::SUCCESS;
        }
        let slot = match Msg::decode(&buf[..n]) {
            Ok(Msg::Fork { slot }) => slot,
            Ok(other) => {
                log_line(format_args!(
                    "weir zygote: unexpected message {other:?} from the master; exiting"
                ));
                return ExitCode::from(EXIT_FATAL);
            }
            Err(e) => {
                log_line(format_args!("weir zygote: {e}; exiting"));
                return ExitCode::from(EXIT_FATAL);
            }
        };
        let Some(sock) = fd else {
            log_line(format_args!(
                "weir zygote: FORK for worker {slot} came without its socket"
            ));
            if !send(
                Msg::Failed {
                    slot,
                    errno: libc::EBADF,
                },
                None,
            ) {
                return ExitCode::from(EXIT_FATAL);
            }
            continue;
        };
        let t_fork = Instant::now();
        match sys::fork_python(py) {
            Ok(Fork::Child) => {
                drop(ctl);
                drop(sigfd);
                sys::restore_sigmask(&mask);
                let how = format!(
                    "forked from zygote {zpid} in {} us",
                    t_fork.elapsed().as_micros()
                );
                return crate::serve_loaded(py, slot, loaded, UnixStream::from(sock), &how);
            }
            Ok(Fork::Parent(pid)) => {
                drop(sock);
                let ok = match sys::pidfd_open(pid) {
                    Ok(pidfd) => send(Msg::Forked { slot, pid }, Some(&pidfd)),
                    Err(e) => {
                        // The master refuses a worker it cannot watch; it closes the
                        // worker's socket, so the worker exits and is reaped here.
                        log_line(format_args!("weir zygote: pidfd_open({pid}) failed: {e}"));
                        send(Msg::Forked { slot, pid }, None)
                    }
                };
                if !ok {
                    return ExitCode::from(EXIT_FATAL);
                }
            }
            Err(e) => {
                log_line(format_args!(
                    "weir zygote: fork for worker {slot} failed: {e}"
                ));
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                if !send(Msg::Failed { slot, errno }, None) {
                    return ExitCode::from(EXIT_FATAL);
                }
            }
        }
    }
}

/// `gc.collect()` then `gc.freeze()`: the imported objects move to the permanent
/// generation, so collections in the workers do not touch (and un-share) their pages.
fn freeze(py: Python<'_>) -> PyResult<()> {
    let gc = py.import("gc")?;
    gc.call_method0("collect")?;
    gc.call_method0("freeze")?;
    Ok(())
}

/// The descriptors forking would share in a harmful way: sockets (a connection, a
/// listener) and regular files open for writing but not append-only (an SQLite database,
/// a file written at an offset: the workers would share one offset and one lock). Logs
/// opened for appending and files opened read-only are fine to share. (fd, target) from
/// /proc/self/fd, fds 0-2 left out.
fn open_shared_fds() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            if fd <= 2 {
                return None;
            }
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_str()?;
            let keep = target.starts_with("socket:")
                || (target.starts_with('/')
                    && !target.starts_with("/dev/")
                    && written_at_an_offset(fd));
            keep.then(|| (fd, target.to_owned()))
        })
        .collect();
    out.sort();
    out
}

/// Whether `fd` is open for writing without O_APPEND (its `flags:` in /proc/self/fdinfo,
/// octal) and is a regular file.
fn written_at_an_offset(fd: i32) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return false;
    };
    let Some(flags) = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
    else {
        return false;
    };
    let writable = matches!(flags & 0o3, 0o1 | 0o2); // O_WRONLY, O_RDWR
    let append = flags & 0o2000 != 0; // O_APPEND
    writable
        && !append
        && std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.is_file())
}

/// What the import left that forking would share (sockets, files written at an offset)
/// or lose (threads), as a
/// phrase for "the app left ... after its import"; None when there is nothing.
fn fork_safety(py: Python<'_>, before: &[(i32, String)]) -> Option<String> {
    let mut parts = Vec::new();
    let shared: Vec<String> = open_shared_fds()
        .into_iter()
        .filter(|s| !before.contains(s))
        .map(|(fd, target)| match target.strip_prefix("socket:") {
            Some(_) => describe_socket(fd),
            None => format!("the file {target} open for writing (fd {fd})"),
        })
        .collect();
    if !shared.is_empty() {
        parts.push(format!("{} open", shared.join(", ")));
    }
    match other_threads(py) {
        Ok(names) if names.len() == 1 => parts.push(format!("the thread {} running", names[0])),
        Ok(names) if !names.is_empty() => {
            parts.push(format!("the threads {} running", names.join(", ")))
        }
        Ok(_) => {}
        Err(e) => log_line(format_args!("weir zygote: cannot list threads: {e}")),
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// One open socket for a log line, e.g. `a socket connected to 127.0.0.1:3306 (fd 7)`.
fn describe_socket(fd: i32) -> String {
    use sys::SockAddr;
    let local = sys::socket_addr(fd, false);
    let what = if sys::socket_listens(fd) {
        match local {
            Some(SockAddr::Inet(a)) => format!("a socket listening on {a}"),
            Some(SockAddr::UnixPath(p)) => format!("a Unix socket listening on {p}"),
            _ => "a listening socket".to_owned(),
        }
    } else {
        match (sys::socket_addr(fd, true), local) {
            (Some(SockAddr::Inet(peer)), _) => format!("a socket connected to {peer}"),
            (Some(SockAddr::UnixPath(p)), _) => format!("a Unix socket connected to {p}"),
            (_, Some(SockAddr::Inet(a))) if a.port() != 0 => format!("a socket bound to {a}"),
            (_, Some(SockAddr::Inet(_))) => "an unconnected socket".to_owned(),
            (_, Some(SockAddr::UnixPath(p))) => format!("a Unix socket bound to {p}"),
            (_, Some(SockAddr::UnixUnnamed)) => "a Unix socket".to_owned(),
            (_, Some(SockAddr::Other(f))) => format!("a socket of address family {f}"),
            (_, None) => "a socket".to_owned(),
        }
    };
    format!("{what} (fd {fd})")
}

/// The names of the Python threads other than this one (threads do not survive fork).
fn other_threads(py: Python<'_>) -> PyResult<Vec<String>> {
    let threading = py.import("threading")?;
    let me = threading.call_method0("current_thread")?;
    threading
        .call_method0("enumerate")?
        .try_iter()?
        .filter(|th| th.as_ref().map_or(true, |th| !th.is(&me)))
        .map(|th| th?.getattr("name")?.extract::<String>())
        .collect()
}

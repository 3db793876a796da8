//! Every `unsafe` call of the worker, each wrapped in a small safe function: process setup
//! (parent-death signal, the master's signals ignored, fd 0, trimming the C heap after the
//! import), the interpreter's program name (before it starts), the non-blocking socket
//! calls of the hot path (`recv`/`sendmsg` with `MSG_DONTWAIT`, so the GIL is released only
//! when I/O would block), and the zygote's process calls (forking the interpreter, pidfds,
//! a SIGCHLD signalfd, `poll`, `waitpid`).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use pyo3::Python;

/// Asks the kernel to SIGKILL this process when its parent exits.
///
/// Linux ties this to the parent *thread*: the master must spawn workers from a thread that
/// lives as long as it does.
pub fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) reads integer arguments only and touches no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The master's signals: SIGINT and SIGQUIT (drain; Ctrl-C and `Ctrl-\` reach the whole
/// process group), SIGHUP (reload), SIGUSR1 (reopen the access log) and SIGUSR2 (binary
/// upgrade).
pub const MASTER_SIGNALS: [(libc::c_int, &str); 5] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
];

/// Ignores `sig`, one of [`MASTER_SIGNALS`]. They are commands to the master, and
/// `pkill -HUP weir`, `killall -USR1 weir` or `systemctl kill` (every process of the unit,
/// by default) deliver them to every worker too, where Python's default for each but
/// SIGINT is to die with the request in hand (SIGQUIT with a core dump). NGINX's workers
/// likewise ignore SIGHUP and SIGUSR2. An app's own handler
/// (`faulthandler.register(signal.SIGUSR1)`) replaces the ignore; a program the app starts
/// inherits it, as under `nohup`.
pub fn ignore_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: installing SIG_IGN registers no handler code, so no async-signal-safety rule
    // can be broken; the previous disposition is a plain value we only compare.
    let prev = unsafe { libc::signal(sig, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `target` (a raw descriptor number such as 0) a duplicate of `src`.
///
/// The caller guarantees no Rust object owns `target` (fd 0 is only used by `std::io::stdin`,
/// which we never read after this).
pub fn dup2(src: BorrowedFd<'_>, target: i32) -> io::Result<()> {
    // SAFETY: dup2 only changes the descriptor table; `src` is a live descriptor for the whole
    // call and `target` is not owned by any Rust value (see above).
    let rc = unsafe { libc::dup2(src.as_raw_fd(), target) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the free pages inside the C heap back to the kernel (glibc's `malloc_trim(0)`).
///
/// Importing an app frees many temporary blocks (source and bytecode buffers, parser state)
/// between blocks that stay live; glibc by itself only returns free memory at the top of
/// the heap, so those pages would stay resident, and private, in every worker for its whole
/// life. For examples/shop: about 0.5 MiB per worker, 0.2 ms once at startup.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes a plain integer and only releases pages of free chunks that
    // malloc owns; it takes each arena's lock, so it is safe next to other threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

/// The embedded interpreter's `major.minor` version ("3.11"), readable before it starts.
pub fn python_version() -> String {
    // SAFETY: Py_GetVersion returns a pointer to a static NUL-terminated string; the C API
    // lists it among the functions that may be called before Py_Initialize.
    let full = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
    let full = full.to_string_lossy();
    let mut parts = full.split(|c: char| !c.is_ascii_digit());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => String::new(),
    }
}

/// Sets the program name the interpreter will compute its paths from (as `python3` does
/// with its own path): a virtualenv's `bin/python3` makes `sys.prefix` the virtualenv,
/// `sys.executable` its python and the standard library its base interpreter's (from
/// `pyvenv.cfg`). Must be called before `Python::initialize`; a path that is not UTF-8 is
/// left alone (false).
pub fn set_program_name(path: &std::path::Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    // wchar_t is UTF-32 on Linux; the C API wants the string to live as long as the
    // process, hence leaked (once per process).
    let wide: Vec<libc::wchar_t> = text
        .chars()
        .map(|c| c as libc::wchar_t)
        .chain(std::iter::once(0))
        .collect();
    let wide: &'static [libc::wchar_t] = Box::leak(wide.into_boxed_slice());
    // SAFETY: called before the interpreter starts (the caller's contract); the argument is
    // a NUL-terminated wide string that is never freed or changed. Deprecated since 3.11
    // (PyConfig.program_name) but kept through 3.14, and pyo3 starts the interpreter with
    // Py_InitializeEx, which reads it.
    #[allow(deprecated)]
    unsafe {
        pyo3::ffi::Py_SetProgramName(wide.as_ptr());
    }
    true
}

/// `recv(fd, buf, MSG_DONTWAIT)`: `WouldBlock` instead of blocking. `Ok(0)` is EOF.
pub fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the whole call and
    // recv writes at most that many bytes into it.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `sendmsg(fd, bufs, MSG_DONTWAIT | MSG_NOSIGNAL)`: one gathering write that never blocks
/// and never raises SIGPIPE. Returns the bytes written (possibly fewer than offered).
pub fn send_nowait(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: IoSlice is guaranteed ABI-compatible with `struct iovec` on Unix; the slices
    // are borrowed for the whole call and sendmsg only reads through them.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

// ---------------------------------------------------------------------------------------
// The zygote

/// Where `fork_python` returns.
pub enum Fork {
    /// In the new process.
    Child,
    /// In the zygote: the child's pid.
    Parent(libc::pid_t),
}

/// Forks the interpreter the way `os.fork()` does: `PyOS_BeforeFork`, fork(2), then
/// `PyOS_AfterFork_Child` in the child and `PyOS_AfterFork_Parent` in the parent, so the
/// hooks of `os.register_at_fork` run and the interpreter's locks are reset in the child.
///
/// The caller holds the GIL (`_py`) and the process has a single thread (the zygote's
/// rule): threads do not survive fork, and a lock one of them held would stay locked in
/// the child.
pub fn fork_python(_py: Python<'_>) -> io::Result<Fork> {
    // SAFETY: called with the GIL held (the token proves it), as CPython requires.
    unsafe { pyo3::ffi::PyOS_BeforeFork() };
    // SAFETY: the process is single-threaded (see above), so the child gets a consistent
    // copy of every lock and of the heap; both sides continue as normal Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, on the thread that called PyOS_BeforeFork, GIL held.
        unsafe { pyo3::ffi::PyOS_AfterFork_Child() };
        return Ok(Fork::Child);
    }
    let err = (pid < 0).then(io::Error::last_os_error);
    // SAFETY: in the parent (or after a failed fork), GIL held, after PyOS_BeforeFork.
    unsafe { pyo3::ffi::PyOS_AfterFork_Parent() };
    match err {
        Some(e) => Err(e),
        None => Ok(Fork::Parent(pid)),
    }
}

/// `pidfd_open(pid, 0)`: a descriptor that refers to this very process (close-on-exec).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A saved signal mask.
#[derive(Clone, Copy)]
pub struct SigMask(libc::sigset_t);

/// Blocks SIGCHLD and returns a signalfd that reads it (non-blocking, close-on-exec) and
/// the mask to restore (in a forked worker).
pub fn sigchld_fd() -> io::Result<(OwnedFd, SigMask)> {
    // SAFETY: sigset_t is plain data (an all-zero value is valid); sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; sigprocmask overwrites it with the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid, writable sigset_t values for the calls; the process
    // has one thread, so sigprocmask is its mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: set is initialised; signalfd(-1, ...) returns a new descriptor or -1.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, SigMask(old)))
}

/// Restores a signal mask saved by [`sigchld_fd`].
pub fn restore_sigmask(mask: &SigMask) {
    // SAFETY: mask holds a sigset_t returned by sigprocmask; a null old-set is allowed.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut());
    }
}

/// Reads whatever the (non-blocking) signalfd holds; the signals only say "look".
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut info = [0u8; 128 * 4];
    loop {
        // SAFETY: info is a writable buffer of info.len() bytes (a multiple of
        // sizeof(signalfd_siginfo) = 128); read writes at most that many.
        let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// Waits until one of `fds` is readable (or hung up); returns which ones are.
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[bool; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: p is an array of N valid pollfd structs that poll may write revents into.
        let rc = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, -1) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.map(|x| x.revents != 0))
}

/// `waitpid(-1, WNOHANG)`: `Some((pid, raw status))` for one exited child, `None` when none
/// has exited (or there is none).
pub fn reap_one() -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid, writable int for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Ok(Some((pid, status)));
        }
        if pid == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ECHILD) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The zygote's fork-safety check: what a socket the import left open is

/// What `getsockname`/`getpeername` said about a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// AF_INET / AF_INET6.
    Inet(std::net::SocketAddr),
    /// AF_UNIX with a path (`@name` for an abstract one).
    UnixPath(String),
    /// AF_UNIX without a name (unnamed, or a socketpair end).
    UnixUnnamed,
    /// Another family (netlink, ...).
    Other(libc::c_int),
}

/// The address of socket `fd` (`peer`: its peer's), or None when it has none (not
/// connected) or `fd` is not a socket.
///
/// `fd` is a raw number from /proc/self/fd that this code does not own: the calls only
/// read the descriptor table, and a closed or reused number just gives an error.
pub fn socket_addr(fd: libc::c_int, peer: bool) -> Option<SockAddr> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: p points at a writable sockaddr_storage of `len` bytes; the kernel writes at
    // most `len` bytes and stores the real length in `len`.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
            let a: libc::sockaddr_in = unsafe { std::ptr::read(p.cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SockAddr::Inet((ip, u16::from_be(a.sin_port)).into()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which fits in it.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read(p.cast()) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SockAddr::Inet((ip, u16::from_be(a.sin6_port)).into()))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un, which fits in it.
            let a: libc::sockaddr_un = unsafe { std::ptr::read(p.cast()) };
            let off = std::mem::size_of::<libc::sa_family_t>();
            let n = len.saturating_sub(off).min(a.sun_path.len());
            let raw: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
            match raw.first() {
                None => Some(SockAddr::UnixUnnamed),
                Some(0) if raw.len() == 1 => Some(SockAddr::UnixUnnamed),
                Some(0) => Some(SockAddr::UnixPath(format!(
                    "@{}",
                    String::from_utf8_lossy(&raw[1..])
                ))),
                Some(_) => {
                    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                    if end == 0 {
                        return Some(SockAddr::UnixUnnamed);
                    }
                    Some(SockAddr::UnixPath(
                        String::from_utf8_lossy(&raw[..end]).into_owned(),
                    ))
                }
            }
        }
        f => Some(SockAddr::Other(f)),
    }
}

/// Whether socket `fd` is listening (`SO_ACCEPTCONN`). `fd` as in [`socket_addr`].
pub fn socket_listens(fd: libc::c_int) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v is a writable int and len says so; getsockopt writes at most len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && v != 0
}

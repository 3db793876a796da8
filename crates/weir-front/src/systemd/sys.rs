//! The `unsafe` calls of socket activation and notification, each in a small safe
//! function: taking ownership of an inherited descriptor, reading CLOCK_MONOTONIC, and,
//! for a binary upgrade, the forked child's side of passing sockets to a new program
//! ([`exec`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of descriptor `fd`, inherited from the service manager. Checks first
/// that it is open (`fcntl(F_GETFD)`).
///
/// Called once per inherited descriptor (3 .. 3 + LISTEN_FDS), before any thread starts and
/// before weir opens anything else that could have reused the number: nothing else in
/// weir refers to these numbers, so the `OwnedFd` is their only owner.
pub(super) fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; on a closed number it
    // fails with EBADF and touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and, as the doc says, owned by nobody else in
    // this process: the service manager passed it for weir to own, and it is taken once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// CLOCK_MONOTONIC in microseconds (`MONOTONIC_USEC=` of a reload notification).
pub(super) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, writable `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// SIGTERM to `pid`. The caller's contract: `pid` is its own child, not reaped yet (so the
/// number cannot have been reused by another process).
pub(super) fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) touches no memory; the pid is a live or zombie child (contract above).
    if unsafe { libc::kill(pid, libc::SIGTERM) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything the forked child needs to start a program with listening sockets passed the
/// way systemd passes them, all allocated before the fork: in the child, [`exec`] only
/// copies descriptors, writes the pid's digits and calls `execve` (async-signal-safe, no
/// allocation, no lock), since the parent has other threads whose locks the fork copied.
pub(super) struct Exec {
    path: CString,
    // The strings `argv` and `envp` point into; kept alive (and never touched) here.
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` followed by room for the digits and the NUL; `envp` points at it and
    /// the child writes its own pid there (systemd sets LISTEN_PID after its fork too).
    pid_var: Vec<u8>,
    /// The descriptors that become 3, 4, ... in the child, in order.
    fds: Vec<RawFd>,
    /// Scratch for their copies above the targets (same length as `fds`).
    tmp: Vec<RawFd>,
}

// SAFETY: the raw pointers in `argv` and `envp` point into the CStrings and the `pid_var`
// buffer owned by the same value, whose heap storage does not move with it; they are read
// only by `exec`, in the forked child, where there is one thread.
unsafe impl Send for Exec {}
// SAFETY: as for Send: nothing reads or writes through the pointers but `exec`, which takes
// `&mut self`.
unsafe impl Sync for Exec {}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";

impl Exec {
    /// Prepares `path` with `args` (argv[0] first) and `env` (`KEY=VALUE`, without
    /// LISTEN_PID), and `fds` to become descriptors 3, 4, ...; the last one also receives
    /// a line `EXEC-FAILED <errno>` if `execve` fails.
    pub(super) fn new(
        path: CString,
        args: Vec<CString>,
        env: Vec<CString>,
        fds: Vec<RawFd>,
    ) -> Exec {
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut pid_var = LISTEN_PID.to_vec();
        pid_var.resize(LISTEN_PID.len() + 24, 0);
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(pid_var.as_ptr().cast());
        envp.push(std::ptr::null());
        let tmp = vec![-1; fds.len()];
        Exec {
            path,
            _args: args,
            _env: env,
            argv,
            envp,
            pid_var,
            fds,
            tmp,
        }
    }
}

/// A command that, once spawned, runs [`exec`] in the forked child instead of std's own
/// exec (std's `program` and args are the same, for its Debug output only).
pub(super) fn command(mut e: Exec) -> std::process::Command {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::ffi::OsStr::from_bytes(e.path.as_bytes()));
    // SAFETY: the hook runs in the forked child before exec, and `exec` does only
    // async-signal-safe things there (fcntl, dup2, getpid, execve, write) on memory
    // allocated before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || Err(exec(&mut e)));
    }
    cmd
}

/// In the forked child (a `pre_exec` hook): moves the descriptors to 3, 4, ... (without
/// close-on-exec), sets LISTEN_PID to this process's pid and execs. Returns only when
/// `execve` failed, after writing `EXEC-FAILED <errno>` to the report descriptor.
pub(super) fn exec(e: &mut Exec) -> io::Error {
    let n = e.fds.len() as RawFd;
    // First a copy of each above every target (close-on-exec: these copies end at the exec),
    // so that a source that sits on another's target is not closed by the dup2 below.
    for (i, &fd) in e.fds.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) makes a new descriptor and touches no memory.
        let t = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, super::LISTEN_FDS_START + n) };
        if t < 0 {
            return io::Error::last_os_error();
        }
        e.tmp[i] = t;
    }
    for (i, &t) in e.tmp.iter().enumerate() {
        // SAFETY: dup2 replaces descriptor 3 + i in this (forked, single-threaded) child,
        // which is about to exec; the copy it makes has close-on-exec cleared.
        if unsafe { libc::dup2(t, super::LISTEN_FDS_START + i as RawFd) } < 0 {
            return io::Error::last_os_error();
        }
    }
    let report = super::LISTEN_FDS_START + n - 1;
    write_digits(&mut e.pid_var[LISTEN_PID.len()..], std::process::id());
    // SAFETY: `path`, `argv` and `envp` are NUL-terminated strings and NULL-terminated arrays
    // of them, built before the fork and alive in this process (see `Exec`).
    unsafe { libc::execve(e.path.as_ptr(), e.argv.as_ptr(), e.envp.as_ptr()) };
    let err = io::Error::last_os_error();
    let mut line = *b"EXEC-FAILED 0000000000\n";
    let len = 12 + write_digits(&mut line[12..22], err.raw_os_error().unwrap_or(0) as u32);
    line[len] = b'\n';
    // SAFETY: write(2) reads `len + 1` bytes of the stack buffer `line`.
    // A failed report is not reported: the parent then sees the child exit with status 1.
    let _ = unsafe { libc::write(report, line.as_ptr().cast(), len + 1) };
    err
}

/// Writes `v` in decimal at the start of `buf`, followed by a NUL when there is room;
/// returns the number of digits. No allocation (runs in a forked child).
fn write_digits(buf: &mut [u8], mut v: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    if n < buf.len() {
        buf[n] = 0;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::write_digits;

    #[test]
    fn digits() {
        let mut b = [b'x'; 12];
        assert_eq!(write_digits(&mut b, 0), 1);
        assert_eq!(&b[..2], b"0\0");
        assert_eq!(write_digits(&mut b, 4_294_967_295), 10);
        assert_eq!(&b[..11], b"4294967295\0");
    }
}

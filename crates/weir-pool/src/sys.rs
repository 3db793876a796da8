//! The master's only `unsafe` calls, each wrapped in a small safe function, both for
//! `[app] preload`: `pidfd_send_signal` to kill a forked worker race-free, and registering
//! the zygote's control socket with tokio's reactor. (The control socket's messages, with
//! descriptors passed by `SCM_RIGHTS`, are `weir_fdpass`, shared with the zygote's side.)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `pidfd_send_signal(pidfd, SIGKILL)`: kills exactly the process the pidfd refers to,
/// even if its pid has been reused. An exited process is not an error.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo
    // (allowed: the kernel fills one in) and flags 0; it touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Types that own their descriptor for their whole life (so `as_raw_fd` never changes and
/// the descriptor stays open while they live): what tokio's `AsyncFd::register` requires.
pub(crate) trait OwnsFd: AsRawFd {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for std::os::unix::net::UnixStream {}

/// Registers `inner` with tokio's reactor.
pub(crate) fn async_fd<T: OwnsFd>(
    inner: T,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: OwnsFd` owns an open descriptor, returns the same one from every
    // as_raw_fd call and closes it only when dropped, which the AsyncFd does last.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }.map_err(Into::into)
}

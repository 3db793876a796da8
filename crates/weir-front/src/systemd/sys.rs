//! The `unsafe` calls of socket activation and notification, each in a small safe
//! function: taking ownership of an inherited descriptor, and reading CLOCK_MONOTONIC.

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

//! Every `unsafe` call of the worker, each wrapped in a small safe function: process setup
//! (parent-death signal, SIGINT, fd 0, trimming the C heap after the import) and the
//! non-blocking socket calls of the hot path (`recv`/`sendmsg` with `MSG_DONTWAIT`, so the
//! GIL is released only when I/O would block).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

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

/// Ignores SIGINT (the master handles Ctrl-C for the whole process group and drains).
pub fn ignore_sigint() -> io::Result<()> {
    // SAFETY: installing SIG_IGN registers no handler code, so no async-signal-safety rule
    // can be broken; the previous disposition is a plain value we only compare.
    let prev = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
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

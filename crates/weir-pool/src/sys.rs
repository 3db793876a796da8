//! The master's only `unsafe` calls, each wrapped in a small safe function, all for
//! `[app] preload`: the zygote's `SOCK_SEQPACKET` control socketpair, one message with a
//! descriptor (`SCM_RIGHTS`) each way, and `pidfd_send_signal` to kill a forked worker
//! race-free. Everything non-blocking: the callers wait for readiness with tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A `SOCK_SEQPACKET` Unix socketpair, both ends close-on-exec and blocking.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a writable array of two ints, which socketpair fills on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created both descriptors for us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for one `SCM_RIGHTS` control message carrying one descriptor.
// SAFETY: CMSG_SPACE is plain arithmetic on its argument (unsafe only by libc's declaration).
const CMSG_ONE_FD: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;

/// A control-message buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_ONE_FD]);

/// Sends one message (with `fd` attached when given) without blocking: `WouldBlock` when
/// the socket is full. Never raises SIGPIPE.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = CmsgBuf([0; CMSG_ONE_FD]);
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ONE_FD as _;
        // SAFETY: msg_control points at CMSG_ONE_FD aligned, writable bytes alive for this
        // block, so CMSG_FIRSTHDR returns a header inside them with room for one int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at iov (over `bytes`, borrowed for the call) and cbuf (alive for
    // the call); sendmsg only reads through them.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message without blocking (`WouldBlock` when there is none) and the
/// descriptor passed with it, if any (close-on-exec). `Ok((0, None))` is EOF.
pub(crate) fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; CMSG_ONE_FD]);
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ONE_FD as _;
    // SAFETY: iov points at `buf` (writable, buf.len() bytes) and msg_control at cbuf
    // (writable, msg_controllen bytes); recvmsg writes within those bounds.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: msg was filled by recvmsg: CMSG_FIRSTHDR/NXTHDR walk only the msg_controllen
    // bytes it reported inside cbuf; SCM_RIGHTS data holds descriptors the kernel just
    // installed in this process, which nothing else owns (extra ones are closed on drop).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let owned = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "zygote control message truncated",
        ));
    }
    Ok((n as usize, fd))
}

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

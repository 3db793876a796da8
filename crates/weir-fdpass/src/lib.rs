//! Descriptor passing for `[app] preload`: the master and the zygote talk over a
//! `SOCK_SEQPACKET` Unix socketpair, one message at a time, and a message may carry one
//! descriptor (`SCM_RIGHTS`): the worker's end of its master socket on the way to the
//! zygote, the forked worker's pidfd on the way back.
//!
//! Both sides use the same two calls, the master non-blocking (it waits for readiness with
//! tokio's `AsyncFd`), the zygote blocking ([`Mode`]). Written by hand over `libc` because
//! the `cmsg` handling is twenty lines and the crates that wrap it (nix, rustix, sendfd)
//! would each bring more API than weir uses; every `unsafe` block of this crate says why it
//! is sound in its `// SAFETY:` line.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Whether a call may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait until the message can be sent or has arrived (retried on `EINTR`).
    Blocking,
    /// `MSG_DONTWAIT`: `WouldBlock` instead of waiting.
    NonBlocking,
}

impl Mode {
    fn flag(self) -> libc::c_int {
        match self {
            Mode::Blocking => 0,
            Mode::NonBlocking => libc::MSG_DONTWAIT,
        }
    }
}

/// A `SOCK_SEQPACKET` Unix socketpair, both ends close-on-exec and blocking.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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

/// Retries `call` while it fails with `EINTR`; a negative result is the errno's error.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `bytes` as one message, with `fd` attached when given. Never raises SIGPIPE.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
    mode: Mode,
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
        // SAFETY: msg_control points at CMSG_ONE_FD aligned, writable bytes that outlive
        // this block, so CMSG_FIRSTHDR returns a header inside them with room for one int
        // of data (CMSG_SPACE(4) was reserved).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    let flags = libc::MSG_NOSIGNAL | mode.flag();
    // SAFETY: msg points at iov (over `bytes`, borrowed for the call) and at cbuf (alive
    // for the call); sendmsg only reads through them.
    retry(|| unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) }).map(drop)
}

/// Receives one message into `buf` and the descriptor passed with it, if any
/// (close-on-exec; extra descriptors are closed). `Ok((0, None))` is EOF. A message or
/// control data that did not fit is an `InvalidData` error.
pub fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    mode: Mode,
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
    let flags = libc::MSG_CMSG_CLOEXEC | mode.flag();
    // SAFETY: iov points at `buf` (writable, buf.len() bytes) and msg_control at cbuf
    // (writable, msg_controllen bytes); recvmsg writes within those bounds.
    let n = retry(|| unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) })?;
    let mut fd = None;
    // SAFETY: msg was filled by recvmsg: CMSG_FIRSTHDR/NXTHDR walk only the
    // msg_controllen bytes it reported inside cbuf; an SCM_RIGHTS message's data holds
    // descriptors the kernel just installed in this process, which nothing else owns.
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
            "control message truncated (longer than the receive buffer)",
        ));
    }
    Ok((n, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_message_carries_a_working_descriptor() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        send_with_fd(a.as_fd(), b"FORK 3", Some(theirs.as_fd()), Mode::Blocking).unwrap();
        drop(theirs);
        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf, Mode::Blocking).unwrap();
        assert_eq!(&buf[..n], b"FORK 3");
        let mut passed = UnixStream::from(fd.expect("a descriptor came along"));
        passed.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn plain_messages_eof_and_would_block() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = [0u8; 16];
        let e = recv_with_fd(b.as_fd(), &mut buf, Mode::NonBlocking).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        send_with_fd(a.as_fd(), b"READY", None, Mode::NonBlocking).unwrap();
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf, Mode::NonBlocking).unwrap();
        assert_eq!((&buf[..n], fd.is_none()), (&b"READY"[..], true));
        drop(a);
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf, Mode::Blocking).unwrap();
        assert_eq!((n, fd.is_none()), (0, true));
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_an_error_not_a_short_read() {
        let (a, b) = seqpacket_pair().unwrap();
        send_with_fd(a.as_fd(), &[7u8; 32], None, Mode::Blocking).unwrap();
        let mut small = [0u8; 8];
        let e = recv_with_fd(b.as_fd(), &mut small, Mode::Blocking).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}

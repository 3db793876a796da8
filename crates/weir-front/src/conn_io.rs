//! A client connection shared between hyper (which reads and writes it) and the request
//! handler (which watches whether the client has gone while its request waits for a
//! worker). hyper does not read a connection while its request is in flight, so it cannot
//! notice a client that gave up; the handler watches for the peer's close (EPOLLRDHUP,
//! tokio's `Ready::is_read_closed`) instead, as NGINX does with `proxy_ignore_client_abort
//! off`. A request whose client has gone is dropped before it reaches a worker.
//!
//! Written here because tokio's streams give `&self` readiness and `try_read`/`try_write`
//! but no shareable `AsyncRead`/`AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The `&self` operations of a tokio stream that this module needs.
pub trait Socket: Send + Sync + 'static {
    /// `poll_read_ready`.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// `poll_write_ready`.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// `try_read_buf` into `buf`'s unfilled part, which it fills by the count returned,
    /// except that a read shorter than that part also clears the read readiness (as
    /// tokio's own `poll_read` does: with edge-triggered epoll a short read means the
    /// socket was drained, and new bytes bring a new edge). Without that, the next read
    /// after every request is a `recvfrom` that fails with EAGAIN. The unfilled part is
    /// read into as it is, not zeroed first, as tokio's own streams do: hyper hands over
    /// its whole spare read buffer (8 KiB and up), uninitialized, for every read. Zeroing
    /// it was one 8 KiB `rep stosb` a request: a third of the master's instructions by
    /// callgrind's count (which counts each byte), about 0.1 us and 8 KiB of L1 cache in
    /// time (bench/RESULTS.md).
    fn try_read(&self, buf: &mut ReadBuf<'_>) -> io::Result<usize>;
    /// `try_write`.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// `try_write_vectored`.
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
    /// shutdown(2) of the write side.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Resolves when the peer has closed its side.
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// How often a connection with unread bytes is checked for the peer's close.
const UNREAD_CLOSE_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

macro_rules! socket_impl {
    ($t:ty) => {
        impl Socket for $t {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }
            fn try_read(&self, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
                let len = buf.remaining();
                let mut got = 0;
                let r = self.try_io(Interest::READABLE, || {
                    got = <$t>::try_read_buf(self, buf)?;
                    if got > 0 && got < len {
                        // Drained: tell tokio so (try_io clears readiness on WouldBlock).
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(got)
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    r => r,
                }
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }
            fn shutdown_write(&self) -> io::Result<()> {
                socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
            }
            async fn closed(&self) {
                loop {
                    let ready = match self.ready(Interest::READABLE).await {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                    if ready.is_read_closed() {
                        return;
                    }
                    // Readable: the peer closed (EOF), bytes wait (a pipelined request),
                    // or the readiness is stale (the last read did not drain the
                    // socket). A peek tells which; WouldBlock clears the stale readiness.
                    let peeked = self.try_io(Interest::READABLE, || {
                        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                        socket2::SockRef::from(self).peek(&mut b)
                    });
                    match peeked {
                        Ok(0) => return,
                        // Bytes wait: a pipelined request, or on TLS a record that may be
                        // the close_notify alert before the FIN (TLS 1.3 encrypts alerts,
                        // so they cannot be told from data here). The readiness stays set
                        // while they wait, so the FIN (EPOLLRDHUP) is looked for on a
                        // timer rather than by readiness.
                        Ok(_) => loop {
                            tokio::time::sleep(UNREAD_CLOSE_CHECK).await;
                            match self.ready(Interest::READABLE).await {
                                Ok(r) if r.is_read_closed() => return,
                                Ok(_) => {}
                                Err(_) => return,
                            }
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return,
                    }
                }
            }
        }
    };
}

socket_impl!(TcpStream);
socket_impl!(UnixStream);

/// The connection as hyper uses it.
#[derive(Debug)]
pub struct SharedIo<S> {
    inner: Arc<S>,
}

impl<S> SharedIo<S> {
    /// Wraps a stream; `handle()` gives the watcher its share.
    pub fn new(s: S) -> Self {
        SharedIo { inner: Arc::new(s) }
    }

    /// A handle for watching the connection.
    pub fn handle(&self) -> Arc<S> {
        self.inner.clone()
    }
}

impl<S: Socket> AsyncRead for SharedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.inner.poll_read_ready(cx))?;
            match self.inner.try_read(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: Socket> AsyncWrite for SharedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.shutdown_write())
    }
}

/// Watches one client connection.
#[derive(Clone)]
pub enum ClientWatch {
    /// A TCP client.
    Tcp(Arc<TcpStream>),
    /// A Unix-socket client.
    Unix(Arc<UnixStream>),
    /// Nothing to watch.
    None,
}

impl std::fmt::Debug for ClientWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientWatch::Tcp(_) => "ClientWatch::Tcp",
            ClientWatch::Unix(_) => "ClientWatch::Unix",
            ClientWatch::None => "ClientWatch::None",
        })
    }
}

impl ClientWatch {
    /// Resolves when the client has closed its side of the connection.
    pub async fn gone(&self) {
        match self {
            ClientWatch::Tcp(s) => s.closed().await,
            ClientWatch::Unix(s) => s.closed().await,
            ClientWatch::None => std::future::pending().await,
        }
    }
}

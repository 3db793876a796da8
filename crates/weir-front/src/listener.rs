//! Listeners: TCP and Unix sockets bound with an explicit listen(2) backlog (socket2:
//! std and tokio do not take one), and a warning when the kernel will cut it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tracing::warn;
use weir_config::ListenAddr;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix; the path is removed by [`Listener::cleanup`] when the flag says weir bound
    /// it (an inherited socket's file belongs to systemd).
    Unix(UnixListener, PathBuf, bool),
}

/// Why a listener could not be bound.
#[derive(Debug, Error)]
#[error("cannot listen on {addr}: {source}{hint}")]
pub struct BindError {
    addr: String,
    source: std::io::Error,
    hint: &'static str,
}

impl Listener {
    /// Binds `addr` with `backlog`.
    pub fn bind(addr: &ListenAddr, backlog: u32) -> Result<Listener, BindError> {
        let err = |source: std::io::Error| {
            let hint = match source.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (another process has it: stop it or pick another address)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (no permission: use a port above 1023 or another path)"
                }
                _ => "",
            };
            BindError {
                addr: addr.to_string(),
                source,
                hint,
            }
        };
        warn_if_somaxconn_cuts(backlog);
        let backlog = backlog.min(i32::MAX as u32) as i32;
        match addr {
            ListenAddr::Tcp(a) => {
                let sa: SocketAddr =
                    a.to_socket_addrs().map_err(err)?.next().ok_or_else(|| {
                        err(std::io::Error::other("the name resolves to no address"))
                    })?;
                let s = Socket::new(Domain::for_address(sa), Type::STREAM, None).map_err(err)?;
                s.set_reuse_address(true).map_err(err)?;
                s.bind(&sa.into()).map_err(err)?;
                s.listen(backlog).map_err(err)?;
                s.set_nonblocking(true).map_err(err)?;
                let l = TcpListener::from_std(s.into()).map_err(err)?;
                Ok(Listener::Tcp(l))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(err)?;
                let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
                s.bind(&SockAddr::unix(path).map_err(err)?).map_err(err)?;
                s.listen(backlog).map_err(err)?;
                s.set_nonblocking(true).map_err(err)?;
                let l = UnixListener::from_std(s.into()).map_err(err)?;
                Ok(Listener::Unix(l, path.clone(), true))
            }
        }
    }

    /// A listener on a socket inherited from systemd (socket activation).
    pub fn inherited(socket: Socket) -> std::io::Result<Listener> {
        if socket.domain()? == Domain::UNIX {
            let path = socket
                .local_addr()?
                .as_pathname()
                .map_or_else(|| PathBuf::from("(unnamed)"), Path::to_path_buf);
            let l = UnixListener::from_std(std::os::unix::net::UnixListener::from(
                std::os::fd::OwnedFd::from(socket),
            ))?;
            Ok(Listener::Unix(l, path, false))
        } else {
            Ok(Listener::Tcp(TcpListener::from_std(socket.into())?))
        }
    }

    /// Whether an inherited `socket` is bound where `addr` says (so it stands for it).
    pub fn same_address(socket: &Socket, addr: &ListenAddr) -> bool {
        let Ok(local) = socket.local_addr() else {
            return false;
        };
        match addr {
            ListenAddr::Tcp(a) => match (local.as_socket(), a.to_socket_addrs()) {
                (Some(l), Ok(mut it)) => it.any(|x| x == l),
                _ => false,
            },
            ListenAddr::Unix(path) => local.as_pathname() == Some(path.as_path()),
        }
    }

    /// The bound address, for logs (a TCP port 0 shows the real port).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }

    /// Removes a Unix socket's file.
    pub fn cleanup(&self) {
        if let Listener::Unix(_, p, true) = self {
            // Already gone is fine.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A socket file left by a process that is gone can be removed; one that still accepts
/// connections belongs to a running server and must not be stolen.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a running server answers on this socket",
        ));
    }
    std::fs::remove_file(path)
}

fn warn_if_somaxconn_cuts(backlog: u32) {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") {
        if let Ok(max) = s.trim().parse::<u32>() {
            if backlog > max {
                warn!(
                    backlog,
                    somaxconn = max,
                    "backlog {backlog} is above net.core.somaxconn ({max}); the kernel cuts it to {max} (raise it with sysctl -w net.core.somaxconn={backlog})"
                );
            }
        }
    }
}

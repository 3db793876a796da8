//! systemd integration: readiness notification (`Type=notify`) and socket activation.
//!
//! Notification: when `$NOTIFY_SOCKET` is set, weir sends the service manager datagrams
//! of `KEY=VALUE` lines: `READY=1` once every worker of the first generation is ready
//! (at once for an external upstream), `RELOADING=1` with `MONOTONIC_USEC=` when a SIGHUP
//! reload starts and `READY=1` when it ends (whether the new generation took over or the
//! old one keeps serving), `STOPPING=1` when the drain starts, `STATUS=` lines (workers
//! busy and idle, queue depth) with each of those and periodically, and `WATCHDOG=1`
//! every half of `$WATCHDOG_USEC` when that is set (and `$WATCHDOG_PID`, if set, is
//! weir's pid). The pings come from the master's event loop: a wedged loop stops them.
//!
//! This is a small module of its own rather than the `sd-notify` crate (0.5: small, only
//! libc, MSRV 1.82): that crate connects to `$NOTIFY_SOCKET` as a filesystem path, so an
//! abstract-namespace address (`@name`, which systemd and container managers hand out)
//! does not work, and its functions that clear the environment are `unsafe` calls we need
//! anyway before any thread starts. Writing a datagram is a few lines of std.
//!
//! Socket activation: when `$LISTEN_PID` is weir's pid, the `$LISTEN_FDS` descriptors
//! from 3 on are listening sockets to serve instead of binding. `$LISTEN_FDNAMES`
//! (`FileDescriptorName=` in the socket unit, `--fdname` for systemd-socket-activate)
//! tells their kind: a name starting with `uwsgi` is a uwsgi listener (for NGINX's
//! `uwsgi_pass`), any other name (or none) an HTTP listener. An inherited socket whose
//! address is also configured (`--listen`, `[server] listen`, `--uwsgi-listen`,
//! `[server] uwsgi_listen`) replaces that listener (no bind); the others are added; when
//! sockets are inherited and no listener is configured, the default `127.0.0.1:8000` is
//! not added. Inherited Unix sockets' files belong to systemd and are not removed on exit.
//!
//! A name starting with `admin` is the admin listener (`[admin] listen`). A binary
//! upgrade (SIGUSR2, [`crate::upgrade`]) passes the listeners to the new master the same
//! way ([`spawn_with_sockets`]): names `http`, `uwsgi` and `admin`, with `+unlink` on a
//! Unix socket whose file weir bound (so the new master removes it when it stops; the
//! suffix counts only with `WEIR_UPGRADE_FD`), and `LISTEN_PID` set in the forked child
//! (the unsafe part is in `sys`). `WEIR_UPGRADE_FD` names one more descriptor, the new
//! master's channel to the old one.
//!
//! Both read their environment variables once, in [`Systemd::from_env`], called by
//! `weir serve` before the event loop starts any thread, and remove them there, so the
//! workers (and the app) see none of them; the inherited descriptors are marked
//! close-on-exec, so no worker holds a listening socket.

// The crate denies unsafe code; this module's two calls are the exception.
#[allow(unsafe_code)]
mod sys;

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use thiserror::Error;
use tracing::debug;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The variable that names the upgrade channel's descriptor in a new master started by a
/// binary upgrade ([`crate::upgrade`]).
pub const UPGRADE_FD_VAR: &str = "WEIR_UPGRADE_FD";

/// The name suffix of a handed-over Unix socket whose file the new master removes when
/// it stops.
pub const UNLINK_SUFFIX: &str = "+unlink";

/// What systemd handed weir: where to notify, the watchdog, the inherited listeners.
#[derive(Debug, Default)]
pub struct Systemd {
    /// Notifications (a no-op without `$NOTIFY_SOCKET`).
    pub notifier: Notifier,
    /// The inherited listening sockets, in descriptor order.
    pub listeners: Vec<Inherited>,
    /// Set in a new master started by a binary upgrade: its channel to the old master
    /// (`WEIR_UPGRADE_FD`).
    pub upgrade_channel: Option<UnixStream>,
}

/// An inherited listening socket.
#[derive(Debug)]
pub struct Inherited {
    /// Its `$LISTEN_FDNAMES` name (`unknown` when none was given).
    pub name: String,
    /// The socket (close-on-exec, non-blocking).
    pub socket: Socket,
}

impl Inherited {
    /// A uwsgi listener (its name starts with `uwsgi`); HTTP otherwise.
    pub fn is_uwsgi(&self) -> bool {
        self.name.starts_with("uwsgi")
    }

    /// The admin listener (its name starts with `admin`).
    pub fn is_admin(&self) -> bool {
        self.name.starts_with("admin")
    }

    /// A TLS listener (its name starts with `https` or `tls`): TLS with the `[tls]`
    /// certificates, HTTP/1.1 or HTTP/2 by ALPN.
    pub fn is_tls(&self) -> bool {
        self.name.starts_with("https") || self.name.starts_with("tls")
    }
}

/// Why the inherited sockets cannot be used.
#[derive(Debug, Error)]
#[error("socket activation: {0}")]
pub struct ActivationError(String);

impl Systemd {
    /// Reads and removes `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_PID`,
    /// `LISTEN_FDS`, `LISTEN_FDNAMES` and `WEIR_UPGRADE_FD`. Call it before any thread is
    /// started (it changes the environment).
    pub fn from_env() -> Result<Systemd, ActivationError> {
        let var = |k: &str| std::env::var(k).ok();
        let notify_socket = var("NOTIFY_SOCKET");
        let watchdog_usec = var("WATCHDOG_USEC");
        let watchdog_pid = var("WATCHDOG_PID");
        let listen_pid = var("LISTEN_PID");
        let listen_fds = var("LISTEN_FDS");
        let listen_names = var("LISTEN_FDNAMES");
        let upgrade_fd = var(UPGRADE_FD_VAR);
        for k in [
            UPGRADE_FD_VAR,
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
        ] {
            std::env::remove_var(k);
        }
        let me = std::process::id();
        let watchdog = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0)
            .filter(|_| watchdog_pid.is_none_or(|p| p.parse::<u32>().ok() == Some(me)))
            .map(Duration::from_micros);
        let notifier = Notifier::new(notify_socket.as_deref(), watchdog);
        let listeners = match (listen_pid, listen_fds) {
            (Some(pid), Some(n)) if pid.parse::<u32>().ok() == Some(me) => {
                take_listeners(&n, listen_names.as_deref())?
            }
            _ => Vec::new(),
        };
        let upgrade_channel = match upgrade_fd {
            Some(n) => Some(take_channel(&n)?),
            None => None,
        };
        if upgrade_channel.is_some() {
            // A new master reports to systemd only once the old one has handed over.
            notifier.silence();
        }
        Ok(Systemd {
            notifier,
            listeners,
            upgrade_channel,
        })
    }
}

/// The upgrade channel's descriptor (a Unix stream socket), close-on-exec.
fn take_channel(n: &str) -> Result<UnixStream, ActivationError> {
    let raw: i32 = n
        .parse()
        .ok()
        .filter(|&n| n >= LISTEN_FDS_START)
        .ok_or_else(|| ActivationError(format!("{UPGRADE_FD_VAR}={n} is not a descriptor")))?;
    let fd =
        sys::take_fd(raw).map_err(|e| ActivationError(format!("{UPGRADE_FD_VAR}={raw}: {e}")))?;
    let socket = Socket::from(fd);
    socket
        .set_cloexec(true)
        .map_err(|e| ActivationError(format!("{UPGRADE_FD_VAR}={raw}: {e}")))?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}

/// SIGTERM to `pid`, a child of this process that was not reaped yet (a new master that
/// did not take over). A failure (it is gone) is logged at debug level.
pub fn terminate(pid: u32) {
    if let Err(e) = sys::terminate(pid) {
        debug!("SIGTERM to {pid}: {e}");
    }
}

/// Starts `path` (argv `args`, argv[0] first) with the current environment, `env` added,
/// and `sockets` passed as systemd passes them: descriptors 3, 4, ... in order,
/// `LISTEN_FDS`, `LISTEN_FDNAMES` (each socket's name) and `LISTEN_PID` (the child's pid,
/// set after the fork); then `channel` as the next descriptor, named by
/// `WEIR_UPGRADE_FD`. Only the child's copies lose close-on-exec. An exec failure is
/// written on `channel` as `EXEC-FAILED <errno>`.
pub fn spawn_with_sockets(
    path: &Path,
    args: &[OsString],
    env: &[(String, String)],
    sockets: &[(BorrowedFd<'_>, String)],
    channel: BorrowedFd<'_>,
) -> std::io::Result<tokio::process::Child> {
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("a NUL byte in an argument"));
    let n = sockets.len();
    let names: Vec<&str> = sockets.iter().map(|(_, name)| name.as_str()).collect();
    let ours = [
        ("LISTEN_FDS".to_owned(), n.to_string()),
        ("LISTEN_FDNAMES".to_owned(), names.join(":")),
        (
            UPGRADE_FD_VAR.to_owned(),
            (LISTEN_FDS_START as usize + n).to_string(),
        ),
    ];
    let replaced =
        |k: &[u8]| k == b"LISTEN_PID" || ours.iter().chain(env).any(|(o, _)| o.as_bytes() == k);
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if replaced(k.as_bytes()) {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstr(&kv)?);
    }
    for (k, v) in ours.iter().chain(env) {
        envp.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let argv = args
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut fds: Vec<_> = sockets.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    fds.push(channel.as_raw_fd());
    let exec = sys::Exec::new(cstr(path.as_os_str().as_bytes())?, argv, envp, fds);
    tokio::process::Command::from(sys::command(exec)).spawn()
}

fn take_listeners(n: &str, names: Option<&str>) -> Result<Vec<Inherited>, ActivationError> {
    let n: i32 = n
        .parse()
        .ok()
        .filter(|&n| (0..=4096).contains(&n))
        .ok_or_else(|| ActivationError(format!("LISTEN_FDS={n} is not a count")))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match names {
        Some(s) => s.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); n as usize],
    };
    if names.len() != n as usize {
        return Err(ActivationError(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={n}",
            names.len()
        )));
    }
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let raw = LISTEN_FDS_START + i as i32;
        let fd: OwnedFd = sys::take_fd(raw)
            .map_err(|e| ActivationError(format!("descriptor {raw} ({name}): {e}")))?;
        let socket = Socket::from(fd);
        let check = || -> std::io::Result<()> {
            socket.set_cloexec(true)?;
            if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
                return Err(std::io::Error::other("not a listening stream socket"));
            }
            let d = socket.domain()?;
            if d != Domain::IPV4 && d != Domain::IPV6 && d != Domain::UNIX {
                return Err(std::io::Error::other("neither TCP nor a Unix socket"));
            }
            socket.set_nonblocking(true)
        };
        check().map_err(|e| ActivationError(format!("descriptor {raw} ({name}): {e}")))?;
        out.push(Inherited { name, socket });
    }
    Ok(out)
}

/// Sends `sd_notify(3)` datagrams to `$NOTIFY_SOCKET`; does nothing without one, nor while
/// silenced (a master that handed over to a new one, or a new one not yet handed over).
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
    /// `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` as given, for a new master.
    env: Vec<(String, String)>,
    silenced: AtomicBool,
}

impl Notifier {
    /// A notifier for `socket` (a path, or `@name` in the abstract namespace).
    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Notifier {
        let target = socket.and_then(|s| {
            let addr = if let Some(name) = s.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                std::os::unix::net::SocketAddr::from_pathname(s)
            };
            let r = addr.and_then(|a| Ok((UnixDatagram::unbound()?, a)));
            match r {
                Ok(t) => Some(t),
                Err(e) => {
                    // Before logging starts (this runs first thing): straight to stderr.
                    eprintln!("weir: NOTIFY_SOCKET={s} cannot be used: {e}");
                    None
                }
            }
        });
        let mut env = Vec::new();
        if let (Some(s), Some(_)) = (socket, &target) {
            env.push(("NOTIFY_SOCKET".to_owned(), s.to_owned()));
            if let Some(w) = watchdog {
                env.push(("WATCHDOG_USEC".to_owned(), w.as_micros().to_string()));
            }
        }
        Notifier {
            target,
            watchdog,
            env,
            silenced: AtomicBool::new(false),
        }
    }

    /// The variables a new master needs to notify the same service manager (none without
    /// one): `NOTIFY_SOCKET` and `WATCHDOG_USEC` (for whatever pid is the main one).
    pub fn env_for_successor(&self) -> &[(String, String)] {
        &self.env
    }

    /// Sends nothing more until [`Notifier::resume`].
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }

    /// Sends again.
    pub fn resume(&self) {
        self.silenced.store(false, Ordering::SeqCst);
    }

    /// `MAINPID=` (systemd follows that process from now on), `READY=1` and a status
    /// line: what the old master sends when a new one takes over.
    pub fn main_pid(&self, pid: u32, status: &str) {
        self.send(&format!("MAINPID={pid}\nREADY=1\nSTATUS={status}\n"));
    }

    /// Whether there is a service manager to tell.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends `lines` (`KEY=VALUE`, one per line) in one datagram. A failure is logged at
    /// debug level: the service manager may be gone, serving goes on.
    pub fn send(&self, lines: &str) {
        if self.silenced.load(Ordering::SeqCst) {
            return;
        }
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(lines.as_bytes(), addr) {
                debug!("sd_notify {lines:?}: {e}");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (required by systemd 253 and later).
    pub fn reloading(&self, status: &str) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}\n",
            sys::monotonic_usec()
        ));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}\n"));
    }

    /// A `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}\n"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("weir-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        let n = Notifier::new(dir.to_str(), None);
        n.ready("2 idle");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=2 idle\n");
        let _ = std::fs::remove_file(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("weir-notify-test-{}", std::process::id());
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&a).unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), Some(Duration::from_secs(1)));
        assert_eq!(n.watchdog(), Some(Duration::from_secs(1)));
        n.reloading("reloading");
        let len = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(got.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got}");
    }

    #[test]
    fn bad_counts_and_names_are_refused() {
        assert!(take_listeners("0", Some("")).unwrap().is_empty());
        assert!(take_listeners("x", None).is_err());
        assert!(take_listeners("-1", None).is_err());
        // Two names for one descriptor: refused before any descriptor is taken.
        let e = take_listeners("1", Some("http:uwsgi")).unwrap_err();
        assert!(e.to_string().contains("2 names"), "{e}");
    }

    #[test]
    fn names_tell_the_kind() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let i = Inherited {
            name: "uwsgi-nginx".into(),
            socket: s,
        };
        assert!(i.is_uwsgi());
    }
}

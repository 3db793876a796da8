//! Upgrading weir itself (SIGUSR2), as NGINX's binary upgrade and Pingora's listener
//! handover do it: the running master starts the executable at its own path as it is on
//! disk now (the new version, once the file was replaced), with the same arguments, and
//! hands it the listening sockets; the new master starts its workers and accepts only
//! once they are all ready, then says so; the old master then stops accepting, drains its
//! in-flight requests and exits. Until then the old master serves as before, so a new
//! binary that cannot start, exits, or is not ready within `[server] upgrade_timeout`
//! changes nothing: the old master stops it, logs why, and keeps serving.
//!
//! The sockets go over as systemd's socket activation passes them ([`crate::systemd`]:
//! `LISTEN_FDS`, `LISTEN_FDNAMES` naming each one's kind, `LISTEN_PID` set after the fork),
//! so the new master finds them where it finds systemd's. One more descriptor,
//! `WEIR_UPGRADE_FD`, is a Unix stream socket between the two masters:
//!
//! ```text
//! new -> old   READY=1\n                 its workers are ready and it accepts
//! old -> new   (closes)                  the old master has handed over: from now on the
//!                                        new one notifies systemd and owns the Unix
//!                                        socket files
//! child        EXEC-FAILED <errno>\n     written by the forked child when execve failed
//! ```
//!
//! Both masters accept on the shared sockets during the overlap (the kernel gives each
//! connection to one of them), as NGINX's old and new masters do. Under systemd the old
//! master sends `MAINPID=<new>` with `READY=1` when it hands over, and nothing after
//! (no `STOPPING=1`: the service is not stopping); the new master is silent until then.
//! A Unix socket file is removed only by the master that owns it when it stops: the old
//! one never removes a file it handed over, the new one not before the handover.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::time::Instant;

use crate::systemd::{self, Notifier};

/// How long a new master that is stopped (timeout, SIGTERM to the old one) has to exit
/// after SIGTERM before SIGKILL. It has accepted nothing yet, so it has nothing to drain.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why an upgrade did not happen. The old master keeps serving in every case.
#[derive(Debug, Error)]
pub enum UpgradeError {
    /// The executable's path cannot be read.
    #[error("cannot find weir's executable (/proc/self/exe): {0}")]
    Exe(std::io::Error),
    /// The path is not an executable file (any more).
    #[error("{0} is not an executable file: install the new weir binary at that path")]
    NotExecutable(PathBuf),
    /// fork or the channel failed.
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    /// execve failed in the child.
    #[error("cannot run {0}: {1}")]
    Exec(PathBuf, std::io::Error),
    /// The new master exited before it was ready.
    #[error("the new master (pid {0}) exited ({1}) before its workers were ready; its own log lines say why")]
    Exited(u32, ExitStatus),
    /// The new master closed the channel without being ready.
    #[error("the new master (pid {0}) closed its upgrade channel before it was ready; stopped it")]
    Closed(u32),
    /// The new master was not ready in time.
    #[error(
        "the new master (pid {0}) was not ready within {1:?} (server.upgrade_timeout); stopped it"
    )]
    Timeout(u32, Duration),
    /// Reading the channel failed.
    #[error("the upgrade channel to the new master (pid {0}) failed: {1}; stopped it")]
    Channel(u32, std::io::Error),
}

/// What the old master can hand over: a copy (close-on-exec) of each listening socket
/// with its `LISTEN_FDNAMES` name.
#[derive(Debug, Default)]
pub struct Handover {
    sockets: Vec<(OwnedFd, String)>,
}

impl Handover {
    /// Adds a listening socket under `name` (`http`, `uwsgi` or `admin`, `+unlink` for a
    /// Unix socket file the new master should remove when it stops).
    pub fn add(&mut self, socket: OwnedFd, name: String) {
        self.sockets.push((socket, name));
    }

    /// Starts the new master. `timeout` bounds the wait for its readiness.
    pub fn start(&self, notifier: &Notifier, timeout: Duration) -> Result<Upgrade, UpgradeError> {
        let exe = exe_on_disk().map_err(UpgradeError::Exe)?;
        match std::fs::metadata(&exe) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            _ => return Err(UpgradeError::NotExecutable(exe)),
        }
        let args: Vec<_> = std::env::args_os().collect();
        let sockets: Vec<_> = self
            .sockets
            .iter()
            .map(|(fd, name)| (fd.as_fd(), name.clone()))
            .collect();
        Upgrade::spawn(exe, &args, notifier.env_for_successor(), &sockets, timeout)
    }
}

/// The path of this process's executable as it is on disk now: `/proc/self/exe` without
/// the ` (deleted)` the kernel adds once the file was replaced (by `install`, `mv`, a
/// package manager), so the new file at that path is the one started.
fn exe_on_disk() -> std::io::Result<PathBuf> {
    let p = std::fs::read_link("/proc/self/exe")?;
    Ok(match p.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsStr::from_bytes(b)),
        None => p,
    })
}

/// A new master that is starting.
#[derive(Debug)]
pub struct Upgrade {
    pid: u32,
    child: Child,
    channel: UnixStream,
    exe: PathBuf,
    timeout: Duration,
    deadline: Instant,
    buf: Vec<u8>,
}

impl Upgrade {
    /// Starts `exe` with `args` (argv[0] first), `env` added, the `sockets` and the
    /// channel (see [`systemd::spawn_with_sockets`]).
    fn spawn(
        exe: PathBuf,
        args: &[OsString],
        env: &[(String, String)],
        sockets: &[(BorrowedFd<'_>, String)],
        timeout: Duration,
    ) -> Result<Upgrade, UpgradeError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| UpgradeError::Spawn(exe.clone(), e))?;
        let child = systemd::spawn_with_sockets(&exe, args, env, sockets, theirs.as_fd())
            .map_err(|e| UpgradeError::Spawn(exe.clone(), e))?;
        // Only the child holds its end now: its exit closes the channel.
        drop(theirs);
        let channel = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(|e| UpgradeError::Spawn(exe.clone(), e))?;
        Ok(Upgrade {
            pid: child.id().unwrap_or(0),
            child,
            channel,
            exe,
            timeout,
            deadline: Instant::now() + timeout,
            buf: Vec::new(),
        })
    }

    /// The new master's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The executable started.
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }

    /// Resolves when the new master says it is ready, or with why it will not be. Cancel
    /// safe: a select may drop it and call it again (the deadline was fixed at the start).
    pub async fn ready(&mut self) -> Result<(), UpgradeError> {
        loop {
            if let Some(r) = self.parse() {
                return r;
            }
            tokio::select! {
                r = self.channel.read_buf(&mut self.buf) => match r {
                    Ok(0) => {
                        // The child's end closed: it exited, or it closed it. Its status
                        // says more, when it comes soon.
                        let pid = self.pid;
                        return match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
                            Ok(Ok(s)) => Err(UpgradeError::Exited(pid, s)),
                            _ => Err(UpgradeError::Closed(pid)),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(UpgradeError::Channel(self.pid, e)),
                },
                s = self.child.wait() => {
                    // Read what it wrote before it went (an exec failure).
                    let mut rest = [0u8; 64];
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), self.channel.read(&mut rest)).await {
                        self.buf.extend_from_slice(&rest[..n]);
                        if let Some(Err(e)) = self.parse() {
                            return Err(e);
                        }
                    }
                    return match s {
                        Ok(s) => Err(UpgradeError::Exited(self.pid, s)),
                        Err(e) => Err(UpgradeError::Channel(self.pid, e)),
                    };
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    return Err(UpgradeError::Timeout(self.pid, self.timeout));
                }
            }
        }
    }

    /// What the bytes read so far say: ready, an exec failure, or nothing yet.
    fn parse(&self) -> Option<Result<(), UpgradeError>> {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let line = line.trim_end();
            if line == "READY=1" {
                return Some(Ok(()));
            }
            if let Some(errno) = line.strip_prefix("EXEC-FAILED ") {
                let e = std::io::Error::from_raw_os_error(errno.parse().unwrap_or(0));
                return Some(Err(UpgradeError::Exec(self.exe.clone(), e)));
            }
        }
        None
    }

    /// Hands over: closing the channel tells the new master it is the one now. The old
    /// master no longer waits for it (it is the new master's parent until it exits).
    pub fn commit(self) {
        drop(self.channel);
    }

    /// Stops a new master that did not take over: SIGTERM, SIGKILL after a grace period,
    /// reaped either way.
    pub async fn stop(mut self) {
        drop(self.channel);
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Not reaped yet (try_wait said it runs), so the pid is still this child's.
        systemd::terminate(self.pid);
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            // Already gone is fine.
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The new master's side: says READY=1 to the old master, then waits for the handover
/// (the old master closes the channel, or is gone).
pub async fn report_ready(channel: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    channel.set_nonblocking(true)?;
    let mut s = UnixStream::from_std(channel)?;
    s.write_all(b"READY=1\n").await?;
    let mut b = [0u8; 64];
    while s.read(&mut b).await? != 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_on_disk_has_no_deleted_suffix() {
        let p = exe_on_disk().unwrap();
        assert!(p.exists(), "{p:?}");
        assert!(!p.to_string_lossy().ends_with(" (deleted)"));
    }

    /// `sh -c SCRIPT` as the new master, with one listening socket named `http`.
    fn spawn_sh(script: &str, timeout: Duration) -> (Upgrade, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let args: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let env = [("WEIR_TEST_VAR".to_owned(), "passed".to_owned())];
        let sockets = [(l.as_fd(), "http".to_owned())];
        let u = Upgrade::spawn("/bin/sh".into(), &args, &env, &sockets, timeout).unwrap();
        (u, l)
    }

    #[tokio::test]
    async fn the_child_gets_the_sockets_as_systemd_passes_them() {
        // LISTEN_PID is the child's own pid ($$ of the shell exec'd in place), the socket
        // is descriptor 3 and the channel 4, both without close-on-exec (sh sees them).
        let script = r#"
            [ "$LISTEN_PID" = "$$" ] || exit 10
            [ "$LISTEN_FDS" = 1 ] && [ "$LISTEN_FDNAMES" = http ] || exit 11
            [ "$WEIR_UPGRADE_FD" = 4 ] && [ "$WEIR_TEST_VAR" = passed ] || exit 12
            [ -S /proc/self/fd/3 ] && [ -S /proc/self/fd/4 ] || exit 13
            [ -e /proc/self/fd/5 ] && exit 14
            echo READY=1 >&4
            read -r _ <&4 || exit 0
        "#;
        let (mut u, l) = spawn_sh(script, Duration::from_secs(30));
        let ino = |fd: &str| std::fs::metadata(fd).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let child_fd3 = ino(&format!("/proc/{}/fd/3", u.pid()));
        u.ready().await.unwrap();
        // The very socket, not a new one.
        assert_eq!(
            child_fd3.unwrap(),
            ino(&format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&l)
            ))
            .unwrap()
        );
        let mut child = u.child;
        drop(u.channel);
        // The handover (the channel closed) lets it finish.
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn a_child_that_exits_is_reported_with_its_status() {
        let (mut u, _l) = spawn_sh("exit 3", Duration::from_secs(30));
        let e = u.ready().await.unwrap_err();
        assert!(
            matches!(e, UpgradeError::Exited(_, s) if s.code() == Some(3)),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_never_ready_times_out_and_is_stopped() {
        let (mut u, _l) = spawn_sh("exec sleep 600", Duration::from_secs(60));
        let pid = u.pid();
        let e = u.ready().await.unwrap_err();
        assert!(
            matches!(e, UpgradeError::Timeout(p, t) if p == pid && t == Duration::from_secs(60)),
            "{e}"
        );
        assert!(e.to_string().contains("server.upgrade_timeout"), "{e}");
        u.stop().await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn a_file_that_cannot_run_is_an_error() {
        let dir = std::env::temp_dir().join(format!("weir-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("not-a-program");
        std::fs::write(&f, "no shebang, no ELF\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Upgrade::spawn(
            f.clone(),
            &["x".into()],
            &[],
            &[(l.as_fd(), "http".into())],
            Duration::from_secs(5),
        );
        let e = match r {
            Err(e) => e,
            Ok(mut u) => u.ready().await.unwrap_err(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.to_string().contains("Exec format error"), "{e}");
    }
}

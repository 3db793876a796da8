//! Imports the app once, the way the workers do, and holds it there to be measured.
//!
//! The process is a real `weir worker --zygote` started with exactly the arguments `weir
//! serve` gives its workers (weir-front's `pool_config`), without `--if-fork-safe`: it
//! imports the app, readies its memory as before forking (`gc.freeze`, `malloc_trim`),
//! runs preload's own fork-safety check (weir-worker's `zygote::fork_safety`: sockets,
//! files open for writing, threads) and reports what it found (NOT_FORK_SAFE), then says
//! READY and waits for FORK requests that never come. While it waits, [`Held`] reads its
//! resident memory and its TCP sockets' local addresses from /proc; closing the control
//! socket makes it exit. So the doctor measures what a worker is right after its import,
//! with the fork-safety rules `preload = "auto"` decides by, and none of it re-written.

use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use weir_uwsgi::zygote::{Msg, MAX_LEN};

/// weir-worker's exit status for an app that cannot be imported.
const EXIT_IMPORT_FAILED: i32 = 3;
/// How long the zygote may take to exit once its control socket closed.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// The most of the import's stderr kept for an error message.
const STDERR_TAIL: usize = 8 * 1024;
/// How long the import's stderr may stay open after its process ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Why the app could not be measured (exit status 2: the same would stop `weir serve`).
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The worker process could not be started.
    #[error("cannot start `{exe} worker --zygote` to import the app: {source}")]
    Spawn {
        /// The weir executable.
        exe: String,
        /// The OS error.
        source: io::Error,
    },
    /// The control socket failed.
    #[error("the importing process's control socket: {0}")]
    Socket(io::Error),
    /// The import failed.
    #[error("the app {app} failed to import ({status}); `weir serve` would fail the same way. Its output:\n{stderr}")]
    Import {
        /// `[app] module`.
        app: String,
        /// How the process ended.
        status: ExitStatus,
        /// The end of what it wrote to stderr (the traceback).
        stderr: String,
    },
    /// The import took longer than `app.startup_timeout`.
    #[error("the app {app} did not finish importing within app.startup_timeout ({timeout:?}); raise it or find what the import waits for. Its output so far:\n{stderr}")]
    Timeout {
        /// `[app] module`.
        app: String,
        /// `app.startup_timeout`.
        timeout: Duration,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The process said something other than NOT_FORK_SAFE or READY.
    #[error(
        "the importing process sent an unexpected message ({0}); is this weir binary complete?"
    )]
    Protocol(String),
}

/// An imported app, held at READY.
#[derive(Debug)]
pub struct Held {
    child: Child,
    ctl: Option<UnixStream>,
    stderr: Option<Output>,
    /// What preload's fork-safety check found, as the zygote words it.
    pub fork_findings: Option<String>,
    /// From start to READY (the interpreter's start and the import).
    pub import_ms: u64,
}

/// Starts `exe worker --zygote ARGS...` and waits (up to `timeout`) until it has imported
/// the app and says READY.
pub fn import(
    exe: &std::path::Path,
    worker_args: &[std::ffi::OsString],
    app: &str,
    timeout: Duration,
) -> Result<Held, MeasureError> {
    let started = Instant::now();
    let (ours, theirs) = weir_fdpass::seqpacket_pair().map_err(MeasureError::Socket)?;
    let mut ctl = UnixStream::from(ours);
    let mut child = Command::new(exe)
        .arg("worker")
        .arg("--zygote")
        .args(worker_args)
        .stdin(Stdio::from(theirs))
        // What the app prints at import must not mix with the report on stdout.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::piped())
        .env("PYTHONUNBUFFERED", "1")
        .spawn()
        .map_err(|source| MeasureError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
    let stderr = child.stderr.take().map(Output::collect);
    let mut held = Held {
        child,
        ctl: None,
        stderr,
        fork_findings: None,
        import_ms: 0,
    };
    let mut buf = vec![0u8; MAX_LEN + 1];
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(MeasureError::Timeout {
                app: app.to_owned(),
                timeout,
                stderr: held.finish(Duration::ZERO),
            });
        }
        ctl.set_read_timeout(Some(left))
            .map_err(MeasureError::Socket)?;
        let n = match ctl.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(MeasureError::Socket(e)),
        };
        if n == 0 {
            // It exited before READY: its status and output say why.
            let status = held.child.wait().map_err(MeasureError::Socket)?;
            let stderr = held.stop();
            return Err(
                if status.code() == Some(EXIT_IMPORT_FAILED) || !status.success() {
                    MeasureError::Import {
                        app: app.to_owned(),
                        status,
                        stderr,
                    }
                } else {
                    MeasureError::Protocol(format!("it exited ({status}) before READY"))
                },
            );
        }
        match Msg::decode(&buf[..n]) {
            Ok(Msg::NotForkSafe { reason }) => held.fork_findings = Some(reason),
            Ok(Msg::Ready) => break,
            other => {
                held.finish(Duration::ZERO);
                return Err(MeasureError::Protocol(format!("{other:?}")));
            }
        }
    }
    held.import_ms = started.elapsed().as_millis() as u64;
    held.ctl = Some(ctl);
    Ok(held)
}

impl Held {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now (VmRSS), bytes.
    pub fn rss(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        parse_vm_rss(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no VmRSS line in /proc/PID/status",
            )
        })
    }

    /// The local addresses of the process's TCP sockets (each a connection it opened).
    pub fn tcp_local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let pid = self.pid();
        let mut inodes = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let Ok(target) = std::fs::read_link(e?.path()) else {
                continue; // closed meanwhile
            };
            if let Some(ino) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.push(ino);
            }
        }
        let mut out = Vec::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                out.extend(parse_proc_net_tcp(&text, &inodes));
            }
        }
        Ok(out)
    }

    /// Closes the control socket (the zygote exits on EOF), waits for it (killing it after
    /// [`EXIT_GRACE`]) and returns what it wrote to stderr.
    pub fn stop(&mut self) -> String {
        self.finish(EXIT_GRACE)
    }

    /// As [`Held::stop`], killing it after `grace` (at once for zero: an import that is
    /// still running does not read its control socket).
    fn finish(&mut self, grace: Duration) -> String {
        if let Some(ctl) = self.ctl.take() {
            // EOF is all the zygote needs; an error means it is already gone.
            let _ = ctl.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    // Still there after the grace (or not waitable): end it. Errors mean
                    // it has exited meanwhile.
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        self.stderr.take().map(|o| o.tail()).unwrap_or_default()
    }
}

/// The end of what the import wrote to stderr, read by a thread of its own.
#[derive(Debug)]
struct Output {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Output {
    fn collect(mut pipe: ChildStderr) -> Output {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let keep = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // A read error ends the output like EOF: it is only kept for a message.
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                let mut b = keep.lock().unwrap_or_else(|e| e.into_inner());
                b.extend_from_slice(&chunk[..n]);
                let over = b.len().saturating_sub(STDERR_TAIL);
                b.drain(..over);
            }
            // The receiver may have stopped waiting.
            let _ = tx.send(());
        });
        Output { buf, done }
    }

    /// What was written, once the pipe closed or [`OUTPUT_GRACE`] passed (a process the
    /// app started may hold the pipe open after the import's process exited).
    fn tail(self) -> String {
        // Either way the buffer holds what there is.
        let _ = self.done.recv_timeout(OUTPUT_GRACE);
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.stderr.is_some() || self.ctl.is_some() {
            self.stop();
        }
    }
}

/// `VmRSS:   123456 kB` in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The local addresses of /proc/net/tcp{,6} rows whose inode is in `inodes`, skipping
/// listening sockets (state 0A).
pub fn parse_proc_net_tcp(text: &str, inodes: &[u64]) -> Vec<SocketAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state == "0A" || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            parse_hex_addr(local)
        })
        .collect()
}

/// `0100007F:D431` (IPv4) or 32 hex digits `:PORT` (IPv6): each 32-bit word of the address
/// in the kernel's (little-endian) byte order, the port in hex.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   51200 kB\n"),
            Some(50 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0CEB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:D431 0100007F:0CEB 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:D432 0100007F:0CEB 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0 20 4 30 10 -1\n";
        // 111 listens, 333 is another process's.
        assert_eq!(
            parse_proc_net_tcp(v4, &[111, 222]),
            vec!["127.0.0.1:54321".parse::<SocketAddr>().unwrap()]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:0CEB 01 00000000:00000000 00:00000000 00000000  1000        0 444 1\n\
   1: 0000000000000000FFFF00000100007F:D432 0000000000000000FFFF00000100007F:0CEB 01 00000000:00000000 00:00000000 00000000  1000        0 555 1\n";
        assert_eq!(
            parse_proc_net_tcp(v6, &[444, 555]),
            vec![
                "[::1]:54321".parse::<SocketAddr>().unwrap(),
                "[::ffff:127.0.0.1]:54322".parse().unwrap()
            ]
        );
    }
}

//! A real `redis-server` for the tests (Debian's package; scripts/install-deps.sh installs
//! it), on a free 127.0.0.1 port.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether redis-server is installed (tests skip, with a message, when it is not).
pub fn have_redis() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server; killed when dropped.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
}

/// A private redis-server on a free port, or `None` (with a SKIPPED line) when
/// redis-server is not installed.
pub fn redis_or_skip() -> Option<Redis> {
    if !have_redis() {
        eprintln!("SKIPPED: redis-server is not installed (scripts/install-deps.sh installs it)");
        return None;
    }
    Some(Redis::start(free_port()))
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { child, port };
        // poll until it answers PING (bounded)
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Redis {
    /// Its URL (database 0).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What the process asks of the operating system beyond sockets and timers: room for
//! `--max-connections` file descriptors, and its own CPU usage for the self-check (a
//! generator that got half a CPU, or was preempted thousands of times, explains an INVALID
//! run).

/// Raises the soft limit on open files so `connections` sockets fit (up to the hard limit).
/// Best effort: when it cannot, connects fail with "too many open files" and the report
/// counts them as `connect` errors.
pub fn room_for(connections: usize) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let want = connections as u64 + 64;
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < want {
                // Failing leaves the old limit, which the report will show as connect errors.
                let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = connections;
}

/// CPU time and involuntary context switches of the whole process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    /// Times the kernel took the CPU away while the process could still run.
    pub preemptions: u64,
}

impl CpuUsage {
    /// The usage now (zeros where unsupported).
    pub fn now() -> CpuUsage {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::resource::{getrusage, UsageWho};
            if let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) {
                let secs =
                    |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                return CpuUsage {
                    cpu_s: secs(u.user_time()) + secs(u.system_time()),
                    preemptions: u.involuntary_context_switches().max(0) as u64,
                };
            }
        }
        CpuUsage::default()
    }

    /// The usage between `earlier` and `self`.
    pub fn since(self, earlier: CpuUsage) -> CpuUsage {
        CpuUsage {
            cpu_s: (self.cpu_s - earlier.cpu_s).max(0.0),
            preemptions: self.preemptions.saturating_sub(earlier.preemptions),
        }
    }
}

//! The machine's facts, read from /proc and /sys: memory (and the cgroup's limit, v2 or
//! v1), `net.core.somaxconn`, and the open-files limit this process has (which `weir
//! serve` started from the same shell or unit would have too: weir does not raise it).
//! Text parsers are separate functions so they are tested on fixed text.

use std::fs;

use crate::facts::Machine;

/// Reads what can be read; a file that is missing leaves its fact unknown.
pub fn gather() -> Machine {
    let (mem_total, mem_available) = fs::read_to_string("/proc/meminfo")
        .ok()
        .map(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    let (nofile_soft, nofile_hard) = fs::read_to_string("/proc/self/limits")
        .ok()
        .map(|t| parse_nofile(&t))
        .unwrap_or((None, None));
    Machine {
        mem_total,
        mem_available,
        cgroup_memory_max: cgroup_memory_max(),
        somaxconn: fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        nofile_soft,
        nofile_hard,
    }
}

/// `MemTotal` and `MemAvailable` in bytes (0 when absent).
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The soft and hard `Max open files` of /proc/self/limits (`None` for unlimited).
pub fn parse_nofile(text: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = text.lines().find(|l| l.starts_with("Max open files")) else {
        return (None, None);
    };
    let mut it = line["Max open files".len()..].split_whitespace();
    let mut next = || it.next().and_then(|v| v.parse::<u64>().ok());
    (next(), next())
}

/// The memory limit of this process's cgroup: v2's `memory.max`, else v1's
/// `memory.limit_in_bytes` (its "unlimited" is a number near 2^63, taken as none).
fn cgroup_memory_max() -> Option<u64> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2, v1) = parse_cgroup(&own);
    let read = |path: String| fs::read_to_string(path).ok().and_then(|t| parse_limit(&t));
    if let Some(p) = v2 {
        if let Some(v) = read(format!("/sys/fs/cgroup{p}/memory.max")) {
            return Some(v);
        }
    }
    if let Some(p) = v1 {
        // Inside a container the path may not exist under our mount: its root is ours.
        for dir in [
            format!("/sys/fs/cgroup/memory{p}"),
            "/sys/fs/cgroup/memory".into(),
        ] {
            if let Some(v) = read(format!("{dir}/memory.limit_in_bytes")) {
                return Some(v);
            }
        }
    }
    None
}

/// The cgroup v2 path (`0::/path`) and the v1 memory controller's path (`N:memory:/path`).
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        match (controllers, path) {
            (Some(""), Some(p)) => v2 = Some(p.trim_end_matches('/').to_owned()),
            (Some(c), Some(p)) if c.split(',').any(|c| c == "memory") => {
                v1 = Some(p.trim_end_matches('/').to_owned())
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// A limit file's value: `max` or a near-2^63 number (v1's unlimited) is none.
pub fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let t = "MemTotal:       24683784 kB\nMemFree:  1 kB\nMemAvailable:   23741740 kB\n";
        assert_eq!(parse_meminfo(t), (24683784 * 1024, 23741740 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    #[test]
    fn reads_the_open_files_limit() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max processes             unlimited            unlimited            processes \n\
                 Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile(t), (Some(1024), Some(524288)));
        let t = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_nofile(t), (None, None));
    }

    #[test]
    fn finds_the_cgroup_paths_and_limits() {
        let t = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            parse_cgroup(t),
            (Some(String::new()), Some("/process_api/abc".into()))
        );
        assert_eq!(
            parse_cgroup("0::/system.slice/weir.service\n").0.as_deref(),
            Some("/system.slice/weir.service")
        );
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536870912));
    }
}

//! What the checks look at, as plain values: the configuration `weir serve` would run
//! with, the command line's own facts, the machine, the database and the app's import.
//! A part that was not gathered is `None`, and the checks that need it are skipped.

use std::time::Duration;

use serde::Serialize;
use weir_config::Config;

/// Everything `weir doctor` knows about the setup.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The configuration, flags merged and validated (as `weir serve --check` sees it).
    pub config: Config,
    /// The client's or load balancer's timeout (`--client-timeout`): the top of the chain.
    pub client_timeout: Option<Duration>,
    /// Database connections per worker as the operator states it (`--pool-size`); wins
    /// over the measured count.
    pub pool_size: Option<u64>,
    /// The machine weir runs on.
    pub machine: Option<Machine>,
    /// The database's settings (`--database-url`).
    pub db: Option<DbFacts>,
    /// One import of the app, measured.
    pub app: Option<AppFacts>,
}

impl Facts {
    /// Facts with only a configuration (the rest to be filled in).
    pub fn new(config: Config) -> Self {
        Facts {
            config,
            client_timeout: None,
            pool_size: None,
            machine: None,
            db: None,
            app: None,
        }
    }
}

/// The machine's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `MemTotal` from /proc/meminfo, bytes.
    pub mem_total: u64,
    /// `MemAvailable` from /proc/meminfo, bytes.
    pub mem_available: u64,
    /// The cgroup's memory limit (`memory.max`, cgroup v2), bytes; `None` when unlimited
    /// or not readable.
    pub cgroup_memory_max: Option<u64>,
    /// `net.core.somaxconn`: the kernel caps every listen backlog at it.
    pub somaxconn: Option<u64>,
    /// `ulimit -n`: the soft limit on open files (`RLIMIT_NOFILE`) weir would start with.
    pub nofile_soft: Option<u64>,
    /// The hard limit the soft one may be raised to without privileges.
    pub nofile_hard: Option<u64>,
}

impl Machine {
    /// The memory the workers can have: the cgroup's limit when lower than the machine's.
    pub fn memory_limit(&self) -> (u64, &'static str) {
        match self.cgroup_memory_max {
            Some(c) if c < self.mem_total => (c, "the cgroup's memory.max"),
            _ => (self.mem_total, "the machine's MemTotal"),
        }
    }
}

/// A statement time limit the database enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLimit {
    /// The variable: `max_statement_time` (MariaDB, every statement) or
    /// `max_execution_time` (MySQL, SELECT only).
    pub variable: String,
    /// Its global value.
    #[serde(serialize_with = "secs")]
    pub value: Duration,
}

/// The database's settings that the checks compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbFacts {
    /// `user@host:port/db`, for messages.
    pub target: String,
    /// `version()`.
    pub version: String,
    /// `@@GLOBAL.max_connections`.
    pub max_connections: u64,
    /// `@@GLOBAL.max_user_connections` (0: no per-user limit).
    pub max_user_connections: u64,
    /// `Threads_connected` when the doctor looked.
    pub connected: u64,
    /// `@@GLOBAL.wait_timeout`: an idle connection is closed by the server after it.
    #[serde(serialize_with = "secs")]
    pub wait_timeout: Duration,
    /// The statement limit, `None` when the server has none set (0).
    pub statement_limit: Option<StatementLimit>,
}

/// What importing the app once, the way a worker does, cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppFacts {
    /// Resident memory of the process after the import (VmRSS), bytes.
    pub rss: u64,
    /// How long the import took.
    pub import_ms: u64,
    /// Connections to the database the import opened and kept (`None`: not counted, no
    /// database given).
    pub db_connections: Option<u64>,
    /// What preload's fork-safety check found (sockets, files open for writing, threads),
    /// as the zygote words it; `None` when nothing.
    pub fork_findings: Option<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

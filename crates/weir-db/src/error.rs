//! The errors of `weir db` and the one function that turns them into exit statuses.
//!
//! Every message says what happened and what to do about it; none contains a password
//! (targets are shown as `user@host:port/db`).

use std::path::PathBuf;

/// What went wrong in `weir db`.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Input that no retry can fix: exit status 2.
    #[error("{0}")]
    BadInput(String),

    /// The first connection could not be made (and retrying is not the command's job).
    #[error("cannot connect to {target}: {source}; {hint}")]
    Connect {
        /// `user@host:port/db`.
        target: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
        /// What to check.
        hint: &'static str,
    },

    /// A statement failed.
    #[error("{what} failed on {target}: {source}; {hint}")]
    Query {
        /// What the statement was for.
        what: &'static str,
        /// `user@host:port/db`.
        target: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
        /// What to check.
        hint: &'static str,
    },

    /// An output file could not be written.
    #[error("cannot write {}: {source}; check that the directory exists and is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The connection broke where the command cannot retry (`guard --once`).
    #[error("lost the connection to {target}: {why}; check the server and run again")]
    Lost {
        /// `user@host:port/db`.
        target: String,
        /// What the driver said.
        why: String,
    },

    /// Every query of a `slap` run failed.
    #[error("all {0} queries failed ({1}); check the query and the user's privileges")]
    AllFailed(u64, String),
}

impl DbError {
    /// 2 for bad input, 1 for everything the database or the system did.
    pub fn exit_code(&self) -> u8 {
        match self {
            DbError::BadInput(_) => 2,
            _ => 1,
        }
    }
}

/// The hint for a failed connection, from the driver's error.
pub fn connect_hint(e: &mysql_async::Error) -> &'static str {
    match e {
        mysql_async::Error::Server(s) if matches!(s.code, 1045 | 1698) => {
            "check the user and password in the DSN"
        }
        mysql_async::Error::Server(s) if s.code == 1130 => {
            "the server does not let this user connect from this host: check the account's host part"
        }
        mysql_async::Error::Server(s) if s.code == 1044 => {
            "the user may not use the DSN's database: grant access or name another one"
        }
        mysql_async::Error::Server(s) if s.code == 1049 => {
            "the database in the DSN does not exist: create it or fix the name"
        }
        mysql_async::Error::Server(s) if s.code == 1040 => {
            "the server has no connection slots left: raise max_connections or use fewer clients"
        }
        _ => "check that the server is up and that the DSN's host and port are right (scripts/mariadb.sh start starts the test instance)",
    }
}

/// The hint for a failed statement, from the driver's error.
pub fn query_hint(e: &mysql_async::Error) -> &'static str {
    match e {
        mysql_async::Error::Server(s) if matches!(s.code, 1142 | 1143 | 1227 | 1095) => {
            "the user lacks a privilege: grant PROCESS and CONNECTION ADMIN (or SUPER) for guard, SELECT for audit"
        }
        mysql_async::Error::Server(_) => "the server refused the statement",
        _ => "the connection was lost; check the server",
    }
}

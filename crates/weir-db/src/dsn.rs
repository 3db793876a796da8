//! `mysql://USER:PASS@HOST:PORT/DB` to connection options.
//!
//! mysql_async's own URL parser does the work (so its query parameters, such as
//! `?socket=/path`, keep working); this module adds the checks and the messages, accepts
//! `mariadb://` as a synonym, connects over TCP when the DSN names a TCP address (the
//! driver would otherwise switch to the server's Unix socket on loopback unless the DSN
//! says `prefer_socket=true`), and keeps a password-free form for messages and logs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::{connect_hint, DbError};

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed, checked DSN.
#[derive(Clone, Debug)]
pub struct Dsn {
    opts: Opts,
    shown: String,
}

impl Dsn {
    /// Parses a DSN; the error is a sentence for a person (exit status 2).
    pub fn parse(raw: &str) -> Result<Dsn, String> {
        let s = raw.trim();
        let url = if let Some(rest) = s.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else if s.starts_with("mysql://") {
            s.to_owned()
        } else {
            return Err(format!(
                "{:?} is not a DSN: write mysql://USER:PASS@HOST:PORT/DB",
                redact(s)
            ));
        };
        let opts = Opts::from_url(&url).map_err(|e| {
            format!(
                "bad DSN {:?}: {e}; write mysql://USER:PASS@HOST:PORT/DB",
                redact(s)
            )
        })?;
        let mut b = OptsBuilder::from_opts(opts.clone());
        if !url.contains("prefer_socket=") {
            b = b.prefer_socket(false);
        }
        let opts: Opts = b.into();
        let shown = format!(
            "{}@{}:{}/{}",
            opts.user().unwrap_or(""),
            opts.ip_or_hostname(),
            opts.tcp_port(),
            opts.db_name().unwrap_or("")
        );
        Ok(Dsn { opts, shown })
    }

    /// The connection options.
    pub fn opts(&self) -> Opts {
        self.opts.clone()
    }

    /// The database the DSN names, if any.
    pub fn database(&self) -> Option<&str> {
        self.opts.db_name().filter(|d| !d.is_empty())
    }

    /// `user@host:port/db`, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens one connection, bounded by [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Conn, DbError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(self.opts())).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(DbError::Connect {
                target: self.shown.clone(),
                hint: connect_hint(&source),
                source,
            }),
            Err(_) => Err(DbError::Connect {
                target: self.shown.clone(),
                source: mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                ))),
                hint: "check that the host and port are right and reachable",
            }),
        }
    }
}

impl FromStr for Dsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dsn::parse(s)
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `s` with the password of a `scheme://user:pass@...` URL replaced by `***`.
pub fn redact(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return s.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &s[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let d = Dsn::parse("mysql://weir:secret@127.0.0.1:3307/weir_shop").unwrap();
        assert_eq!(d.shown(), "weir@127.0.0.1:3307/weir_shop");
        assert_eq!(d.database(), Some("weir_shop"));
        assert!(!d.opts().prefer_socket());
    }

    #[test]
    fn mariadb_scheme_is_a_synonym() {
        let d = Dsn::parse("mariadb://u:p@db.example:3306/x").unwrap();
        assert_eq!(d.opts().tcp_port(), 3306);
        assert_eq!(d.opts().ip_or_hostname(), "db.example");
    }

    #[test]
    fn no_database_is_allowed() {
        let d = Dsn::parse("mysql://u:p@localhost:3306").unwrap();
        assert_eq!(d.database(), None);
    }

    #[test]
    fn rejects_other_schemes_without_leaking_the_password() {
        let e = Dsn::parse("postgres://u:hunter2@h/db").unwrap_err();
        assert!(e.contains("mysql://USER:PASS@HOST:PORT/DB"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Dsn::parse("mysql://u:hunter2@h:notaport/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn redacts() {
        assert_eq!(redact("mysql://a:b@c/d"), "mysql://a:***@c/d");
        assert_eq!(redact("mysql://a@c/d"), "mysql://a@c/d");
        assert_eq!(redact("nothing"), "nothing");
    }
}

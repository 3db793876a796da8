//! The target: `http://HOST:PORT/PATH` or `unix:SOCKET_PATH:/PATH`, and how to open a
//! connection to it.

use std::fmt;
use std::path::PathBuf;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// HTTP over TCP.
    Tcp {
        /// `host:port` as connected to.
        addr: String,
        /// The `Host` header (`host` or `host:port`, as given).
        host: String,
        /// Path and query of the default request.
        path: String,
    },
    /// HTTP over a Unix stream socket.
    Unix {
        /// The socket's path.
        socket: PathBuf,
        /// Path and query of the default request.
        path: String,
    },
}

impl Target {
    /// Parses a target. Only plain `http://` and `unix:` are supported (no TLS).
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("http://") {
            let (hostport, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if hostport.is_empty() {
                return Err(format!("`{s}` has no host"));
            }
            let addr = if hostport.starts_with('[') {
                // [::1]:8080 or [::1]
                match hostport.rfind("]:") {
                    Some(_) => hostport.to_string(),
                    None => format!("{hostport}:80"),
                }
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => {
                        if h.is_empty() || p.parse::<u16>().is_err() {
                            return Err(format!("`{s}`: bad host or port `{hostport}`"));
                        }
                        hostport.to_string()
                    }
                    None => format!("{hostport}:80"),
                }
            };
            Ok(Target::Tcp {
                addr,
                host: hostport.to_string(),
                path: path.to_string(),
            })
        } else if let Some(rest) = s.strip_prefix("unix:") {
            let (socket, path) = match rest.find(":/") {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, "/"),
            };
            if socket.is_empty() {
                return Err(format!(
                    "`{s}` has no socket path (write unix:/run/app.sock:/path)"
                ));
            }
            Ok(Target::Unix {
                socket: PathBuf::from(socket),
                path: path.to_string(),
            })
        } else if s.starts_with("https://") {
            Err(format!(
                "`{s}`: https is not supported (weir load speaks plain HTTP/1.1)"
            ))
        } else {
            Err(format!(
                "`{s}` is not a target (write http://HOST:PORT/PATH or unix:SOCKET_PATH:/PATH)"
            ))
        }
    }

    /// The path of the default request.
    pub fn path(&self) -> &str {
        match self {
            Target::Tcp { path, .. } | Target::Unix { path, .. } => path,
        }
    }

    /// The `Host` header to send.
    pub fn host_header(&self) -> &str {
        match self {
            Target::Tcp { host, .. } => host,
            Target::Unix { .. } => "localhost",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, path, .. } => write!(f, "http://{host}{path}"),
            Target::Unix { socket, path } => write!(f, "unix:{}:{path}", socket.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/hello?x=1").unwrap(),
            Target::Tcp {
                addr: "127.0.0.1:8080".into(),
                host: "127.0.0.1:8080".into(),
                path: "/hello?x=1".into()
            }
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.path(), "/");
        assert!(matches!(t, Target::Tcp { ref addr, .. } if addr == "localhost:80"));
        assert!(
            matches!(Target::parse("http://[::1]:9000/").unwrap(), Target::Tcp { ref addr, .. } if addr == "[::1]:9000")
        );
        assert!(Target::parse("http://:80/").is_err());
        assert!(Target::parse("http://host:99999/").is_err());
        assert!(Target::parse("https://x/").unwrap_err().contains("https"));
        assert!(Target::parse("ftp://x/").is_err());
    }

    #[test]
    fn unix_targets() {
        let t = Target::parse("unix:/run/app.sock:/items?id=3").unwrap();
        assert_eq!(
            t,
            Target::Unix {
                socket: "/run/app.sock".into(),
                path: "/items?id=3".into()
            }
        );
        assert_eq!(t.to_string(), "unix:/run/app.sock:/items?id=3");
        assert_eq!(t.host_header(), "localhost");
        assert_eq!(Target::parse("unix:/a.sock").unwrap().path(), "/");
        assert!(Target::parse("unix::/x").is_err());
    }
}

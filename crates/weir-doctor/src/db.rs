//! The database's side, over weir-db's client and DSN: the settings the checks compare
//! against, and the process list the app's connections are counted in.
//!
//! The app's connections are found by address, not by a before/after count of the whole
//! process list (which other clients of a production server change meanwhile): a TCP
//! connection's row shows the client's `ip:port` in `HOST`, and the import's process
//! owns exactly those local addresses. Connections over the server's Unix socket all read
//! `localhost`; those are counted before and after.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use weir_db::dsn::Dsn;
use weir_db::error::{query_hint, DbError};
use weir_db::row::{number, text};

use crate::facts::{DbFacts, StatementLimit};

/// Runs `sql` and returns its rows, or a [`DbError::Query`] saying `what` failed.
async fn rows(
    conn: &mut Conn,
    dsn: &Dsn,
    what: &'static str,
    sql: &str,
) -> Result<Vec<Row>, DbError> {
    conn.query::<Row, _>(sql)
        .await
        .map_err(|source| DbError::Query {
            what,
            target: dsn.shown().to_owned(),
            hint: query_hint(&source),
            source,
        })
}

/// Reads the settings (global values: the ones the app's new sessions get).
pub async fn facts(conn: &mut Conn, dsn: &Dsn) -> Result<DbFacts, DbError> {
    let vars = rows(
        conn,
        dsn,
        "reading the server's variables",
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('max_connections', 'max_user_connections', \
         'wait_timeout', 'max_statement_time', 'max_execution_time', 'version')",
    )
    .await?;
    let vars: Vec<(String, String)> = vars
        .iter()
        .filter_map(|r| Some((text(r, 0)?.to_ascii_lowercase(), text(r, 1)?)))
        .collect();
    let status = rows(
        conn,
        dsn,
        "reading Threads_connected",
        "SHOW GLOBAL STATUS LIKE 'Threads_connected'",
    )
    .await?;
    Ok(from_variables(
        dsn.shown(),
        &vars,
        status.first().and_then(|r| number(r, 1)).unwrap_or(0),
    ))
}

/// The facts from `SHOW GLOBAL VARIABLES`' name/value pairs (names lower case).
pub fn from_variables(target: &str, vars: &[(String, String)], connected: u64) -> DbFacts {
    let get = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let int = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    // MariaDB: seconds, a decimal ("0.000000" is off). MySQL: milliseconds, SELECTs only.
    let statement_limit = get("max_statement_time")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && s.is_finite())
        .map(|s| StatementLimit {
            variable: "max_statement_time".into(),
            value: Duration::from_secs_f64(s),
        })
        .or_else(|| {
            int("max_execution_time")
                .filter(|ms| *ms > 0)
                .map(|ms| StatementLimit {
                    variable: "max_execution_time".into(),
                    value: Duration::from_millis(ms),
                })
        });
    DbFacts {
        target: target.to_owned(),
        version: get("version").unwrap_or_default(),
        max_connections: int("max_connections").unwrap_or(151),
        max_user_connections: int("max_user_connections").unwrap_or(0),
        connected,
        wait_timeout: Duration::from_secs(int("wait_timeout").unwrap_or(28800)),
        statement_limit,
    }
}

/// The `HOST` of every other connection the user may see (every one with PROCESS).
pub async fn client_hosts(conn: &mut Conn, dsn: &Dsn) -> Result<Vec<String>, DbError> {
    let r = rows(
        conn,
        dsn,
        "reading the process list",
        "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()",
    )
    .await?;
    Ok(r.iter().filter_map(|r| text(r, 0)).collect())
}

/// A process list `HOST` as an address (`127.0.0.1:54321`, `::1:54321`, `[::1]:54321`).
pub fn host_addr(host: &str) -> Option<SocketAddr> {
    let (ip, port) = host.rsplit_once(':')?;
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip.to_canonical(), port.parse().ok()?))
}

/// The connections the app's process holds to this server: rows whose client address is
/// one of the process's own TCP sockets, plus the growth of `localhost` (Unix socket) rows
/// between `before` and `after` the import.
pub fn count_app_connections(before: &[String], after: &[String], local: &[SocketAddr]) -> u64 {
    let local: Vec<SocketAddr> = local
        .iter()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect();
    let tcp = after
        .iter()
        .filter_map(|h| host_addr(h))
        .filter(|a| local.contains(a))
        .count() as u64;
    let unix = |rows: &[String]| rows.iter().filter(|h| h.as_str() == "localhost").count() as u64;
    tcp + unix(after).saturating_sub(unix(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn reads_mariadb_and_mysql_statement_limits() {
        let f = from_variables(
            "t",
            &vars(&[
                ("max_connections", "200"),
                ("max_statement_time", "12.500000"),
                ("wait_timeout", "600"),
                ("version", "11.4.2-MariaDB"),
            ]),
            7,
        );
        assert_eq!(f.max_connections, 200);
        assert_eq!(f.wait_timeout, Duration::from_secs(600));
        let l = f.statement_limit.unwrap();
        assert_eq!(
            (l.variable.as_str(), l.value),
            ("max_statement_time", Duration::from_millis(12500))
        );
        assert_eq!(f.connected, 7);

        let f = from_variables("t", &vars(&[("max_statement_time", "0.000000")]), 0);
        assert_eq!(f.statement_limit, None);
        let f = from_variables("t", &vars(&[("max_execution_time", "2000")]), 0);
        assert_eq!(f.statement_limit.unwrap().value, Duration::from_secs(2));
    }

    #[test]
    fn counts_connections_by_the_processes_own_addresses() {
        let before = vec!["localhost".to_string(), "10.0.0.9:40000".into()];
        let after = vec![
            "localhost".to_string(),
            "localhost".into(),
            "10.0.0.9:40000".into(),
            "127.0.0.1:51000".into(),
            "127.0.0.1:51001".into(),
            "127.0.0.1:51002".into(), // someone else's
            "::1:52000".into(),
        ];
        let local: Vec<SocketAddr> = vec![
            "127.0.0.1:51000".parse().unwrap(),
            "[::ffff:127.0.0.1]:51001".parse().unwrap(),
            "[::1]:52000".parse().unwrap(),
            "127.0.0.1:9999".parse().unwrap(), // not a database connection
        ];
        assert_eq!(count_app_connections(&before, &after, &local), 3 + 1);
        assert_eq!(host_addr("[::1]:3306"), Some("[::1]:3306".parse().unwrap()));
        assert_eq!(host_addr("localhost"), None);
    }
}

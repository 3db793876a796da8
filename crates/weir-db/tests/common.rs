//! Shared by the integration tests: the server from WEIR_TEST_MYSQL_URL and a scratch
//! database per test.
#![allow(dead_code)]

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use weir_db::dsn::Dsn;

/// The test server's URL, or `None` (after printing why the test is skipped).
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("WEIR_TEST_MYSQL_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
        _ => {
            eprintln!(
                "SKIPPED {test}: WEIR_TEST_MYSQL_URL is unset; run scripts/mariadb.sh start and \
                 export WEIR_TEST_MYSQL_URL=$(scripts/mariadb.sh url)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `db`.
pub fn url_for(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{db}{query}", &base[..path_start])
}

/// A database created for one test and dropped by `drop_db`.
pub struct Scratch {
    /// Its name.
    pub name: String,
    /// A DSN naming it.
    pub url: String,
    /// A connection to it.
    pub conn: Conn,
}

impl Scratch {
    pub async fn new(server: &str, tag: &str) -> Scratch {
        let name = format!("weir_test_{tag}_{}", std::process::id());
        let mut admin = Conn::new(Opts::from_url(server).expect("WEIR_TEST_MYSQL_URL parses"))
            .await
            .expect("the test server accepts connections");
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("the test user can create databases");
        admin.disconnect().await.unwrap();
        let url = url_for(server, &name);
        let conn = Conn::new(Opts::from_url(&url).unwrap()).await.unwrap();
        Scratch { name, url, conn }
    }

    pub fn dsn(&self) -> Dsn {
        Dsn::parse(&self.url).unwrap()
    }

    pub async fn exec(&mut self, sql: &str) {
        self.conn
            .query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn drop_db(mut self) {
        let name = self.name.clone();
        self.conn
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .unwrap();
        self.conn.disconnect().await.unwrap();
    }
}

#[test]
fn url_for_replaces_the_database() {
    assert_eq!(url_for("mysql://u:p@h:1/a", "b"), "mysql://u:p@h:1/b");
    assert_eq!(url_for("mysql://u:p@h:1", "b"), "mysql://u:p@h:1/b");
    assert_eq!(
        url_for("mysql://u:p@h:1/a?x=1", "b"),
        "mysql://u:p@h:1/b?x=1"
    );
}

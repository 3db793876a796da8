//! `[[error_map]]` and `[errors]`: app exceptions the worker answers with a chosen status
//! and error class instead of `500 app-exception` (docs/config.md, docs/errors.md).
//!
//! ```toml
//! [[error_map]]
//! exception = "pymysql.err.OperationalError"   # a class path; subclasses match too
//! code = [1205, 1213]                          # optional: exc.args[0] or exc.errno
//! status = 409                                 # optional: the class's status
//! retry_after = 1                              # optional: seconds, 0 for none
//! class = "db-conflict"                        # default "app-mapped"
//!
//! [errors]
//! mysql = true                                 # the preset for the MySQL drivers
//! ```
//!
//! An entry's `class` is one of weir's mapped classes (`weir_errors::ErrorClass::MAPPED`:
//! `db-conflict`, `db-unavailable`, `db-timeout`, `app-mapped`), so every `x-weir-error` a
//! client or a dashboard can see is documented in docs/errors.md and the metric's `class`
//! label stays bounded.
//!
//! [`Config::error_map_spec`] is what the workers get (JSON, `weir worker --error-map`):
//! the `[[error_map]]` entries in file order, then the `[errors]` presets; the first entry
//! that matches an exception wins. Class paths are resolved in the worker at start (an
//! entry's class that cannot be imported stops the worker, and `weir serve --check` exits
//! 2 naming `error_map[N].exception`); a preset's classes are looked up only among the
//! modules the app has imported, so a driver that is not installed is skipped.

use serde::{Deserialize, Serialize};
use weir_errors::ErrorClass;

use crate::{Config, ConfigError};

/// The class of an entry that names none.
pub const DEFAULT_CLASS: &str = "app-mapped";

/// Retry-After (seconds) of an entry whose class carries one (`db-conflict`,
/// `db-unavailable`) and that sets no `retry_after`; the presets use it too.
pub const DEFAULT_RETRY_AFTER: u64 = 1;

/// The longest `retry_after` accepted (a day).
const MAX_RETRY_AFTER: u64 = 86_400;

/// One `[[error_map]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMapEntry {
    /// The exception's class path (`package.module.Class`; a bare name is a builtin, as
    /// `TimeoutError`). Subclasses match too.
    pub exception: String,
    /// Error codes matched against `exc.args[0]` (the MySQL drivers' errno) or
    /// `exc.errno`; absent: any exception of the class matches.
    #[serde(default)]
    pub code: Option<Codes>,
    /// The answer's status (400 to 599); absent: the class's (`app-mapped`: 500).
    pub status: Option<u16>,
    /// Retry-After in seconds (0: none); absent: [`DEFAULT_RETRY_AFTER`] on `db-conflict`
    /// and `db-unavailable`, none on the others.
    pub retry_after: Option<u64>,
    /// The `x-weir-error` class: one of `ErrorClass::MAPPED` (default `app-mapped`).
    #[serde(default = "default_class")]
    pub class: String,
}

fn default_class() -> String {
    DEFAULT_CLASS.into()
}

/// `code = 1205` or `code = [1205, 1213]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Codes {
    /// One code.
    One(i64),
    /// Any of these codes.
    Many(Vec<i64>),
}

impl Codes {
    /// The codes as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            Codes::One(c) => vec![*c],
            Codes::Many(v) => v.clone(),
        }
    }
}

/// `[errors]`: presets of `[[error_map]]` entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Map the MySQL/MariaDB drivers' (PyMySQL, mysqlclient, mysql-connector) errors:
    /// lock conflicts to 409 `db-conflict`, the server away to 503 `db-unavailable`,
    /// statement timeouts to 504 `db-timeout` ([`MYSQL_PRESET`]).
    pub mysql: bool,
}

/// One entry as the worker gets it: validated, with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappedError {
    /// Where it comes from, for messages (`error_map[0]`, `errors.mysql`).
    pub key: String,
    /// The class path.
    pub exception: String,
    /// Codes to match (empty: any).
    pub codes: Vec<i64>,
    /// The answer's status.
    pub status: u16,
    /// The `x-weir-error` class.
    pub class: &'static str,
    /// Retry-After seconds, if any.
    pub retry_after: Option<u64>,
    /// A preset's entry: looked up among the modules already imported (a driver that is
    /// not installed is skipped), never imported by the worker.
    pub preset: bool,
}

/// `[errors] mysql = true`: (codes, class) for each driver's base exception class. The
/// drivers give the server's errno (or the client's, 2002...) as `args[0]`
/// (PyMySQL, mysqlclient) or `errno` (mysql-connector).
pub const MYSQL_PRESET: [(&[i64], ErrorClass); 3] = [
    // lock wait timeout, deadlock
    (&[1205, 1213], ErrorClass::DbConflict),
    // too many connections (server, user), can't connect (socket, TCP), server gone
    // away, lost connection during query
    (
        &[1040, 1203, 2002, 2003, 2006, 2013],
        ErrorClass::DbUnavailable,
    ),
    // MySQL's MAX_EXECUTION_TIME, MariaDB's max_statement_time
    (&[3024, 1969], ErrorClass::DbTimeout),
];

/// The base exception class of each MySQL driver the preset covers.
pub const MYSQL_DRIVER_CLASSES: [&str; 3] = [
    "pymysql.err.MySQLError",
    "MySQLdb.MySQLError",
    "mysql.connector.errors.Error",
];

impl Config {
    /// What the workers match an app exception against, in order (see the module doc).
    pub fn error_map_spec(&self) -> Vec<MappedError> {
        let mut out: Vec<MappedError> = self
            .error_map
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let class = mapped_class(&e.class)?;
                Some(MappedError {
                    key: format!("error_map[{i}]"),
                    exception: e.exception.clone(),
                    codes: e.code.as_ref().map(Codes::to_vec).unwrap_or_default(),
                    status: e.status.unwrap_or_else(|| class.status().as_u16()),
                    class: class.as_str(),
                    retry_after: match e.retry_after {
                        Some(0) => None,
                        Some(s) => Some(s),
                        None => class.retry_after().then_some(DEFAULT_RETRY_AFTER),
                    },
                    preset: false,
                })
            })
            .collect();
        if self.errors.mysql {
            for driver in MYSQL_DRIVER_CLASSES {
                for (codes, class) in MYSQL_PRESET {
                    out.push(MappedError {
                        key: "errors.mysql".into(),
                        exception: driver.into(),
                        codes: codes.to_vec(),
                        status: class.status().as_u16(),
                        class: class.as_str(),
                        retry_after: class.retry_after().then_some(DEFAULT_RETRY_AFTER),
                        preset: true,
                    });
                }
            }
        }
        out
    }

    /// `[[error_map]]`: each entry's keys (the class path's form, the codes, the status,
    /// the class, Retry-After). Whether the class path imports is the worker's check.
    pub(crate) fn validate_error_map(&self) -> Result<(), ConfigError> {
        if self.upstream.is_some() && (!self.error_map.is_empty() || self.errors.mysql) {
            let key = if self.error_map.is_empty() {
                "errors.mysql"
            } else {
                "error_map"
            };
            return Err(ConfigError::invalid(
                key,
                "the error map applies to weir's own workers ([app]); an [upstream] server answers its app's exceptions itself: remove it",
            ));
        }
        for (i, e) in self.error_map.iter().enumerate() {
            let key = |k: &str| format!("error_map[{i}].{k}");
            if !is_class_path(&e.exception) {
                return Err(ConfigError::invalid(
                    key("exception"),
                    format!(
                        "{:?} is not a class path: write package.module.Class (as pymysql.err.OperationalError), or a builtin's name",
                        e.exception
                    ),
                ));
            }
            if let Some(Codes::Many(v)) = &e.code {
                if v.is_empty() {
                    return Err(ConfigError::invalid(
                        key("code"),
                        "an empty list matches nothing: list the codes, or leave code out to match every exception of the class",
                    ));
                }
            }
            if mapped_class(&e.class).is_none() {
                let names: Vec<&str> = ErrorClass::MAPPED.iter().map(|c| c.as_str()).collect();
                return Err(ConfigError::invalid(
                    key("class"),
                    format!(
                        "{:?} is not a class an error map can answer with: use one of {} (docs/errors.md)",
                        e.class,
                        names.join(", ")
                    ),
                ));
            }
            if let Some(s) = e.status {
                if !(400..=599).contains(&s) {
                    return Err(ConfigError::invalid(
                        key("status"),
                        format!("{s} is not an error status: use 400 to 599"),
                    ));
                }
            }
            if let Some(r) = e.retry_after {
                if r > MAX_RETRY_AFTER {
                    return Err(ConfigError::invalid(
                        key("retry_after"),
                        format!("{r} is out of range: use 0 (none) to {MAX_RETRY_AFTER} seconds"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The mapped class of a name (`ErrorClass::MAPPED`), or None.
fn mapped_class(name: &str) -> Option<ErrorClass> {
    ErrorClass::from_name(name.as_bytes()).filter(|c| c.mapped())
}

/// `a.b.C` or `C`: dot-separated Python identifiers (ASCII).
fn is_class_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse(
            &format!("[app]\nmodule = \"app:app\"\n{text}"),
            Path::new("weir.toml"),
        )?;
        c.apply_defaults();
        c.validate()?;
        Ok(c)
    }

    fn invalid_key(text: &str) -> String {
        match config(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn entries_with_their_defaults() {
        let c = config(
            r#"
            [[error_map]]
            exception = "pymysql.err.OperationalError"
            code = [1205, 1213]
            status = 409
            retry_after = 2
            class = "db-conflict"

            [[error_map]]
            exception = "app.errors.Busy"
            code = 7
            status = 429

            [[error_map]]
            exception = "TimeoutError"
            class = "db-timeout"

            [[error_map]]
            exception = "app.Conflict"
            class = "db-conflict"
            retry_after = 0
            "#,
        )
        .unwrap();
        let spec = c.error_map_spec();
        assert_eq!(spec.len(), 4);
        assert_eq!(
            spec[0],
            MappedError {
                key: "error_map[0]".into(),
                exception: "pymysql.err.OperationalError".into(),
                codes: vec![1205, 1213],
                status: 409,
                class: "db-conflict",
                retry_after: Some(2),
                preset: false,
            }
        );
        assert_eq!(spec[1].class, "app-mapped");
        assert_eq!(spec[1].codes, vec![7]);
        assert_eq!(spec[1].status, 429);
        assert_eq!(spec[1].retry_after, None);
        assert_eq!(spec[2].status, 504);
        assert!(spec[2].codes.is_empty());
        assert_eq!(spec[2].retry_after, None);
        // db-conflict carries Retry-After by default; 0 turns it off
        assert_eq!(spec[3].status, 409);
        assert_eq!(spec[3].retry_after, None);
    }

    #[test]
    fn no_map_by_default() {
        assert!(config("").unwrap().error_map_spec().is_empty());
    }

    #[test]
    fn mysql_preset_follows_the_entries() {
        let c = config(
            r#"
            [errors]
            mysql = true
            [[error_map]]
            exception = "app.Conflict"
            "#,
        )
        .unwrap();
        let spec = c.error_map_spec();
        assert_eq!(spec.len(), 1 + 3 * MYSQL_DRIVER_CLASSES.len());
        assert_eq!(spec[0].key, "error_map[0]");
        assert_eq!(spec[0].status, 500);
        let preset = &spec[1..];
        assert!(preset.iter().all(|e| e.preset && e.key == "errors.mysql"));
        let find = |code: i64| {
            preset
                .iter()
                .find(|e| e.exception == "pymysql.err.MySQLError" && e.codes.contains(&code))
                .unwrap_or_else(|| panic!("no preset entry for {code}"))
        };
        for code in [1205, 1213] {
            let e = find(code);
            assert_eq!(
                (e.status, e.class, e.retry_after),
                (409, "db-conflict", Some(1))
            );
        }
        for code in [1040, 1203, 2002, 2003, 2006, 2013] {
            let e = find(code);
            assert_eq!(
                (e.status, e.class, e.retry_after),
                (503, "db-unavailable", Some(1))
            );
        }
        for code in [3024, 1969] {
            let e = find(code);
            assert_eq!(
                (e.status, e.class, e.retry_after),
                (504, "db-timeout", None)
            );
        }
        for driver in MYSQL_DRIVER_CLASSES {
            assert_eq!(preset.iter().filter(|e| e.exception == driver).count(), 3);
        }
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, key) in [
            (
                "[[error_map]]\nexception = \"pymysql.err.\"\n",
                "error_map[0].exception",
            ),
            (
                "[[error_map]]\nexception = \"a.b\"\n[[error_map]]\nexception = \"not a path\"\n",
                "error_map[1].exception",
            ),
            (
                "[[error_map]]\nexception = \"\"\n",
                "error_map[0].exception",
            ),
            (
                "[[error_map]]\nexception = \"a.1b\"\n",
                "error_map[0].exception",
            ),
            (
                "[[error_map]]\nexception = \"a.B\"\ncode = []\n",
                "error_map[0].code",
            ),
            (
                "[[error_map]]\nexception = \"a.B\"\nstatus = 200\n",
                "error_map[0].status",
            ),
            (
                "[[error_map]]\nexception = \"a.B\"\nstatus = 600\n",
                "error_map[0].status",
            ),
            (
                "[[error_map]]\nexception = \"a.B\"\nclass = \"my-class\"\n",
                "error_map[0].class",
            ),
            // a class weir makes for other reasons is not the map's to give
            (
                "[[error_map]]\nexception = \"a.B\"\nclass = \"queue-full\"\n",
                "error_map[0].class",
            ),
            (
                "[[error_map]]\nexception = \"a.B\"\nretry_after = 100000\n",
                "error_map[0].retry_after",
            ),
        ] {
            assert_eq!(invalid_key(text), key, "{text}");
        }
    }

    #[test]
    fn no_map_before_an_upstream() {
        for (text, key) in [
            ("[[error_map]]\nexception = \"a.B\"\n", "error_map"),
            ("[errors]\nmysql = true\n", "errors.mysql"),
        ] {
            let c = Config::parse(
                &format!("[upstream]\nservers = [\"127.0.0.1:9000\"]\n{text}"),
                Path::new("weir.toml"),
            )
            .unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_types_are_parse_errors() {
        for text in [
            "[[error_map]]\nexception = \"a.B\"\nstatuss = 409\n",
            "[[error_map]]\ncode = 1\n",
            "[[error_map]]\nexception = \"a.B\"\ncode = \"1205\"\n",
            "[errors]\npostgres = true\n",
        ] {
            assert!(
                matches!(config(text), Err(ConfigError::Parse { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn class_paths() {
        for ok in ["TimeoutError", "pymysql.err.OperationalError", "_x.Y_1"] {
            assert!(is_class_path(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "a.", ".a", "a-b.C", "a:B", "a.b C", "é.A"] {
            assert!(!is_class_path(bad), "{bad}");
        }
    }
}

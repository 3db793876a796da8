//! `weir db audit`: loads each table's indexes and foreign keys from `information_schema`
//! and prints what [`crate::redundancy::analyze`] finds. It only reads; the suggested
//! statements are for a person (or a migration) to run.
//!
//! `information_schema.STATISTICS` differs between servers, so its rows are read by column
//! name ([`KeyPart::from_columns`]): `COLLATION` (`D` for a descending key part) on both,
//! `IGNORED` on MariaDB 10.6+, `IS_VISIBLE` on MySQL 8. Database and table names are
//! compared the way the server's `lower_case_table_names` says.

use std::collections::BTreeMap;
use std::io::Write;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use serde::Serialize;

use crate::cli::AuditArgs;
use crate::error::{query_hint, DbError};
use crate::output::emit;
use crate::redundancy::{analyze, ForeignKey, Index, IndexColumn, NameCase, Table, Visibility};
use crate::row::{number, text};

/// The result of an audit (also its JSON form).
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Databases checked.
    pub databases: Vec<String>,
    /// Base tables checked.
    pub tables_checked: usize,
    /// What was found, by database, table and index order.
    pub findings: Vec<crate::redundancy::Finding>,
}

const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

const TABLES_SQL: &str = "SELECT TABLE_NAME, COALESCE(ENGINE, '') FROM information_schema.TABLES \
     WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME";
// Every column: which ones exist depends on the server (see the module docs).
const INDEXES_SQL: &str = "SELECT * FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? \
     ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX";
const FKS_SQL: &str = "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_SCHEMA, \
     REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
     WHERE TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME IS NOT NULL \
     ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION";

/// Runs the audit and writes its text (or, with `--json -`, its JSON) to `out`.
pub async fn run(args: &AuditArgs, out: &mut (dyn Write + Send)) -> Result<AuditReport, DbError> {
    let target = args.dsn.shown().to_owned();
    let qerr = |what: &'static str| {
        let target = target.clone();
        move |source: mysql_async::Error| DbError::Query {
            what,
            target: target.clone(),
            hint: query_hint(&source),
            source,
        }
    };
    let mut conn = args.dsn.connect().await?;
    let names = name_case(&mut conn)
        .await
        .map_err(qerr("reading lower_case_table_names"))?;
    let all: Vec<String> = conn
        .query::<String, _>(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        )
        .await
        .map_err(qerr("listing databases"))?;
    let databases: Vec<String> = match args.database.as_deref().or(args.dsn.database()) {
        Some(db) => match all.iter().find(|s| names.same(s, db)) {
            // The server's spelling, for the queries and the report.
            Some(s) => vec![s.clone()],
            None => {
                return Err(DbError::BadInput(format!(
                    "there is no database {db:?} on {target} (or the user cannot see it); the server has: {}",
                    all.join(", ")
                )));
            }
        },
        None => all
            .into_iter()
            .filter(|s| !SYSTEM_SCHEMAS.iter().any(|sys| names.same(s, sys)))
            .collect(),
    };
    let mut tables = Vec::new();
    for db in &databases {
        tables.extend(
            load(&mut conn, db, names)
                .await
                .map_err(qerr("reading information_schema"))?,
        );
    }
    // Best effort: the audit is complete whether or not the goodbye reaches the server.
    let _ = conn.disconnect().await;

    let findings: Vec<_> = tables.iter().flat_map(analyze).collect();
    let report = AuditReport {
        databases,
        tables_checked: tables.len(),
        findings,
    };
    emit(&report, args.json.as_deref(), out, print_text)?;
    Ok(report)
}

/// How the server compares database and table names (`@@lower_case_table_names`; a server
/// without the variable is taken as case-sensitive, the Unix default).
pub async fn name_case(conn: &mut Conn) -> Result<NameCase, mysql_async::Error> {
    let rows: Vec<Row> = conn.query("SELECT @@lower_case_table_names").await?;
    let value = rows.first().and_then(|r| number(r, 0)).unwrap_or(0);
    Ok(NameCase::from_lower_case_table_names(value))
}

/// One row of `information_schema.STATISTICS`: a key part of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPart {
    /// The table.
    pub table: String,
    /// The index.
    pub index: String,
    /// `NON_UNIQUE = 0`.
    pub unique: bool,
    /// `INDEX_TYPE` (`BTREE` when missing).
    pub kind: String,
    /// The key part itself.
    pub column: IndexColumn,
    /// `IGNORED = 'YES'` (MariaDB) or `IS_VISIBLE = 'NO'` (MySQL 8).
    pub visibility: Visibility,
}

impl KeyPart {
    /// From a row's values looked up by column name (`None` for NULL or a column the
    /// server does not have).
    pub fn from_columns(get: impl Fn(&str) -> Option<String>) -> KeyPart {
        let index = get("INDEX_NAME").unwrap_or_default();
        let yes = |col: &str| get(col).is_some_and(|v| v.trim().eq_ignore_ascii_case("YES"));
        let no = |col: &str| get(col).is_some_and(|v| v.trim().eq_ignore_ascii_case("NO"));
        let visibility = if yes("IGNORED") {
            Visibility::Ignored
        } else if no("IS_VISIBLE") {
            Visibility::Invisible
        } else {
            Visibility::Visible
        };
        KeyPart {
            table: get("TABLE_NAME").unwrap_or_default(),
            // MySQL's functional key parts have no column name: make them match nothing
            // else.
            column: IndexColumn {
                name: get("COLUMN_NAME").unwrap_or_else(|| format!("<expression of {index}>")),
                sub_part: get("SUB_PART").and_then(|v| v.trim().parse().ok()),
                descending: get("COLLATION").is_some_and(|v| v.trim() == "D"),
            },
            unique: get("NON_UNIQUE").is_some_and(|v| v.trim() == "0"),
            kind: get("INDEX_TYPE").unwrap_or_else(|| "BTREE".into()),
            index,
            visibility,
        }
    }

    /// From a `SELECT *` row of `information_schema.STATISTICS`.
    fn from_row(r: &Row) -> KeyPart {
        let cols = r.columns_ref();
        KeyPart::from_columns(|name| {
            let i = cols
                .iter()
                .position(|c| c.name_str().eq_ignore_ascii_case(name))?;
            text(r, i)
        })
    }
}

/// Reads one database's base tables, indexes and foreign keys.
pub async fn load(
    conn: &mut Conn,
    db: &str,
    names: NameCase,
) -> Result<Vec<Table>, mysql_async::Error> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let rows: Vec<Row> = conn.exec(TABLES_SQL, (db,)).await?;
    for r in &rows {
        let name = text(r, 0).unwrap_or_default();
        tables.insert(
            name.clone(),
            Table {
                schema: db.to_owned(),
                name,
                engine: text(r, 1).unwrap_or_default(),
                names,
                ..Table::default()
            },
        );
    }
    let rows: Vec<Row> = conn.exec(INDEXES_SQL, (db,)).await?;
    for r in &rows {
        let part = KeyPart::from_row(r);
        let Some(t) = tables.get_mut(&part.table) else {
            continue; // a view or a table created since the first read
        };
        match t.indexes.iter_mut().find(|i| i.name == part.index) {
            Some(i) => i.columns.push(part.column),
            None => t.indexes.push(Index {
                name: part.index,
                unique: part.unique,
                kind: part.kind,
                columns: vec![part.column],
                visibility: part.visibility,
            }),
        }
    }
    let rows: Vec<Row> = conn.exec(FKS_SQL, (db,)).await?;
    for r in &rows {
        let Some(t) = tables.get_mut(&text(r, 0).unwrap_or_default()) else {
            continue;
        };
        let name = text(r, 1).unwrap_or_default();
        let (col, ref_col) = (
            text(r, 2).unwrap_or_default(),
            text(r, 5).unwrap_or_default(),
        );
        match t.foreign_keys.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                f.columns.push(col);
                f.ref_columns.push(ref_col);
            }
            None => t.foreign_keys.push(ForeignKey {
                name,
                columns: vec![col],
                ref_schema: text(r, 3).unwrap_or_default(),
                ref_table: text(r, 4).unwrap_or_default(),
                ref_columns: vec![ref_col],
            }),
        }
    }
    Ok(tables.into_values().collect())
}

/// The report as text: one block per finding, then a summary line.
pub fn print_text(r: &AuditReport, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    for f in &r.findings {
        let what = match (&f.index, &f.constraint) {
            (Some(i), _) => format!("index `{i}`"),
            (None, Some(c)) => format!("foreign key `{c}`"),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{}.{}: {} {what} {}: {}",
            f.schema,
            f.table,
            f.kind.as_str(),
            f.shown_columns(),
            f.reason
        )?;
        match &f.suggestion {
            Some(s) => writeln!(out, "    {s}")?,
            None => writeln!(out, "    (no statement suggested)")?,
        }
    }
    let drops = r.findings.iter().filter(|f| f.suggestion.is_some()).count();
    writeln!(
        out,
        "weir db audit: {} findings ({drops} with a suggested statement) in {} tables of {}",
        r.findings.len(),
        r.tables_checked,
        if r.databases.is_empty() {
            "no database".to_owned()
        } else {
            r.databases.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn part(cols: &[(&str, Option<&str>)]) -> KeyPart {
        let map: HashMap<String, Option<String>> = cols
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect();
        KeyPart::from_columns(|name| map.get(name).cloned().flatten())
    }

    #[test]
    fn reads_mariadbs_statistics() {
        let p = part(&[
            ("TABLE_NAME", Some("t")),
            ("INDEX_NAME", Some("k")),
            ("NON_UNIQUE", Some("1")),
            ("COLUMN_NAME", Some("b")),
            ("COLLATION", Some("D")),
            ("SUB_PART", Some("10")),
            ("INDEX_TYPE", Some("BTREE")),
            ("IGNORED", Some("YES")),
        ]);
        assert_eq!(
            p,
            KeyPart {
                table: "t".into(),
                index: "k".into(),
                unique: false,
                kind: "BTREE".into(),
                column: IndexColumn {
                    name: "b".into(),
                    sub_part: Some(10),
                    descending: true,
                },
                visibility: Visibility::Ignored,
            }
        );
        let p = part(&[
            ("INDEX_NAME", Some("u")),
            ("NON_UNIQUE", Some("0")),
            ("COLUMN_NAME", Some("a")),
            ("COLLATION", Some("A")),
            ("IGNORED", Some("NO")),
        ]);
        assert!(p.unique && !p.column.descending);
        assert_eq!(p.visibility, Visibility::Visible);
        assert_eq!(p.kind, "BTREE");
    }

    #[test]
    fn reads_mysql_8s_statistics() {
        // MySQL 8: IS_VISIBLE instead of IGNORED, EXPRESSION for functional key parts.
        let p = part(&[
            ("TABLE_NAME", Some("t")),
            ("INDEX_NAME", Some("k")),
            ("NON_UNIQUE", Some("1")),
            ("COLUMN_NAME", Some("a")),
            ("COLLATION", Some("D")),
            ("INDEX_TYPE", Some("BTREE")),
            ("IS_VISIBLE", Some("NO")),
            ("EXPRESSION", None),
        ]);
        assert_eq!(p.visibility, Visibility::Invisible);
        assert!(p.column.descending);
        let p = part(&[
            ("INDEX_NAME", Some("f")),
            ("COLUMN_NAME", None),
            ("IS_VISIBLE", Some("YES")),
            ("EXPRESSION", Some("(lower(`a`))")),
        ]);
        assert_eq!(p.visibility, Visibility::Visible);
        assert_eq!(p.column.name, "<expression of f>");
    }

    #[test]
    fn reads_older_servers_statistics() {
        // No IGNORED, no IS_VISIBLE; COLLATION NULL for a HASH or FULLTEXT index.
        let p = part(&[
            ("INDEX_NAME", Some("ft")),
            ("COLUMN_NAME", Some("body")),
            ("COLLATION", None),
            ("INDEX_TYPE", Some("FULLTEXT")),
        ]);
        assert_eq!(p.visibility, Visibility::Visible);
        assert!(!p.column.descending && p.column.sub_part.is_none());
    }
}

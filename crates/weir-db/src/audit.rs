//! `weir db audit`: loads each table's indexes and foreign keys from `information_schema`
//! and prints what [`crate::redundancy::analyze`] finds. It only reads; the suggested
//! statements are for a person (or a migration) to run.

use std::collections::BTreeMap;
use std::io::Write;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use serde::Serialize;

use crate::cli::AuditArgs;
use crate::error::{query_hint, DbError};
use crate::output::emit;
use crate::redundancy::{analyze, ForeignKey, Index, IndexColumn, Table};
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
const INDEXES_SQL: &str = "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, \
     SUB_PART, INDEX_TYPE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? \
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
    let all: Vec<String> = conn
        .query::<String, _>(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        )
        .await
        .map_err(qerr("listing databases"))?;
    let databases: Vec<String> = match args.database.as_deref().or(args.dsn.database()) {
        Some(db) => {
            if !all.iter().any(|s| s == db) {
                return Err(DbError::BadInput(format!(
                    "there is no database {db:?} on {target} (or the user cannot see it); the server has: {}",
                    all.join(", ")
                )));
            }
            vec![db.to_owned()]
        }
        None => all
            .into_iter()
            .filter(|s| !SYSTEM_SCHEMAS.contains(&s.to_lowercase().as_str()))
            .collect(),
    };
    let mut tables = Vec::new();
    for db in &databases {
        tables.extend(
            load(&mut conn, db)
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

/// Reads one database's base tables, indexes and foreign keys.
pub async fn load(conn: &mut Conn, db: &str) -> Result<Vec<Table>, mysql_async::Error> {
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
                ..Table::default()
            },
        );
    }
    let rows: Vec<Row> = conn.exec(INDEXES_SQL, (db,)).await?;
    for r in &rows {
        let Some(t) = tables.get_mut(&text(r, 0).unwrap_or_default()) else {
            continue; // a view or a table created since the first read
        };
        let name = text(r, 1).unwrap_or_default();
        // MySQL's functional key parts have no column name: make them match nothing else.
        let column = text(r, 4).unwrap_or_else(|| format!("<expression of {name}>"));
        let col = IndexColumn {
            name: column,
            sub_part: number(r, 5),
        };
        match t.indexes.iter_mut().find(|i| i.name == name) {
            Some(i) => i.columns.push(col),
            None => t.indexes.push(Index {
                unique: number(r, 2) == Some(0),
                kind: text(r, 6).unwrap_or_else(|| "BTREE".into()),
                name,
                columns: vec![col],
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
            "{}.{}: {} {what} ({}): {}",
            f.schema,
            f.table,
            f.kind.as_str(),
            f.columns.join(", "),
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

//! `weir db audit` against a real server: a schema built to have each kind of finding,
//! the JSON output, and every suggested statement actually accepted by the server.

mod common;

use std::collections::BTreeSet;

use mysql_async::prelude::Queryable;
use weir_db::cli::AuditArgs;
use weir_db::redundancy::Kind;

const SCHEMA: &[&str] = &[
    "CREATE TABLE parent (id INT PRIMARY KEY, x INT NOT NULL, y INT NOT NULL, KEY k_xy (x, y)) ENGINE=InnoDB",
    // duplicate-index: k_a2 twin of k_a1
    "CREATE TABLE t_dup (id INT PRIMARY KEY, a INT, KEY k_a1 (a), KEY k_a2 (a)) ENGINE=InnoDB",
    // left-prefix-index: k_a is a left prefix of k_ab
    "CREATE TABLE t_prefix (id INT PRIMARY KEY, a INT, b INT, KEY k_a (a), KEY k_ab (a, b)) ENGINE=InnoDB",
    // duplicate-primary-key: k_id is the PK's twin; primary-key-suffix-explicit: k_a_id
    // ends with the PK
    "CREATE TABLE t_pk (id INT PRIMARY KEY, a INT, KEY k_id (id), KEY k_a_id (a, id)) ENGINE=InnoDB",
    // a unique twin of a unique index: dropped, the other keeps the constraint
    "CREATE TABLE t_unique (id INT PRIMARY KEY, a INT, UNIQUE KEY u1 (a), UNIQUE KEY u2 (a)) ENGINE=InnoDB",
    // duplicate-foreign-key
    "CREATE TABLE t_fkdup (id INT PRIMARY KEY, p INT, KEY k_p (p), \
       CONSTRAINT fk_one FOREIGN KEY (p) REFERENCES parent (id), \
       CONSTRAINT fk_two FOREIGN KEY (p) REFERENCES parent (id)) ENGINE=InnoDB",
    // foreign-key-without-index: only possible with foreign_key_checks=0
    "SET SESSION foreign_key_checks = 0",
    "CREATE TABLE t_fknoidx (id INT PRIMARY KEY, p INT, KEY k_p (p), \
       CONSTRAINT fk_noidx FOREIGN KEY (p) REFERENCES parent (id)) ENGINE=InnoDB",
    "ALTER TABLE t_fknoidx DROP INDEX k_p",
    "SET SESSION foreign_key_checks = 1",
    // index-needed-by-foreign-key: k_b_id repeats the PK, but fk_pair (b, id) needs it
    "CREATE TABLE t_fkneeds (id INT PRIMARY KEY, b INT NOT NULL, KEY k_b_id (b, id), \
       CONSTRAINT fk_pair FOREIGN KEY (b, id) REFERENCES parent (x, y)) ENGINE=InnoDB",
    // clean: nothing to say
    "CREATE TABLE t_clean (id INT PRIMARY KEY, a INT, b INT, KEY k_a (a), KEY k_b (b)) ENGINE=InnoDB",
];

#[tokio::test]
async fn finds_each_kind_and_its_suggestions_run() {
    let Some(server) = common::server_url("audit") else {
        return;
    };
    let mut db = common::Scratch::new(&server, "audit").await;
    for s in SCHEMA {
        db.exec(s).await;
    }
    let dir = std::env::temp_dir().join(format!("weir-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("audit.json");
    let args = AuditArgs {
        dsn: db.dsn(),
        database: None,
        json: Some(json_path.clone()),
    };
    let mut out = Vec::new();
    let report = weir_db::audit::run(&args, &mut out)
        .await
        .expect("audit runs");
    let text = String::from_utf8(out).unwrap();

    let got: BTreeSet<(String, Kind, String)> = report
        .findings
        .iter()
        .map(|f| {
            let what = f.index.clone().or(f.constraint.clone()).unwrap();
            (f.table.clone(), f.kind, what)
        })
        .collect();
    let want: BTreeSet<(String, Kind, String)> = [
        ("t_dup", Kind::DuplicateIndex, "k_a2"),
        ("t_prefix", Kind::LeftPrefixIndex, "k_a"),
        ("t_pk", Kind::DuplicatePrimaryKey, "k_id"),
        ("t_pk", Kind::PrimaryKeySuffixExplicit, "k_a_id"),
        ("t_unique", Kind::DuplicateIndex, "u2"),
        ("t_fkdup", Kind::DuplicateForeignKey, "fk_two"),
        ("t_fknoidx", Kind::ForeignKeyWithoutIndex, "fk_noidx"),
        ("t_fkneeds", Kind::IndexNeededByForeignKey, "k_b_id"),
    ]
    .into_iter()
    .map(|(t, k, i)| (t.to_owned(), k, i.to_owned()))
    .collect();
    assert_eq!(got, want, "text output:\n{text}");
    assert_eq!(report.tables_checked, 9);

    // Every finding has a statement but the FK-needed index.
    for f in &report.findings {
        if f.kind == Kind::IndexNeededByForeignKey {
            assert_eq!(f.suggestion, None, "{f:?}");
        } else {
            assert!(f.suggestion.is_some(), "{f:?}");
        }
    }
    assert!(text.contains("ALTER TABLE"), "{text}");
    assert!(text.contains("9 tables"), "{text}");

    // JSON: an object with a `findings` list.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let list = json["findings"].as_array().expect("findings is a list");
    assert_eq!(list.len(), report.findings.len());
    assert!(list
        .iter()
        .any(|f| f["kind"] == "left-prefix-index" && f["index"] == "k_a"));

    // What the audit says about the FK-needed index is true: the shortened form fails.
    let r = db
        .conn
        .query_drop("ALTER TABLE t_fkneeds DROP INDEX k_b_id, ADD INDEX k_b_id (b)")
        .await;
    match r {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1553, "{e}"),
        other => panic!("expected error 1553, got {other:?}"),
    }

    // Every suggested statement runs, and afterwards only the unsuggested findings remain.
    for f in &report.findings {
        if let Some(sql) = &f.suggestion {
            db.exec(sql).await;
        }
    }
    let mut out = Vec::new();
    let args = AuditArgs { json: None, ..args };
    let after = weir_db::audit::run(&args, &mut out).await.unwrap();
    let left: BTreeSet<String> = after
        .findings
        .iter()
        .map(|f| f.index.clone().or(f.constraint.clone()).unwrap())
        .collect();
    assert_eq!(
        left,
        ["k_b_id"].into_iter().map(String::from).collect(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn an_unknown_database_is_bad_input() {
    let Some(server) = common::server_url("audit unknown db") else {
        return;
    };
    let args = AuditArgs {
        dsn: weir_db::dsn::Dsn::parse(&server).unwrap(),
        database: Some("no_such_database_weir".into()),
        json: None,
    };
    let e = weir_db::audit::run(&args, &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("no_such_database_weir"), "{e}");
}

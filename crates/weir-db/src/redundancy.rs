//! The analysis behind `weir db audit`: one table's indexes and foreign keys in, findings
//! out. Pure, so every rule is unit-tested without a server.
//!
//! Rules, for each secondary index X (BTREE unless said otherwise), first match wins:
//! 1. **left-prefix-index**: X is not unique and its columns are a strict left prefix of
//!    another index Z's (the longest such Z covers it). Not when Z is exactly X followed
//!    by the primary key columns on InnoDB: there Z is the redundant one (rule 3).
//! 2. **duplicate-index** (or **repeats-primary-key** when the twin is `PRIMARY`): another
//!    index of the same type has exactly X's columns and comes first in the order PRIMARY,
//!    unique indexes, others, each by name.
//! 3. **repeats-primary-key** (InnoDB): X is not unique and its columns are some columns P
//!    followed by all the primary key's columns. InnoDB already appends the primary key to
//!    every secondary index, so X is stored as (P, pk) either way: drop it when an index on
//!    exactly P exists, otherwise re-create it as (P).
//!
//! A unique index is never proposed for dropping (it enforces a constraint; for an exact
//! twin of a unique index the finding is reported without a suggestion). Column prefixes
//! (`col(10)`) only match the same prefix length.
//!
//! Foreign keys (an index "supports" a foreign key when the key's columns are the index's
//! leading columns, in order, without prefix lengths, as InnoDB requires; for an existing
//! InnoDB secondary index the primary key columns it carries count too, but not for an
//! index added by the same ALTER, which is why `DROP INDEX x, ADD INDEX x (a)` can fail
//! where `DROP INDEX x` after an existing `(a)` does not, as MariaDB 10.11 shows):
//! - **duplicate-foreign-key**: same columns referencing the same table and columns as
//!   another constraint (the first by name is kept): `DROP FOREIGN KEY`.
//! - **foreign-key-without-index**: no index supports it (possible after
//!   `foreign_key_checks=0`, or on engines that do not create one): `ADD INDEX`.
//! - **index-needed-by-foreign-key**: an index found redundant above whose DROP would fail
//!   (MySQL error 1553) because, after the other suggested drops, no remaining index
//!   supports some foreign key. It keeps its finding, with the reason and no suggestion.

use serde::Serialize;

/// A column of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexColumn {
    /// Column name (or an expression for MySQL's functional key parts).
    pub name: String,
    /// Prefix length (`col(10)`), if any.
    pub sub_part: Option<u64>,
}

impl IndexColumn {
    fn same(&self, o: &IndexColumn) -> bool {
        self.name.eq_ignore_ascii_case(&o.name) && self.sub_part == o.sub_part
    }
    fn show(&self) -> String {
        match self.sub_part {
            Some(n) => format!("{}({n})", self.name),
            None => self.name.clone(),
        }
    }
}

/// An index as `information_schema.STATISTICS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Name (`PRIMARY` for the primary key).
    pub name: String,
    /// Enforces uniqueness (the primary key does).
    pub unique: bool,
    /// `BTREE`, `HASH`, `FULLTEXT`, `SPATIAL`, ...
    pub kind: String,
    /// Columns in order.
    pub columns: Vec<IndexColumn>,
}

impl Index {
    fn is_primary(&self) -> bool {
        self.name == "PRIMARY"
    }
    fn is_btree(&self) -> bool {
        self.kind.eq_ignore_ascii_case("BTREE")
    }
    fn same_columns(&self, o: &Index) -> bool {
        self.kind.eq_ignore_ascii_case(&o.kind) && cols_eq(&self.columns, &o.columns)
    }
    /// Whether the columns `cols` (the index's own, or with the primary key InnoDB
    /// appends) can back `fk`.
    fn supports_with(&self, cols: &[IndexColumn], fk: &ForeignKey) -> bool {
        self.is_btree()
            && cols.len() >= fk.columns.len()
            && cols
                .iter()
                .zip(&fk.columns)
                .all(|(c, f)| c.sub_part.is_none() && c.name.eq_ignore_ascii_case(f))
    }
    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(IndexColumn::show).collect()
    }
}

fn cols_eq(a: &[IndexColumn], b: &[IndexColumn]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

fn is_strict_prefix(a: &[IndexColumn], b: &[IndexColumn]) -> bool {
    a.len() < b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

/// A foreign key constraint of the table (the child side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// Constraint name.
    pub name: String,
    /// The child's columns, in order.
    pub columns: Vec<String>,
    /// Referenced database.
    pub ref_schema: String,
    /// Referenced table.
    pub ref_table: String,
    /// Referenced columns, in order.
    pub ref_columns: Vec<String>,
}

impl ForeignKey {
    fn same_reference(&self, o: &ForeignKey) -> bool {
        let eq = |a: &[String], b: &[String]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
        };
        eq(&self.columns, &o.columns)
            && self.ref_schema.eq_ignore_ascii_case(&o.ref_schema)
            && self.ref_table.eq_ignore_ascii_case(&o.ref_table)
            && eq(&self.ref_columns, &o.ref_columns)
    }
}

/// One table's keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Database.
    pub schema: String,
    /// Table.
    pub name: String,
    /// Storage engine (`InnoDB`, ...).
    pub engine: String,
    /// Indexes, the primary key included.
    pub indexes: Vec<Index>,
    /// Foreign keys declared on this table.
    pub foreign_keys: Vec<ForeignKey>,
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Same columns as another index.
    DuplicateIndex,
    /// A left prefix of another index.
    LeftPrefixIndex,
    /// Repeats the primary key (its twin, or its columns appended, on InnoDB).
    RepeatsPrimaryKey,
    /// Same columns and reference as another foreign key.
    DuplicateForeignKey,
    /// No index supports the foreign key.
    ForeignKeyWithoutIndex,
    /// Redundant, but a foreign key needs it: its DROP would fail.
    IndexNeededByForeignKey,
}

impl Kind {
    /// The kebab-case name used in text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DuplicateIndex => "duplicate-index",
            Kind::LeftPrefixIndex => "left-prefix-index",
            Kind::RepeatsPrimaryKey => "repeats-primary-key",
            Kind::DuplicateForeignKey => "duplicate-foreign-key",
            Kind::ForeignKeyWithoutIndex => "foreign-key-without-index",
            Kind::IndexNeededByForeignKey => "index-needed-by-foreign-key",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Database.
    pub schema: String,
    /// Table.
    pub table: String,
    /// What is wrong.
    pub kind: Kind,
    /// The index concerned (none for foreign key findings).
    pub index: Option<String>,
    /// The foreign key concerned (for foreign key findings and index-needed-by-foreign-key).
    pub constraint: Option<String>,
    /// Its columns.
    pub columns: Vec<String>,
    /// Whether the index enforces uniqueness.
    pub unique: bool,
    /// The index or constraint that makes it redundant.
    pub covered_by: Option<String>,
    /// That one's columns.
    pub covered_by_columns: Vec<String>,
    /// The statement that fixes it (weir never runs it); none when it must not be dropped.
    pub suggestion: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
}

/// Quotes an identifier with backticks.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

fn order_key(i: &Index) -> (u8, String) {
    let rank = if i.is_primary() {
        0
    } else if i.unique {
        1
    } else {
        2
    };
    (rank, i.name.to_lowercase())
}

/// Analyzes one table.
pub fn analyze(t: &Table) -> Vec<Finding> {
    let qt = format!("{}.{}", ident(&t.schema), ident(&t.name));
    let mut idx: Vec<&Index> = t.indexes.iter().collect();
    idx.sort_by_key(|i| order_key(i));
    let pk = idx.iter().copied().find(|i| i.is_primary());
    let innodb = t.engine.eq_ignore_ascii_case("InnoDB");
    // Columns P when `x` is (P, pk...) with P non-empty, on InnoDB.
    let pk_suffix_head = |x: &Index| -> Option<Vec<IndexColumn>> {
        let pk = pk?;
        if !innodb || x.is_primary() || pk.columns.iter().any(|c| c.sub_part.is_some()) {
            return None;
        }
        let n = x.columns.len().checked_sub(pk.columns.len())?;
        (n > 0 && cols_eq(&x.columns[n..], &pk.columns)).then(|| x.columns[..n].to_vec())
    };

    // Index findings, with what each proposes: (finding, index dropped, index added).
    let mut found: Vec<(Finding, Option<&Index>, Option<Index>)> = Vec::new();
    for (pos, x) in idx.iter().copied().enumerate() {
        if x.is_primary() {
            continue;
        }
        let base = |kind: Kind, by: &Index, reason: String| Finding {
            schema: t.schema.clone(),
            table: t.name.clone(),
            kind,
            index: Some(x.name.clone()),
            constraint: None,
            columns: x.column_names(),
            unique: x.unique,
            covered_by: Some(by.name.clone()),
            covered_by_columns: by.column_names(),
            suggestion: None,
            reason,
        };
        let drop_sql = format!("ALTER TABLE {qt} DROP INDEX {};", ident(&x.name));

        // 1. left prefix of a longer index
        if !x.unique && x.is_btree() {
            let cover = idx
                .iter()
                .copied()
                .filter(|z| z.is_btree() && is_strict_prefix(&x.columns, &z.columns))
                .filter(|z| !pk_suffix_head(z).is_some_and(|head| cols_eq(&head, &x.columns)))
                .max_by_key(|z| (z.columns.len(), std::cmp::Reverse(order_key(z))));
            if let Some(z) = cover {
                let mut f = base(
                    Kind::LeftPrefixIndex,
                    z,
                    format!(
                        "({}) is a left prefix of {} ({}), which serves the same lookups",
                        x.column_names().join(", "),
                        ident(&z.name),
                        z.column_names().join(", ")
                    ),
                );
                f.suggestion = Some(drop_sql);
                found.push((f, Some(x), None));
                continue;
            }
        }
        // 2. exact duplicate of an index that comes first
        if let Some(y) = idx[..pos].iter().copied().find(|y| y.same_columns(x)) {
            let kind = if y.is_primary() {
                Kind::RepeatsPrimaryKey
            } else {
                Kind::DuplicateIndex
            };
            let mut f = base(kind, y, format!("same columns as {}", ident(&y.name)));
            if x.unique {
                f.reason.push_str(
                    "; it enforces uniqueness, so weir does not propose dropping it: drop one twin by hand once you are sure",
                );
                found.push((f, None, None));
            } else {
                f.suggestion = Some(drop_sql);
                found.push((f, Some(x), None));
            }
            continue;
        }
        // 3. ends with the primary key, which InnoDB appends anyway
        if x.unique {
            continue;
        }
        let (Some(head), Some(pk)) = (pk_suffix_head(x), pk) else {
            continue;
        };
        let twin = idx
            .iter()
            .copied()
            .find(|w| !std::ptr::eq(*w, x) && w.is_btree() && cols_eq(&w.columns, &head));
        let heads: Vec<String> = head.iter().map(IndexColumn::show).collect();
        match twin {
            Some(w) => {
                let mut f = base(
                    Kind::RepeatsPrimaryKey,
                    w,
                    format!(
                        "InnoDB stores {} as ({}, {}) already: ({}) repeats the primary key",
                        ident(&w.name),
                        heads.join(", "),
                        pk.column_names().join(", "),
                        x.column_names().join(", ")
                    ),
                );
                f.suggestion = Some(drop_sql);
                found.push((f, Some(x), None));
            }
            None => {
                let mut f = base(
                    Kind::RepeatsPrimaryKey,
                    pk,
                    format!(
                        "InnoDB appends the primary key ({}) to every secondary index: ({}) is enough",
                        pk.column_names().join(", "),
                        heads.join(", ")
                    ),
                );
                let cols: Vec<String> = head
                    .iter()
                    .map(|c| match c.sub_part {
                        Some(n) => format!("{}({n})", ident(&c.name)),
                        None => ident(&c.name),
                    })
                    .collect();
                f.suggestion = Some(format!(
                    "ALTER TABLE {qt} DROP INDEX {n}, ADD INDEX {n} ({});",
                    cols.join(", "),
                    n = ident(&x.name)
                ));
                let replacement = Index {
                    name: x.name.clone(),
                    unique: false,
                    kind: x.kind.clone(),
                    columns: head,
                };
                found.push((f, Some(x), Some(replacement)));
            }
        }
    }

    // The columns an existing index offers a foreign key: InnoDB secondary indexes carry
    // the primary key columns they do not already have.
    let stored = |i: &Index| -> Vec<IndexColumn> {
        let mut cols = i.columns.clone();
        if let (true, false, Some(pk)) = (innodb, i.is_primary(), pk) {
            for c in &pk.columns {
                if !cols.iter().any(|x| x.name.eq_ignore_ascii_case(&c.name)) {
                    cols.push(c.clone());
                }
            }
        }
        cols
    };
    let supports = |i: &Index, added: bool, fk: &ForeignKey| {
        if added {
            i.supports_with(&i.columns, fk)
        } else {
            i.supports_with(&stored(i), fk)
        }
    };

    // Would each proposed DROP leave every foreign key an index? Apply them in order;
    // (index, added by a suggestion) pairs.
    let mut remaining: Vec<(Index, bool)> = t.indexes.iter().map(|i| (i.clone(), false)).collect();
    let mut out = Vec::new();
    for (mut f, dropped, added) in found {
        if let Some(d) = dropped {
            let mut after: Vec<(Index, bool)> = remaining
                .iter()
                .filter(|(i, _)| i.name != d.name)
                .cloned()
                .collect();
            let replaced = added.is_some();
            after.extend(added.map(|i| (i, true)));
            let orphan = t.foreign_keys.iter().find(|fk| {
                supports(d, false, fk) && !after.iter().any(|(i, new)| supports(i, *new, fk))
            });
            match orphan {
                Some(fk) => {
                    f.kind = Kind::IndexNeededByForeignKey;
                    f.constraint = Some(fk.name.clone());
                    f.reason = format!(
                        "{}; but foreign key {} ({}) needs it and no other index would back it, so the ALTER fails (error 1553: needed in a foreign key constraint): keep it{}",
                        f.reason,
                        ident(&fk.name),
                        fk.columns.join(", "),
                        if replaced {
                            ", or add the shorter index in one ALTER and drop this one in a second (an existing InnoDB index carries the primary key and backs the foreign key)"
                        } else {
                            ", or drop and re-create the foreign key"
                        }
                    );
                    f.suggestion = None;
                }
                None => remaining = after,
            }
        }
        out.push(f);
    }

    // Foreign keys.
    let mut fks: Vec<&ForeignKey> = t.foreign_keys.iter().collect();
    fks.sort_by_key(|f| f.name.to_lowercase());
    for (pos, fk) in fks.iter().copied().enumerate() {
        let fk_base = |kind: Kind, reason: String| Finding {
            schema: t.schema.clone(),
            table: t.name.clone(),
            kind,
            index: None,
            constraint: Some(fk.name.clone()),
            columns: fk.columns.clone(),
            unique: false,
            covered_by: None,
            covered_by_columns: Vec::new(),
            suggestion: None,
            reason,
        };
        if let Some(first) = fks[..pos].iter().find(|o| o.same_reference(fk)) {
            let mut f = fk_base(
                Kind::DuplicateForeignKey,
                format!(
                    "same columns and reference ({}.{} ({})) as {}: every write is checked twice",
                    ident(&fk.ref_schema),
                    ident(&fk.ref_table),
                    fk.ref_columns.join(", "),
                    ident(&first.name)
                ),
            );
            f.covered_by = Some(first.name.clone());
            f.covered_by_columns = first.columns.clone();
            f.suggestion = Some(format!(
                "ALTER TABLE {qt} DROP FOREIGN KEY {};",
                ident(&fk.name)
            ));
            out.push(f);
            continue;
        }
        if !t.indexes.iter().any(|i| supports(i, false, fk)) {
            let cols: Vec<String> = fk.columns.iter().map(|c| ident(c)).collect();
            let mut f = fk_base(
                Kind::ForeignKeyWithoutIndex,
                format!(
                    "no index starts with ({}): every change to {}.{} scans this table",
                    fk.columns.join(", "),
                    ident(&fk.ref_schema),
                    ident(&fk.ref_table)
                ),
            );
            f.suggestion = Some(format!(
                "ALTER TABLE {qt} ADD INDEX {} ({});",
                ident(&format!("{}_idx", fk.name)),
                cols.join(", ")
            ));
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(name: &str, unique: bool, cols: &[&str]) -> Index {
        Index {
            name: name.into(),
            unique,
            kind: "BTREE".into(),
            columns: cols
                .iter()
                .map(|c| IndexColumn {
                    name: (*c).into(),
                    sub_part: None,
                })
                .collect(),
        }
    }

    fn fk(name: &str, cols: &[&str], table: &str, refs: &[&str]) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            columns: cols.iter().map(|c| (*c).to_string()).collect(),
            ref_schema: "db".into(),
            ref_table: table.into(),
            ref_columns: refs.iter().map(|c| (*c).to_string()).collect(),
        }
    }

    fn table(indexes: Vec<Index>, fks: Vec<ForeignKey>) -> Table {
        Table {
            schema: "db".into(),
            name: "t".into(),
            engine: "InnoDB".into(),
            indexes,
            foreign_keys: fks,
        }
    }

    fn kinds(f: &[Finding]) -> Vec<(Kind, Option<&str>, Option<&str>)> {
        f.iter()
            .map(|f| {
                (
                    f.kind,
                    f.index.as_deref().or(f.constraint.as_deref()),
                    f.covered_by.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn exact_duplicates_keep_the_first() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_b", false, &["a"]),
                ix("k_a", false, &["a"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::DuplicateIndex, Some("k_b"), Some("k_a"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k_b`;")
        );
    }

    #[test]
    fn a_unique_twin_is_reported_but_never_dropped() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("u1", true, &["a"]),
                ix("u2", true, &["a"]),
                ix("k", false, &["a"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        // k is a duplicate of the unique u1 (dropped); u2 is a unique twin (kept).
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::DuplicateIndex, Some("u2"), Some("u1")),
                (Kind::DuplicateIndex, Some("k"), Some("u1")),
            ]
        );
        assert_eq!(f[0].suggestion, None);
        assert!(f[1].suggestion.is_some());
    }

    #[test]
    fn left_prefix_is_covered_by_the_longest() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a", false, &["a"]),
                ix("k_ab", false, &["a", "b"]),
                ix("k_abc", false, &["a", "b", "c"]),
                ix("u_a", true, &["a", "z"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::LeftPrefixIndex, Some("k_a"), Some("k_abc")),
                (Kind::LeftPrefixIndex, Some("k_ab"), Some("k_abc")),
            ]
        );
    }

    #[test]
    fn a_unique_prefix_is_a_constraint_not_a_redundancy() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("u_a", true, &["a"]),
                ix("k_ab", false, &["a", "b"]),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty());
    }

    #[test]
    fn prefix_of_the_primary_key_and_its_twin() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["a", "b"]),
                ix("k_a", false, &["a"]),
                ix("k_ab", false, &["a", "b"]),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![
                (Kind::LeftPrefixIndex, Some("k_a"), Some("PRIMARY")),
                (Kind::RepeatsPrimaryKey, Some("k_ab"), Some("PRIMARY")),
            ]
        );
    }

    #[test]
    fn innodb_primary_key_suffix() {
        // k_a_id = (a, id) with PRIMARY (id): InnoDB stores k_a as (a, id) already.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a", false, &["a"]),
                ix("k_a_id", false, &["a", "id"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::RepeatsPrimaryKey, Some("k_a_id"), Some("k_a"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k_a_id`;")
        );
        // Without k_a: shorten it.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_b_id", false, &["b", "id"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::RepeatsPrimaryKey, Some("k_b_id"), Some("PRIMARY"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k_b_id`, ADD INDEX `k_b_id` (`b`);")
        );
        // Not on MyISAM, where nothing is appended.
        let mut t = t;
        t.engine = "MyISAM".into();
        assert!(analyze(&t).is_empty());
    }

    #[test]
    fn different_types_and_prefix_lengths_do_not_match() {
        let mut ft = ix("ft_a", false, &["a"]);
        ft.kind = "FULLTEXT".into();
        let mut pre = ix("k_a10", false, &["a"]);
        pre.columns[0].sub_part = Some(10);
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_ab", false, &["a", "b"]),
                ft,
                pre,
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
    }

    #[test]
    fn duplicate_foreign_keys() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_p", false, &["parent_id"]),
            ],
            vec![
                fk("fk_b", &["parent_id"], "parent", &["id"]),
                fk("fk_a", &["parent_id"], "parent", &["id"]),
                fk("fk_c", &["parent_id"], "other", &["id"]),
            ],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::DuplicateForeignKey, Some("fk_b"), Some("fk_a"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP FOREIGN KEY `fk_b`;")
        );
    }

    #[test]
    fn foreign_key_without_index() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_x_p", false, &["x", "parent_id"]),
            ],
            vec![fk("fk_p", &["parent_id"], "parent", &["id"])],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::ForeignKeyWithoutIndex, Some("fk_p"), None)]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` ADD INDEX `fk_p_idx` (`parent_id`);")
        );
    }

    #[test]
    fn a_redundant_index_a_foreign_key_needs() {
        // k_b_id = (b, id) repeats the PK; re-creating it as (b) in the same ALTER leaves
        // fk_pair (b, id) without an index (the new (b) does not count its PK suffix yet).
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_b_id", false, &["b", "id"]),
            ],
            vec![fk("fk_pair", &["b", "id"], "parent", &["x", "y"])],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(
                Kind::IndexNeededByForeignKey,
                Some("k_b_id"),
                Some("PRIMARY")
            )]
        );
        assert_eq!(f[0].constraint.as_deref(), Some("fk_pair"));
        assert_eq!(f[0].suggestion, None);
        // With an existing (b), InnoDB's stored (b, id) backs the key: the DROP is fine.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_b", false, &["b"]),
                ix("k_b_id", false, &["b", "id"]),
            ],
            vec![fk("fk_pair", &["b", "id"], "parent", &["x", "y"])],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::RepeatsPrimaryKey, Some("k_b_id"), Some("k_b"))]
        );
    }

    #[test]
    fn foreign_key_backed_by_a_stored_primary_key_suffix() {
        let t = table(
            vec![ix("PRIMARY", true, &["id"]), ix("k_b", false, &["b"])],
            vec![fk("fk_pair", &["b", "id"], "parent", &["x", "y"])],
        );
        assert!(analyze(&t).is_empty());
    }

    #[test]
    fn a_duplicate_that_a_foreign_key_uses_can_go_when_its_twin_stays() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k1", false, &["p"]),
                ix("k2", false, &["p"]),
            ],
            vec![fk("fk_p", &["p"], "parent", &["id"])],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::DuplicateIndex, Some("k2"), Some("k1"))]
        );
    }
}

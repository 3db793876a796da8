//! The analysis behind `weir db audit`: one table's indexes and foreign keys in, findings
//! out. Pure, so every rule is unit-tested without a server.
//!
//! An index's identity is its type (`BTREE`, `HASH`, `FULLTEXT`, ...) and its key parts:
//! column, prefix length (`c(10)`) and direction (`b DESC`), in order. `(a, b)` and
//! `(a, b DESC)` are different indexes (the first serves `ORDER BY a, b`, the second
//! `ORDER BY a, b DESC`), and so are `c(10)` and `c`. Whether the optimizer may use an
//! index (MariaDB `IGNORED`, MySQL `INVISIBLE`) is not part of the identity, but an index
//! it ignores never counts as covering another: dropping the index the optimizer uses in
//! favour of one it ignores changes plans.
//!
//! Rules, for each secondary index X (BTREE unless said otherwise), first match wins:
//! 1. **left-prefix-index**: X is not unique and its key parts are a strict left prefix of
//!    those of a visible BTREE index Z (the longest such Z covers it). Not when Z is
//!    exactly visible X followed by the primary key columns on InnoDB: there Z is the
//!    redundant one (rule 3).
//! 2. Twins: indexes of the same type with the same key parts. One is kept: the first in
//!    the order PRIMARY, unique, others; visible before ignored; by name. Every other twin
//!    is dropped (a unique twin only beside a unique keeper, which the order guarantees:
//!    the constraint stays):
//!    - **duplicate-primary-key** when the keeper is the primary key;
//!    - **duplicate-index** otherwise. When the keeper is a unique index the optimizer
//!      ignores and X is visible, the statement makes the keeper visible in the same ALTER.
//! 3. InnoDB appends the primary key to every secondary index, so a non-unique X whose key
//!    parts are some P followed by all the primary key's (ascending, no prefix lengths) is
//!    stored as an index on P alone would be:
//!    - **primary-key-suffix-duplicate**: a visible BTREE index on exactly P exists: drop X;
//!    - **primary-key-suffix-explicit**: none does: X may be re-created as (P), which
//!      stores the same entries (a shorter definition, no space saved).
//!
//! Foreign keys (an index "supports" a foreign key when the key's columns are the index's
//! leading columns, in order, without prefix lengths, as InnoDB requires, whatever their
//! direction and whether the optimizer ignores the index; for an existing InnoDB
//! secondary index the primary key columns it carries count too, but not for an index
//! added by the same ALTER, which is why `DROP INDEX x, ADD INDEX x (a)` can fail where
//! `DROP INDEX x` after an existing `(a)` does not, as MariaDB 10.11 shows):
//! - **duplicate-foreign-key**: same columns referencing the same table and columns as
//!   another constraint (the first by name is kept): `DROP FOREIGN KEY`. Database and
//!   table names compare as the server compares them ([`NameCase`]); column names never
//!   depend on case.
//! - **foreign-key-without-index**: no index supports it (possible after
//!   `foreign_key_checks=0`, or on engines that do not create one): `ADD INDEX`.
//! - **index-needed-by-foreign-key**: an index found redundant above whose DROP would fail
//!   (MySQL error 1553) because, after the other suggested drops, no remaining index
//!   supports some foreign key. It keeps its finding, with the reason and no suggestion.
//!
//! Reasons are one short clause; `docs/db.md` explains each kind at length.

use serde::Serialize;

/// How the server compares database and table names: its `lower_case_table_names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameCase {
    /// `lower_case_table_names = 0` (the Unix default): `pcase` and `PCASE` are two tables.
    #[default]
    Sensitive,
    /// `1` (stored in lower case) or `2` (stored as given, compared in lower case).
    Insensitive,
}

impl NameCase {
    /// From the value of `@@lower_case_table_names`.
    pub fn from_lower_case_table_names(value: u64) -> NameCase {
        if value == 0 {
            NameCase::Sensitive
        } else {
            NameCase::Insensitive
        }
    }

    /// Whether `a` and `b` name the same database or table.
    pub fn same(self, a: &str, b: &str) -> bool {
        match self {
            NameCase::Sensitive => a == b,
            NameCase::Insensitive => a == b || a.to_lowercase() == b.to_lowercase(),
        }
    }
}

/// Whether the optimizer may use an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// It may (the default).
    #[default]
    Visible,
    /// MariaDB's `IGNORED` (10.6+): maintained, never used by the optimizer.
    Ignored,
    /// MySQL 8's `INVISIBLE`: the same thing.
    Invisible,
}

impl Visibility {
    /// Whether the optimizer ignores the index.
    pub fn is_hidden(self) -> bool {
        self != Visibility::Visible
    }

    /// The keyword the server uses for it (`IGNORED`, `INVISIBLE`); none when visible.
    pub fn keyword(self) -> Option<&'static str> {
        match self {
            Visibility::Visible => None,
            Visibility::Ignored => Some("IGNORED"),
            Visibility::Invisible => Some("INVISIBLE"),
        }
    }

    /// The `ALTER INDEX` clause that makes a hidden index visible in its server's syntax
    /// (only asked of a hidden one).
    fn unhide(self) -> &'static str {
        match self {
            Visibility::Invisible => "VISIBLE",
            Visibility::Ignored | Visibility::Visible => "NOT IGNORED",
        }
    }
}

/// A key part of an index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexColumn {
    /// Column name (or an expression for MySQL's functional key parts).
    pub name: String,
    /// Prefix length (`col(10)`), if any.
    pub sub_part: Option<u64>,
    /// Stored in descending order (`col DESC`).
    pub descending: bool,
}

impl IndexColumn {
    /// Same column, prefix length and direction.
    fn same(&self, o: &IndexColumn) -> bool {
        self.name.eq_ignore_ascii_case(&o.name)
            && self.sub_part == o.sub_part
            && self.descending == o.descending
    }
    /// `a`, `c(10)`, `b DESC`.
    fn show(&self) -> String {
        let mut s = self.name.clone();
        if let Some(n) = self.sub_part {
            s.push_str(&format!("({n})"));
        }
        if self.descending {
            s.push_str(" DESC");
        }
        s
    }
    /// The key part as SQL: `` `a` ``, `` `c`(10) ``, `` `b` DESC ``.
    fn sql(&self) -> String {
        let mut s = ident(&self.name);
        if let Some(n) = self.sub_part {
            s.push_str(&format!("({n})"));
        }
        if self.descending {
            s.push_str(" DESC");
        }
        s
    }
}

/// An index as `information_schema.STATISTICS` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    /// Name (`PRIMARY` for the primary key).
    pub name: String,
    /// Enforces uniqueness (the primary key does).
    pub unique: bool,
    /// `BTREE`, `HASH`, `FULLTEXT`, `SPATIAL`, ...
    pub kind: String,
    /// Key parts in order.
    pub columns: Vec<IndexColumn>,
    /// Whether the optimizer may use it.
    pub visibility: Visibility,
}

impl Index {
    fn is_primary(&self) -> bool {
        self.name == "PRIMARY"
    }
    fn is_btree(&self) -> bool {
        self.kind.eq_ignore_ascii_case("BTREE")
    }
    fn is_hidden(&self) -> bool {
        self.visibility.is_hidden()
    }
    /// Same type and key parts (visibility aside): twins.
    fn same_parts(&self, o: &Index) -> bool {
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
    /// `` `k` (a, b DESC) IGNORED ``, for reasons.
    fn described(&self) -> String {
        let mut s = format!("{} ({})", ident(&self.name), self.column_names().join(", "));
        if let Some(k) = self.visibility.keyword() {
            s.push(' ');
            s.push_str(k);
        }
        s
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
    fn same_reference(&self, o: &ForeignKey, names: NameCase) -> bool {
        let eq = |a: &[String], b: &[String]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
        };
        eq(&self.columns, &o.columns)
            && names.same(&self.ref_schema, &o.ref_schema)
            && names.same(&self.ref_table, &o.ref_table)
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
    /// How its server compares database and table names.
    pub names: NameCase,
}

/// What kind of problem a finding is: one kind per situation, each with its own advice
/// (docs/db.md has a paragraph on each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Same type and key parts as another secondary index, which stays.
    DuplicateIndex,
    /// Same type and key parts as the primary key.
    DuplicatePrimaryKey,
    /// A left prefix of another (visible) index.
    LeftPrefixIndex,
    /// InnoDB: (P, pk) beside an index on (P), which InnoDB stores as (P, pk) already.
    PrimaryKeySuffixDuplicate,
    /// InnoDB: a lone (P, pk), which stores the same entries as (P) would.
    PrimaryKeySuffixExplicit,
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
            Kind::DuplicatePrimaryKey => "duplicate-primary-key",
            Kind::LeftPrefixIndex => "left-prefix-index",
            Kind::PrimaryKeySuffixDuplicate => "primary-key-suffix-duplicate",
            Kind::PrimaryKeySuffixExplicit => "primary-key-suffix-explicit",
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
    /// Its key parts (`a`, `c(10)`, `b DESC`), or the foreign key's columns.
    pub columns: Vec<String>,
    /// Whether the index enforces uniqueness.
    pub unique: bool,
    /// Whether the optimizer may use the index (none for foreign key findings).
    pub visibility: Option<Visibility>,
    /// The index or constraint that makes it redundant.
    pub covered_by: Option<String>,
    /// That one's key parts or columns.
    pub covered_by_columns: Vec<String>,
    /// That index's visibility (none when it is a constraint, or there is none).
    pub covered_by_visibility: Option<Visibility>,
    /// The statement that fixes it (weir never runs it); none when it must not be dropped.
    pub suggestion: Option<String>,
    /// Why, in one short clause.
    pub reason: String,
}

impl Finding {
    /// The key parts as the text output shows them: `(a, b DESC)`, then ` IGNORED` when the
    /// optimizer ignores the index.
    pub fn shown_columns(&self) -> String {
        let cols = self.columns.join(", ");
        match self.visibility.and_then(Visibility::keyword) {
            Some(k) => format!("({cols}) {k}"),
            None => format!("({cols})"),
        }
    }
}

/// Quotes an identifier with backticks.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// PRIMARY, then unique indexes, then the others; each by name.
fn rank(i: &Index) -> u8 {
    if i.is_primary() {
        0
    } else if i.unique {
        1
    } else {
        2
    }
}

fn order_key(i: &Index) -> (u8, String) {
    (rank(i), i.name.to_lowercase())
}

/// Which of a set of twins stays: the strongest constraint, then one the optimizer uses.
fn keeper_key(i: &Index) -> (u8, bool, String) {
    (rank(i), i.is_hidden(), i.name.to_lowercase())
}

/// Analyzes one table.
pub fn analyze(t: &Table) -> Vec<Finding> {
    let qt = format!("{}.{}", ident(&t.schema), ident(&t.name));
    let mut idx: Vec<&Index> = t.indexes.iter().collect();
    idx.sort_by_key(|i| order_key(i));
    let pk = idx.iter().copied().find(|i| i.is_primary());
    let innodb = t.engine.eq_ignore_ascii_case("InnoDB");
    // Key parts P when `x` is (P, pk...) with P non-empty, on InnoDB. Not for a primary
    // key with prefix lengths or descending parts: what InnoDB appends is then unclear.
    let pk_suffix_head = |x: &Index| -> Option<Vec<IndexColumn>> {
        let pk = pk?;
        if !innodb
            || x.is_primary()
            || !x.is_btree()
            || pk
                .columns
                .iter()
                .any(|c| c.sub_part.is_some() || c.descending)
        {
            return None;
        }
        let n = x.columns.len().checked_sub(pk.columns.len())?;
        (n > 0 && cols_eq(&x.columns[n..], &pk.columns)).then(|| x.columns[..n].to_vec())
    };

    // Index findings, with what each proposes: (finding, index dropped, index added).
    let mut found: Vec<(Finding, Option<&Index>, Option<Index>)> = Vec::new();
    for x in idx.iter().copied() {
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
            visibility: Some(x.visibility),
            covered_by: Some(by.name.clone()),
            covered_by_columns: by.column_names(),
            covered_by_visibility: Some(by.visibility),
            suggestion: None,
            reason,
        };
        let drop_sql = format!("ALTER TABLE {qt} DROP INDEX {};", ident(&x.name));

        // 1. left prefix of a longer index the optimizer uses
        if !x.unique && x.is_btree() {
            let cover = idx
                .iter()
                .copied()
                .filter(|z| {
                    z.is_btree() && !z.is_hidden() && is_strict_prefix(&x.columns, &z.columns)
                })
                // Z = (X, pk) is stored as X is: Z is the redundant one, unless the
                // optimizer ignores X (then X goes, and rule 3 looks at Z on its own).
                .filter(|z| {
                    x.is_hidden()
                        || !pk_suffix_head(z).is_some_and(|head| cols_eq(&head, &x.columns))
                })
                .max_by_key(|z| (z.columns.len(), std::cmp::Reverse(order_key(z))));
            if let Some(z) = cover {
                let mut f = base(
                    Kind::LeftPrefixIndex,
                    z,
                    format!(
                        "left prefix of {}, which serves the same lookups",
                        z.described()
                    ),
                );
                f.suggestion = Some(drop_sql);
                found.push((f, Some(x), None));
                continue;
            }
        }
        // 2. twins: all but the keeper go
        let keeper = idx
            .iter()
            .copied()
            .filter(|y| y.same_parts(x))
            .min_by_key(|y| keeper_key(y));
        if let Some(y) = keeper.filter(|y| !std::ptr::eq(*y, x)) {
            // The order puts unique indexes first: a unique X has a unique keeper.
            debug_assert!(!x.unique || y.unique);
            let (kind, what) = if y.is_primary() {
                (Kind::DuplicatePrimaryKey, "the primary key".to_owned())
            } else {
                (Kind::DuplicateIndex, ident(&y.name))
            };
            let mut f = base(kind, y, format!("same key parts as {what}"));
            match y.visibility.keyword() {
                // X is the one the optimizer uses: make the keeper usable first.
                Some(word) if !x.is_hidden() => {
                    f.reason = format!("same key parts as unique {what}, which is {word}: make it visible, drop this one");
                    f.suggestion = Some(format!(
                        "ALTER TABLE {qt} ALTER INDEX {} {}, DROP INDEX {};",
                        ident(&y.name),
                        y.visibility.unhide(),
                        ident(&x.name)
                    ));
                }
                _ => f.suggestion = Some(drop_sql),
            }
            found.push((f, Some(x), None));
            continue;
        }
        // 3. ends with the primary key, which InnoDB appends anyway
        if x.unique {
            continue;
        }
        let (Some(head), Some(pk)) = (pk_suffix_head(x), pk) else {
            continue;
        };
        let twin = idx.iter().copied().find(|w| {
            !std::ptr::eq(*w, x) && w.is_btree() && !w.is_hidden() && cols_eq(&w.columns, &head)
        });
        let heads: Vec<String> = head.iter().map(IndexColumn::show).collect();
        let pks = pk.column_names().join(", ");
        match twin {
            Some(w) => {
                let mut f = base(
                    Kind::PrimaryKeySuffixDuplicate,
                    w,
                    format!(
                        "InnoDB stores {} as ({}, {pks}) already",
                        w.described(),
                        heads.join(", ")
                    ),
                );
                f.suggestion = Some(drop_sql);
                found.push((f, Some(x), None));
            }
            None => {
                let mut f = base(
                    Kind::PrimaryKeySuffixExplicit,
                    pk,
                    format!(
                        "InnoDB appends the primary key anyway: as ({}) it stores the same entries",
                        heads.join(", ")
                    ),
                );
                let cols: Vec<String> = head.iter().map(IndexColumn::sql).collect();
                f.suggestion = Some(format!(
                    "ALTER TABLE {qt} DROP INDEX {n}, ADD INDEX {n} ({}){};",
                    cols.join(", "),
                    x.visibility
                        .keyword()
                        .map(|k| format!(" {k}"))
                        .unwrap_or_default(),
                    n = ident(&x.name)
                ));
                let replacement = Index {
                    name: x.name.clone(),
                    unique: false,
                    kind: x.kind.clone(),
                    columns: head,
                    visibility: x.visibility,
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
            after.extend(added.map(|i| (i, true)));
            let orphan = t.foreign_keys.iter().find(|fk| {
                supports(d, false, fk) && !after.iter().any(|(i, new)| supports(i, *new, fk))
            });
            match orphan {
                Some(fk) => {
                    f.reason = format!(
                        "would be {}, but foreign key {} ({}) needs it: DROP fails with error 1553",
                        f.kind.as_str(),
                        ident(&fk.name),
                        fk.columns.join(", "),
                    );
                    f.kind = Kind::IndexNeededByForeignKey;
                    f.constraint = Some(fk.name.clone());
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
            visibility: None,
            covered_by: None,
            covered_by_columns: Vec::new(),
            covered_by_visibility: None,
            suggestion: None,
            reason,
        };
        if let Some(first) = fks[..pos].iter().find(|o| o.same_reference(fk, t.names)) {
            let mut f = fk_base(
                Kind::DuplicateForeignKey,
                format!(
                    "same reference as {}: {}.{} ({}); every write is checked twice",
                    ident(&first.name),
                    ident(&fk.ref_schema),
                    ident(&fk.ref_table),
                    fk.ref_columns.join(", "),
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
                    "no index starts with these columns: every change to {}.{} scans this table",
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

    /// An index from key parts written as in SQL: `a`, `c(10)`, `b DESC`.
    fn ix(name: &str, unique: bool, cols: &[&str]) -> Index {
        Index {
            name: name.into(),
            unique,
            kind: "BTREE".into(),
            columns: cols
                .iter()
                .map(|c| {
                    let (c, descending) = match c.strip_suffix(" DESC") {
                        Some(c) => (c, true),
                        None => (*c, false),
                    };
                    let (name, sub_part) = match c.split_once('(') {
                        Some((n, len)) => (n, len.trim_end_matches(')').parse().ok()),
                        None => (c, None),
                    };
                    IndexColumn {
                        name: name.into(),
                        sub_part,
                        descending,
                    }
                })
                .collect(),
            visibility: Visibility::Visible,
        }
    }

    fn ignored(mut i: Index) -> Index {
        i.visibility = Visibility::Ignored;
        i
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
            names: NameCase::Sensitive,
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

    fn suggestions(f: &[Finding]) -> Vec<Option<&str>> {
        f.iter().map(|f| f.suggestion.as_deref()).collect()
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
        assert_eq!(f[0].reason, "same key parts as `k_a`");
    }

    #[test]
    fn a_unique_twin_goes_only_beside_a_unique_keeper() {
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
        // u1 keeps the constraint; its unique twin u2 and the plain k both go.
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::DuplicateIndex, Some("u2"), Some("u1")),
                (Kind::DuplicateIndex, Some("k"), Some("u1")),
            ]
        );
        assert_eq!(
            suggestions(&f),
            vec![
                Some("ALTER TABLE `db`.`t` DROP INDEX `u2`;"),
                Some("ALTER TABLE `db`.`t` DROP INDEX `k`;"),
            ]
        );
    }

    #[test]
    fn a_unique_twin_of_the_primary_key_is_dropped() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("u_id", true, &["id"]),
                ix("k_id", false, &["id"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::DuplicatePrimaryKey, Some("u_id"), Some("PRIMARY")),
                (Kind::DuplicatePrimaryKey, Some("k_id"), Some("PRIMARY")),
            ]
        );
        assert_eq!(
            suggestions(&f),
            vec![
                Some("ALTER TABLE `db`.`t` DROP INDEX `u_id`;"),
                Some("ALTER TABLE `db`.`t` DROP INDEX `k_id`;"),
            ]
        );
        assert_eq!(f[0].reason, "same key parts as the primary key");
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
        assert_eq!(
            f[0].reason,
            "left prefix of `k_abc` (a, b, c), which serves the same lookups"
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
                (Kind::DuplicatePrimaryKey, Some("k_ab"), Some("PRIMARY")),
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
            vec![(Kind::PrimaryKeySuffixDuplicate, Some("k_a_id"), Some("k_a"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k_a_id`;")
        );
        assert_eq!(f[0].reason, "InnoDB stores `k_a` (a) as (a, id) already");
        // Without k_a: shorten it, saying that nothing stored changes.
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
            vec![(
                Kind::PrimaryKeySuffixExplicit,
                Some("k_b_id"),
                Some("PRIMARY")
            )]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k_b_id`, ADD INDEX `k_b_id` (`b`);")
        );
        assert!(f[0].reason.contains("same entries"), "{}", f[0].reason);
        // Not on MyISAM, where nothing is appended.
        let mut t = t;
        t.engine = "MyISAM".into();
        assert!(analyze(&t).is_empty());
    }

    #[test]
    fn a_primary_key_suffix_must_match_its_direction() {
        // (a, id DESC) is not what InnoDB stores for (a), id ascending: it is no
        // primary-key-suffix twin of k_a, only a longer index that k_a is a prefix of.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a", false, &["a"]),
                ix("k_a_iddesc", false, &["a", "id DESC"]),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::LeftPrefixIndex, Some("k_a"), Some("k_a_iddesc"))]
        );
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a_iddesc", false, &["a", "id DESC"]),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        // A descending primary key: what is appended is not modelled, so nothing is said.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id DESC"]),
                ix("k_a_iddesc", false, &["a", "id DESC"]),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
    }

    #[test]
    fn a_rebuilt_primary_key_suffix_keeps_directions_prefixes_and_visibility() {
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ignored(ix("k", false, &["c(10)", "b DESC", "id"])),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::PrimaryKeySuffixExplicit, Some("k"), Some("PRIMARY"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `k`, ADD INDEX `k` (`c`(10), `b` DESC) IGNORED;")
        );
        assert_eq!(f[0].columns, vec!["c(10)", "b DESC", "id"]);
        assert_eq!(f[0].shown_columns(), "(c(10), b DESC, id) IGNORED");
    }

    #[test]
    fn different_types_and_prefix_lengths_do_not_match() {
        let mut ft = ix("ft_a", false, &["a"]);
        ft.kind = "FULLTEXT".into();
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_ab", false, &["a", "b"]),
                ft,
                ix("k_a10", false, &["a(10)"]),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
    }

    #[test]
    fn directions_are_part_of_an_index() {
        // Issue 21: (a, b) and (a, b DESC) serve different ORDER BYs.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_ab", false, &["a", "b"]),
                ix("k_a_bdesc", false, &["a", "b DESC"]),
                ix("k_adesc", false, &["a DESC"]),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        // The same direction is the same index, and shows in the column lists.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k1", false, &["a", "b DESC"]),
                ix("k2", false, &["a", "b DESC"]),
                ix("k_adesc", false, &["a DESC"]),
                ix("k_adesc_b", false, &["a DESC", "b"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::DuplicateIndex, Some("k2"), Some("k1")),
                (Kind::LeftPrefixIndex, Some("k_adesc"), Some("k_adesc_b")),
            ]
        );
        assert_eq!(f[0].columns, vec!["a", "b DESC"]);
        assert_eq!(f[0].covered_by_columns, vec!["a", "b DESC"]);
        assert_eq!(f[1].columns, vec!["a DESC"]);
    }

    #[test]
    fn among_twins_the_ignored_one_goes() {
        // Issue 21: KEY a1 (a) IGNORED, KEY a2 (a): a2 is the one the optimizer uses.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ignored(ix("a1", false, &["a"])),
                ix("a2", false, &["a"]),
            ],
            vec![],
        );
        let f = analyze(&t);
        assert_eq!(
            kinds(&f),
            vec![(Kind::DuplicateIndex, Some("a1"), Some("a2"))]
        );
        assert_eq!(
            f[0].suggestion.as_deref(),
            Some("ALTER TABLE `db`.`t` DROP INDEX `a1`;")
        );
        assert_eq!(f[0].visibility, Some(Visibility::Ignored));
        assert_eq!(f[0].covered_by_visibility, Some(Visibility::Visible));
        assert_eq!(f[0].shown_columns(), "(a) IGNORED");
        // Both ignored: one goes, by name.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ignored(ix("a1", false, &["a"])),
                ignored(ix("a2", false, &["a"])),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::DuplicateIndex, Some("a2"), Some("a1"))]
        );
    }

    #[test]
    fn an_ignored_unique_twin_is_made_visible_rather_than_dropped() {
        for (vis, clause) in [
            (Visibility::Ignored, "NOT IGNORED"),
            (Visibility::Invisible, "VISIBLE"),
        ] {
            let mut u = ix("u", true, &["a"]);
            u.visibility = vis;
            let t = table(
                vec![ix("PRIMARY", true, &["id"]), u, ix("k", false, &["a"])],
                vec![],
            );
            let f = analyze(&t);
            assert_eq!(
                kinds(&f),
                vec![(Kind::DuplicateIndex, Some("k"), Some("u"))]
            );
            assert_eq!(
                f[0].suggestion,
                Some(format!(
                    "ALTER TABLE `db`.`t` ALTER INDEX `u` {clause}, DROP INDEX `k`;"
                ))
            );
            assert_eq!(f[0].covered_by_visibility, Some(vis));
        }
    }

    #[test]
    fn an_ignored_index_covers_nothing() {
        // Issue 21: KEY k_a (a), KEY k_ab (a, b) IGNORED: k_a is what the optimizer uses.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a", false, &["a"]),
                ignored(ix("k_ab", false, &["a", "b"])),
            ],
            vec![],
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        // An ignored (a) beside a visible (a, id): not kept as the real (a); the ignored
        // one goes as a prefix, and (a, id) alone can be shortened.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ignored(ix("k_a", false, &["a"])),
                ix("k_a_id", false, &["a", "id"]),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![
                (Kind::LeftPrefixIndex, Some("k_a"), Some("k_a_id")),
                (
                    Kind::PrimaryKeySuffixExplicit,
                    Some("k_a_id"),
                    Some("PRIMARY")
                ),
            ]
        );
        // A visible (a) beside an ignored (a, id): the ignored one is the redundant one.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("k_a", false, &["a"]),
                ignored(ix("k_a_id", false, &["a", "id"])),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::PrimaryKeySuffixDuplicate, Some("k_a_id"), Some("k_a"))]
        );
        // An ignored index that is itself a left prefix of a visible one may go.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ignored(ix("k_a", false, &["a"])),
                ix("k_ab", false, &["a", "b"]),
            ],
            vec![],
        );
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(Kind::LeftPrefixIndex, Some("k_a"), Some("k_ab"))]
        );
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
    fn referenced_tables_compare_as_the_server_compares_names() {
        // Issue 21: with lower_case_table_names = 0, `pcase` and `PCASE` are two parents.
        let fks = vec![
            fk("fk_lower", &["p"], "pcase", &["id"]),
            fk("fk_upper", &["p"], "PCASE", &["ID"]),
        ];
        let mut t = table(
            vec![ix("PRIMARY", true, &["id"]), ix("k_p", false, &["p"])],
            fks,
        );
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        // With 1 or 2 they are one table (and column names never depend on case).
        t.names = NameCase::from_lower_case_table_names(1);
        assert_eq!(
            kinds(&analyze(&t)),
            vec![(
                Kind::DuplicateForeignKey,
                Some("fk_upper"),
                Some("fk_lower")
            )]
        );
        // The database name follows the same rule.
        t.foreign_keys[1].ref_table = "pcase".into();
        t.foreign_keys[1].ref_schema = "DB".into();
        t.names = NameCase::from_lower_case_table_names(0);
        assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        t.names = NameCase::from_lower_case_table_names(2);
        assert_eq!(analyze(&t).len(), 1);
    }

    #[test]
    fn name_case_follows_lower_case_table_names() {
        assert_eq!(
            NameCase::from_lower_case_table_names(0),
            NameCase::Sensitive
        );
        assert_eq!(
            NameCase::from_lower_case_table_names(1),
            NameCase::Insensitive
        );
        assert_eq!(
            NameCase::from_lower_case_table_names(2),
            NameCase::Insensitive
        );
        assert!(!NameCase::Sensitive.same("pcase", "PCASE"));
        assert!(NameCase::Insensitive.same("pcase", "PCASE"));
        assert!(NameCase::Insensitive.same("Ärger", "äRGER"));
        assert!(!NameCase::Insensitive.same("a", "b"));
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
    fn a_descending_or_ignored_index_backs_a_foreign_key() {
        // As MariaDB 10.11 shows: the optimizer's view does not matter to InnoDB's checks.
        for i in [
            ix("k_p", false, &["p DESC"]),
            ignored(ix("k_p", false, &["p"])),
        ] {
            let t = table(
                vec![ix("PRIMARY", true, &["id"]), i],
                vec![fk("fk_p", &["p"], "parent", &["id"])],
            );
            assert!(analyze(&t).is_empty(), "{:?}", analyze(&t));
        }
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
        assert_eq!(
            f[0].reason,
            "would be primary-key-suffix-explicit, but foreign key `fk_pair` (b, id) needs it: \
             DROP fails with error 1553"
        );
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
            vec![(Kind::PrimaryKeySuffixDuplicate, Some("k_b_id"), Some("k_b"))]
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

    #[test]
    fn reasons_are_short() {
        // Every kind at once, with ordinary names: each reason fits on a line.
        let t = table(
            vec![
                ix("PRIMARY", true, &["id"]),
                ix("u_id", true, &["id"]),
                ix("k_a", false, &["a"]),
                ix("k_ab", false, &["a", "b"]),
                ix("k_ab2", false, &["a", "b"]),
                ix("k_c", false, &["c"]),
                ix("k_c_id", false, &["c", "id"]),
                ix("k_d_id", false, &["d", "id"]),
                ix("k_e_id", false, &["e", "id"]),
                ignored(ix("u_f", true, &["f"])),
                ix("k_f", false, &["f"]),
            ],
            vec![
                fk("fk_e", &["e", "id"], "parent", &["x", "y"]),
                fk("fk_g1", &["g"], "parent", &["id"]),
                fk("fk_g2", &["g"], "parent", &["id"]),
            ],
        );
        let f = analyze(&t);
        let mut seen: Vec<Kind> = f.iter().map(|f| f.kind).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8, "{:#?}", kinds(&f));
        for f in &f {
            assert!(
                f.reason.len() <= 120,
                "{} chars: {}",
                f.reason.len(),
                f.reason
            );
        }
    }
}

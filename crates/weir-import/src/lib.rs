//! `weir import`: an NGINX configuration, plus a uWSGI ini or a gunicorn.conf.py, to a
//! `weir.toml`, with a verdict for every directive read: mapped (to which key), not needed
//! in weir (why), or not supported (what to do). docs/import.md lists each mapping.
//!
//! - [`nginx`]: NGINX's grammar (tokenizer, blocks, `include`), hand-written (why: in its
//!   module doc).
//! - [`uwsgi`]: uWSGI's ini dialect (repeated keys, placeholders), hand-written.
//! - [`gunicorn`]: a gunicorn.conf.py is run by `python3` in a subprocess.
//! - this file: [`convert`], the pure mapping from what was read to a `toml::Table` and the
//!   findings; [`import_files`] reads the files and calls it; [`render_toml`] and
//!   [`render_table`] print the results.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod gunicorn;
mod map_app;
mod map_nginx;
pub mod nginx;
pub mod uwsgi;

use std::path::Path;

use toml::{Table, Value};

/// What became of one directive.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Mapped to a weir.toml key.
    Mapped {
        /// The key (`server.max_body_size`, `route[0].limit_req`).
        key: String,
        /// Anything the reader should know about the mapping.
        note: Option<String>,
    },
    /// Not needed in weir.
    NotNeeded {
        /// Why.
        why: String,
    },
    /// weir has no equivalent.
    Unsupported {
        /// What to do instead.
        what_to_do: String,
    },
}

/// One directive read, and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The file it was read from.
    pub source: String,
    /// Its line (1-based; 0 when unknown).
    pub line: usize,
    /// The directive as written (name and arguments).
    pub directive: String,
    /// What became of it.
    pub verdict: Verdict,
}

/// A file that cannot be imported: which, where, and what is wrong. Exit status 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportError {
    /// The file.
    pub file: String,
    /// The line (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// The app server's configuration, as read.
#[derive(Debug, Clone, Default)]
pub enum AppSource {
    /// Neither `--uwsgi` nor `--gunicorn`: NGINX's `uwsgi_pass`/`proxy_pass` target stays an
    /// external `[upstream]`.
    #[default]
    None,
    /// A uWSGI ini's options.
    Uwsgi {
        /// The file.
        file: String,
        /// Its options, in order.
        opts: Vec<uwsgi::Opt>,
    },
    /// A gunicorn.conf.py's settings.
    Gunicorn {
        /// The file.
        file: String,
        /// Its settings.
        settings: Vec<gunicorn::Setting>,
    },
}

/// Everything read, ready for [`convert`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The NGINX file and its directives (includes resolved).
    pub nginx: Option<(String, Vec<nginx::Directive>)>,
    /// The app server's configuration.
    pub app: AppSource,
    /// `--app MODULE:CALLABLE`: wins over the app server's.
    pub app_override: Option<String>,
}

/// The result: the configuration and a verdict for every directive read.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The weir.toml tree.
    pub config: Table,
    /// One per directive, in the order read.
    pub findings: Vec<Finding>,
}

/// The builder both mappings write into.
pub(crate) struct Builder {
    pub(crate) t: Table,
    pub(crate) findings: Vec<Finding>,
    pub(crate) routes: Vec<Table>,
    pub(crate) statics: Vec<Table>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            t: Table::new(),
            findings: Vec::new(),
            routes: Vec::new(),
            statics: Vec::new(),
        }
    }

    /// The table at a dotted path (`limit_req.per_ip`), made if missing.
    pub(crate) fn table(&mut self, path: &str) -> &mut Table {
        let mut t = &mut self.t;
        for part in path.split('.') {
            t = t
                .entry(part.to_owned())
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("a table");
        }
        t
    }

    /// Sets `section.key` (the last dot separates the key).
    pub(crate) fn set(&mut self, path: &str, v: impl Into<Value>) {
        let (sec, key) = path.rsplit_once('.').expect("section.key");
        self.table(sec).insert(key.to_owned(), v.into());
    }

    /// Appends to the array `section.key`, once per value.
    pub(crate) fn push(&mut self, path: &str, v: impl Into<Value>) {
        let (sec, key) = path.rsplit_once('.').expect("section.key");
        let v = v.into();
        let arr = self
            .table(sec)
            .entry(key.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("an array");
        if !arr.contains(&v) {
            arr.push(v);
        }
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Value> {
        let mut t = &self.t;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            let v = t.get(*p)?;
            if i + 1 == parts.len() {
                return Some(v);
            }
            t = v.as_table()?;
        }
        None
    }

    pub(crate) fn find(&mut self, source: &str, line: usize, directive: String, verdict: Verdict) {
        self.findings.push(Finding {
            source: source.to_owned(),
            line,
            directive,
            verdict,
        });
    }

    pub(crate) fn mapped(&mut self, src: &str, line: usize, dir: String, key: &str) {
        self.find(
            src,
            line,
            dir,
            Verdict::Mapped {
                key: key.to_owned(),
                note: None,
            },
        );
    }

    pub(crate) fn mapped_note(
        &mut self,
        src: &str,
        line: usize,
        dir: String,
        key: &str,
        note: &str,
    ) {
        self.find(
            src,
            line,
            dir,
            Verdict::Mapped {
                key: key.to_owned(),
                note: Some(note.to_owned()),
            },
        );
    }

    pub(crate) fn not_needed(&mut self, src: &str, line: usize, dir: String, why: &str) {
        self.find(
            src,
            line,
            dir,
            Verdict::NotNeeded {
                why: why.to_owned(),
            },
        );
    }

    pub(crate) fn unsupported(&mut self, src: &str, line: usize, dir: String, what: &str) {
        self.find(
            src,
            line,
            dir,
            Verdict::Unsupported {
                what_to_do: what.to_owned(),
            },
        );
    }
}

/// Maps what was read to a weir.toml tree and a verdict per directive. Pure: no files, no
/// processes.
pub fn convert(inputs: &Inputs) -> Imported {
    let mut b = Builder::new();
    let app_given = !matches!(inputs.app, AppSource::None) || inputs.app_override.is_some();
    let nginx_given = inputs.nginx.is_some();
    if let Some((_, tree)) = &inputs.nginx {
        map_nginx::map(&mut b, tree, app_given);
    }
    match &inputs.app {
        AppSource::None => {}
        AppSource::Uwsgi { file, opts } => map_app::uwsgi(&mut b, file, opts, nginx_given),
        AppSource::Gunicorn { file, settings } => {
            map_app::gunicorn(&mut b, file, settings, nginx_given)
        }
    }
    if let Some(app) = &inputs.app_override {
        b.set("app.module", app.clone());
    }
    map_app::finish(&mut b);
    let mut config = b.t;
    if !b.routes.is_empty() {
        config.insert(
            "route".into(),
            Value::Array(b.routes.into_iter().map(Value::Table).collect()),
        );
    }
    if !b.statics.is_empty() {
        config.insert(
            "static".into(),
            Value::Array(b.statics.into_iter().map(Value::Table).collect()),
        );
    }
    Imported {
        config,
        findings: b.findings,
    }
}

/// Where the app server's configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum AppFile<'a> {
    /// None given.
    None,
    /// A uWSGI ini and the section to read (`uwsgi` unless `file.ini:section`).
    Uwsgi(&'a Path, &'a str),
    /// A gunicorn.conf.py.
    Gunicorn(&'a Path),
}

/// Reads the files (an NGINX config with its includes; a uWSGI ini or a gunicorn.conf.py,
/// which is run by python3) and converts them. A file that is missing or does not parse
/// is an [`ImportError`] naming file and line.
pub fn import_files(
    nginx_path: Option<&Path>,
    app: AppFile<'_>,
    app_override: Option<String>,
) -> Result<Imported, ImportError> {
    let mut inputs = Inputs {
        app_override,
        ..Inputs::default()
    };
    if let Some(p) = nginx_path {
        if !p.is_file() {
            return Err(ImportError {
                file: p.display().to_string(),
                line: 0,
                message: "no such file".into(),
            });
        }
        let tree = nginx::parse_file(p, &nginx::Fs).map_err(|e| ImportError {
            file: e.file,
            line: e.line,
            message: e.message,
        })?;
        inputs.nginx = Some((p.display().to_string(), tree));
    }
    match app {
        AppFile::None => {}
        AppFile::Uwsgi(p, section) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ImportError {
                file: name.clone(),
                line: 0,
                message: format!("cannot read: {e}"),
            })?;
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let opts = uwsgi::parse(&text, &abs, section, &|n| std::env::var(n).ok()).map_err(
                |(line, message)| ImportError {
                    file: name.clone(),
                    line,
                    message,
                },
            )?;
            inputs.app = AppSource::Uwsgi { file: name, opts };
        }
        AppFile::Gunicorn(p) => {
            let name = p.display().to_string();
            let abs = std::fs::canonicalize(p).map_err(|e| ImportError {
                file: name.clone(),
                line: 0,
                message: format!("cannot read: {e}"),
            })?;
            let settings = gunicorn::eval(&abs).map_err(|m| {
                // python's message starts with the absolute path: name the file as given.
                let m = m.replacen(&abs.display().to_string(), &name, 1);
                let (line, message) = match m.strip_prefix(&format!("{name}:")) {
                    Some(rest) => match rest.split_once(": ") {
                        Some((l, msg)) => (l.parse().unwrap_or(0), msg.to_owned()),
                        None => (0, rest.to_owned()),
                    },
                    None => (0, m.clone()),
                };
                ImportError {
                    file: name.clone(),
                    line,
                    message,
                }
            })?;
            inputs.app = AppSource::Gunicorn {
                file: name,
                settings,
            };
        }
    }
    Ok(convert(&inputs))
}

/// The weir.toml text: a header naming the sources, then the tree.
pub fn render_toml(imported: &Imported, sources: &[String]) -> String {
    let mut s = String::from("# weir.toml written by `weir import`");
    for src in sources {
        s.push_str("\n#   from ");
        s.push_str(src);
    }
    s.push_str(
        "\n# Every directive read and what became of it: the table `weir import` printed\n# (docs/import.md). Check it with: weir serve --check --config THIS_FILE\n\n",
    );
    s.push_str(&toml::to_string(&imported.config).unwrap_or_default());
    s
}

/// The verdict's column and detail.
pub fn verdict_text(v: &Verdict) -> (&'static str, String) {
    match v {
        Verdict::Mapped { key, note: None } => ("mapped", key.clone()),
        Verdict::Mapped { key, note: Some(n) } => ("mapped", format!("{key} ({n})")),
        Verdict::NotNeeded { why } => ("not needed", why.clone()),
        Verdict::Unsupported { what_to_do } => ("not supported", what_to_do.clone()),
    }
}

/// The table of findings: where, directive, verdict, detail; one line each.
pub fn render_table(findings: &[Finding]) -> String {
    let rows: Vec<(String, String, &str, String)> = findings
        .iter()
        .map(|f| {
            let (v, d) = verdict_text(&f.verdict);
            let mut dir = f.directive.clone();
            if dir.chars().count() > 48 {
                dir = dir.chars().take(45).collect::<String>() + "...";
            }
            (format!("{}:{}", f.source, f.line), dir, v, d)
        })
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(9);
    let w2 = 13;
    let mut s = format!(
        "{:w0$}  {:w1$}  {:w2$}  {}\n",
        "where", "directive", "verdict", "key / why / what to do"
    );
    for (a, b, c, d) in rows {
        s.push_str(&format!("{a:w0$}  {b:w1$}  {c:w2$}  {d}\n"));
    }
    let count = |k: &str| {
        findings
            .iter()
            .filter(|f| verdict_text(&f.verdict).0 == k)
            .count()
    };
    s.push_str(&format!(
        "{} directives: {} mapped, {} not needed, {} not supported\n",
        findings.len(),
        count("mapped"),
        count("not needed"),
        count("not supported")
    ));
    s
}

/// NGINX's time (`60s`, `1m`, `500ms`, `1h 30m`, `10`: seconds) as weir writes it.
pub(crate) fn nginx_duration(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not an NGINX time (e.g. 500ms, 60s, 1m)");
    let mut ms: u64 = 0;
    let t = s.replace(' ', "");
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t.as_str();
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n_end == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..u_end];
        rest = &rest[u_end..];
        let scale: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "M" => 30 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        ms = n
            .checked_mul(scale)
            .and_then(|v| v.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// NGINX's size (`1k`, `10m`, `1g`, bytes) in bytes.
pub(crate) fn nginx_size(s: &str) -> Result<u64, String> {
    weir_config::units::parse_size(s)
        .map_err(|_| format!("{s:?} is not an NGINX size (e.g. 8k, 10m)"))
}

/// A size as weir writes it (`"10MiB"`, or bytes).
pub(crate) fn size_value(bytes: u64) -> Value {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return Value::String(format!("{}{unit}", bytes >> shift));
        }
    }
    Value::Integer(bytes as i64)
}

#[cfg(test)]
mod tests;

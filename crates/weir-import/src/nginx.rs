//! NGINX's configuration grammar: a tokenizer and a tree of directives, with `include`.
//!
//! Why hand-written: the one crate for it on crates.io, `nginx-config`, was last released in
//! 2019, parses only the directives it knows (an unknown one, which any real config has, is
//! an error) and would need a fork to report every directive with its line. NGINX's
//! grammar itself is small (`ngx_conf_file.c`): a directive is `name args... ;` or
//! `name args... { directives }`; arguments are bare words or `"..."`/`'...'` strings with
//! backslash escapes; `#` starts a comment where a token would start; `${var}` braces inside
//! a word are part of it. This module is that, as pure functions over text (the reading of
//! files is behind [`Loader`]), so it is easy to test and to fuzz.
//!
//! `include PATH;` is replaced by the directives of the file(s) it names, resolved as NGINX
//! does: relative to the directory of the main configuration file (NGINX's conf prefix),
//! with `*` globs in the file name (sorted). An include that cannot be read stays in the
//! tree as an `include` directive with `missing` set, so the mapping can say what it was.

use std::path::{Path, PathBuf};

/// One directive: `name args;` or `name args { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    /// The directive's name (`location`).
    pub name: String,
    /// Its arguments, unquoted.
    pub args: Vec<String>,
    /// The file it was read from.
    pub file: String,
    /// Its line (1-based).
    pub line: usize,
    /// The block's directives, for `name args { ... }`.
    pub block: Option<Vec<Directive>>,
    /// For an `include` that could not be read: why.
    pub missing: Option<String>,
}

/// A syntax error, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// The file.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

/// Splits NGINX configuration text into tokens with their lines.
fn tokenize(text: &str, file: &str) -> Result<Vec<(Tok, usize)>, SyntaxError> {
    let err = |line: usize, message: String| SyntaxError {
        file: file.to_owned(),
        line,
        message,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ';' => {
                out.push((Tok::Semi, line));
                i += 1;
            }
            '{' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            '}' => {
                out.push((Tok::Close, line));
                i += 1;
            }
            '"' | '\'' => {
                let start = line;
                let q = c;
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&ch) = chars.get(i) else {
                        return Err(err(start, format!("unterminated {q}-quoted string")));
                    };
                    i += 1;
                    match ch {
                        '\\' if i < chars.len() => {
                            let n = chars[i];
                            i += 1;
                            match n {
                                '"' | '\'' | '\\' => s.push(n),
                                'n' => s.push('\n'),
                                'r' => s.push('\r'),
                                't' => s.push('\t'),
                                other => {
                                    s.push('\\');
                                    s.push(other);
                                }
                            }
                            if n == '\n' {
                                line += 1;
                            }
                        }
                        ch if ch == q => break,
                        '\n' => {
                            line += 1;
                            s.push('\n');
                        }
                        ch => s.push(ch),
                    }
                }
                out.push((Tok::Word(s), start));
            }
            _ => {
                let mut s = String::new();
                while i < chars.len() {
                    let ch = chars[i];
                    if ch.is_whitespace() || ch == ';' || ch == '}' {
                        break;
                    }
                    if ch == '{' {
                        // `${var}` inside a word is a variable, not a block.
                        if s.ends_with('$') {
                            while i < chars.len() && chars[i] != '}' {
                                if chars[i] == '\n' {
                                    return Err(err(line, "unterminated ${...} variable".into()));
                                }
                                s.push(chars[i]);
                                i += 1;
                            }
                            if i == chars.len() {
                                return Err(err(line, "unterminated ${...} variable".into()));
                            }
                            s.push('}');
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    if ch == '\\' && i + 1 < chars.len() {
                        if chars[i + 1] == '\n' {
                            line += 1;
                        }
                        s.push(ch);
                        s.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    s.push(ch);
                    i += 1;
                }
                out.push((Tok::Word(s), line));
            }
        }
    }
    Ok(out)
}

/// Parses one file's text into directives (no include resolution).
pub fn parse_text(text: &str, file: &str) -> Result<Vec<Directive>, SyntaxError> {
    let toks = tokenize(text, file)?;
    let mut pos = 0;
    let last_line = text.lines().count().max(1);
    let tree = parse_block(&toks, &mut pos, file, false, last_line)?;
    Ok(tree)
}

fn parse_block(
    toks: &[(Tok, usize)],
    pos: &mut usize,
    file: &str,
    nested: bool,
    last_line: usize,
) -> Result<Vec<Directive>, SyntaxError> {
    let err = |line: usize, message: &str| SyntaxError {
        file: file.to_owned(),
        line,
        message: message.to_owned(),
    };
    let mut out = Vec::new();
    loop {
        let Some((tok, line)) = toks.get(*pos) else {
            if nested {
                return Err(err(last_line, "unexpected end of file, expecting \"}\""));
            }
            return Ok(out);
        };
        let line = *line;
        *pos += 1;
        let name = match tok {
            Tok::Close if nested => return Ok(out),
            Tok::Close => return Err(err(line, "unexpected \"}\"")),
            Tok::Semi => return Err(err(line, "unexpected \";\" (a directive without a name)")),
            Tok::Open => return Err(err(line, "unexpected \"{\" (a block without a name)")),
            Tok::Word(w) => w.clone(),
        };
        let mut args = Vec::new();
        loop {
            match toks.get(*pos) {
                None => {
                    return Err(err(
                        last_line,
                        &format!("unexpected end of file: directive \"{name}\" (line {line}) is not terminated by \";\""),
                    ))
                }
                Some((Tok::Word(w), _)) => {
                    args.push(w.clone());
                    *pos += 1;
                }
                Some((Tok::Semi, _)) => {
                    *pos += 1;
                    out.push(Directive {
                        name,
                        args,
                        file: file.to_owned(),
                        line,
                        block: None,
                        missing: None,
                    });
                    break;
                }
                Some((Tok::Open, _)) => {
                    *pos += 1;
                    let block = parse_block(toks, pos, file, true, last_line)?;
                    out.push(Directive {
                        name,
                        args,
                        file: file.to_owned(),
                        line,
                        block: Some(block),
                        missing: None,
                    });
                    break;
                }
                Some((Tok::Close, l)) => {
                    return Err(err(
                        *l,
                        &format!("unexpected \"}}\": directive \"{name}\" (line {line}) is not terminated by \";\""),
                    ))
                }
            }
        }
    }
}

/// Where included files come from (the file system, or a map in tests).
pub trait Loader {
    /// The file's text.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The files in `dir` (names only).
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
}

/// The real file system.
pub struct Fs;

impl Loader for Fs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(v)
    }
}

/// `*` and `?` in one file name.
fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// Reads the main file and every file it includes.
pub fn parse_file(path: &Path, loader: &dyn Loader) -> Result<Vec<Directive>, SyntaxError> {
    let name = path.display().to_string();
    let text = loader.read(path).map_err(|e| SyntaxError {
        file: name.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let tree = parse_text(&text, &name)?;
    let prefix = path.parent().map(Path::to_path_buf).unwrap_or_default();
    resolve(tree, &prefix, loader, 0)
}

fn resolve(
    tree: Vec<Directive>,
    prefix: &Path,
    loader: &dyn Loader,
    depth: usize,
) -> Result<Vec<Directive>, SyntaxError> {
    let mut out = Vec::new();
    for mut d in tree {
        if d.name == "include" && d.block.is_none() && d.args.len() == 1 {
            if depth > 16 {
                return Err(SyntaxError {
                    file: d.file.clone(),
                    line: d.line,
                    message: "includes nested more than 16 deep (an include loop?)".into(),
                });
            }
            let target = PathBuf::from(&d.args[0]);
            let target = if target.is_absolute() {
                target
            } else {
                prefix.join(target)
            };
            let file_name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let files: Result<Vec<PathBuf>, String> =
                if file_name.contains('*') || file_name.contains('?') {
                    let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
                    match loader.list(&dir) {
                        Ok(mut names) => {
                            names.retain(|n| glob_match(&file_name, n));
                            names.sort();
                            Ok(names.into_iter().map(|n| dir.join(n)).collect())
                        }
                        Err(e) => Err(format!("{}: {e}", dir.display())),
                    }
                } else {
                    Ok(vec![target.clone()])
                };
            let mut texts = Vec::new();
            let mut failed = None;
            match files {
                Ok(files) => {
                    for f in files {
                        match loader.read(&f) {
                            Ok(t) => texts.push((f, t)),
                            Err(e) => {
                                failed = Some(format!("{}: {e}", f.display()));
                                break;
                            }
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
            if let Some(why) = failed {
                d.missing = Some(why);
                out.push(d);
                continue;
            }
            for (f, t) in texts {
                let sub = parse_text(&t, &f.display().to_string())?;
                out.extend(resolve(sub, prefix, loader, depth + 1)?);
            }
            continue;
        }
        if let Some(block) = d.block.take() {
            d.block = Some(resolve(block, prefix, loader, depth)?);
        }
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<PathBuf, String>);
    impl Loader for Map {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            Ok(self
                .0
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect())
        }
    }

    #[test]
    fn directives_blocks_and_lines() {
        let t = parse_text(
            "worker_processes 2;\nhttp {\n  server {\n    listen 80;\n    location / { uwsgi_pass unix:/s; }\n  }\n}\n",
            "n.conf",
        )
        .unwrap();
        assert_eq!(t[0].name, "worker_processes");
        assert_eq!(t[0].args, vec!["2"]);
        let http = &t[1];
        assert_eq!(http.line, 2);
        let server = &http.block.as_ref().unwrap()[0];
        let loc = &server.block.as_ref().unwrap()[1];
        assert_eq!(loc.name, "location");
        assert_eq!(loc.args, vec!["/"]);
        assert_eq!(loc.line, 5);
        assert_eq!(loc.block.as_ref().unwrap()[0].args, vec!["unix:/s"]);
    }

    #[test]
    fn quotes_comments_and_variables() {
        let t = parse_text(
            "# a comment\nlog_format main '$remote_addr \"x\" # not a comment';\nadd_header X \"a;b{c}\"; # trailing\nset $x ${host}y;\nreturn 200 \"it\\'s\";",
            "n.conf",
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].args[1], "$remote_addr \"x\" # not a comment");
        assert_eq!(t[0].line, 2);
        assert_eq!(t[1].args, vec!["X", "a;b{c}"]);
        assert_eq!(t[2].args, vec!["$x", "${host}y"]);
        assert_eq!(t[3].args, vec!["200", "it's"]);
    }

    #[test]
    fn multi_line_strings_count_lines() {
        let t = parse_text("a \"x\ny\";\nb;\n", "n").unwrap();
        assert_eq!(t[1].line, 3);
    }

    #[test]
    fn escaped_newlines_in_words_count_lines() {
        let t = parse_text("a b\\\nc;\nd;\n", "n").unwrap();
        assert_eq!(t[0].args, vec!["b\\\nc"]);
        assert_eq!(t[1].line, 3);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_text("http {\n  server {\n  listen 80;\n}\n", "n.conf").unwrap_err();
        assert!(e.message.contains("end of file"), "{e}");
        let e = parse_text("a 1;\n}\n", "n.conf").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "unexpected \"}\""));
        let e = parse_text("a 1\nb 2;\nc {\n d 1\n}\n", "n.conf").unwrap_err();
        assert_eq!(e.line, 5);
        let e = parse_text("a \"open;\n", "x.conf").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unterminated"));
        let e = parse_text("listen 80", "x.conf").unwrap_err();
        assert!(e.message.contains("not terminated"), "{e}");
        assert!(parse_text(";", "x").is_err());
        assert!(parse_text("{ }", "x").is_err());
    }

    #[test]
    fn includes_relative_to_the_main_file_with_globs() {
        let mut m = HashMap::new();
        m.insert(
            PathBuf::from("/etc/nginx/nginx.conf"),
            "http { include conf.d/*.conf; include uwsgi_params; }".to_owned(),
        );
        m.insert(PathBuf::from("/etc/nginx/conf.d/b.conf"), "b 2;".to_owned());
        m.insert(
            PathBuf::from("/etc/nginx/conf.d/a.conf"),
            "a 1;\ninclude conf.d/nested.inc;".to_owned(),
        );
        m.insert(
            PathBuf::from("/etc/nginx/conf.d/nested.inc"),
            "n 3;".to_owned(),
        );
        let t = parse_file(Path::new("/etc/nginx/nginx.conf"), &Map(m)).unwrap();
        let http = t[0].block.as_ref().unwrap();
        let names: Vec<_> = http.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["a", "n", "b", "include"]);
        assert_eq!(http[0].file, "/etc/nginx/conf.d/a.conf");
        assert!(http[3].missing.is_some());
    }

    #[test]
    fn include_loops_stop() {
        let mut m = HashMap::new();
        m.insert(PathBuf::from("/n/a.conf"), "include a.conf;".to_owned());
        let e = parse_file(Path::new("/n/a.conf"), &Map(m)).unwrap_err();
        assert!(e.message.contains("16 deep"));
    }

    #[test]
    fn never_panics_on_junk() {
        for s in [
            "", "}", "{", "\"", "'", "${", "a ${b", "a \\", "#", "a{b{c;}}", "\u{0}", "a 'b\\",
        ] {
            let _ = parse_text(s, "f");
        }
    }
}

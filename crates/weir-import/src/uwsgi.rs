//! uWSGI's ini files, read as uWSGI reads them (`core/ini.c`).
//!
//! Why hand-written and not `rust-ini`: uWSGI's ini is not a map. A key may repeat (`socket`
//! twice is two sockets; `env` many times), order matters, only one section counts (`[uwsgi]`
//! unless another is named), `;` and `#` start comments only at the start of a line, a line
//! without `=` is a boolean flag (`master` alone is `master = true`), and values use
//! placeholders: `%(name)` is an option set earlier in the file, `%d` the ini's directory
//! (with a trailing `/`), `%n` its name without extension, `%p` its absolute path, `%%` a
//! `%`, and `$(NAME)` an environment variable. `rust-ini` folds repeated keys and knows none
//! of that. Keys are compared with `_` read as `-` (uWSGI accepts both).

use std::path::Path;

/// One `key = value` of the chosen section.
#[derive(Debug, Clone, PartialEq)]
pub struct Opt {
    /// The key, `_` turned into `-`.
    pub key: String,
    /// The value, placeholders expanded.
    pub value: String,
    /// The line (1-based).
    pub line: usize,
}

/// Parses the `section` of an ini text. `path` gives `%d`, `%n`, `%p`; `env` gives `$(NAME)`.
pub fn parse(
    text: &str,
    path: &Path,
    section: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Opt>, (usize, String)> {
    let mut out: Vec<Opt> = Vec::new();
    let mut current: Option<String> = None;
    let mut seen_section = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err((line, format!("section header {l:?} has no closing \"]\"")));
            };
            current = Some(name.trim().to_owned());
            if name.trim() == section {
                seen_section = true;
            }
            continue;
        }
        if current.as_deref() != Some(section) {
            if current.is_none() {
                return Err((
                    line,
                    format!(
                        "{l:?} comes before any section: uWSGI reads only the [{section}] section"
                    ),
                ));
            }
            continue;
        }
        let (k, v) = match l.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (l, "true"),
        };
        if k.is_empty() {
            return Err((line, format!("{l:?} has no key before \"=\"")));
        }
        let key = k.replace('_', "-");
        let value = expand(v, path, &out, env);
        out.push(Opt { key, value, line });
    }
    if !seen_section {
        return Err((1, format!("no [{section}] section")));
    }
    Ok(out)
}

fn expand(v: &str, path: &Path, so_far: &[Opt], env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut s = String::new();
    let mut rest = v;
    while let Some(i) = rest.find(['%', '$']) {
        s.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("%(") {
            if let Some(end) = t.find(')') {
                let name = t[..end].replace('_', "-");
                match so_far.iter().rev().find(|o| o.key == name) {
                    Some(o) => s.push_str(&o.value),
                    None => s.push_str(&tail[..end + 3]),
                }
                rest = &t[end + 1..];
                continue;
            }
        }
        if let Some(t) = tail.strip_prefix("$(") {
            if let Some(end) = t.find(')') {
                match env(&t[..end]) {
                    Some(val) => s.push_str(&val),
                    None => s.push_str(&tail[..end + 3]),
                }
                rest = &t[end + 1..];
                continue;
            }
        }
        let mut cs = tail.chars();
        let first = cs.next().unwrap_or('%');
        let second = cs.next();
        if first == '%' {
            let dir = path
                .parent()
                .map(|p| {
                    let mut d = p.display().to_string();
                    if !d.ends_with('/') {
                        d.push('/');
                    }
                    d
                })
                .unwrap_or_default();
            let rep = match second {
                Some('d') => Some(dir),
                Some('n') => Some(
                    path.file_stem()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                Some('p') => Some(path.display().to_string()),
                Some('%') => Some("%".to_owned()),
                Some('k') => Some(
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                        .to_string(),
                ),
                _ => None,
            };
            if let Some(r) = rep {
                s.push_str(&r);
                rest = &tail[2..];
                continue;
            }
        }
        s.push(first);
        rest = &tail[first.len_utf8()..];
    }
    s.push_str(rest);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<Opt> {
        parse(text, Path::new("/srv/app/uwsgi.ini"), "uwsgi", &|n| {
            (n == "HOME").then(|| "/home/u".to_owned())
        })
        .unwrap()
    }

    #[test]
    fn repeated_keys_flags_comments_and_other_sections() {
        let o = p("[other]\nx = 1\n[uwsgi]\n# c\n; c\nsocket = a.sock\nsocket = :3031\nmaster\nmax_requests = 5\n");
        let kv: Vec<_> = o
            .iter()
            .map(|o| (o.key.as_str(), o.value.as_str(), o.line))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("socket", "a.sock", 6),
                ("socket", ":3031", 7),
                ("master", "true", 8),
                ("max-requests", "5", 9)
            ]
        );
    }

    #[test]
    fn placeholders() {
        let o = p("[uwsgi]\nbase = /srv/x\nchdir = %(base)/app\nsocket = %dapp.sock\nlogto = /var/log/%n.log\nhome = $(HOME)/venv\npct = 100%%\nunknown = %(nope) $(NOPE) %z\n");
        assert_eq!(o[1].value, "/srv/x/app");
        assert_eq!(o[2].value, "/srv/app/app.sock");
        assert_eq!(o[3].value, "/var/log/uwsgi.log");
        assert_eq!(o[4].value, "/home/u/venv");
        assert_eq!(o[5].value, "100%");
        assert_eq!(o[6].value, "%(nope) $(NOPE) %z");
    }

    #[test]
    fn errors() {
        let e = parse("[uwsgi\n", Path::new("u.ini"), "uwsgi", &|_| None).unwrap_err();
        assert_eq!(e.0, 1);
        let e = parse("socket = x\n", Path::new("u.ini"), "uwsgi", &|_| None).unwrap_err();
        assert!(e.1.contains("before any section"));
        let e = parse("[app]\nx=1\n", Path::new("u.ini"), "uwsgi", &|_| None).unwrap_err();
        assert!(e.1.contains("no [uwsgi] section"));
        let e = parse("[uwsgi]\n = 3\n", Path::new("u.ini"), "uwsgi", &|_| None).unwrap_err();
        assert_eq!(e.0, 2);
    }
}

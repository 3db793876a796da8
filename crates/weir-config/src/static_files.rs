//! `[[static]]`: files the front door serves itself, from a directory, without a worker
//! (NGINX's `location /static/ { root ...; expires ...; gzip_static on; }`). The serving is
//! weir-front's static stage; see docs/config.md.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ConfigError, Seconds};

/// One `[[static]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The URL path prefix (`"/static"`): `/static/app.css` is `ROOT/app.css`.
    pub prefix: String,
    /// The directory the files come from; a relative one is relative to the directory
    /// weir was started in. It must exist when weir starts.
    pub root: PathBuf,
    /// `Cache-Control: max-age` (and `Expires`) on every file (NGINX's `expires`); unset:
    /// neither header.
    #[serde(default)]
    pub expires: Option<Seconds>,
    /// Serve `NAME.br` / `NAME.gz` beside `NAME` when the client accepts the coding
    /// (NGINX's `gzip_static`, and brotli's `brotli_static`).
    #[serde(default)]
    pub precompressed: bool,
}

impl StaticConfig {
    /// The prefix without its trailing slashes (`"/static/"` is `"/static"`; `"/"` is `""`).
    pub fn prefix_trimmed(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }
}

/// Checks every `[[static]]` table: prefixes start with `/`, are plain and distinct, and
/// roots are directories.
pub fn validate(statics: &[StaticConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, s) in statics.iter().enumerate() {
        let key = |k: &str| format!("static[{i}].{k}");
        if !s.prefix.starts_with('/') {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!("{:?} must start with /", s.prefix),
            ));
        }
        if s.prefix.split('/').any(|seg| seg == "." || seg == "..")
            || s.prefix
                .bytes()
                .any(|b| b == b'%' || b == b'?' || b == b'#' || b.is_ascii_control() || b == b' ')
        {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!(
                    "{:?} must be a plain path (no `.`/`..` segments, %, ?, # or spaces)",
                    s.prefix
                ),
            ));
        }
        if !seen.insert(s.prefix_trimmed()) {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!("{:?} appears twice", s.prefix),
            ));
        }
        if !s.root.is_dir() {
            return Err(ConfigError::invalid(
                key("root"),
                format!(
                    "{} is not a directory{}",
                    s.root.display(),
                    if s.root.is_relative() {
                        " (a relative root is relative to the directory weir was started in)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::path::Path;

    fn validated(text: &str) -> Result<Config, String> {
        let c = Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_static_table_parses_and_validates() {
        let dir = std::env::temp_dir();
        let c = validated(&format!(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"/static/\"\nroot = {:?}\nexpires = \"2h\"\nprecompressed = true\n",
            dir
        ))
        .unwrap();
        assert_eq!(c.statics.len(), 1);
        assert_eq!(c.statics[0].prefix_trimmed(), "/static");
        assert_eq!(c.statics[0].expires.unwrap().as_duration().as_secs(), 7200);
        assert!(c.statics[0].precompressed);
    }

    #[test]
    fn bad_tables_name_their_key() {
        let dir = format!("{:?}", std::env::temp_dir());
        let e = validated(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"/s\"\nroot = \"/no/such/dir\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("static[0].root") && e.contains("not a directory"),
            "{e}"
        );
        let e = validated(&format!(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"s\"\nroot = {dir}\n"
        ))
        .unwrap_err();
        assert!(e.contains("static[0].prefix"), "{e}");
        let e = validated(&format!(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"/a/../b\"\nroot = {dir}\n"
        ))
        .unwrap_err();
        assert!(e.contains("static[0].prefix"), "{e}");
        let e = validated(&format!(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"/s\"\nroot = {dir}\n[[static]]\nprefix = \"/s/\"\nroot = {dir}\n"
        ))
        .unwrap_err();
        assert!(e.contains("static[1].prefix") && e.contains("twice"), "{e}");
        let e = validated(&format!(
            "[app]\nmodule = \"a:b\"\n[[static]]\nprefix = \"/s\"\nroot = {dir}\ngzip = true\n"
        ))
        .unwrap_err();
        assert!(e.contains("gzip"), "{e}");
    }
}

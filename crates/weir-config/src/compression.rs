//! `[compression]`: response compression in the front door, as NGINX's `gzip` module
//! (`gzip_types`, `gzip_min_length`, `gzip_comp_level`, `gzip_vary on`), with brotli and
//! zstd beside gzip. The encoder itself is weir-front's `compression` module.
//!
//! ```toml
//! [compression]
//! algorithms = ["br", "zstd", "gzip"]   # the server's order of preference
//! types = ["text/*", "application/json", "application/javascript", "image/svg+xml"]
//! min_length = 1024
//! ```

use serde::Deserialize;

use crate::{ConfigError, Size};

/// A content coding weir can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Brotli (RFC 7932), `Content-Encoding: br`.
    Br,
    /// Zstandard (RFC 8878), `Content-Encoding: zstd`.
    Zstd,
    /// gzip (RFC 1952), `Content-Encoding: gzip`.
    Gzip,
}

impl Algorithm {
    /// Its content-coding token.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Br => "br",
            Algorithm::Zstd => "zstd",
            Algorithm::Gzip => "gzip",
        }
    }
}

/// `[compression]`. Present: responses are compressed for clients that accept it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// The codings weir offers, in its order of preference; among the codings a client
    /// accepts with the same q-value, the first listed here wins.
    pub algorithms: Vec<Algorithm>,
    /// Media types compressed (`gzip_types`): exact (`application/json`) or a whole
    /// top-level type (`text/*`); parameters (`; charset=utf-8`) are ignored.
    pub types: Vec<String>,
    /// Bodies known to be shorter than this are sent as they are (`gzip_min_length`).
    pub min_length: Size,
    /// gzip's level, 1 to 9 (`gzip_comp_level`, 1 by default as NGINX).
    pub gzip_level: u32,
    /// Brotli's quality, 0 to 11 (4 by default: most of the ratio of 11 at a small part of
    /// its cost).
    pub br_level: u32,
    /// zstd's level, 1 to 19 (3, zstd's own default).
    pub zstd_level: i32,
}

impl CompressionConfig {
    /// `algorithms` when unset.
    pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
        [Algorithm::Br, Algorithm::Zstd, Algorithm::Gzip];
    /// `types` when unset.
    pub const DEFAULT_TYPES: [&'static str; 4] = [
        "text/*",
        "application/json",
        "application/javascript",
        "image/svg+xml",
    ];

    /// Checks the section; the key in the error is `compression.KEY`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "compression.algorithms",
                "list at least one of \"br\", \"zstd\", \"gzip\" (remove [compression] to compress nothing)",
            ));
        }
        for (i, a) in self.algorithms.iter().enumerate() {
            if self.algorithms[..i].contains(a) {
                return Err(ConfigError::invalid(
                    "compression.algorithms",
                    format!("{:?} is listed twice", a.as_str()),
                ));
            }
        }
        if self.types.is_empty() {
            return Err(ConfigError::invalid(
                "compression.types",
                "list at least one media type (\"text/*\", \"application/json\"...)",
            ));
        }
        for t in &self.types {
            let ok = match t.split_once('/') {
                Some((top, sub)) => is_token(top) && (sub == "*" || is_token(sub)) && top != "*",
                None => false,
            };
            if !ok {
                return Err(ConfigError::invalid(
                    "compression.types",
                    format!(
                        "{t:?} is not a media type: use TYPE/SUBTYPE or TYPE/* (no parameters)"
                    ),
                ));
            }
        }
        if !(1..=9).contains(&self.gzip_level) {
            return Err(ConfigError::invalid(
                "compression.gzip_level",
                format!("{} is out of range: use 1 to 9", self.gzip_level),
            ));
        }
        if self.br_level > 11 {
            return Err(ConfigError::invalid(
                "compression.br_level",
                format!("{} is out of range: use 0 to 11", self.br_level),
            ));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(ConfigError::invalid(
                "compression.zstd_level",
                format!("{} is out of range: use 1 to 19", self.zstd_level),
            ));
        }
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b) && b != b'*')
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            algorithms: Self::DEFAULT_ALGORITHMS.to_vec(),
            types: Self::DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            min_length: Size::from_bytes(1024),
            gzip_level: 1,
            br_level: 4,
            zstd_level: 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CompressionConfig, String> {
        let c: CompressionConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_the_documented_example() {
        let c = parse("").unwrap();
        assert_eq!(c.algorithms, CompressionConfig::DEFAULT_ALGORITHMS);
        assert_eq!(c.min_length.bytes(), 1024);
        let c = parse(
            r#"algorithms = ["gzip"]
types = ["text/*", "application/json"]
min_length = "2KiB"
gzip_level = 6"#,
        )
        .unwrap();
        assert_eq!(c.algorithms, [Algorithm::Gzip]);
        assert_eq!(c.min_length.bytes(), 2048);
        assert_eq!(c.gzip_level, 6);
    }

    #[test]
    fn refusals_name_the_key() {
        for (toml, key) in [
            ("algorithms = []", "compression.algorithms"),
            (r#"algorithms = ["gzip", "gzip"]"#, "compression.algorithms"),
            ("types = []", "compression.types"),
            (r#"types = ["json"]"#, "compression.types"),
            (r#"types = ["*/*"]"#, "compression.types"),
            (
                r#"types = ["text/html; charset=utf-8"]"#,
                "compression.types",
            ),
            ("gzip_level = 0", "compression.gzip_level"),
            ("br_level = 12", "compression.br_level"),
            ("zstd_level = 22", "compression.zstd_level"),
        ] {
            let e = parse(toml).unwrap_err();
            assert!(e.contains(key), "{toml}: {e}");
        }
        assert!(parse(r#"algorithms = ["deflate"]"#).is_err());
        assert!(parse("level = 3").is_err(), "unknown keys are refused");
    }
}

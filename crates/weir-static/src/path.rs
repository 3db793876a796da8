//! A request path under a static prefix, turned into a path relative to the root.
//!
//! The input is the raw (still percent-encoded) rest of the request path after the prefix:
//! empty or starting with `/`. It is split on `/` first and each segment decoded alone, so
//! an encoded slash can never make a new segment; empty segments (`//`) are merged away as
//! NGINX's `merge_slashes` does. Refused, as a malformed path:
//! - a `.` or `..` segment, written plainly or encoded (`%2e%2e`, `.%2E`): weir does not
//!   resolve dot segments under a static root at all, it refuses them (a client that means
//!   `/static/a/../b` sends `/static/b`; browsers and curl normalise before sending);
//! - an encoded slash (`%2f`, `%2F`) or backslash (`%5c`), which some servers and
//!   filesystems read as a separator;
//! - a NUL byte (`%00`), which ends a C string early;
//! - a `%` not followed by two hex digits.
//!
//! The result has only normal segments, so joined to the root it names something under
//! the root, as far as names go: symlinks are checked by the I/O side (canonicalize, then
//! compare with the canonical root).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Why a path is refused (a 400 `bad-request` in the front door).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `.` or `..` segment, raw or percent-encoded.
    DotSegment,
    /// `%2f` or `%5c`: a separator hidden in a segment.
    EncodedSlash,
    /// A NUL byte (`%00`).
    Nul,
    /// A `%` without two hex digits after it.
    BadEscape,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::DotSegment => "the path has a `.` or `..` segment",
            PathError::EncodedSlash => "the path has an encoded slash (%2f or %5c)",
            PathError::Nul => "the path has a NUL byte (%00)",
            PathError::BadEscape => "the path has a % without two hex digits",
        })
    }
}

impl std::error::Error for PathError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one segment (no `/` in it), refusing what [`PathError`] lists.
fn decode_segment(seg: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let start = out.len();
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                seg.get(i + 1).copied().and_then(hex),
                seg.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let d = h << 4 | l;
            match d {
                0 => return Err(PathError::Nul),
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                _ => out.push(d),
            }
            i += 3;
        } else {
            if b == 0 {
                return Err(PathError::Nul);
            }
            out.push(b);
            i += 1;
        }
    }
    let decoded = &out[start..];
    if decoded == b"." || decoded == b".." {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

/// The rest of a request path after a static prefix (raw, `""` or `"/..."`), as a path
/// relative to the root (empty: the root itself). See the module doc for what is refused.
pub fn resolve(rest: &str) -> Result<PathBuf, PathError> {
    let mut out = Vec::with_capacity(rest.len());
    for seg in rest.as_bytes().split(|&b| b == b'/') {
        if seg.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        decode_segment(seg, &mut out)?;
    }
    Ok(PathBuf::from(OsStr::from_bytes(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    fn ok(s: &str) -> PathBuf {
        resolve(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn normal_paths_decode_and_merge_slashes() {
        assert_eq!(ok(""), Path::new(""));
        assert_eq!(ok("/"), Path::new(""));
        assert_eq!(ok("/app.css"), Path::new("app.css"));
        assert_eq!(ok("//css///site.css"), Path::new("css/site.css"));
        assert_eq!(ok("/a%20b.txt"), Path::new("a b.txt"));
        assert_eq!(ok("/caf%C3%A9.txt"), Path::new("café.txt"));
        assert_eq!(ok("/.well-known/x"), Path::new(".well-known/x"));
        assert_eq!(ok("/..foo/...txt"), Path::new("..foo/...txt"));
        assert_eq!(ok("/dir/"), Path::new("dir"));
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for s in [
            "/..",
            "/../x",
            "/a/../../x",
            "/a/./b",
            "/.",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e./x",
            "/%2e",
            "/a/%2e%2e",
        ] {
            assert_eq!(resolve(s), Err(PathError::DotSegment), "{s}");
        }
    }

    #[test]
    fn encoded_separators_nul_and_bad_escapes_are_refused() {
        assert_eq!(resolve("/..%2fx"), Err(PathError::EncodedSlash));
        assert_eq!(resolve("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(resolve("/%2e%2e%5cx"), Err(PathError::EncodedSlash));
        assert_eq!(resolve("/a%00.css"), Err(PathError::Nul));
        assert_eq!(resolve("/a\0b"), Err(PathError::Nul));
        assert_eq!(resolve("/a%"), Err(PathError::BadEscape));
        assert_eq!(resolve("/a%2"), Err(PathError::BadEscape));
        assert_eq!(resolve("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(resolve("/%%32%65"), Err(PathError::BadEscape));
    }

    #[test]
    fn double_encoding_is_decoded_once_and_stays_a_name() {
        // %252e%252e decodes to the name "%2e%2e", a file name, not a parent.
        assert_eq!(ok("/%252e%252e/x"), Path::new("%2e%2e/x"));
    }

    #[test]
    fn every_result_has_only_normal_components() {
        for s in ["/a/b", "/x%2ey", "/.../b", "//a//"] {
            assert!(ok(s)
                .components()
                .all(|c| matches!(c, Component::Normal(_))));
        }
    }
}

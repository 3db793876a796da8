//! The pure part of weir's static file serving (`[[static]]`, the front door's static
//! stage `weir_front::static_files`): bytes and header values in, decisions out, no I/O.
//!
//! # Layout
//! - [`path`]: a request path under a static prefix, percent-decoded and normalised into a
//!   path relative to the root, or refused: `.` and `..` segments (raw or encoded), an
//!   encoded slash, a NUL byte, a broken escape. What is left cannot leave the root by
//!   its name; symlinks are the I/O side's business (it canonicalizes).
//! - [`range`]: the `Range` field (RFC 9110 14.2) against a length: ignored, one range,
//!   several (answered whole), or unsatisfiable (416).
//! - [`cond`]: the validators (NGINX's ETag form, Last-Modified) and the conditional
//!   fields: `If-Match`, `If-Unmodified-Since` (412), `If-None-Match`, `If-Modified-Since`
//!   (304), `If-Range`.
//! - [`encoding`]: which precompressed variant (`.br`, `.gz`) `Accept-Encoding` allows,
//!   best first.
//! - [`mime_for`]: the Content-Type of a file name (crate mime_guess).
//!
//! The path normaliser and the Range parser are fuzzed (fuzz/fuzz_targets/static_path.rs).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cond;
pub mod encoding;
pub mod path;
pub mod range;

pub use path::{resolve, PathError};
pub use range::{parse_range, Ranges};

/// The Content-Type for a file name, from its extension (mime_guess's table);
/// `application/octet-stream` when unknown (NGINX's `default_type` in its stock config).
pub fn mime_for(path: &std::path::Path) -> &'static str {
    mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mime_types_by_extension() {
        assert_eq!(mime_for(Path::new("a/site.css")), "text/css");
        assert_eq!(mime_for(Path::new("app.js")), "text/javascript");
        assert_eq!(mime_for(Path::new("logo.PNG")), "image/png");
        assert_eq!(mime_for(Path::new("index.html")), "text/html");
        assert_eq!(mime_for(Path::new("noext")), "application/octet-stream");
    }
}

//! Validators and the conditional fields of a static file's GET or HEAD.
//!
//! - The ETag is NGINX's form, `"<mtime in hex>-<length in hex>"` (unix seconds), so
//!   a change of either makes a new tag, and a cache that knew NGINX's tags for the same
//!   files keeps them valid.
//! - `If-None-Match` (weak comparison, `*` matches) answers 304 when it matches; only
//!   without it, `If-Modified-Since` answers 304 when the file is not newer than the date
//!   (RFC 9110 13.1.3; NGINX's default `if_modified_since exact` wants the same date).
//! - `If-Range` keeps a Range only when it names the current representation: its strong
//!   ETag, or its exact Last-Modified date.
//!
//! - `If-Match` (strong comparison, `*` matches the file that exists) and, only without
//!   it, `If-Unmodified-Since` (the file not newer than the date) are preconditions:
//!   when one fails the answer is 412 Precondition Failed, before any 304 (RFC 9110
//!   13.2.2's order; NGINX's not-modified filter answers 412 the same way). A client
//!   uses them to resume a download only while the file is the same.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole unix seconds of a modification time (HTTP dates have no finer resolution).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// NGINX's ETag for a file: `"<mtime hex>-<len hex>"`.
pub fn etag(mtime: SystemTime, len: u64) -> String {
    format!("\"{:x}-{:x}\"", unix_secs(mtime), len)
}

/// The Last-Modified value (an IMF-fixdate) of a modification time.
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_secs(t)))
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Does an `If-None-Match` value match `etag` (weak comparison; `*` matches any)?
pub fn none_match(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let value = value.trim();
    if value == "*" {
        return true;
    }
    let ours = opaque(etag);
    value.split(',').any(|t| opaque(t.trim()) == ours)
}

/// Does an `If-Match` value match `etag` (strong comparison: a weak tag never matches;
/// `*` matches any file that exists)?
pub fn match_strong(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let value = value.trim();
    if value == "*" {
        return true;
    }
    !etag.starts_with("W/") && value.split(',').any(|t| t.trim() == etag)
}

/// Was the file (modified at `mtime`) modified after an `If-Unmodified-Since` value? An
/// unreadable date is ignored (false, RFC 9110 13.1.4).
pub fn modified_since(value: &[u8], mtime: SystemTime) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .is_some_and(|since| unix_secs(mtime) > unix_secs(since))
}

/// Is the file (modified at `mtime`) not newer than an `If-Modified-Since` value? An
/// unreadable date is ignored (false).
pub fn not_modified_since(value: &[u8], mtime: SystemTime) -> bool {
    let Some(since) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return false;
    };
    unix_secs(mtime) <= unix_secs(since)
}

/// Does an `If-Range` value name the current representation (its strong ETag, or exactly
/// its Last-Modified date)? When it does not, the Range is ignored and the whole file sent.
pub fn if_range_holds(value: &[u8], etag: &str, mtime: SystemTime) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') {
        return value == etag;
    }
    if value.starts_with("W/") {
        return false; // a weak tag never validates a range
    }
    httpdate::parse_http_date(value).is_ok_and(|d| unix_secs(d) == unix_secs(mtime))
}

/// The conditional fields of a GET or HEAD, as found on the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditionals<'a> {
    /// `If-None-Match`.
    pub if_none_match: Option<&'a [u8]>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a [u8]>,
    /// `If-Match`.
    pub if_match: Option<&'a [u8]>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a [u8]>,
}

impl Conditionals<'_> {
    /// 412? `If-Match` decides when present; otherwise `If-Unmodified-Since`.
    pub fn precondition_failed(&self, etag: &str, mtime: SystemTime) -> bool {
        match (self.if_match, self.if_unmodified_since) {
            (Some(im), _) => !match_strong(im, etag),
            (None, Some(ius)) => modified_since(ius, mtime),
            (None, None) => false,
        }
    }

    /// 304? `If-None-Match` decides when present; otherwise `If-Modified-Since`.
    pub fn not_modified(&self, etag: &str, mtime: SystemTime) -> bool {
        match (self.if_none_match, self.if_modified_since) {
            (Some(inm), _) => none_match(inm, etag),
            (None, Some(ims)) => not_modified_since(ims, mtime),
            (None, None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn etag_is_nginx_form() {
        assert_eq!(etag(t(0x5f5e100), 4096), "\"5f5e100-1000\"");
        // sub-second parts do not change it
        assert_eq!(etag(t(10) + Duration::from_millis(700), 1), "\"a-1\"");
        assert_eq!(http_date(t(784111777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn if_none_match() {
        let e = "\"a-1\"";
        assert!(none_match(b"\"a-1\"", e));
        assert!(none_match(b"W/\"a-1\"", e));
        assert!(none_match(b"\"x\", \"a-1\"", e));
        assert!(none_match(b"*", e));
        assert!(!none_match(b"\"a-2\"", e));
        assert!(!none_match(b"a-1", e));
    }

    #[test]
    fn if_modified_since() {
        let m = t(784111777);
        assert!(not_modified_since(b"Sun, 06 Nov 1994 08:49:37 GMT", m));
        assert!(not_modified_since(b"Sun, 06 Nov 1994 09:00:00 GMT", m));
        assert!(!not_modified_since(b"Sun, 06 Nov 1994 08:49:36 GMT", m));
        assert!(!not_modified_since(b"yesterday", m));
        // If-None-Match wins over If-Modified-Since
        let c = Conditionals {
            if_none_match: Some(b"\"other\""),
            if_modified_since: Some(b"Sun, 06 Nov 1994 09:00:00 GMT"),
            ..Default::default()
        };
        assert!(!c.not_modified("\"a-1\"", m));
    }

    #[test]
    fn preconditions() {
        let (e, m) = ("\"a-1\"", t(784111777));
        assert!(match_strong(b"\"a-1\"", e));
        assert!(match_strong(b"\"x\", \"a-1\"", e));
        assert!(match_strong(b"*", e));
        assert!(!match_strong(b"W/\"a-1\"", e), "If-Match compares strongly");
        assert!(!match_strong(b"\"a-2\"", e));
        assert!(modified_since(b"Sun, 06 Nov 1994 08:49:36 GMT", m));
        assert!(!modified_since(b"Sun, 06 Nov 1994 08:49:37 GMT", m));
        assert!(!modified_since(b"not a date", m));
        let ok = Conditionals::default();
        assert!(!ok.precondition_failed(e, m));
        // If-Match decides when present, even if If-Unmodified-Since would fail
        let c = Conditionals {
            if_match: Some(b"\"a-1\""),
            if_unmodified_since: Some(b"Sun, 06 Nov 1994 08:00:00 GMT"),
            ..Default::default()
        };
        assert!(!c.precondition_failed(e, m));
        let c = Conditionals {
            if_unmodified_since: Some(b"Sun, 06 Nov 1994 08:00:00 GMT"),
            ..Default::default()
        };
        assert!(c.precondition_failed(e, m));
    }

    #[test]
    fn if_range() {
        let m = t(784111777);
        assert!(if_range_holds(b"\"a-1\"", "\"a-1\"", m));
        assert!(!if_range_holds(b"\"a-2\"", "\"a-1\"", m));
        assert!(!if_range_holds(b"W/\"a-1\"", "\"a-1\"", m));
        assert!(if_range_holds(
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            "\"a-1\"",
            m
        ));
        assert!(!if_range_holds(
            b"Sun, 06 Nov 1994 09:00:00 GMT",
            "\"a-1\"",
            m
        ));
        assert!(!if_range_holds(b"junk", "\"a-1\"", m));
    }
}

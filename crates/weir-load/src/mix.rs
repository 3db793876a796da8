//! Request mixes: a TOML file of weighted requests (`--mix FILE`), and the request bytes
//! each entry is sent as.
//!
//! ```toml
//! [[request]]
//! name = "hello"        # optional; defaults to "METHOD PATH"
//! weight = 98
//! path = "/hello"
//!
//! [[request]]
//! weight = 2
//! method = "POST"
//! path = "/slow"
//! headers = { "Content-Type" = "application/json" }
//! body = '{"n": 1}'
//! ```
//!
//! Every request is built once, up front, into the exact bytes that go on the wire, so the
//! hot path only writes a shared buffer.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;

/// The mix file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    /// The weighted requests.
    #[serde(default)]
    request: Vec<RawEntry>,
}

/// One `[[request]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    /// A label for the report; defaults to `METHOD PATH`.
    name: Option<String>,
    /// Relative share of the requests (any positive number).
    weight: f64,
    /// HTTP method; `GET` when absent.
    method: Option<String>,
    /// Path and query, starting with `/`.
    path: String,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Request body (sent with a `Content-Length`).
    body: Option<String>,
}

/// One request of a mix, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MixEntry {
    /// Label used in the report.
    pub name: String,
    /// Relative share of the requests.
    pub weight: f64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Extra request headers, in file order of their names.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<String>,
}

impl MixEntry {
    /// The single entry used when there is no mix file: `GET` the target's path.
    pub fn single(path: &str) -> MixEntry {
        MixEntry {
            name: format!("GET {path}"),
            weight: 1.0,
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// The request as sent: request line, `Host`, `User-Agent`, the entry's headers,
    /// `Content-Length` when there is a body, then the body.
    pub fn request_bytes(&self, host: &str) -> Bytes {
        let mut s = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weir-load/{}\r\n",
            self.method,
            self.path,
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        if let Some(b) = &self.body {
            s.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            s.push_str(b);
        } else {
            s.push_str("\r\n");
        }
        Bytes::from(s)
    }

    /// Whether responses to this request have no body whatever their headers say.
    pub fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads and validates a mix file.
pub fn load(path: &Path) -> Result<Vec<MixEntry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse(&text)
}

/// Parses and validates mix-file text.
pub fn parse(text: &str) -> Result<Vec<MixEntry>, String> {
    let file: MixFile = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines with a source excerpt; keep the first line.
        e.message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string()
    })?;
    if file.request.is_empty() {
        return Err("no [[request]] entries".into());
    }
    let mut out = Vec::with_capacity(file.request.len());
    for (i, r) in file.request.into_iter().enumerate() {
        let n = i + 1;
        if !r.weight.is_finite() || r.weight <= 0.0 {
            return Err(format!("request {n}: weight must be above zero"));
        }
        let method = r.method.unwrap_or_else(|| "GET".into());
        if !is_token(&method) {
            return Err(format!("request {n}: `{method}` is not an HTTP method"));
        }
        if !r.path.starts_with('/') || r.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "request {n}: path `{}` must start with / and have no spaces or control characters",
                r.path
            ));
        }
        let mut headers = Vec::with_capacity(r.headers.len());
        for (k, v) in r.headers {
            if !is_token(&k) {
                return Err(format!("request {n}: `{k}` is not a header name"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!("request {n}: header `{k}` has a line break"));
            }
            let lk = k.to_ascii_lowercase();
            if lk == "content-length" || lk == "transfer-encoding" || lk == "host" {
                return Err(format!(
                    "request {n}: header `{k}` is set by weir load (use `body`, or the target's host)"
                ));
            }
            headers.push((k, v));
        }
        out.push(MixEntry {
            name: r.name.unwrap_or_else(|| format!("{method} {}", r.path)),
            weight: r.weight,
            method,
            path: r.path,
            headers,
            body: r.body,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mix() {
        let m = parse(
            r#"
            [[request]]
            weight = 98
            path = "/hello"
            [[request]]
            name = "slow"
            weight = 2
            method = "POST"
            path = "/slow"
            headers = { "Content-Type" = "application/json" }
            body = '{"n": 1}'
            "#,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "GET /hello");
        assert_eq!(m[1].name, "slow");
        let req = m[1].request_bytes("h:1");
        let req = std::str::from_utf8(&req).unwrap();
        assert!(
            req.starts_with("POST /slow HTTP/1.1\r\nHost: h:1\r\n"),
            "{req}"
        );
        assert!(req.contains("Content-Type: application/json\r\n"));
        assert!(req.ends_with("Content-Length: 8\r\n\r\n{\"n\": 1}"));
        let get = m[0].request_bytes("h");
        assert!(get.ends_with(b"weir-load/0.1.0\r\n\r\n") || get.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn refuses_bad_mixes() {
        let bad = [
            ("", "no [[request]]"),
            ("[[request]]\nweight = 0\npath = \"/\"", "weight"),
            ("[[request]]\nweight = 1\npath = \"x\"", "must start with /"),
            (
                "[[request]]\nweight = 1\npath = \"/a b\"",
                "must start with /",
            ),
            (
                "[[request]]\nweight = 1\nmethod = \"G T\"\npath = \"/\"",
                "method",
            ),
            (
                "[[request]]\nweight = 1\npath = \"/\"\nheaders = { \"Bad Name\" = \"x\" }",
                "header name",
            ),
            (
                "[[request]]\nweight = 1\npath = \"/\"\nheaders = { \"Host\" = \"x\" }",
                "set by weir load",
            ),
            (
                "[[request]]\nweight = 1\npath = \"/\"\nheaders = { \"X\" = \"a\\r\\nb\" }",
                "line break",
            ),
            (
                "[[request]]\nweight = 1\npath = \"/\"\nbogus = 1",
                "unknown field",
            ),
            ("[[request]]\npath = \"/\"", "weight"),
            ("not toml [", ""),
        ];
        for (text, want) in bad {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}

//! NGINX-style key templates evaluated against a request.
//!
//! A template is literal text and variables: `"$remote_addr"`, `"$remote_addr:$uri"`,
//! `"${arg_user}x"`. The grammar and the variable list are weir-config's
//! ([`weir_config::template`]), so `Config::validate` refuses an unknown variable at load
//! with the same parser; this module evaluates. The request is seen through
//! [`RequestView`], which the front door implements over its own request type, so the
//! templates are not tied to limits (the response cache will key on them too).
//!
//! Values as NGINX gives them: `$arg_NAME` is not percent-decoded and its name is compared
//! ignoring ASCII case; `$cookie_NAME` likewise; `$http_NAME` is the header's value (the
//! view decides how repeated headers are joined; NGINX joins them with `", "`); a missing
//! value is empty. An empty result means "not limited" for a limit zone.

use std::fmt;
use std::str::FromStr;

use weir_config::template::{parse_template, Segment, Var};

/// What a key template may read of a request. The front door implements it over its
/// request (after `trusted_proxies`: `remote_addr` is the client, not the proxy).
pub trait RequestView {
    /// The client address, as text (`203.0.113.7`, `2001:db8::1`).
    fn remote_addr(&self) -> &str;
    /// A request header by its lowercase name (the view joins repeated ones).
    fn header(&self, lowercase_name: &str) -> Option<&[u8]>;
    /// The path, without the query string.
    fn path(&self) -> &str;
    /// The query string, without `?`.
    fn query(&self) -> Option<&str>;
    /// `http` or `https`.
    fn scheme(&self) -> &str;
    /// The host the request is for (without the port, as NGINX's `$host`).
    fn host(&self) -> &str;
    /// The method.
    fn method(&self) -> &str;
}

/// Why a template was refused: the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key template {0}")]
pub struct KeyError(String);

/// A parsed key template ([`FromStr`]); [`KeyTemplate::eval`] renders it for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl FromStr for KeyTemplate {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<KeyTemplate, KeyError> {
        Ok(KeyTemplate {
            source: s.to_owned(),
            segments: parse_template(s).map_err(KeyError)?,
        })
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl KeyTemplate {
    /// The template's text, as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The value for `req`; an empty string when every variable is empty and there is no
    /// literal text (such a request is not limited).
    pub fn eval(&self, req: &impl RequestView) -> String {
        let mut out = String::new();
        self.eval_into(req, &mut out);
        out
    }

    /// [`KeyTemplate::eval`] appending to `out`. A key with literal text but every
    /// variable empty (`"$arg_user:"` without `user`) is not empty; as in NGINX, write
    /// the template so that "no value" renders empty if such requests must go unlimited.
    pub fn eval_into(&self, req: &impl RequestView, out: &mut String) {
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Var(v) => push_var(v, req, out),
            }
        }
    }
}

fn push_bytes(out: &mut String, b: &[u8]) {
    out.push_str(&String::from_utf8_lossy(b));
}

fn push_var(v: &Var, req: &impl RequestView, out: &mut String) {
    match v {
        Var::RemoteAddr => out.push_str(req.remote_addr()),
        Var::Http(name) => {
            if let Some(h) = req.header(name) {
                push_bytes(out, h);
            }
        }
        Var::Cookie(name) => {
            if let Some(c) = req.header("cookie").and_then(|h| cookie(h, name)) {
                push_bytes(out, c);
            }
        }
        Var::Arg(name) => {
            if let Some(a) = req.query().and_then(|q| arg(q, name)) {
                out.push_str(a);
            }
        }
        Var::Uri => out.push_str(req.path()),
        Var::RequestUri => {
            out.push_str(req.path());
            if let Some(q) = req.query() {
                out.push('?');
                out.push_str(q);
            }
        }
        Var::Scheme => out.push_str(req.scheme()),
        Var::Host => out.push_str(req.host()),
        Var::RequestMethod => out.push_str(req.method()),
    }
}

/// A query argument's raw value (`a=1&b=2`; the first match; a name without `=` is empty).
fn arg<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// A cookie's value in a `Cookie` header (`a=1; b=2`, or joined with `,`).
fn cookie<'c>(header: &'c [u8], name: &str) -> Option<&'c [u8]> {
    header.split(|&b| b == b';' || b == b',').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        k.trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
            .then_some(v.trim_ascii())
    })
}

/// A [`RequestView`] over owned parts, for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    /// `$remote_addr`.
    pub remote_addr: String,
    /// Headers as (lowercase name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// `$uri`.
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// `$scheme`.
    pub scheme: String,
    /// `$host`.
    pub host: String,
    /// `$request_method`.
    pub method: String,
}

impl RequestView for SimpleRequest {
    fn remote_addr(&self) -> &str {
        &self.remote_addr
    }
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == lowercase_name)
            .map(|(_, v)| v.as_slice())
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn scheme(&self) -> &str {
        &self.scheme
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn method(&self) -> &str {
        &self.method
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SimpleRequest {
        SimpleRequest {
            remote_addr: "203.0.113.7".into(),
            headers: vec![
                ("x-api-key".into(), b"k1".to_vec()),
                ("cookie".into(), b"a=1; SID=abc ; c=3".to_vec()),
            ],
            path: "/p/q".into(),
            query: Some("x=%20y&User=bob&flag".into()),
            scheme: "https".into(),
            host: "example.org".into(),
            method: "POST".into(),
        }
    }

    fn eval(t: &str) -> String {
        t.parse::<KeyTemplate>().unwrap().eval(&req())
    }

    #[test]
    fn variables() {
        assert_eq!(eval("$remote_addr"), "203.0.113.7");
        assert_eq!(eval("$http_x_api_key"), "k1");
        assert_eq!(eval("$http_X_API_KEY"), "k1");
        assert_eq!(eval("$cookie_sid"), "abc");
        assert_eq!(eval("$cookie_a"), "1");
        assert_eq!(eval("$arg_x"), "%20y", "not decoded, as NGINX");
        assert_eq!(eval("$arg_user"), "bob", "name ignores case, as NGINX");
        assert_eq!(eval("$arg_flag"), "");
        assert_eq!(eval("$uri"), "/p/q");
        assert_eq!(eval("$request_uri"), "/p/q?x=%20y&User=bob&flag");
        assert_eq!(eval("$scheme"), "https");
        assert_eq!(eval("$host"), "example.org");
        assert_eq!(eval("$request_method"), "POST");
    }

    #[test]
    fn concatenations_literals_and_empty() {
        assert_eq!(eval("$remote_addr:$uri"), "203.0.113.7:/p/q");
        assert_eq!(eval("${arg_user}y"), "boby");
        assert_eq!(eval("k-$request_method"), "k-POST");
        assert_eq!(eval("$http_x_missing"), "");
        assert_eq!(eval("$cookie_nope$arg_nope"), "");
        let e = "$remote_adr"
            .parse::<KeyTemplate>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("$remote_adr"), "{e}");
        assert_eq!("$uri".parse::<KeyTemplate>().unwrap().to_string(), "$uri");
    }
}

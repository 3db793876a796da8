//! Key templates as NGINX writes them (`"$remote_addr"`, `"$remote_addr:$uri"`,
//! `"${arg_user}x"`): the grammar and the list of variables, defined once.
//!
//! This module only parses: it turns a template into [`Segment`]s and refuses an unknown
//! variable, naming it. Evaluating a template against a request is weir-limits' `key`
//! module (which the response cache will reuse). The grammar lives here, in weir-config,
//! because weir-limits depends on weir-config (its `Limits` is built from a [`Config`]),
//! so [`Config::validate`] could not call weir-limits without a dependency cycle; keeping
//! the parser here gives one grammar for both.
//!
//! [`Config`]: crate::Config
//! [`Config::validate`]: crate::Config::validate

use std::fmt;

/// One variable of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `$remote_addr`: the client address (after `trusted_proxies`).
    RemoteAddr,
    /// `$http_NAME`: a request header; NAME lowercased, `_` read as `-`
    /// (`$http_x_api_key` is `x-api-key`). Held here in that form.
    Http(String),
    /// `$cookie_NAME`: a cookie's value (name compared ignoring ASCII case, as NGINX).
    Cookie(String),
    /// `$arg_NAME`: a query-string argument, not decoded (as NGINX); name compared
    /// ignoring ASCII case.
    Arg(String),
    /// `$uri`: the request path (without the query string).
    Uri,
    /// `$request_uri`: the path with its query string, as sent.
    RequestUri,
    /// `$scheme`: `http` or `https`.
    Scheme,
    /// `$host`: the host the request is for.
    Host,
    /// `$request_method`: `GET`, `POST`...
    RequestMethod,
}

impl Var {
    /// The accepted variables, for messages.
    pub const ACCEPTED: &'static str = "$remote_addr, $http_NAME, $cookie_NAME, $arg_NAME, $uri, $request_uri, $scheme, $host, $request_method";

    /// The variable of an NGINX variable name (without `$`).
    pub fn from_name(name: &str) -> Option<Var> {
        let prefixed = |p: &str| name.strip_prefix(p).filter(|rest| !rest.is_empty());
        Some(match name {
            "remote_addr" => Var::RemoteAddr,
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "scheme" => Var::Scheme,
            "host" => Var::Host,
            "request_method" => Var::RequestMethod,
            _ => {
                if let Some(h) = prefixed("http_") {
                    Var::Http(h.to_ascii_lowercase().replace('_', "-"))
                } else if let Some(c) = prefixed("cookie_") {
                    Var::Cookie(c.to_owned())
                } else if let Some(a) = prefixed("arg_") {
                    Var::Arg(a.to_owned())
                } else {
                    return None;
                }
            }
        })
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::RemoteAddr => f.write_str("$remote_addr"),
            Var::Http(h) => write!(f, "$http_{}", h.replace('-', "_")),
            Var::Cookie(c) => write!(f, "$cookie_{c}"),
            Var::Arg(a) => write!(f, "$arg_{a}"),
            Var::Uri => f.write_str("$uri"),
            Var::RequestUri => f.write_str("$request_uri"),
            Var::Scheme => f.write_str("$scheme"),
            Var::Host => f.write_str("$host"),
            Var::RequestMethod => f.write_str("$request_method"),
        }
    }
}

/// A piece of a template: literal text or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as is.
    Literal(String),
    /// A variable's value.
    Var(Var),
}

/// Parses a template into its segments. A variable is `$name` (the longest run of
/// letters, digits and `_`, as NGINX) or `${name}`; everything else is literal.
/// Errors name the unknown variable and list the accepted ones.
pub fn parse_template(s: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("{s:?}: \"${{\" without its closing \"}}\""))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err(format!(
                "{s:?}: \"$\" without a variable name (use one of {})",
                Var::ACCEPTED
            ));
        }
        let var = Var::from_name(name).ok_or_else(|| {
            format!(
                "{s:?}: unknown variable \"${name}\" (use one of {})",
                Var::ACCEPTED
            )
        })?;
        if !lit.is_empty() {
            out.push(Segment::Literal(std::mem::take(&mut lit)));
        }
        out.push(Segment::Var(var));
        rest = tail;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Segment::Literal(lit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_literals_and_braces() {
        assert_eq!(
            parse_template("$remote_addr:$uri").unwrap(),
            vec![
                Segment::Var(Var::RemoteAddr),
                Segment::Literal(":".into()),
                Segment::Var(Var::Uri)
            ]
        );
        assert_eq!(
            parse_template("${arg_x}y").unwrap(),
            vec![
                Segment::Var(Var::Arg("x".into())),
                Segment::Literal("y".into())
            ]
        );
        assert_eq!(
            parse_template("$http_X_Api_Key").unwrap(),
            vec![Segment::Var(Var::Http("x-api-key".into()))]
        );
        assert_eq!(
            parse_template("fixed").unwrap(),
            vec![Segment::Literal("fixed".into())]
        );
        assert_eq!(parse_template("").unwrap(), vec![]);
        // the longest run of name characters: "$arg_xy" is arg "xy", not arg "x" + "y"
        assert_eq!(
            parse_template("$arg_xy").unwrap(),
            vec![Segment::Var(Var::Arg("xy".into()))]
        );
    }

    #[test]
    fn unknown_and_malformed_are_named() {
        let e = parse_template("$remote_adr").unwrap_err();
        assert!(
            e.contains("$remote_adr") && e.contains("$remote_addr"),
            "{e}"
        );
        assert!(parse_template("$")
            .unwrap_err()
            .contains("without a variable"));
        assert!(parse_template("a$ b").is_err());
        assert!(parse_template("${uri").unwrap_err().contains("closing"));
        assert!(parse_template("$http_").unwrap_err().contains("$http_"));
    }

    #[test]
    fn display_round_trips() {
        for t in [
            "$remote_addr",
            "$http_x_api_key",
            "$cookie_sid",
            "$arg_q",
            "$request_uri",
        ] {
            let segs = parse_template(t).unwrap();
            let Segment::Var(v) = &segs[0] else { panic!() };
            assert_eq!(v.to_string(), t);
        }
    }
}

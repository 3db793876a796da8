//! `[tls]`: the certificates of the TLS listeners (`[server] tls_listen`), with more
//! certificates chosen by the client's server name (`[[tls.sni]]`, NGINX's `server_name`
//! blocks with their own `ssl_certificate`). The files are read and checked by
//! weir-front's `tls` module at start (and on SIGHUP); here only the shape is checked.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ConfigError;

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The default certificate: a PEM file with the full chain, the server's own
    /// certificate first (NGINX's `ssl_certificate`). Served to clients whose server name
    /// no `[[tls.sni]]` entry matches, or that send none.
    pub certificate: Option<PathBuf>,
    /// The default certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1; NGINX's
    /// `ssl_certificate_key`).
    pub key: Option<PathBuf>,
    /// More certificates, chosen by the server name the client asks for (SNI).
    pub sni: Vec<SniConfig>,
}

/// One `[[tls.sni]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniConfig {
    /// The server names it serves: exact (`api.example.com`) or a leading wildcard
    /// (`*.example.org`: one label, so `a.example.org` but not `example.org` nor
    /// `a.b.example.org`, as certificates match).
    pub names: Vec<String>,
    /// Its certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// Checks a server name as written in `names` (lowercase is not required: names are
/// compared without case).
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a server name: give a DNS name (api.example.com) or a leading wildcard (*.example.org)"),
        ));
    }
    Ok(())
}

impl TlsConfig {
    /// Checks the section; `listening` is whether any `tls_listen` address is set.
    pub fn validate(&self, listening: bool) -> Result<(), ConfigError> {
        let configured = self.certificate.is_some() || self.key.is_some() || !self.sni.is_empty();
        if !listening {
            if configured {
                return Err(ConfigError::invalid(
                    "server.tls_listen",
                    "[tls] is set but no TLS listener is: add an address to [server] tls_listen (\"0.0.0.0:8443\"), or remove [tls]",
                ));
            }
            return Ok(());
        }
        match (&self.certificate, &self.key) {
            (None, _) => {
                return Err(ConfigError::invalid(
                    "tls.certificate",
                    "a TLS listener needs a certificate: the PEM file with the full chain",
                ))
            }
            (_, None) => {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "a TLS listener needs the certificate's private key (PEM)",
                ))
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sni.iter().enumerate() {
            let key = format!("tls.sni[{i}].names");
            if s.names.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    "list the server names this certificate serves",
                ));
            }
            for n in &s.names {
                check_name(&key, n)?;
                if !seen.insert(n.to_ascii_lowercase()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{n:?} is listed twice in [[tls.sni]]: keep it in one entry"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(text: &str) -> TlsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn needs_certificate_and_key_when_listening() {
        let e = TlsConfig::default().validate(true).unwrap_err();
        assert!(e.to_string().contains("tls.certificate"), "{e}");
        let e = tls("certificate = \"c.pem\"").validate(true).unwrap_err();
        assert!(e.to_string().contains("tls.key"), "{e}");
        tls("certificate = \"c.pem\"\nkey = \"k.pem\"")
            .validate(true)
            .unwrap();
        let e = tls("certificate = \"c.pem\"").validate(false).unwrap_err();
        assert!(e.to_string().contains("server.tls_listen"), "{e}");
        TlsConfig::default().validate(false).unwrap();
    }

    #[test]
    fn sni_names_are_checked() {
        let base = "certificate = \"c.pem\"\nkey = \"k.pem\"\n";
        let ok = format!("{base}[[sni]]\nnames = [\"api.example.com\", \"*.example.org\"]\ncertificate = \"a\"\nkey = \"b\"\n");
        tls(&ok).validate(true).unwrap();
        for bad in ["\"a..b\"", "\"*\"", "\"a.*.b\"", "\"x y\""] {
            let t = format!("{base}[[sni]]\nnames = [{bad}]\ncertificate = \"a\"\nkey = \"b\"\n");
            let e = tls(&t).validate(true).unwrap_err();
            assert!(e.to_string().contains("tls.sni[0].names"), "{bad}: {e}");
        }
        let dup = format!("{base}[[sni]]\nnames = [\"a.com\"]\ncertificate = \"a\"\nkey = \"b\"\n[[sni]]\nnames = [\"A.com\"]\ncertificate = \"a\"\nkey = \"b\"\n");
        let e = tls(&dup).validate(true).unwrap_err();
        assert!(e.to_string().contains("tls.sni[1].names"), "{e}");
        let empty = format!("{base}[[sni]]\nnames = []\ncertificate = \"a\"\nkey = \"b\"\n");
        assert!(tls(&empty).validate(true).is_err());
    }
}

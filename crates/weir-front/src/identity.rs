//! Who a request is from: the client address (through `trusted_proxies` only), the
//! scheme, and the request id. Nothing a client says about itself is believed unless the
//! peer that says it is a trusted proxy (NGINX's `set_real_ip_from` +
//! `real_ip_recursive on`).

use std::net::IpAddr;

use http::HeaderMap;
use weir_config::units::{parse_cidr, Cidr};

use crate::request_id;

/// The trusted proxy ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// From validated config strings (validation already rejected bad ones).
    pub fn new(list: &[String]) -> TrustedProxies {
        TrustedProxies(list.iter().filter_map(|s| parse_cidr(s).ok()).collect())
    }

    /// Is `ip` a trusted proxy?
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// A request's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client's address as weir believes it (None on a Unix socket with no proxy).
    pub client: Option<IpAddr>,
    /// "http" or "https".
    pub scheme: &'static str,
    /// The request id.
    pub request_id: String,
}

/// Works out the identity. `peer` is None on a Unix socket: a local peer, trusted as a
/// proxy (only processes on this host can reach it).
pub fn identify(headers: &HeaderMap, peer: Option<IpAddr>, trusted: &TrustedProxies) -> Identity {
    let peer_trusted = peer.is_none_or(|p| trusted.trusts(p));
    let mut client = peer;
    let mut scheme = "http";
    let mut request_id = None;
    if peer_trusted {
        // Walk X-Forwarded-For from the right, past every trusted hop: the first
        // untrusted address is the client.
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|h| h.trim().parse().ok())
            .collect();
        for hop in hops.iter().rev() {
            client = Some(*hop);
            if !trusted.trusts(*hop) {
                break;
            }
        }
        if let Some(p) = headers.get("x-forwarded-proto") {
            if p.as_bytes().eq_ignore_ascii_case(b"https") {
                scheme = "https";
            }
        }
        request_id = headers
            .get("x-request-id")
            .map(|v| v.as_bytes())
            .filter(|v| request_id::is_well_formed(v))
            .map(|v| String::from_utf8_lossy(v).into_owned());
    }
    Identity {
        client,
        scheme,
        request_id: request_id.unwrap_or_else(request_id::make),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_cannot_claim_an_address_or_id() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "abc"),
            ("x-forwarded-proto", "https"),
        ]);
        let id = identify(&h, Some("8.8.8.8".parse().unwrap()), &t);
        assert_eq!(id.client, Some("8.8.8.8".parse().unwrap()));
        assert_ne!(id.request_id, "abc");
        assert_eq!(id.scheme, "http");
    }

    #[test]
    fn trusted_chain_gives_first_untrusted_hop() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2"),
            ("x-request-id", "abc-1"),
            ("x-forwarded-proto", "https"),
        ]);
        let id = identify(&h, Some("10.0.0.1".parse().unwrap()), &t);
        assert_eq!(id.client, Some("1.2.3.4".parse().unwrap()));
        assert_eq!(id.request_id, "abc-1");
        assert_eq!(id.scheme, "https");
        let bad = headers(&[("x-request-id", "a b")]);
        assert_ne!(
            identify(&bad, Some("10.0.0.1".parse().unwrap()), &t).request_id,
            "a b"
        );
    }
}

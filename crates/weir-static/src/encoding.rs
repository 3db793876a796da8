//! `Accept-Encoding` for precompressed files: which of `NAME.br` and `NAME.gz` the client
//! takes, best first (RFC 9110 12.5.3: q-values, `*` for codings not listed, `q=0` refuses;
//! `x-gzip` is `gzip`). Between equal q-values Brotli comes first (it is the smaller file).

/// A precompressed variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `NAME.br`, `Content-Encoding: br`.
    Br,
    /// `NAME.gz`, `Content-Encoding: gzip`.
    Gzip,
}

impl Coding {
    /// The file name's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }

    /// The `Content-Encoding` value.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// q-value in thousandths; None when unreadable.
fn qvalue(params: &str) -> Option<u16> {
    for p in params.split(';') {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("q") {
            let v: f32 = v.trim().parse().ok()?;
            if !(0.0..=1.0).contains(&v) {
                return None;
            }
            return Some((v * 1000.0).round() as u16);
        }
    }
    Some(1000)
}

/// The variants an `Accept-Encoding` value allows, best first (at most two).
pub fn accepted(value: &[u8]) -> Vec<Coding> {
    let Ok(value) = std::str::from_utf8(value) else {
        return Vec::new();
    };
    let (mut br, mut gzip, mut star) = (None, None, None);
    for item in value.split(',') {
        let (name, params) = item.split_once(';').unwrap_or((item, ""));
        let Some(q) = qvalue(params) else { continue };
        let name = name.trim();
        if name.eq_ignore_ascii_case("br") {
            br = Some(q);
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.map_or(q, |g: u16| g.max(q)));
        } else if name == "*" {
            star = Some(q);
        }
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    let mut out = Vec::with_capacity(2);
    match (br > 0, gzip > 0) {
        (true, true) if gzip > br => out.extend([Coding::Gzip, Coding::Br]),
        (true, true) => out.extend([Coding::Br, Coding::Gzip]),
        (true, false) => out.push(Coding::Br),
        (false, true) => out.push(Coding::Gzip),
        (false, false) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::*;

    #[test]
    fn accept_encoding() {
        assert_eq!(accepted(b"gzip, deflate, br"), vec![Br, Gzip]);
        assert_eq!(accepted(b"gzip"), vec![Gzip]);
        assert_eq!(accepted(b"br;q=0.5, gzip"), vec![Gzip, Br]);
        assert_eq!(accepted(b"br;q=0, gzip;q=0.1"), vec![Gzip]);
        assert_eq!(accepted(b"*"), vec![Br, Gzip]);
        assert_eq!(accepted(b"*;q=0.5, gzip;q=0"), vec![Br]);
        assert_eq!(accepted(b"identity"), vec![]);
        assert_eq!(accepted(b""), vec![]);
        assert_eq!(accepted(b"GZIP;Q=1.0"), vec![Gzip]);
        assert_eq!(accepted(b"x-gzip"), vec![Gzip]);
        assert_eq!(accepted(b"br;q=2"), vec![]);
    }
}

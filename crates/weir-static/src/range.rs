//! The `Range` request field (RFC 9110 14.2) against a representation of `len` bytes.
//!
//! `bytes=FIRST-LAST`, `bytes=FIRST-` and `bytes=-SUFFIX`, in a comma list. weir answers
//! one satisfiable range with 206, and a list with more than one satisfiable range with the
//! whole file (200; the RFC lets a server ignore Range, and NGINX's multipart/byteranges
//! answers are rarely what a client wants). A field it cannot read (another unit, bad
//! syntax, `LAST` < `FIRST`, numbers over u64) is ignored, as RFC 9110 14.2 allows; a list
//! where no range is satisfiable is a 416 with `Content-Range: bytes */LEN`.

/// What a Range field asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// Absent, unreadable or another unit: the whole representation (200).
    Ignore,
    /// One range, `start..=end` (both within the length): 206.
    One {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// More than one satisfiable range: weir answers the whole representation (200).
    Many,
    /// No range is satisfiable: 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a Range field's value against a length. See the module doc.
pub fn parse_range(value: &[u8], len: u64) -> Ranges {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranges::Ignore;
    };
    let Some((unit, set)) = value.split_once('=') else {
        return Ranges::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let mut found = None;
    let mut satisfiable = 0usize;
    let mut specs = 0usize;
    for spec in set.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            continue; // the list grammar allows empty elements
        }
        specs += 1;
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let range = if first.is_empty() {
            // a suffix: the last SUFFIX bytes
            let Some(suffix) = number(last) else {
                return Ranges::Ignore;
            };
            (suffix > 0 && len > 0).then(|| (len - suffix.min(len), len - 1))
        } else {
            let Some(first) = number(first) else {
                return Ranges::Ignore;
            };
            let last = if last.is_empty() {
                None
            } else {
                match number(last) {
                    Some(l) if l >= first => Some(l),
                    _ => return Ranges::Ignore,
                }
            };
            (first < len).then(|| (first, last.map_or(len - 1, |l| l.min(len - 1))))
        };
        if let Some(r) = range {
            satisfiable += 1;
            found = Some(r);
        }
    }
    match (specs, satisfiable, found) {
        (0, _, _) => Ranges::Ignore,
        (_, 0, _) => Ranges::Unsatisfiable,
        (_, 1, Some((start, end))) => Ranges::One { start, end },
        _ => Ranges::Many,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, len: u64) -> Ranges {
        parse_range(s.as_bytes(), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-99", 1000), Ranges::One { start: 0, end: 99 });
        assert_eq!(
            p("bytes=100-", 1000),
            Ranges::One {
                start: 100,
                end: 999
            }
        );
        assert_eq!(
            p("bytes=-100", 1000),
            Ranges::One {
                start: 900,
                end: 999
            }
        );
        assert_eq!(p("bytes=-5000", 1000), Ranges::One { start: 0, end: 999 });
        assert_eq!(
            p("bytes=990-5000", 1000),
            Ranges::One {
                start: 990,
                end: 999
            }
        );
        assert_eq!(p("Bytes = 5-5", 1000), Ranges::One { start: 5, end: 5 });
        assert_eq!(p("bytes= 1-2 ,", 1000), Ranges::One { start: 1, end: 2 });
    }

    #[test]
    fn several_ranges_are_answered_whole_unless_one_is_satisfiable() {
        assert_eq!(p("bytes=0-0,-1", 1000), Ranges::Many);
        assert_eq!(p("bytes=0-1, 5-6", 1000), Ranges::Many);
        assert_eq!(
            p("bytes=0-1,5000-6000", 1000),
            Ranges::One { start: 0, end: 1 }
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(p("bytes=1000-", 1000), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=1000-2000,3000-", 1000), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=-0", 1000), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=-10", 0), Ranges::Unsatisfiable);
    }

    #[test]
    fn unreadable_fields_are_ignored() {
        for s in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=-",
            "bytes=0-1,x",
            "bytes=99999999999999999999-",
            "bytes=0x1-2",
        ] {
            assert_eq!(p(s, 1000), Ranges::Ignore, "{s:?}");
        }
        assert_eq!(parse_range(b"bytes=\xff-1", 10), Ranges::Ignore);
    }
}

//! The response head a worker sends: `HTTP/1.1 <status line>\r\n` then `Name: value\r\n`
//! lines and a blank line, exactly what uWSGI writes back to NGINX. The status is the
//! WSGI status string as the app gave it ("200 OK").

/// Appends a response head for `status` ("200 OK") and `headers`.
///
/// The caller has already checked (as PEP 3333 requires) that names and values hold no
/// CR or LF.
pub fn encode<'h>(
    out: &mut Vec<u8>,
    status: &[u8],
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of a head in `buf`: the length up to and including the blank line.
pub fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_finds_end() {
        let mut out = Vec::new();
        encode(
            &mut out,
            b"200 OK",
            [(&b"Content-Type"[..], &b"text/plain"[..])],
        );
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(find_end(&out), Some(out.len()));
        assert_eq!(find_end(&out[..out.len() - 1]), None);
    }
}

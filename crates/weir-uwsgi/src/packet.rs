//! The uwsgi packet: `[modifier1: u8][datasize: u16 LE][modifier2: u8]` then `datasize`
//! bytes of vars, each `[klen: u16 LE][key][vlen: u16 LE][value]`.
//!
//! See the uwsgi protocol page ("The uwsgi Protocol") and NGINX's
//! `ngx_http_uwsgi_create_request`, which writes exactly this shape with modifier1 = 0.

use thiserror::Error;

/// Size of the fixed packet header.
pub const HEADER_LEN: usize = 4;
/// The largest vars block a packet can carry (`datasize` is a `u16`).
pub const MAX_VARS_LEN: usize = u16::MAX as usize;
/// modifier1 of a WSGI request (what NGINX sends by default).
pub const MODIFIER_WSGI: u8 = 0;
/// modifier1 of the worker's "app imported, ready to serve" message.
pub const MODIFIER_READY: u8 = 0xF0;
/// modifier1 of the master's "run the app's ready check" request.
pub const MODIFIER_READY_CHECK: u8 = 0xF1;
/// modifier1 of the master's "the client went away: stop this response" notice (sent
/// after the whole request body; never answered; the worker stops iterating the app's
/// body, calls its close() and ends the response with ABORT).
pub const MODIFIER_CANCEL: u8 = 0xF2;
/// modifier1 of the master's CLAIM packet (`[app] prefetch`): it goes right before a
/// request written behind the one the worker is running, and carries that request's
/// claim sequence number, byte length (packet and inline body) and start-by time. The
/// worker runs the request only if it wins the claim (see the weir-claim crate);
/// otherwise it skips that many bytes. A request it wins after its start-by time is
/// answered `504` with `x-weir-error: deadline` instead of run. 20 bytes of payload:
/// `seq: u64 LE`, `len: u32 LE`, `start_by: u64 LE` (CLOCK_MONOTONIC nanoseconds; 0: none).
/// The CLAIM itself is never answered.
pub const MODIFIER_CLAIM: u8 = 0xF3;
/// Bytes of a CLAIM packet's payload.
const CLAIM_PAYLOAD: u16 = 20;
/// Size of a whole CLAIM packet.
pub const CLAIM_LEN: usize = HEADER_LEN + CLAIM_PAYLOAD as usize;

/// Why bytes are not (yet) a packet.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer holds only part of a packet; at least `needed` bytes in all are required.
    #[error("incomplete uwsgi packet: need {needed} bytes")]
    Incomplete {
        /// Total bytes the packet needs from the start of the buffer (a lower bound).
        needed: usize,
    },
    /// A var's declared length runs past the end of the vars block.
    #[error("malformed uwsgi packet: var at offset {offset} runs past the {len}-byte vars block")]
    VarOverrun {
        /// Offset of the bad var inside the vars block.
        offset: usize,
        /// Length of the vars block.
        len: usize,
    },
    /// A CLAIM packet whose datasize or modifier2 is not CLAIM's.
    #[error(
        "malformed CLAIM packet: datasize {datasize}, modifier2 {modifier2} (expected 20 and 0)"
    )]
    BadClaim {
        /// The datasize it declared.
        datasize: u16,
        /// Its modifier2.
        modifier2: u8,
    },
}

/// Why vars cannot be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A key or value longer than 65535 bytes.
    #[error("uwsgi var {key:?} is {len} bytes; a key or value is at most 65535")]
    VarTooLong {
        /// The key (lossy UTF-8, cut to 64 bytes).
        key: String,
        /// Its length.
        len: usize,
    },
    /// All vars together are over 65535 bytes.
    #[error("uwsgi vars total {len} bytes; a packet carries at most 65535 (reduce headers)")]
    PacketTooLong {
        /// Total length.
        len: usize,
    },
}

/// A decoded packet borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// First modifier (0 for WSGI).
    pub modifier1: u8,
    /// Second modifier.
    pub modifier2: u8,
    /// The raw vars block (decode with [`Packet::vars`]).
    pub vars_block: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Iterates the `(key, value)` pairs. The block was validated by [`decode`].
    pub fn vars(&self) -> Vars<'a> {
        Vars {
            rest: self.vars_block,
        }
    }

    /// The value of the first var named `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.vars().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Iterator over a validated vars block.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Vars<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v, used) = split_var(self.rest, 0).ok()??;
        self.rest = &self.rest[used..];
        Some((k, v))
    }
}

/// One var split off a block: key, value, bytes used.
type Split<'a> = (&'a [u8], &'a [u8], usize);

/// Splits one var off the front of `block`; `Ok(None)` at its end.
fn split_var(block: &[u8], offset: usize) -> Result<Option<Split<'_>>, DecodeError> {
    if block.is_empty() {
        return Ok(None);
    }
    let overrun = DecodeError::VarOverrun {
        offset,
        len: offset + block.len(),
    };
    let read_len = |at: usize| -> Option<usize> {
        let b = block.get(at..at + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let klen = read_len(0).ok_or_else(|| overrun.clone())?;
    let key = block.get(2..2 + klen).ok_or_else(|| overrun.clone())?;
    let vlen = read_len(2 + klen).ok_or_else(|| overrun.clone())?;
    let start = 4 + klen;
    let value = block.get(start..start + vlen).ok_or(overrun)?;
    Ok(Some((key, value, start + vlen)))
}

/// Decodes one packet from the front of `buf`: the packet and how many bytes it used.
///
/// The vars block is validated whole, so [`Packet::vars`] cannot fail afterwards.
pub fn decode(buf: &[u8]) -> Result<(Packet<'_>, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete { needed: HEADER_LEN });
    }
    let size = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    let total = HEADER_LEN + size;
    if buf.len() < total {
        return Err(DecodeError::Incomplete { needed: total });
    }
    let block = &buf[HEADER_LEN..total];
    let mut offset = 0;
    while let Some((_, _, used)) = split_var(&block[offset..], offset)? {
        offset += used;
    }
    Ok((
        Packet {
            modifier1: buf[0],
            modifier2: buf[3],
            vars_block: block,
        },
        total,
    ))
}

/// Builds a packet into a caller-owned buffer, so the hot path reuses one allocation.
///
/// ```
/// let mut out = Vec::new();
/// let mut p = weir_uwsgi::packet::Builder::new(&mut out, 0, 0);
/// p.var(b"REQUEST_METHOD", b"GET").unwrap();
/// p.finish().unwrap();
/// let (packet, used) = weir_uwsgi::packet::decode(&out).unwrap();
/// assert_eq!(used, out.len());
/// assert_eq!(packet.get(b"REQUEST_METHOD"), Some(&b"GET"[..]));
/// ```
#[derive(Debug)]
pub struct Builder<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
}

impl<'o> Builder<'o> {
    /// Starts a packet at the end of `out`.
    pub fn new(out: &'o mut Vec<u8>, modifier1: u8, modifier2: u8) -> Self {
        let start = out.len();
        out.extend_from_slice(&[modifier1, 0, 0, modifier2]);
        Builder { out, start }
    }

    /// Appends one var.
    pub fn var(&mut self, key: &[u8], value: &[u8]) -> Result<&mut Self, EncodeError> {
        for part in [key, value] {
            if part.len() > MAX_VARS_LEN {
                return Err(EncodeError::VarTooLong {
                    key: String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned(),
                    len: part.len(),
                });
            }
        }
        self.out
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.out.extend_from_slice(key);
        self.out
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.out.extend_from_slice(value);
        Ok(self)
    }

    /// Writes the header's size field. On error the buffer is left as it was before
    /// [`Builder::new`].
    pub fn finish(self) -> Result<(), EncodeError> {
        let len = self.out.len() - self.start - HEADER_LEN;
        if len > MAX_VARS_LEN {
            self.out.truncate(self.start);
            return Err(EncodeError::PacketTooLong { len });
        }
        self.out[self.start + 1..self.start + 3].copy_from_slice(&(len as u16).to_le_bytes());
        Ok(())
    }
}

/// Encodes an empty control packet (READY, READY_CHECK).
pub fn encode_control(out: &mut Vec<u8>, modifier1: u8) {
    out.extend_from_slice(&[modifier1, 0, 0, 0]);
}

/// A decoded CLAIM packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The claim's sequence number (what the worker compare-and-swaps).
    pub seq: u64,
    /// Bytes of the request that follows (packet and inline body), to skip when the
    /// claim is lost.
    pub len: u32,
    /// Not to be started after this CLOCK_MONOTONIC time, in nanoseconds (0: no limit):
    /// the request's deadline.
    pub start_by: u64,
}

/// Encodes a CLAIM packet.
pub fn encode_claim(out: &mut Vec<u8>, claim: Claim) {
    let [lo, hi] = CLAIM_PAYLOAD.to_le_bytes();
    out.extend_from_slice(&[MODIFIER_CLAIM, lo, hi, 0]);
    out.extend_from_slice(&claim.seq.to_le_bytes());
    out.extend_from_slice(&claim.len.to_le_bytes());
    out.extend_from_slice(&claim.start_by.to_le_bytes());
}

/// Decodes a CLAIM packet at the start of `buf`: `Ok(None)` when the next packet is not a
/// CLAIM (its first byte is another modifier1), `Incomplete` when it is one but not all
/// here. Consumes [`CLAIM_LEN`] bytes.
pub fn decode_claim(buf: &[u8]) -> Result<Option<Claim>, DecodeError> {
    match buf.first() {
        None => return Err(DecodeError::Incomplete { needed: HEADER_LEN }),
        Some(&m) if m != MODIFIER_CLAIM => return Ok(None),
        Some(_) => {}
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete { needed: CLAIM_LEN });
    }
    let datasize = u16::from_le_bytes([buf[1], buf[2]]);
    if datasize != CLAIM_PAYLOAD || buf[3] != 0 {
        return Err(DecodeError::BadClaim {
            datasize,
            modifier2: buf[3],
        });
    }
    if buf.len() < CLAIM_LEN {
        return Err(DecodeError::Incomplete { needed: CLAIM_LEN });
    }
    let seq = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
    let start_by = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    Ok(Some(Claim { seq, len, start_by }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_round_trip_and_every_cut_is_incomplete() {
        let c = Claim {
            seq: 0x0102_0304_0506_0708,
            len: 517,
            start_by: 0x1112_1314_1516_1718,
        };
        let mut out = Vec::new();
        encode_claim(&mut out, c);
        assert_eq!(out.len(), CLAIM_LEN);
        assert_eq!(decode_claim(&out), Ok(Some(c)));
        for cut in 0..out.len() {
            assert!(matches!(
                decode_claim(&out[..cut]),
                Err(DecodeError::Incomplete { .. })
            ));
        }
        // A request packet is not a claim.
        assert_eq!(decode_claim(&[0, 5, 0, 0]), Ok(None));
        // A CLAIM header with another size is refused, not misread.
        assert!(matches!(
            decode_claim(&[MODIFIER_CLAIM, 4, 0, 0, 1, 2, 3, 4]),
            Err(DecodeError::BadClaim { datasize: 4, .. })
        ));
    }

    fn build(vars: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = Builder::new(&mut out, 0, 0);
        for (k, v) in vars {
            b.var(k, v).unwrap();
        }
        b.finish().unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let out = build(&[(b"A", b"1"), (b"PATH_INFO", b"/x y"), (b"EMPTY", b"")]);
        let (p, used) = decode(&out).unwrap();
        assert_eq!(used, out.len());
        let vars: Vec<_> = p.vars().collect();
        assert_eq!(
            vars,
            vec![
                (&b"A"[..], &b"1"[..]),
                (&b"PATH_INFO"[..], &b"/x y"[..]),
                (&b"EMPTY"[..], &b""[..])
            ]
        );
    }

    #[test]
    fn matches_nginx_bytes() {
        // What nginx writes for `GET /` with one var, byte for byte.
        let out = build(&[(b"REQUEST_METHOD", b"GET")]);
        assert_eq!(&out[..4], &[0, 21, 0, 0]);
        assert_eq!(&out[4..6], &[14, 0]);
    }

    #[test]
    fn partial_input_is_incomplete_at_every_cut() {
        let out = build(&[(b"K", b"V"), (b"KEY2", b"VALUE2")]);
        for cut in 0..out.len() {
            assert!(matches!(
                decode(&out[..cut]),
                Err(DecodeError::Incomplete { .. })
            ));
        }
        // Trailing bytes (the body) are not part of the packet.
        let mut more = out.clone();
        more.extend_from_slice(b"body");
        assert_eq!(decode(&more).unwrap().1, out.len());
    }

    #[test]
    fn overrun_is_an_error() {
        let bad = [0u8, 4, 0, 0, 9, 0, b'a', b'b'];
        assert!(matches!(decode(&bad), Err(DecodeError::VarOverrun { .. })));
    }

    #[test]
    fn too_long_is_refused_and_buffer_restored() {
        let mut out = b"keep".to_vec();
        let big = vec![b'x'; 40_000];
        let mut b = Builder::new(&mut out, 0, 0);
        b.var(b"A", &big).unwrap();
        b.var(b"B", &big).unwrap();
        assert!(matches!(b.finish(), Err(EncodeError::PacketTooLong { .. })));
        assert_eq!(out, b"keep");
    }
}

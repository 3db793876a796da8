//! Body frames on the master<->worker socket: `[len: u32 LE][len bytes]`.
//!
//! `len == 0` ends the body; `len == u32::MAX` aborts it (the app failed after the
//! response head was sent: the master must cut the client's connection, not pretend the
//! body was complete). A data frame is at most [`MAX_FRAME_LEN`] bytes.

use thiserror::Error;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// The largest data frame (16 MiB); writers split larger chunks.
pub const MAX_FRAME_LEN: usize = 16 << 20;
const ABORT: u32 = u32::MAX;

/// A decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Body bytes (never empty).
    Data(&'a [u8]),
    /// The body is complete.
    End,
    /// The body was cut short by an error on the sending side.
    Abort,
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum FrameError {
    /// Only part of a frame is buffered; `needed` bytes in all are required.
    #[error("incomplete frame: need {needed} bytes")]
    Incomplete {
        /// Total bytes needed from the start of the buffer.
        needed: usize,
    },
    /// A length over [`MAX_FRAME_LEN`] that is not the abort marker.
    #[error("frame of {len} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLong {
        /// The declared length.
        len: u32,
    },
}

/// Reads the length prefix alone: the frame's kind and its payload length.
/// Lets a reader stream a large payload without buffering it whole.
pub fn decode_prefix(buf: &[u8]) -> Result<Prefix, FrameError> {
    let b = buf
        .get(..PREFIX_LEN)
        .ok_or(FrameError::Incomplete { needed: PREFIX_LEN })?;
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    match len {
        0 => Ok(Prefix::End),
        ABORT => Ok(Prefix::Abort),
        n if n as usize > MAX_FRAME_LEN => Err(FrameError::TooLong { len: n }),
        n => Ok(Prefix::Data(n as usize)),
    }
}

/// A decoded length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// A data frame of this many payload bytes follows.
    Data(usize),
    /// End of body.
    End,
    /// Body aborted.
    Abort,
}

/// Decodes one whole frame from the front of `buf`: the frame and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    match decode_prefix(buf)? {
        Prefix::End => Ok((Frame::End, PREFIX_LEN)),
        Prefix::Abort => Ok((Frame::Abort, PREFIX_LEN)),
        Prefix::Data(n) => {
            let total = PREFIX_LEN + n;
            let data = buf
                .get(PREFIX_LEN..total)
                .ok_or(FrameError::Incomplete { needed: total })?;
            Ok((Frame::Data(data), total))
        }
    }
}

/// Appends data frames carrying `data` (split at [`MAX_FRAME_LEN`]; nothing for empty data).
pub fn encode_data(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(MAX_FRAME_LEN) {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// The prefix of a data frame of `len` bytes (1..=MAX_FRAME_LEN), for writers that send
/// the payload from its own buffer (vectored writes).
pub fn data_prefix(len: usize) -> [u8; PREFIX_LEN] {
    debug_assert!(len > 0 && len <= MAX_FRAME_LEN);
    (len as u32).to_le_bytes()
}

/// The end-of-body frame.
pub const END: [u8; PREFIX_LEN] = [0; PREFIX_LEN];
/// The abort frame.
pub const ABORT_FRAME: [u8; PREFIX_LEN] = ABORT.to_le_bytes();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_markers() {
        let mut out = Vec::new();
        encode_data(&mut out, b"hello");
        encode_data(&mut out, b"");
        out.extend_from_slice(&END);
        out.extend_from_slice(&ABORT_FRAME);
        let (f, n) = decode(&out).unwrap();
        assert_eq!(f, Frame::Data(b"hello"));
        let (f2, n2) = decode(&out[n..]).unwrap();
        assert_eq!(f2, Frame::End);
        assert_eq!(decode(&out[n + n2..]).unwrap().0, Frame::Abort);
    }

    #[test]
    fn partial_is_incomplete() {
        let mut out = Vec::new();
        encode_data(&mut out, b"hello");
        for cut in 0..out.len() {
            assert!(matches!(
                decode(&out[..cut]),
                Err(FrameError::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn oversize_is_refused() {
        let len = (MAX_FRAME_LEN as u32 + 1).to_le_bytes();
        assert!(matches!(decode(&len), Err(FrameError::TooLong { .. })));
    }
}

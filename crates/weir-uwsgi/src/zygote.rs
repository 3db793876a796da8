//! The control messages between the master and a zygote (`weir worker --zygote`, the process
//! that imported the app once and forks the workers when `[app] preload` is on).
//!
//! The control socket is a `SOCK_SEQPACKET` socketpair (the zygote's standard input), so
//! every message is one datagram-like record and a passed descriptor (`SCM_RIGHTS`) belongs
//! to exactly one message. Integers are little-endian.
//!
//! ```text
//! zygote -> master   READY                               once, after the import
//! master -> zygote   FORK   slot:u32    + fd             the worker's end of a fresh socketpair
//! zygote -> master   FORKED slot:u32 pid:i32 + pidfd     one per FORK, in request order
//! zygote -> master   FAILED slot:u32 errno:i32           instead of FORKED when fork failed
//! zygote -> master   EXITED pid:i32 status:i32           a forked worker was reaped (wait status)
//! zygote -> master   NOT_FORK_SAFE reason:UTF-8          before READY: the import left
//!                                                        sockets, files written at an
//!                                                        offset or threads (the rest of
//!                                                        the message, at most MAX_REASON bytes)
//! ```
//! With `[app] preload = "auto"` a zygote that sends NOT_FORK_SAFE exits 0 next (the master
//! then execs the generation's workers); with `preload = true` READY follows it.
//! EOF on the socket ends the zygote (the master let its generation go, or died).

use thiserror::Error;

/// The longest NOT_FORK_SAFE reason, in bytes (longer ones are cut by [`Msg::not_fork_safe`]).
pub const MAX_REASON: usize = 2048;

/// The longest message (for receive buffers).
pub const MAX_LEN: usize = 1 + MAX_REASON;

const READY: u8 = b'R';
const FORK: u8 = b'F';
const FORKED: u8 = b'K';
const FAILED: u8 = b'E';
const EXITED: u8 = b'X';
const NOT_FORK_SAFE: u8 = b'N';

/// One control message (its descriptor, if any, travels beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The zygote imported the app and takes FORK requests.
    Ready,
    /// Fork a worker for this slot; the worker's socket comes with it.
    Fork {
        /// The slot (the worker's `--id`).
        slot: u32,
    },
    /// Forked: the worker's pid (its pidfd comes with it).
    Forked {
        /// The slot of the request.
        slot: u32,
        /// The worker's pid.
        pid: i32,
    },
    /// The fork failed with this errno.
    Failed {
        /// The slot of the request.
        slot: u32,
        /// `errno` of fork(2) (or of pidfd_open(2)).
        errno: i32,
    },
    /// A forked worker was reaped.
    Exited {
        /// Its pid.
        pid: i32,
        /// Its raw wait status (as waitpid(2) returns it).
        status: i32,
    },
    /// The import left something that does not survive a fork or must not be shared
    /// (open sockets, running threads), described for a log line.
    NotForkSafe {
        /// What was found, e.g. `a socket connected to 127.0.0.1:3306 (fd 7)`.
        reason: String,
    },
}

/// A message that is not one of the above.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed zygote control message {0:02x?}")]
pub struct BadMsg(pub Vec<u8>);

impl Msg {
    /// A NOT_FORK_SAFE message, its reason cut (at a character boundary, marked with
    /// `...`) to [`MAX_REASON`] bytes.
    pub fn not_fork_safe(reason: &str) -> Msg {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON - 3;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push_str("...");
        }
        Msg::NotForkSafe { reason }
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match *self {
            Msg::Ready => out.push(READY),
            Msg::Fork { slot } => {
                out.push(FORK);
                out.extend_from_slice(&slot.to_le_bytes());
            }
            Msg::Forked { slot, pid } => {
                out.push(FORKED);
                out.extend_from_slice(&slot.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Msg::Failed { slot, errno } => {
                out.push(FAILED);
                out.extend_from_slice(&slot.to_le_bytes());
                out.extend_from_slice(&errno.to_le_bytes());
            }
            Msg::Exited { pid, status } => {
                out.push(EXITED);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&status.to_le_bytes());
            }
            Msg::NotForkSafe { ref reason } => {
                out.push(NOT_FORK_SAFE);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    /// Parses one whole message.
    pub fn decode(b: &[u8]) -> Result<Msg, BadMsg> {
        let bad = || BadMsg(b.to_vec());
        let word = |i: usize| -> Result<[u8; 4], BadMsg> {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(bad)
        };
        let (msg, len) = match b.first().copied() {
            Some(READY) => (Msg::Ready, 1),
            Some(FORK) => (
                Msg::Fork {
                    slot: u32::from_le_bytes(word(1)?),
                },
                5,
            ),
            Some(FORKED) => (
                Msg::Forked {
                    slot: u32::from_le_bytes(word(1)?),
                    pid: i32::from_le_bytes(word(5)?),
                },
                9,
            ),
            Some(FAILED) => (
                Msg::Failed {
                    slot: u32::from_le_bytes(word(1)?),
                    errno: i32::from_le_bytes(word(5)?),
                },
                9,
            ),
            Some(EXITED) => (
                Msg::Exited {
                    pid: i32::from_le_bytes(word(1)?),
                    status: i32::from_le_bytes(word(5)?),
                },
                9,
            ),
            Some(NOT_FORK_SAFE) if b.len() <= MAX_LEN => {
                let reason = std::str::from_utf8(&b[1..]).map_err(|_| bad())?;
                (
                    Msg::NotForkSafe {
                        reason: reason.to_owned(),
                    },
                    b.len(),
                )
            }
            _ => return Err(bad()),
        };
        if b.len() != len {
            return Err(bad());
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [
            Msg::Ready,
            Msg::Fork { slot: 7 },
            Msg::Forked { slot: 7, pid: 4242 },
            Msg::Failed { slot: 1, errno: 11 },
            Msg::Exited { pid: 9, status: 9 },
            Msg::not_fork_safe("a socket connected to 127.0.0.1:3306 (fd 7)"),
            Msg::not_fork_safe(""),
        ] {
            let b = m.encode();
            assert!(b.len() <= MAX_LEN);
            assert_eq!(Msg::decode(&b), Ok(m));
        }
    }

    #[test]
    fn a_long_reason_is_cut_at_a_char_boundary() {
        let m = Msg::not_fork_safe(&"é".repeat(MAX_REASON));
        let b = m.encode();
        assert!(b.len() <= MAX_LEN, "{}", b.len());
        let Ok(Msg::NotForkSafe { reason }) = Msg::decode(&b) else {
            panic!("{b:?}");
        };
        assert!(reason.ends_with("é..."), "{reason}");
        assert_eq!(
            Msg::not_fork_safe(&"x".repeat(MAX_REASON)).encode().len(),
            MAX_LEN
        );
    }

    #[test]
    fn malformed_is_refused() {
        for b in [
            &b""[..],
            b"Z",
            b"F\x01",
            b"K\x01\x00\x00\x00",
            b"R\x00",
            b"N\xff",
        ] {
            assert!(Msg::decode(b).is_err(), "{b:?}");
        }
        let too_long = [b'N'; MAX_LEN + 1];
        assert!(Msg::decode(&too_long).is_err());
    }
}

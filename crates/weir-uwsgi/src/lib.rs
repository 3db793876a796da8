//! Pure codecs for the wire between weir's master and its workers, and between a real
//! NGINX (`uwsgi_pass`) and weir's `--uwsgi-listen`.
//!
//! # Layout
//! - [`packet`]: the uwsgi binary packet (a 4-byte header, then `key`/`value` pairs, each
//!   with a little-endian `u16` length), as NGINX's `ngx_http_uwsgi_module` and uWSGI speak it.
//! - [`frame`]: weir's body framing on the persistent master<->worker socket (length-prefixed
//!   chunks with an end and an abort marker), so one socket carries many requests.
//! - [`head`]: the plain HTTP/1.1 response head a worker writes before its body frames.
//! - [`zygote`]: the control messages between the master and a zygote (`[app] preload`:
//!   READY, FORK, FORKED, FAILED, EXITED).
//!
//! Nothing here does I/O: every function takes bytes and returns values, or appends to a
//! `Vec<u8>`. A partial input is [`Incomplete`](packet::DecodeError::Incomplete), never an
//! error, so callers read more and try again (the shape of mini-redis's `frame.rs`).
//!
//! # The worker protocol
//! One Unix stream socket per worker, kept open for the worker's whole life:
//!
//! ```text
//! worker -> master   READY (a packet with modifier1 = MODIFIER_READY, no vars) once the app is imported
//! master -> worker   a uwsgi packet (modifier1 = 0) with the CGI/WSGI variables
//!                    then the body: CONTENT_LENGTH raw bytes, or, when the packet has
//!                    WEIR_BODY=chunked, data frames ended by an end frame
//! worker -> master   an HTTP/1.1 response head (status line, headers, blank line)
//!                    then body frames: data frames, then an end frame (or an abort frame
//!                    when the app failed after the response had started)
//! ```
//! Why not plain uwsgi, where the response ends when the connection closes: a
//! connection per request costs a connect and an accept on both sides of every request,
//! and closing cannot tell "done" from "died". Framing the body keeps one socket per
//! worker and makes a crashed worker (EOF before the end frame) unambiguous.
//!
//! A control packet (modifier1 = [`MODIFIER_READY_CHECK`](packet::MODIFIER_READY_CHECK))
//! asks the worker to run the app's ready check; it answers with a response head and body
//! frames like any request.
//!
//! With `[app] prefetch` the master may write a request behind the one the worker is
//! running, preceded by a CLAIM packet ([`MODIFIER_CLAIM`](packet::MODIFIER_CLAIM):
//! [`encode_claim`](packet::encode_claim), [`decode_claim`](packet::decode_claim)) that
//! carries the claim's sequence number and the request's length; whether the worker runs it
//! is settled in shared memory (the weir-claim crate), not on the wire.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod head;
pub mod packet;
pub mod zygote;

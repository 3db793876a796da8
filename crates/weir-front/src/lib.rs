//! weir's front door: the part NGINX plays in front of the workers.
//!
//! # Layout
//! One module per stage of the request path (DESIGN.md):
//! - [`cli`]: `weir serve` flags, merged over `weir.toml`, then validated.
//! - [`server`]: binds the listeners, starts the pool, handles signals (SIGHUP reload,
//!   SIGTERM/SIGINT drain) and shuts down in order.
//! - [`listener`]: TCP and Unix listeners with an explicit backlog; accept loops that
//!   stop on the drain signal.
//! - [`http`]: an HTTP/1.1 connection (hyper) and the request handler.
//! - [`uwsgi`]: the uwsgi-protocol listener a real NGINX can `uwsgi_pass` to.
//! - [`environ`]: an HTTP request turned into the uwsgi vars a worker builds its WSGI
//!   environ from.
//! - [`request_id`]: `X-Request-ID`, kept or made.
//! - [`rejection`]: the one function that turns every weir-made failure into a status,
//!   `x-weir-error`, Retry-After and a body.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod environ;
pub mod http;
pub mod listener;
pub mod rejection;
pub mod request_id;
pub mod server;
pub mod uwsgi;

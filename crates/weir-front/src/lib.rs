//! weir's front door: the part NGINX plays in front of the workers.
//!
//! # Layout
//! One module per stage of the request path (docs/architecture.md has the whole path):
//! - [`cli`]: `weir serve` flags, merged over `weir.toml`, then validated.
//! - [`server`]: binds the listeners, starts the pool, handles signals (SIGHUP reload,
//!   SIGTERM/SIGINT/SIGQUIT drain, a second one stops now; SIGUSR2 upgrade) and shuts down
//!   in order.
//! - [`upgrade`]: the binary upgrade (SIGUSR2): a new master started on the listening
//!   sockets, the handover once its workers are ready.
//! - [`listener`]: TCP and Unix listeners with an explicit backlog; accept loops that
//!   stop on the drain signal.
//! - [`gate`]: the framing gate before hyper: where each request ends and whether it
//!   is acceptable (weir-http1), so malformed and ambiguous requests get weir's answer.
//! - [`http`]: an HTTP/1.1 connection (hyper) and the request handler, which runs the
//!   stages in order and answers (with the access log line) whatever they end with.
//! - [`http2`]: an HTTP/2 connection (hyper's h2): each stream through the same handler;
//!   its flood protections; h2c with prior knowledge on plain listeners.
//! - [`tls`]: the TLS listeners (rustls): certificates and SNI, reload on SIGHUP, the
//!   handshake and the ALPN choice between HTTP/2 and HTTP/1.1.
//! - [`front`]: what every connection shares ([`front::Front`]) and where requests go
//!   ([`front::Backend`]: the pool, or an upstream).
//! - [`limit`]: the limits stage (`limit_req`, `limit_conn`, `limit_rate`, the queue's
//!   fairness key), before the body is read.
//! - [`cache`]: the cache stage (NGINX's `uwsgi_cache`): a fresh entry answers here;
//!   otherwise what comes back is stored, refreshed, or replaced by a stale copy.
//! - [`compression`]: the compression stage (NGINX's `gzip`, with brotli and zstd) on the
//!   HTTP listener's response side, after the cache's and before the access log's wrapping.
//! - [`static_files`]: the static stage (`[[static]]`): files under a prefix answered by
//!   the front door from a directory, never from outside it, without a worker.
//! - [`request_body`]: the body stage (limits, buffering small bodies whole).
//! - [`dispatch`]: the route slot, the queue and the backend, up to the response head;
//!   shared by both listeners.
//! - [`uwsgi_listener`]: the uwsgi-protocol listener a real NGINX can `uwsgi_pass` to.
//! - [`environ`]: an HTTP request turned into the uwsgi vars a worker builds its WSGI
//!   environ from.
//! - [`identity`]: the client address through `trusted_proxies`, the scheme, and the
//!   request id ([`request_id`]: kept when well formed from a trusted peer, made otherwise).
//! - [`route`]: `[[route]]` prefix matching, per-route concurrency and timeouts.
//! - [`access_log`]: one JSON line per request, written when the body is done;
//!   [`metrics`]: the Prometheus counters it feeds; [`admin`]: `/metrics`, `/livez`,
//!   `/readyz` on their own listener.
//! - [`rejection`]: the one function that turns every weir-made failure into a status,
//!   `x-weir-error`, Retry-After and a body.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod compression;
pub mod conn_io;
pub mod dispatch;
pub mod environ;
pub mod front;
pub mod gate;
pub mod http;
pub mod http2;
pub mod identity;
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod rejection;
pub mod request_body;
pub mod request_id;
pub mod route;
pub mod server;
pub mod static_files;
pub mod systemd;
pub mod tls;
pub mod upgrade;
pub mod uwsgi_listener;

//! The supervised worker pool: the part of weir that uWSGI or Gunicorn plays.
//!
//! # Layout
//! - [`supervisor`]: starts the pool, reloads it (new generation ready before the old one
//!   leaves) and stops it.
//! - `slot`: one task per worker slot: spawns the `weir worker` process (or has the
//!   zygote fork one), waits for its READY, respawns it (with backoff) when it dies,
//!   retires or kills it on request.
//! - `zygote`: `[app] preload`: one zygote per generation imports the app once and forks
//!   the workers; its handle, the reader of its control socket, forked workers' exits.
//! - `sys`: the only `unsafe` code (descriptor passing, pidfd_send_signal), for `zygote`.
//! - [`pool`]: the idle workers and the bounded queue of requests waiting for one
//!   ([`Pool::submit`]) under the admission queue's rules (crate weir-queue: bound,
//!   timeout, CoDel), with its parts: `pool/offers.rs` (prefetch offers), `pool/lease.rs` (a [`Lease`]
//!   returns its worker when dropped), `pool/generations.rs` (reloads and shutdown).
//! - `offer_policy`: when a waiting request may be offered behind a busy worker
//!   (prefetch) and when an offer's holder is overdue, judged by each route's typical
//!   service time ([`ServiceTime`]) against the request's remaining queue budget.
//! - `request`: the request on its way to a worker, as `pool` and `exchange` both see it.
//! - `exchange`: one request on one worker: writes the uwsgi packet and body, reads the
//!   response head and body frames, enforces harakiri.
//! - the response body handed to the listeners is weir-response's [`ResponseBody`].
//! - [`error`]: [`DispatchError`], every way a dispatch ends without the app's answer.
//!
//! The master dispatches only to idle workers, so it always knows who is busy and since
//! when: a request never waits in a kernel queue behind a slow one.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
mod exchange;
mod offer_policy;
pub mod pool;
mod request;
mod slot;
pub mod supervisor;
#[allow(unsafe_code)]
mod sys;
mod zygote;

pub use error::{ClientBodyError, DispatchError};
pub use exchange::StartedAt;
pub use offer_policy::ServiceTime;
pub use pool::{Codel, Lease, Pool, PoolStats, Started};
pub use request::{BodyStream, RequestBody, WorkerRequest};
pub use slot::RestartReason;
pub use supervisor::{PoolConfig, Preload, Supervisor, SupervisorError, WorkerCommand};
pub use weir_queue::{QueuePlace, QueuePolicy, QueueRefusal};
pub use weir_response::{parse_head, BodyError, ResponseBody};
